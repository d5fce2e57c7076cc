package layers

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// Tolerances (relative, norm-wise) of batch normalisation against float64.
// The forward is a few float32 operations per element on statistics summed
// in float32 (partial sums of at most a few thousand values, combined
// pairwise); the gradients add one more batch sum.
const (
	bnFwdTol  = 1e-5
	bnGradTol = 1e-4
)

// bnDims splits a shape into batch, channels and plane size.
func bnDims(shape []int) (n, c, s int) {
	n, c, s = shape[0], shape[1], 1
	for _, d := range shape[2:] {
		s *= d
	}
	return n, c, s
}

// bnMoments returns each channel's mean and sum of squared deviations in
// float64 (two passes).
func bnMoments(x []float64, shape []int) (mean, ssd []float64) {
	n, c, s := bnDims(shape)
	mean, ssd = make([]float64, c), make([]float64, c)
	m := float64(n * s)
	for ch := 0; ch < c; ch++ {
		var sum float64
		for i := 0; i < n; i++ {
			for _, v := range x[(i*c+ch)*s : (i*c+ch+1)*s] {
				sum += v
			}
		}
		mean[ch] = sum / m
		var q float64
		for i := 0; i < n; i++ {
			for _, v := range x[(i*c+ch)*s : (i*c+ch+1)*s] {
				q += (v - mean[ch]) * (v - mean[ch])
			}
		}
		ssd[ch] = q
	}
	return mean, ssd
}

// bnRef is batch normalisation in float64 with the given per-channel mean
// and variance; w and b nil mean no affine map.
func bnRef(x []float64, shape []int, mean, variance, w, b []float64, eps float64) []float64 {
	n, c, s := bnDims(shape)
	y := make([]float64, len(x))
	for i := 0; i < n; i++ {
		for ch := 0; ch < c; ch++ {
			inv := 1 / math.Sqrt(variance[ch]+eps)
			for k := (i*c + ch) * s; k < (i*c+ch+1)*s; k++ {
				v := (x[k] - mean[ch]) * inv
				if w != nil {
					v = v*w[ch] + b[ch]
				}
				y[k] = v
			}
		}
	}
	return y
}

// bnTrainRef is training-mode batch normalisation in float64.
func bnTrainRef(x []float64, shape []int, w, b []float64) []float64 {
	n, _, s := bnDims(shape)
	mean, ssd := bnMoments(x, shape)
	variance := scaled(ssd, 1/float64(n*s))
	return bnRef(x, shape, mean, variance, w, b, 1e-5)
}

// bnInit fills input i of a batch-norm case: x (i = 0) with per-channel
// offsets and spreads, so that the statistics differ by channel, the channel
// bigMean (if >= 0) at mean 1000 and standard deviation 0.01, each value
// rounded to float32 so that the reference sees what the device sees;
// weight and bias N(0, 1).
func bnInit(shape []int, bigMean int) func(i int, x []float64) {
	return func(i int, x []float64) {
		z := randn(uint64(40+i), len(x))
		if i > 0 {
			for j := range x {
				x[j] = float64(z[j])
			}
			return
		}
		_, c, s := bnDims(shape)
		for j := range x {
			ch := j / s % c
			v := 0.3*float64(ch%5) - 0.5 + (0.5+0.25*float64(ch%3))*float64(z[j])
			if ch == bigMean {
				v = 1000 + 0.01*float64(z[j])
			}
			x[j] = float64(float32(v))
		}
	}
}

