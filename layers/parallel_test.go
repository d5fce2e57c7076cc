package layers

// Data-parallel tests: replicas run in goroutines, each on its own logical
// device (the plain test device, the split device and a second slot of the
// same physical device), joined by testGroup, a barrier collective of the
// test (layers cannot import ssl.Group; ssl/comm_test.go tests that one).

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// testGroup is an in-process group of replicas: every collective waits for
// all of them and sums (in rank order) or concatenates their vectors.
type testGroup struct {
	size  int
	mu    sync.Mutex
	cond  *sync.Cond
	round int
	count int
	parts [][]float64
	res   []float64
	err   error
}

func newTestGroup(size int) *testGroup {
	g := &testGroup{size: size, parts: make([][]float64, size)}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// abort makes every waiting and later collective fail.
func (g *testGroup) abort(err error) {
	g.mu.Lock()
	if g.err == nil {
		g.err = err
	}
	g.mu.Unlock()
	g.cond.Broadcast()
}

// exchange contributes v and returns combine of all contributions.
func (g *testGroup) exchange(rank int, v []float64, combine func([][]float64) []float64) ([]float64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return nil, g.err
	}
	round := g.round
	g.parts[rank] = slices.Clone(v)
	g.count++
	if g.count == g.size {
		g.res = combine(g.parts)
		g.count = 0
		g.round++
		g.cond.Broadcast()
	} else {
		for g.round == round && g.err == nil {
			g.cond.Wait()
		}
	}
	if g.err != nil {
		return nil, g.err
	}
	return g.res, nil
}

// testComm is one replica's handle on a testGroup; it counts its calls.
type testComm struct {
	g     *testGroup
	rank  int
	calls int
}

func (c *testComm) Rank() int { return c.rank }
func (c *testComm) Size() int { return c.g.size }

func (c *testComm) AllReduce(ctx context.Context, v []float64) error {
	c.calls++
	res, err := c.g.exchange(c.rank, v, func(parts [][]float64) []float64 {
		sum := make([]float64, len(parts[0]))
		for _, p := range parts {
			if len(p) != len(sum) {
				panic("testGroup: AllReduce of different lengths")
			}
			for i, x := range p {
				sum[i] += x
			}
		}
		return sum
	})
	if err != nil {
		return err
	}
	copy(v, res)
	return nil
}

func (c *testComm) AllGather(ctx context.Context, v []float32) ([]float32, error) {
	c.calls++
	res, err := c.g.exchange(c.rank, toF64(v), func(parts [][]float64) []float64 {
		return slices.Concat(parts...)
	})
	if err != nil {
		return nil, err
	}
	return toF32(res), nil
}

// replicaDevices returns n distinct logical devices of the test device.
func replicaDevices(t *testing.T, n int) []*vk.Device {
	base := vktest.Device(t)
	devs := []*vk.Device{base, vktest.SplitDevice(t, splitBytes)}
	for slot := 1; len(devs) < n; slot++ {
		devs = append(devs, vktest.Open(t, base.Info.Index, slot))
	}
	return devs[:n]
}

// runReplicas runs f for every rank of a new group, each in its own
// goroutine, and fails the test with the first error; a replica that fails
// aborts the group so that the others stop waiting.
func runReplicas(t *testing.T, n int, f func(rank int, c *testComm) error) {
	t.Helper()
	g := newTestGroup(n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[r] = f(r, &testComm{g: g, rank: r}); errs[r] != nil {
				g.abort(fmt.Errorf("replica %d failed", r))
			}
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", r, err)
		}
	}
}