func TestBatchNormTrainGrad(t *testing.T) {
	cases := []struct {
		shape   []int
		affine  bool
		bigMean int // channel at mean 1000, std 0.01; -1 for none
	}{
		{[]int{7, 13}, true, -1},
		{[]int{3, 1}, true, -1}, // (N = 2 would make dx zero but for eps)
		{[]int{5, 3}, false, -1},
		{[]int{6, 8}, false, -1},   // vec4 reads across channels
		{[]int{300, 12}, true, -1}, // crosses the split device's segments
		{[]int{3, 5, 11}, true, -1},
		{[]int{1, 3, 5, 7}, true, -1},
		{[]int{2, 1, 13, 11}, true, -1},
		{[]int{4, 2, 3, 3}, false, -1},
		{[]int{2, 3, 4, 6}, true, -1},   // vec4 reads along planes
		{[]int{2, 5, 17, 19}, true, -1}, // a sample and a plane cross segments
		{[]int{3, 3, 7, 11}, true, 1},
		{[]int{2, 3, 20, 28}, false, 1}, // the large mean in vec4 reads across segments
	}
	for _, tc := range cases {
		for _, tuning := range []string{"cpu", "gpu"} {
			t.Setenv(bnTuningEnv, tuning)
			for _, relu := range []bool{false, true} {
				checkBatchNormTrain(t, tuning, tc.shape, tc.affine, tc.bigMean, relu)
			}
		}
	}
}

// checkBatchNormTrain checks training-mode batch normalisation of one shape
// under one tuning of the kernels, fused with the ReLU after it if relu.
func checkBatchNormTrain(t *testing.T, tuning string, shape []int, affine bool, bigMean int, relu bool) {
	_, c, _ := bnDims(shape)
	inputs := [][]int{shape}
	if affine {
		inputs = append(inputs, []int{c}, []int{c})
	}
	step := 0.0
	if bigMean >= 0 {
		// The output bends on the scale of the spread (0.01): the default
		// step of 1e-4 would leave a truncation error of 1e-4.
		step = 1e-6
	}
	ref := func(in [][]float64) []float64 {
		if affine {
			return bnTrainRef(in[0], shape, in[1], in[2])
		}
		return bnTrainRef(in[0], shape, nil, nil)
	}
	if relu {
		ref = reluAfter(ref)
	}
	checkGrad(t, gradCase{
		name:   fmt.Sprintf("%s/%v/affine=%v/big=%d/relu=%v", tuning, shape, affine, bigMean, relu),
		inputs: inputs,
		init:   bnInit(shape, bigMean),
		op: func(tp *Tape, in []*Var) *Var {
			bn, release := testBatchNorm(tp, c, in)
			defer release()
			if relu {
				return bn.ForwardRelu(tp, in[0], true)
			}
			return bn.Forward(tp, in[0], true)
		},
		ref:    ref,
		fwdTol: bnFwdTol, gradTol: bnGradTol, step: step,
	})
}

// reluAfter returns ref followed by a ReLU whose mask is taken from ref's
// first call, the unperturbed inputs (checkGrad's forward check): the
// finite differences then give the derivative at the inputs themselves, as
// autograd does, also for an output that a difference step would carry
// across 0, where a free ReLU would bend the difference.
func reluAfter(ref func([][]float64) []float64) func([][]float64) []float64 {
	var mask []bool
	return func(in [][]float64) []float64 {
		y := ref(in)
		if mask == nil {
			mask = make([]bool, len(y))
			for i, v := range y {
				mask[i] = v > 0
			}
		}
		for i := range y {
			if !mask[i] {
				y[i] = 0
			}
		}
		return y
	}
}

// testBatchNorm makes a layer of c channels on the tape's device whose
// weight and bias are in[1] and in[2] (when given), with running statistics
// 0 and 1; release frees the statistics once the tape's stream has run.
func testBatchNorm(tp *Tape, c int, in []*Var) (*BatchNorm, func()) {
	bn, err := NewBatchNorm(context.Background(), tp.Device(), c, false)
	if err != nil {
		tp.Fail("test", err)
		return &BatchNorm{}, func() {}
	}
	if len(in) == 3 {
		bn.Weight, bn.Bias = in[1], in[2]
	}
	rm, rv := bn.RunningMean, bn.RunningVar
	return bn, func() {
		tp.Stream().AfterRun(func() {
			rm.Release()
			rv.Release()
		})
	}
}