// TestAllGatherTape gathers values of 2, 3 and 4 rows on three replicas and
// takes a different loss on each: forward the concatenation, backward the
// sum over replicas of the gathered gradients, each replica's rows.
func TestAllGatherTape(t *testing.T) {
	rows, width := []int{2, 3, 4}, 5
	total := 9
	xs := make([][]float32, 3)
	cs := make([][]float32, 3) // replica r's loss is sum(gathered * cs[r])
	for r := range 3 {
		xs[r] = randn(uint64(200+r), rows[r]*width)
		cs[r] = randn(uint64(300+r), total*width)
	}
	var wantY []float64
	for r := range 3 {
		wantY = append(wantY, toF64(xs[r])...)
	}
	devs := replicaDevices(t, 3)
	gotY := make([][]float32, 3)
	gotDx := make([][]float32, 3)
	runReplicas(t, 3, func(r int, c *testComm) error {
		ctx := context.Background()
		d := devs[r]
		st := stream(t, d)
		tp := NewTape(st)
		defer tp.Release()
		tp.SetCollective(ctx, c)
		x := Param(upload(t, d, xs[r], rows[r], 1, width))
		y := tp.AllGather(x)
		tp.Keep(y)
		loss := tp.Sum(tp.Mul(y, Constant(upload(t, d, cs[r], total, 1, width))))
		if err := tp.Backward(loss); err != nil {
			return err
		}
		if err := st.Run(ctx); err != nil {
			return err
		}
		defer y.Value.Release()
		defer x.ZeroGrad()
		if !slices.Equal(y.Shape(), []int{total, 1, width}) {
			return fmt.Errorf("gathered shape %v", y.Shape())
		}
		var err error
		if gotY[r], err = y.Value.Download(ctx); err != nil {
			return err
		}
		gotDx[r], err = x.Grad.Download(ctx)
		return err
	})
	first := 0
	for r := range 3 {
		assertClose(t, fmt.Sprintf("replica %d gathered", r), gotY[r], wantY, 0)
		want := make([]float64, rows[r]*width)
		for i := range want {
			for q := range 3 {
				want[i] += float64(cs[q][first*width+i])
			}
		}
		first += rows[r]
		assertClose(t, fmt.Sprintf("replica %d gradient", r), gotDx[r], want, 1e-6)
	}

	// One replica (a group of one, or none) gathers nothing.
	tp := NewTape(stream(t, devs[0]))
	defer tp.Release()
	tp.SetCollective(context.Background(), &testComm{g: newTestGroup(1)})
	x := Constant(upload(t, devs[0], xs[0], rows[0], width))
	if y := tp.AllGather(x); y != x {
		t.Errorf("one replica: AllGather made a new value")
	}
}

// TestSyncBatchNorm normalises 1d and 2d batches split over replicas, with a
// channel at mean 1000 and spread 0.01, and compares with float64 batch
// normalisation of the union batch: output, running statistics, the input
// gradient (global) and the weight and bias gradients (each replica's own
// sums), for a loss sum(y * c) with a different c on each replica, under
// both tunings of the kernels (their partial sums come in different slots).
func TestSyncBatchNorm(t *testing.T) {
	for _, tc := range []struct {
		shape []int
		split []int // rows per replica
	}{
		{[]int{7, 13}, []int{3, 4}},
		{[]int{9, 6}, []int{2, 3, 4}},
		{[]int{3, 3, 7, 11}, []int{1, 2}},
		{[]int{5, 4, 4, 6}, []int{2, 1, 2}},
		// Replica 1 runs on the split device: these cross its segments.
		{[]int{600, 12}, []int{100, 500}},
		{[]int{4, 5, 17, 19}, []int{2, 2}},
	} {
		for _, tuning := range []string{"cpu", "gpu"} {
			t.Run(fmt.Sprint(tuning, tc.shape, tc.split), func(t *testing.T) {
				t.Setenv(bnTuningEnv, tuning)
				checkSyncBatchNorm(t, tc.shape, tc.split)
			})
		}
	}
}