func TestBatchNormEvalGrad(t *testing.T) {
	for i, shape := range [][]int{{7, 13}, {1, 5}, {2, 5, 17, 19}, {2, 1, 7, 3}, {3, 8}, {2, 4, 6, 6}} {
		relu := i >= 4 // a linear and a convolutional shape fused with a ReLU
		_, c, _ := bnDims(shape)
		rm, rv := make([]float64, c), make([]float64, c)
		for i, z := range randn(9, 2*c) {
			if i < c {
				rm[i] = float64(z)
			} else {
				rv[i-c] = 0.25 + float64(z*z)
			}
		}
		ref := func(in [][]float64) []float64 {
			return bnRef(in[0], shape, rm, rv, in[1], in[2], 1e-5)
		}
		if relu {
			ref = reluAfter(ref)
		}
		checkGrad(t, gradCase{
			name:   fmt.Sprintf("%v/relu=%v", shape, relu),
			inputs: [][]int{shape, {c}, {c}},
			init:   bnInit(shape, -1),
			op: func(tp *Tape, in []*Var) *Var {
				bn, release := testBatchNorm(tp, c, in)
				defer release()
				ctx := context.Background()
				if err := bn.RunningMean.Upload(ctx, toF32(rm)); err != nil {
					tp.Fail("test", err)
				}
				if err := bn.RunningVar.Upload(ctx, toF32(rv)); err != nil {
					tp.Fail("test", err)
				}
				if relu {
					return bn.ForwardRelu(tp, in[0], false)
				}
				return bn.Forward(tp, in[0], false)
			},
			ref:    ref,
			fwdTol: bnFwdTol, gradTol: bnGradTol,
		})
	}
}

// TestBatchNormRunningStats runs two training-mode forward passes and
// compares the running statistics after each with PyTorch's rule in float64.
func TestBatchNormRunningStats(t *testing.T) {
	for _, shape := range [][]int{{6, 5}, {2, 3, 5, 7}, {3, 5, 17, 19}, {2, 2, 37, 41}} {
		for _, td := range testDevices(t) {
			t.Run(fmt.Sprint(shape)+"/"+td.name, func(t *testing.T) {
				ctx := context.Background()
				d := td.dev
				_, c, s := bnDims(shape)
				n := shape[0]
				bn, err := NewBatchNorm(ctx, d, c, true)
				if err != nil {
					t.Fatal(err)
				}
				defer bn.Release()
				bn.Momentum = 0.25
				wantMean, wantVar := make([]float64, c), make([]float64, c)
				for i := range wantVar {
					wantVar[i] = 1
				}
				st := stream(t, d)
				for step := 0; step < 2; step++ {
					host := make([]float64, n*c*s)
					bnInit(shape, 1)(0, host)
					for j := range host { // a different batch each step
						host[j] = float64(float32(host[j] + 0.1*float64(step)*float64(j%3)))
					}
					x := Constant(upload(t, d, toF32(host), shape...))
					tp := NewTape(st)
					y := bn.Forward(tp, x, true)
					if y == nil {
						t.Fatal(tp.Err())
					}
					tp.Release()
					if err := st.Run(ctx); err != nil {
						t.Fatal(err)
					}
					mean, ssd := bnMoments(host, shape)
					m := float64(bn.Momentum)
					for ch := range wantMean {
						wantMean[ch] = (1-m)*wantMean[ch] + m*mean[ch]
						wantVar[ch] = (1-m)*wantVar[ch] + m*ssd[ch]/float64(n*s-1)
					}
					for _, p := range []struct {
						name string
						t    *Tensor
						want []float64
					}{{"running mean", bn.RunningMean, wantMean}, {"running var", bn.RunningVar, wantVar}} {
						got, err := p.t.Download(ctx)
						if err != nil {
							t.Fatal(err)
						}
						assertClose(t, fmt.Sprintf("%s after %d steps", p.name, step+1), got, p.want, bnFwdTol)
					}
				}
				if bn.NumBatchesTracked != 2 {
					t.Errorf("NumBatchesTracked = %d, want 2", bn.NumBatchesTracked)
				}
			})
		}
	}
}

// TestBatchNormForward checks the kernel-level function in both modes and
// under both tunings, on shapes whose pieces on the split device outnumber
// the slots of partial sums (which they then share), with a channel at mean
// 1000 and spread 0.01.
func TestBatchNormForward(t *testing.T) {
	for _, tc := range []struct {
		shape  []int
		tuning string
	}{
		{[]int{3, 4, 9, 10}, "cpu"}, {[]int{4, 40, 9, 9}, "cpu"}, {[]int{8, 3, 56, 56}, "cpu"}, {[]int{300, 40}, "cpu"},
		{[]int{3, 4, 9, 10}, "gpu"}, {[]int{4, 40, 9, 9}, "gpu"}, {[]int{8, 3, 56, 56}, "gpu"}, {[]int{300, 40}, "gpu"},
		{[]int{8, 5, 7, 7}, "gpu"}, // channels share a workgroup
	} {
		shape := tc.shape
		t.Setenv(bnTuningEnv, tc.tuning)
		n, c, s := bnDims(shape)
		for _, td := range testDevices(t) {
			for _, training := range []bool{true, false} {
				t.Run(fmt.Sprintf("%s/%v/%s/training=%v", tc.tuning, shape, td.name, training), func(t *testing.T) {
					d := td.dev
					host := make([]float64, n*c*s)
					bnInit(shape, 2)(0, host)
					w, b := randn(3, c), randn(4, c)
					rmHost, rvHost := randn(5, c), randn(6, c)
					for i := range rvHost {
						rvHost[i] = 0.5 + rvHost[i]*rvHost[i]
					}
					x, y := upload(t, d, toF32(host), shape...), empty(t, d, shape...)
					rm, rv := upload(t, d, rmHost, c), upload(t, d, rvHost, c)
					st := stream(t, d)
					if err := BatchNormForward(st, y, x, upload(t, d, w, c), upload(t, d, b, c), rm, rv, training, 0.1, 1e-5); err != nil {
						t.Fatal(err)
					}
					w64, b64 := bnWiden(w), bnWiden(b)
					var want []float64
					if training {
						want = bnTrainRef(host, shape, w64, b64)
					} else {
						want = bnRef(host, shape, bnWiden(rmHost), bnWiden(rvHost), w64, b64, 1e-5)
					}
					assertClose(t, "output", run(t, st, y), want, bnFwdTol)
					if !training {
						return
					}
					mean, ssd := bnMoments(host, shape)
					wantMean, wantVar := make([]float64, c), make([]float64, c)
					for ch := range wantMean {
						wantMean[ch] = 0.9*float64(rmHost[ch]) + 0.1*mean[ch]
						wantVar[ch] = 0.9*float64(rvHost[ch]) + 0.1*ssd[ch]/float64(n*s-1)
					}
					for _, p := range []struct {
						name string
						t    *Tensor
						want []float64
					}{{"running mean", rm, wantMean}, {"running var", rv, wantVar}} {
						got, err := p.t.Download(context.Background())
						if err != nil {
							t.Fatal(err)
						}
						assertClose(t, p.name, got, p.want, bnFwdTol)
					}
				})
			}
		}
	}
}