func checkSyncBatchNorm(t *testing.T, shape, split []int) {
	n, c, s := bnDims(shape)
	size := len(split)
	x := make([]float64, n*c*s)
	bnInit(shape, 1)(0, x)
	w, b, dy := toF64(randn(50, c)), toF64(randn(51, c)), toF64(randn(52, n*c*s))

	// The float64 reference over the union batch.
	mean, ssd := bnMoments(x, shape)
	count := float64(n * s)
	wantY := bnRef(x, shape, mean, scaled(ssd, 1/count), w, b, 1e-5)
	xhat := bnRef(x, shape, mean, scaled(ssd, 1/count), nil, nil, 1e-5)
	sdy, sdyx := make([]float64, c), make([]float64, c)
	for i := range x {
		ch := i / s % c
		sdy[ch] += dy[i]
		sdyx[ch] += dy[i] * xhat[i]
	}
	wantDx := make([]float64, len(x))
	for i := range x {
		ch := i / s % c
		invstd := 1 / math.Sqrt(ssd[ch]/count+1e-5)
		wantDx[i] = w[ch] * invstd * (dy[i] - sdy[ch]/count - xhat[i]*sdyx[ch]/count)
	}
	wantRM, wantRV := make([]float64, c), make([]float64, c)
	for ch := range c {
		wantRM[ch] = 0.1 * mean[ch]
		wantRV[ch] = 0.9 + 0.1*ssd[ch]/(count-1)
	}

	devs := replicaDevices(t, size)
	type result struct{ y, dx, dw, db, rm, rv []float32 }
	got := make([]result, size)
	runReplicas(t, size, func(r int, comm *testComm) error {
		ctx := context.Background()
		d := devs[r]
		lo := 0
		for _, k := range split[:r] {
			lo += k
		}
		hi := lo + split[r]
		rows := func(v []float64) []float32 { return toF32(v[lo*c*s : hi*c*s]) }
		lshape := append([]int{split[r]}, shape[1:]...)
		bn, err := NewBatchNorm(ctx, d, c, true)
		if err != nil {
			return err
		}
		defer bn.Release()
		if err := bn.Weight.Value.Upload(ctx, toF32(w)); err != nil {
			return err
		}
		if err := bn.Bias.Value.Upload(ctx, toF32(b)); err != nil {
			return err
		}
		st := stream(t, d)
		tp := NewTape(st)
		defer tp.Release()
		tp.SetCollective(ctx, comm)
		xv := Param(upload(t, d, rows(x), lshape...))
		defer xv.ZeroGrad()
		y := bn.Forward(tp, xv, true)
		tp.Keep(y)
		loss := tp.Sum(tp.Mul(y, Constant(upload(t, d, rows(dy), lshape...))))
		if err := tp.Backward(loss); err != nil {
			return err
		}
		if err := st.Run(ctx); err != nil {
			return err
		}
		defer y.Value.Release()
		res := &got[r]
		for _, p := range []struct {
			dst *[]float32
			t   *Tensor
		}{{&res.y, y.Value}, {&res.dx, xv.Grad}, {&res.dw, bn.Weight.Grad}, {&res.db, bn.Bias.Grad},
			{&res.rm, bn.RunningMean}, {&res.rv, bn.RunningVar}} {
			if *p.dst, err = p.t.Download(ctx); err != nil {
				return err
			}
		}
		return nil
	})
	var gotY, gotDx []float32
	for r := range size {
		gotY = append(gotY, got[r].y...)
		gotDx = append(gotDx, got[r].dx...)
		lo := 0
		for _, k := range split[:r] {
			lo += k
		}
		hi := lo + split[r]
		dw, db := make([]float64, c), make([]float64, c)
		for i := lo * c * s; i < hi*c*s; i++ {
			ch := i / s % c
			dw[ch] += dy[i] * xhat[i]
			db[ch] += dy[i]
		}
		assertClose(t, fmt.Sprintf("replica %d dweight", r), got[r].dw, dw, 1e-5)
		assertClose(t, fmt.Sprintf("replica %d dbias", r), got[r].db, db, 1e-5)
		assertClose(t, fmt.Sprintf("replica %d running mean", r), got[r].rm, wantRM, 1e-6)
		assertClose(t, fmt.Sprintf("replica %d running var", r), got[r].rv, wantRV, 1e-6)
		if !slices.Equal(got[r].rm, got[0].rm) || !slices.Equal(got[r].rv, got[0].rv) {
			t.Errorf("replica %d: running statistics differ from replica 0's", r)
		}
	}
	assertClose(t, "output", gotY, wantY, bnFwdTol)
	assertClose(t, "input gradient", gotDx, wantDx, 1e-5)
}

// TestDataParallelNetwork trains one step of a small network, conv -> BN ->
// relu -> global pool -> linear -> BN1d, with the loss
// MSE(out, target) + mean(gather(out)^2 * c) (c a constant of the gathered
// shape; without it the term's gradient would lie in the span that the last
// batch norm's backward projects out), on 2 and 3 replicas of B/2 and B/3
// images and on one replica of B, and compares outputs, loss, gradients
// after AverageGradients and running statistics with the one replica's and
// with float64 on the CPU. (The convolution and the linear layer have no
// bias: before a batch norm its gradient is zero but for rounding.)
func TestDataParallelNetwork(t *testing.T) {
	const batch = 12
	in := netInputs{
		batch:  batch,
		x:      randn(60, batch*3*7*7),
		target: randn(61, batch*6),
		weight: randn(62, batch*6),
	}
	ref, single := trainParallelStep(t, []*vk.Device{vktest.Device(t)}, in, false)
	want := netRef(in, ref)
	_, group1 := trainParallelStep(t, []*vk.Device{vktest.Device(t)}, in, true)
	for i := range single {
		if !slices.Equal(single[i], group1[i]) {
			t.Errorf("a group of one differs from no group in %s", stepNames[i])
		}
		assertClose(t, "one replica: "+stepNames[i], single[i], want[i], netTol)
	}
	for _, size := range []int{2, 3} {
		_, got := trainParallelStep(t, replicaDevices(t, size), in, true)
		for i := range got {
			label := fmt.Sprintf("%d replicas: %s", size, stepNames[i])
			assertClose(t, label+" (vs one replica)", got[i], toF64(single[i]), netTol)
			assertClose(t, label+" (vs float64)", got[i], want[i], netTol)
		}
	}
}

// netTol bounds the relative error of TestDataParallelNetwork's results.
const netTol = 1e-5

// netInputs are the data of TestDataParallelNetwork: images x [B, 3, 7, 7],
// targets and loss weights [B, 6].
type netInputs struct {
	batch             int
	x, target, weight []float32
}

// netParams are the network's initial parameters, as downloaded.
type netParams struct {
	conv, lin []float32 // [5, 3, 3, 3], [6, 5]
	bnW, bnB  [2][]float32
}

// stepNames name the results of trainParallelStep.
var stepNames = []string{"output", "loss", "conv weight grad", "bn2d weight grad", "bn2d bias grad",
	"linear weight grad", "bn1d weight grad", "bn1d bias grad",
	"bn2d running mean", "bn2d running var", "bn1d running mean", "bn1d running var"}