func bnWiden(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

func TestBatchNormErrors(t *testing.T) {
	d := vktest.Device(t)
	ctx := context.Background()
	bn, err := NewBatchNorm(ctx, d, 3, true)
	if err != nil {
		t.Fatal(err)
	}
	defer bn.Release()
	for _, tc := range []struct {
		shape    []int
		training bool
		want     string
	}{
		{[]int{12}, true, "want [N, C]"},
		{[]int{1, 3, 2, 2, 1}, true, "want [N, C]"},
		{[]int{4, 5}, true, "5 channels"},
		{[]int{1, 3}, true, "more than 1 value per channel"},
		{[]int{1, 3, 1, 1}, true, "more than 1 value per channel"},
	} {
		n := 1
		for _, v := range tc.shape {
			n *= v
		}
		tp := NewTape(stream(t, d))
		if y := bn.Forward(tp, Constant(upload(t, d, randn(1, n), tc.shape...)), tc.training); y != nil {
			t.Errorf("%v: no error", tc.shape)
		} else if err := tp.Err(); !strings.Contains(fmt.Sprint(err), tc.want) {
			t.Errorf("%v: error %v, want one with %q", tc.shape, err, tc.want)
		}
		tp.Release()
	}
	// One sample in evaluation is fine.
	tp := NewTape(stream(t, d))
	if y := bn.Forward(tp, Constant(upload(t, d, randn(1, 3), 1, 3)), false); y == nil {
		t.Errorf("[1 3] in evaluation: %v", tp.Err())
	}
	tp.Release()
}

// TestDivMagic checks fastdiv's arithmetic (emulated here) on the edges of
// the 32-bit range.
func TestDivMagic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	divisors := []uint32{1, 2, 3, 5, 7, 49, 196, 3136, 12544, 1<<31 - 1, 1 << 31, 1<<31 + 1, math.MaxUint32}
	for i := 0; i < 200; i++ {
		divisors = append(divisors, rng.Uint32()>>(rng.IntN(32)))
	}
	for _, d := range divisors {
		if d == 0 {
			continue
		}
		m, l := divMagic(d)
		nums := []uint32{0, 1, d - 1, d, d + 1, 2*d - 1, 2 * d, math.MaxUint32, math.MaxUint32 - 1, math.MaxUint32 / d * d, math.MaxUint32/d*d - 1}
		for i := 0; i < 200; i++ {
			nums = append(nums, rng.Uint32())
		}
		for _, n := range nums {
			got := n
			if l > 0 {
				hi := uint32((uint64(n) * uint64(m)) >> 32)
				got = (hi + ((n - hi) >> 1)) >> (l - 1)
			}
			if got != n/d {
				t.Fatalf("fastdiv(%d, %d) = %d, want %d", n, d, got, n/d)
			}
		}
	}
}

// BenchmarkBatchNorm times a training-mode forward and backward pass at
// ResNet-50 shapes on the test device (wall clock around each submission,
// which holds just that pass).
//
//	go test ./layers -run '^$' -bench BatchNorm -benchtime 5x
func BenchmarkBatchNorm(b *testing.B) {
	d := vktest.Device(b)
	ctx := context.Background()
	for _, shape := range [][]int{{8, 64, 112, 112}, {8, 256, 56, 56}, {8, 2048, 7, 7}, {512, 8192}} {
		n, c, s := bnDims(shape)
		b.Run(strings.Trim(strings.ReplaceAll(fmt.Sprint(shape), " ", "x"), "[]"), func(b *testing.B) {
			bn, err := NewBatchNorm(ctx, d, c, true)
			if err != nil {
				b.Fatal(err)
			}
			defer bn.Release()
			x := Param(upload(b, d, randn(1, n*c*s), shape...))
			dy := randn(2, n*c*s)
			st := stream(b, d)
			var fwd, bwd time.Duration
			step := func() {
				tp := NewTape(st)
				y := bn.Forward(tp, x, true)
				t0 := time.Now()
				if err := st.Run(ctx); err != nil {
					b.Fatal(err)
				}
				fwd += time.Since(t0)
				g := tp.alloc("bench", shape...)
				if err := g.Upload(ctx, dy); err != nil {
					b.Fatal(err)
				}
				if err := tp.BackwardWith(y, g); err != nil {
					b.Fatal(err)
				}
				tp.Release()
				t0 = time.Now()
				if err := st.Run(ctx); err != nil {
					b.Fatal(err)
				}
				bwd += time.Since(t0)
				x.ZeroGrad()
				bn.Weight.ZeroGrad()
				bn.Bias.ZeroGrad()
			}
			step()
			fwd, bwd = 0, 0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				step()
			}
			b.ReportMetric(fwd.Seconds()*1e3/float64(b.N), "fwd-ms")
			b.ReportMetric(bwd.Seconds()*1e3/float64(b.N), "bwd-ms")
		})
	}
}