// trainParallelStep runs the network of TestDataParallelNetwork on one
// replica per device, each on its rows of the inputs, and returns the
// initial parameters and the results named by stepNames: the outputs
// concatenated, the mean of the replicas' losses, the averaged gradients
// and the running statistics (which it checks to be the same, to the bit,
// on every replica). withGroup sets a group even for one replica.
func trainParallelStep(t *testing.T, devs []*vk.Device, in netInputs, withGroup bool) (netParams, [][]float32) {
	size := len(devs)
	local := in.batch / size
	results := make([][][]float32, size)
	var params0 netParams
	runReplicas(t, size, func(r int, comm *testComm) error {
		ctx := context.Background()
		d := devs[r]
		rng := rand.New(rand.NewPCG(7, 8)) // the same parameters on every replica
		conv, err := NewConv2d(ctx, d, 3, 5, [2]int{3, 3}, ConvParams{Padding: [2]int{1, 1}}, false, rng)
		if err != nil {
			return err
		}
		defer conv.Release()
		lin, err := NewLinear(ctx, d, 5, 6, false, rng)
		if err != nil {
			return err
		}
		defer lin.Release()
		bns := make([]*BatchNorm, 2)
		var p0 netParams
		for i, ch := range []int{5, 6} {
			if bns[i], err = NewBatchNorm(ctx, d, ch, true); err != nil {
				return err
			}
			defer bns[i].Release()
			p0.bnW[i], p0.bnB[i] = randn(uint64(70+i), ch), randn(uint64(80+i), ch)
			for j := range p0.bnB[i] {
				// Small shifts keep the relu cutting every channel: one it
				// passed whole would take a bias gradient of zero but for
				// rounding (its pooled gradient sums to zero over the batch
				// behind the next batch norm).
				p0.bnB[i][j] *= 0.25
			}
			if err := bns[i].Weight.Value.Upload(ctx, p0.bnW[i]); err != nil {
				return err
			}
			if err := bns[i].Bias.Value.Upload(ctx, p0.bnB[i]); err != nil {
				return err
			}
		}
		if r == 0 {
			if p0.conv, err = conv.Weight.Value.Download(ctx); err != nil {
				return err
			}
			if p0.lin, err = lin.Weight.Value.Download(ctx); err != nil {
				return err
			}
			params0 = p0
		}
		params := []*Var{conv.Weight, bns[0].Weight, bns[0].Bias, lin.Weight, bns[1].Weight, bns[1].Bias}
		defer func() {
			for _, p := range params {
				p.ZeroGrad()
			}
		}()

		st := stream(t, d)
		tp := NewTape(st)
		defer tp.Release()
		if withGroup {
			tp.SetCollective(ctx, comm)
		}
		img := 3 * 7 * 7
		xv := Constant(upload(t, d, in.x[r*local*img:(r+1)*local*img], local, 3, 7, 7))
		tv := Constant(upload(t, d, in.target[r*local*6:(r+1)*local*6], local, 6))
		h := conv.Forward(tp, xv)
		h = tp.Relu(bns[0].Forward(tp, h, true))
		h = lin.Forward(tp, tp.GlobalAvgPool(h))
		out := bns[1].Forward(tp, h, true)
		tp.Keep(out)
		g := tp.AllGather(out)
		c := Constant(upload(t, d, in.weight, in.batch, 6))
		loss := tp.Add(tp.MSE(out, tv), tp.Mean(tp.Mul(tp.Mul(g, g), c)))
		tp.Keep(loss)
		if err := tp.Backward(loss); err != nil {
			return err
		}
		if err := AverageGradients(ctx, st, params, tp.Collective()); err != nil {
			return err
		}
		if err := st.Run(ctx); err != nil {
			return err
		}
		defer out.Value.Release()
		defer loss.Value.Release()
		tensors := []*Tensor{out.Value, loss.Value}
		for _, p := range params {
			tensors = append(tensors, p.Grad)
		}
		for _, bn := range bns {
			tensors = append(tensors, bn.RunningMean, bn.RunningVar)
		}
		for _, tn := range tensors {
			v, err := tn.Download(ctx)
			if err != nil {
				return err
			}
			results[r] = append(results[r], v)
		}
		return nil
	})
	out := make([][]float32, len(stepNames))
	for r := range size {
		out[0] = append(out[0], results[r][0]...)
	}
	var sum float64
	for r := range size {
		sum += float64(results[r][1][0])
	}
	out[1] = []float32{float32(sum / float64(size))}
	for i := 2; i < len(out); i++ {
		out[i] = results[0][i]
		for r := range size {
			if !slices.Equal(results[r][i], out[i]) {
				t.Errorf("%d replicas: replica %d's %s differs from replica 0's", size, r, stepNames[i])
			}
		}
	}
	return params0, out
}

// bnTrain64 is training-mode batch normalisation in float64: y, xhat and
// each channel's mean and biased variance.
func bnTrain64(x []float64, shape []int, w, b []float64) (y, xhat, mean, variance []float64) {
	n, _, s := bnDims(shape)
	mean, ssd := bnMoments(x, shape)
	variance = scaled(ssd, 1/float64(n*s))
	return bnRef(x, shape, mean, variance, w, b, 1e-5), bnRef(x, shape, mean, variance, nil, nil, 1e-5), mean, variance
}

// bnBackward64 is its backward pass in float64: dx, dw and db.
func bnBackward64(dy, xhat []float64, shape []int, w, variance []float64) (dx, dw, db []float64) {
	n, c, s := bnDims(shape)
	count := float64(n * s)
	dw, db = make([]float64, c), make([]float64, c)
	for i := range dy {
		ch := i / s % c
		dw[ch] += dy[i] * xhat[i]
		db[ch] += dy[i]
	}
	dx = make([]float64, len(dy))
	for i := range dy {
		ch := i / s % c
		k := w[ch] / math.Sqrt(variance[ch]+1e-5)
		dx[i] = k * (dy[i] - db[ch]/count - xhat[i]*dw[ch]/count)
	}
	return dx, dw, db
}

// netRef computes the results of trainParallelStep for one replica of the
// whole batch in float64.
func netRef(in netInputs, p netParams) [][]float64 {
	B, H, W := in.batch, 7, 7
	x, cw, lw := toF64(in.x), toF64(p.conv), toF64(p.lin)
	// conv 3 -> 5, 3x3, padding 1
	h1 := make([]float64, B*5*H*W)
	for n := range B {
		for o := range 5 {
			for y := range H {
				for xx := range W {
					var acc float64
					for i := range 3 {
						for ky := range 3 {
							for kx := range 3 {
								iy, ix := y+ky-1, xx+kx-1
								if iy >= 0 && iy < H && ix >= 0 && ix < W {
									acc += cw[((o*3+i)*3+ky)*3+kx] * x[((n*3+i)*H+iy)*W+ix]
								}
							}
						}
					}
					h1[((n*5+o)*H+y)*W+xx] = acc
				}
			}
		}
	}
	s2 := []int{B, 5, H, W}
	w2, b2 := toF64(p.bnW[0]), toF64(p.bnB[0])
	y1, xhat1, mean1, var1 := bnTrain64(h1, s2, w2, b2)
	pool := make([]float64, B*5)
	for i, v := range y1 {
		pool[i/(H*W)] += max(v, 0) / float64(H*W)
	}
	h2 := make([]float64, B*6)
	for n := range B {
		for j := range 6 {
			for c := range 5 {
				h2[n*6+j] += lw[j*5+c] * pool[n*5+c]
			}
		}
	}
	s1 := []int{B, 6}
	w1, b1 := toF64(p.bnW[1]), toF64(p.bnB[1])
	out, xhat2, mean2, var2 := bnTrain64(h2, s1, w1, b1)
	tg, cc := toF64(in.target), toF64(in.weight)
	var loss float64
	dout := make([]float64, len(out))
	m := float64(len(out))
	for i, o := range out {
		loss += ((o-tg[i])*(o-tg[i]) + o*o*cc[i]) / m
		dout[i] = (2*(o-tg[i]) + 2*o*cc[i]) / m
	}
	dh2, dw1, db1 := bnBackward64(dout, xhat2, s1, w1, var2)
	dlw := make([]float64, 6*5)
	dpool := make([]float64, B*5)
	for n := range B {
		for j := range 6 {
			for c := range 5 {
				dlw[j*5+c] += dh2[n*6+j] * pool[n*5+c]
				dpool[n*5+c] += dh2[n*6+j] * lw[j*5+c]
			}
		}
	}
	dy1 := make([]float64, len(y1))
	for i, v := range y1 {
		if v > 0 {
			dy1[i] = dpool[i/(H*W)] / float64(H*W)
		}
	}
	dh1, dw2, db2 := bnBackward64(dy1, xhat1, s2, w2, var1)
	dcw := make([]float64, len(cw))
	for n := range B {
		for o := range 5 {
			for y := range H {
				for xx := range W {
					g := dh1[((n*5+o)*H+y)*W+xx]
					for i := range 3 {
						for ky := range 3 {
							for kx := range 3 {
								iy, ix := y+ky-1, xx+kx-1
								if iy >= 0 && iy < H && ix >= 0 && ix < W {
									dcw[((o*3+i)*3+ky)*3+kx] += g * x[((n*3+i)*H+iy)*W+ix]
								}
							}
						}
					}
				}
			}
		}
	}
	running := func(mean, variance []float64, count int) ([]float64, []float64) {
		rm, rv := make([]float64, len(mean)), make([]float64, len(mean))
		for c := range mean {
			rm[c] = 0.1 * mean[c]
			rv[c] = 0.9 + 0.1*variance[c]*float64(count)/float64(count-1)
		}
		return rm, rv
	}
	rm1, rv1 := running(mean1, var1, B*H*W)
	rm2, rv2 := running(mean2, var2, B)
	return [][]float64{out, {loss}, dcw, dw2, db2, dlw, dw1, db1, rm1, rv1, rm2, rv2}
}
