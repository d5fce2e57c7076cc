package e2mc

import (
	"context"
	"fmt"
	"math"
	"math/bits"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
)

// Criterion measures batches of embeddings on a device and combines two
// views into the E2MC loss:
//
//	loss = Cov*(cov_a + cov_b) - Ent*(meanH_a + meanH_b)/2
type Criterion struct {
	Params
	Coefficients

	// Test hooks: sortRows, when positive, lowers the number of rows sorted
	// in shared memory so that tests reach the multi-pass sort of long
	// columns; sharedSort keeps CPU devices off the register sort so that
	// tests run the GPUs' shared-memory kernel too.
	sortRows   uint32
	sharedSort bool
}

// Measurement is one view's measurement, on the host.
type Measurement struct {
	N, D, M     int
	Entropy     []float32 // H_d per column
	MeanEntropy float64
	CovLoss     float64
}

// Loss is the two-view criterion and its parts.
type Loss struct {
	Total float64
	A, B  *Measurement
}

// Measure measures one view z [N, D] without gradients.
func (c *Criterion) Measure(ctx context.Context, s *vk.Stream, z *layers.Tensor) (*Measurement, error) {
	r, err := c.Record(s, z, nil, 0, 0)
	if err != nil {
		return nil, err
	}
	defer r.Release()
	if err := s.Run(ctx); err != nil {
		return nil, err
	}
	return r.Result(ctx)
}

// Loss computes the criterion over views za and zb (each [N, D]) and, when
// ga and gb are not nil, writes d(loss)/d(za) and d(loss)/d(zb) into them.
func (c *Criterion) Loss(ctx context.Context, s *vk.Stream, za, zb, ga, gb *layers.Tensor) (*Loss, error) {
	ent := float32(c.Ent / 2)
	cov := float32(c.Cov)
	ra, err := c.Record(s, za, ga, ent, cov)
	if err != nil {
		return nil, fmt.Errorf("view a: %w", err)
	}
	defer ra.Release()
	rb, err := c.Record(s, zb, gb, ent, cov)
	if err != nil {
		return nil, fmt.Errorf("view b: %w", err)
	}
	defer rb.Release()
	if err := s.Run(ctx); err != nil {
		return nil, err
	}
	a, err := ra.Result(ctx)
	if err != nil {
		return nil, err
	}
	b, err := rb.Result(ctx)
	if err != nil {
		return nil, err
	}
	total := c.Cov*(a.CovLoss+b.CovLoss) - c.Ent*(a.MeanEntropy+b.MeanEntropy)/2
	l := &Loss{Total: total, A: a, B: b}
	for _, t := range []struct {
		term string
		v    float64
	}{{"entropy of view a", a.MeanEntropy}, {"entropy of view b", b.MeanEntropy},
		{"covariance of view a", a.CovLoss}, {"covariance of view b", b.CovLoss}} {
		if math.IsNaN(t.v) || math.IsInf(t.v, 0) {
			return l, &NonFiniteError{Term: t.term, Value: t.v}
		}
	}
	return l, nil
}

// NonFiniteError reports a loss term that is NaN or infinite: the
// embeddings (or the network before them) have diverged. Loss returns it with
// the loss, so that a caller can log the parts before stopping.
type NonFiniteError struct {
	Term  string
	Value float64
}

func (e *NonFiniteError) Error() string {
	return fmt.Sprintf("the E2MC %s is %v: the embeddings hold NaN or Inf values or have diverged; lower the learning rate or resume from the last good checkpoint", e.Term, e.Value)
}

// Recording is a measurement recorded on a stream: its device memory lives
// until Release, which must come after the stream has run.
type Recording struct {
	n, d, m int
	h       *layers.Tensor // [D] entropies
	frob    *layers.Tensor // [1] sum of squares of K (gram) or of offdiag(C)
	diagSq  *layers.Tensor // [1] sum of squared column variances (gram only)
	gram    bool
	temps   []*layers.Tensor
}

// Release frees the recording's device memory.
func (v *Recording) Release() {
	for _, t := range v.temps {
		t.Release()
	}
}

// Result downloads the recording's results once its stream has run.
func (v *Recording) Result(ctx context.Context) (*Measurement, error) {
	h, err := v.h.Download(ctx)
	if err != nil {
		return nil, err
	}
	frob, err := v.frob.Download(ctx)
	if err != nil {
		return nil, err
	}
	r := &Measurement{N: v.n, D: v.d, M: v.m, Entropy: h}
	for _, e := range h {
		r.MeanEntropy += float64(e)
	}
	r.MeanEntropy /= float64(v.d)
	// The covariance path summed the off-diagonal squares directly; the Gram
	// path has the whole ||C||² and the diagonal's squares to take out (no
	// harmful cancellation there: with N <= D the off-diagonal part is the
	// larger).
	off := float64(frob[0])
	if v.gram {
		diag, err := v.diagSq.Download(ctx)
		if err != nil {
			return nil, err
		}
		off = off/(float64(v.n-1)*float64(v.n-1)) - float64(diag[0])
	}
	r.CovLoss = off / float64(v.d)
	return r, nil
}

// Column kernel work split: invocations per column and the largest number of
// rows sorted in shared memory (keys and row indices, 8 bytes a row).
func columnConfig(info vk.DeviceInfo) (wg, nmax uint32) {
	wg = 256
	if info.Type == "cpu" {
		wg = 64
	}
	nmax = uint32(1) << (31 - bits.LeadingZeros32(info.MaxSharedMemory/8))
	return wg, min(nmax, 1<<16)
}

// registerConfig is the work split of e2mc_column_reg.comp for a column
// padded to npad rows: wg invocations holding reg elements each
// (wg * reg >= npad), or reg = 0 for e2mc_column.comp's shared-memory sort. The register sort
// is for CPU devices with 8-wide subgroups (lavapipe), where registers are
// vectors and every shared-memory access loops over the lanes.
func registerConfig(info vk.DeviceInfo, npad uint32) (wg, reg uint32) {
	if info.Type != "cpu" || info.SubgroupSize != 8 || !info.HasSubgroupOps("shuffle", "arithmetic") {
		return 0, 0
	}
	// Up to 32 elements an invocation: on lavapipe (Mesa 25, 2 cores) 32
	// sorted 512 x 8192 in 0.15 s and 4096 x 2048 in 0.47 s, 16 in 0.15 s and
	// 0.73 s; 64 was no faster at 512 rows and its pipelines took 10-16 s to
	// compile (32: 3-4 s).
	const rmax = 32
	sg := info.SubgroupSize
	reg = min(max(npad/sg, 1), rmax)
	wg = max(npad/reg, sg)
	if wg > info.MaxWorkgroupSize {
		return 0, 0
	}
	return wg, reg
}

// Record records on s the measurement of z [N, D] and, when grad is not nil,
// the gradient of cov*CovLoss - ent*MeanEntropy with respect to z into grad.
// On a stream with timestamps it marks the ends of its three phases,
// "e2mc_columns" (bound, sort, entropy and its gradient), "e2mc_covariance"
// and "e2mc_gradient", for benchmarks.
func (c *Criterion) Record(s *vk.Stream, z, grad *layers.Tensor, ent, cov float32) (*Recording, error) {
	shape := z.Shape()
	if len(shape) != 2 {
		return nil, fmt.Errorf("embeddings of shape %v: want [N, D]", shape)
	}
	n, d := shape[0], shape[1]
	m, err := c.window(n)
	if err != nil {
		return nil, err
	}
	if n < 4 {
		return nil, fmt.Errorf("a batch of %d rows: E2MC needs at least 4", n)
	}
	if grad != nil {
		if gs := grad.Shape(); len(gs) != 2 || gs[0] != n || gs[1] != d {
			return nil, fmt.Errorf("gradient of shape %v for embeddings %v", gs, shape)
		}
	}
	dev := z.Device()
	v := &Recording{n: n, d: d, m: m, gram: n <= d}
	newT := func(shape ...int) (*layers.Tensor, error) {
		t, err := layers.New(dev, shape...)
		if err == nil {
			v.temps = append(v.temps, t)
		}
		return t, err
	}
	fail := func(err error) (*Recording, error) {
		v.Release()
		return nil, err
	}
	x, err := newT(n, d)
	if err != nil {
		return fail(err)
	}
	if v.h, err = newT(d); err != nil {
		return fail(err)
	}
	variance, err := newT(d)
	if err != nil {
		return fail(err)
	}
	gent, err := newT(n, d)
	if err != nil {
		return fail(err)
	}
	if v.frob, err = newT(1); err != nil {
		return fail(err)
	}
	if v.gram {
		if v.diagSq, err = newT(1); err != nil {
			return fail(err)
		}
	}

	if err := c.recordColumns(s, z, x, v.h, variance, gent, grad != nil, newT); err != nil {
		return fail(err)
	}
	if err := s.Mark("e2mc_columns"); err != nil {
		return fail(err)
	}

	// Covariance: with N <= D the N x N Gram matrix K = XXᵀ has the same
	// squared Frobenius norm as XᵀX and gives XC = KX/(N-1) for D/N times
	// fewer flops than forming C.
	var sq, mx *layers.Tensor
	inv := 1 / float32(n-1)
	if v.gram {
		if sq, err = newT(n, n); err != nil {
			return fail(err)
		}
		if err = layers.Gemm(s, 1, x, false, x, true, 0, sq); err != nil {
			return fail(err)
		}
		if grad != nil {
			if mx, err = newT(n, d); err != nil {
				return fail(err)
			}
			if err = layers.Gemm(s, inv, sq, false, x, false, 0, mx); err != nil {
				return fail(err)
			}
		}
	} else {
		if sq, err = newT(d, d); err != nil {
			return fail(err)
		}
		if err = layers.Gemm(s, inv, x, true, x, false, 0, sq); err != nil {
			return fail(err)
		}
		// Keep the off-diagonal part only: the loss is then its sum of
		// squares, and the gradient X offdiag(C) needs no correction.
		args, offs, err := bindAll(operand{sq, true})
		if err != nil {
			return fail(err)
		}
		if err = layers.Launch(s, "e2mc_zero_diag", []uint32{256}, layers.Grid((d+255)/256),
			layers.Push{}.U32(uint32(d)).U32(offs...), args...); err != nil {
			return fail(err)
		}
		if grad != nil {
			if mx, err = newT(n, d); err != nil {
				return fail(err)
			}
			if err = layers.Gemm(s, 1, x, false, sq, false, 0, mx); err != nil {
				return fail(err)
			}
		}
	}
	if err := s.Mark("e2mc_covariance"); err != nil {
		return fail(err)
	}
	if grad != nil {
		cc := cov * 4 / (float32(d) * float32(n-1))
		total := n * d
		// The Gram path's XC includes the diagonal of C, which the kernel
		// takes out again; the covariance path's has none.
		vscale := float32(0)
		if v.gram {
			vscale = 1
		}
		args, offs, err := bindAll(operand{z, false}, operand{mx, false}, operand{x, false},
			operand{variance, false}, operand{gent, false}, operand{grad, true})
		if err != nil {
			return fail(err)
		}
		if err = layers.Launch(s, "e2mc_grad", []uint32{256, uint32(c.Bound)},
			layers.Grid((total+255)/256),
			layers.Push{}.U32(uint32(total), uint32(d)).F32(cc, ent, vscale).U32(offs...),
			args...); err != nil {
			return fail(err)
		}
	}
	// Last: these square sq and variance in place.
	if err = sumSquares(s, v.frob, sq); err != nil {
		return fail(err)
	}
	if v.gram {
		if err = sumSquares(s, v.diagSq, variance); err != nil {
			return fail(err)
		}
	}
	if err := s.Mark("e2mc_gradient"); err != nil {
		return fail(err)
	}
	return v, nil
}

type operand struct {
	t     *layers.Tensor
	write bool
}

// bindAll binds whole tensors for the e2mc kernels, which need each operand
// in one buffer segment: a column's sort reads every row.
func bindAll(ops ...operand) ([]vk.Arg, []uint32, error) {
	args := make([]vk.Arg, len(ops))
	offs := make([]uint32, len(ops))
	for i, o := range ops {
		var err error
		if args[i], offs[i], err = layers.Bind(o.t, o.write); err != nil {
			return nil, nil, err
		}
	}
	return args, offs, nil
}

// recordColumns records the per-column work: bound, centre (x), variance,
// sort, entropy (h) and, with grad, the entropy gradient (gent). Columns that
// fit shared memory take one fused kernel; longer ones are sorted in global
// memory in several passes.
func (c *Criterion) recordColumns(s *vk.Stream, z, x, h, variance, gent *layers.Tensor, grad bool,
	newT func(...int) (*layers.Tensor, error)) error {
	shape := z.Shape()
	n, d := shape[0], shape[1]
	m, _ := c.window(n)
	wg, nmax := columnConfig(z.Device().Info)
	if c.sortRows > 0 {
		nmax = min(nmax, c.sortRows)
	}
	npad := uint32(1) << bits.Len32(uint32(n-1))
	scale := float32(n+1) / float32(m)
	spacing := layers.Push{}.U32(uint32(n), uint32(d), npad, uint32(m)).
		F32(float32(c.Eps), scale, scale/float32(n-m)/float32(d))
	if npad <= nmax {
		args, offs, err := bindAll(operand{z, false}, operand{x, true}, operand{h, true},
			operand{variance, true}, operand{gent, true})
		if err != nil {
			return err
		}
		kernel, spec := "e2mc_column", []uint32{wg, max(npad, wg), uint32(c.Bound), b2u(grad)}
		if rwg, reg := registerConfig(z.Device().Info, npad); reg > 0 && !c.sharedSort {
			kernel, spec = "e2mc_column_reg", []uint32{rwg, rwg * reg, uint32(c.Bound), b2u(grad), reg}
		}
		return layers.Launch(s, kernel, spec,
			layers.Grid(d), append(spacing, layers.Push{}.U32(offs...)...), args...)
	}

	keys, err := newT(d, int(npad))
	if err != nil {
		return err
	}
	rows, err := newT(d, int(npad))
	if err != nil {
		return err
	}
	args, offs, err := bindAll(operand{z, false}, operand{x, true}, operand{variance, true},
		operand{keys, true}, operand{rows, true})
	if err != nil {
		return err
	}
	if err := layers.Launch(s, "e2mc_load", []uint32{wg, uint32(c.Bound)}, layers.Grid(d),
		layers.Push{}.U32(uint32(n), uint32(d), npad).U32(offs...), args...); err != nil {
		return err
	}
	if err := sortPadded(s, keys, rows, wg, nmax); err != nil {
		return err
	}
	args, offs, err = bindAll(operand{keys, false}, operand{rows, false}, operand{h, true}, operand{gent, true})
	if err != nil {
		return err
	}
	return layers.Launch(s, "e2mc_spacing", []uint32{wg, b2u(grad), uint32(c.Bound)}, layers.Grid(d),
		append(spacing, layers.Push{}.U32(offs...)...), args...)
}

// sortPadded records the bitonic sort of each row of keys [D, P] (P a power
// of two) with its companion rows [D, P], ties by row: blocks of nmax
// elements sort in shared memory, longer steps run in global memory.
func sortPadded(s *vk.Stream, keys, rows *layers.Tensor, wg, nmax uint32) error {
	d, npad := keys.Dim(0), uint32(keys.Dim(1))
	nmax = min(nmax, npad)
	sorted, offs, err := bindAll(operand{keys, true}, operand{rows, true})
	if err != nil {
		return err
	}
	block := func(k uint32) error {
		return layers.Launch(s, "e2mc_sort_block", []uint32{wg, nmax}, layers.Grid(d*int(npad/nmax)),
			layers.Push{}.U32(uint32(d), npad, k).U32(offs...), sorted...)
	}
	if err := block(0); err != nil {
		return err
	}
	pairs := d * int(npad) / 2
	for k := 2 * nmax; k <= npad; k *= 2 {
		for j := k / 2; j >= nmax; j /= 2 {
			if err := layers.Launch(s, "e2mc_sort_step", []uint32{256}, layers.Grid((pairs+255)/256),
				layers.Push{}.U32(uint32(pairs), npad, k, j).U32(offs...), sorted...); err != nil {
				return err
			}
		}
		if err := block(k); err != nil {
			return err
		}
	}
	return nil
}

// SortColumns records sorting every column of z [N, D] on its own, ties by
// row (the order of a stable sort). keys [D, P] receives each column in
// ascending order, padded to P (N rounded up to a power of two) with +Inf,
// and rows [D, P] the row each value came from, as uint32 bits (read them
// with math.Float32bits). The criterion sorts inside its own kernels; this
// is the sort on its own, for diagnostics and tests.
func SortColumns(s *vk.Stream, z, keys, rows *layers.Tensor) error {
	shape := z.Shape()
	if len(shape) != 2 {
		return fmt.Errorf("sort columns of shape %v: want [N, D]", shape)
	}
	n, d := shape[0], shape[1]
	npad := 1 << bits.Len32(uint32(n-1))
	for _, t := range []*layers.Tensor{keys, rows} {
		if ts := t.Shape(); len(ts) != 2 || ts[0] != d || ts[1] != npad {
			return fmt.Errorf("sort columns of %v: outputs must be [%d, %d], got %v", shape, d, npad, ts)
		}
	}
	dev := z.Device()
	x, err := layers.New(dev, n, d)
	if err != nil {
		return err
	}
	s.AfterRun(x.Release)
	variance, err := layers.New(dev, d)
	if err != nil {
		return err
	}
	s.AfterRun(variance.Release)
	args, offs, err := bindAll(operand{z, false}, operand{x, true}, operand{variance, true},
		operand{keys, true}, operand{rows, true})
	if err != nil {
		return err
	}
	wg, nmax := columnConfig(dev.Info)
	if err := layers.Launch(s, "e2mc_load", []uint32{wg, uint32(BoundNone)}, layers.Grid(d),
		layers.Push{}.U32(uint32(n), uint32(d), uint32(npad)).U32(offs...), args...); err != nil {
		return err
	}
	return sortPadded(s, keys, rows, wg, nmax)
}

// sumSquares records dst[0] = sum of squares of the elements of x. It squares
// x in place: callers pass tensors they no longer need.
func sumSquares(s *vk.Stream, dst, x *layers.Tensor) error {
	flat, err := x.Reshape(x.Len())
	if err != nil {
		return err
	}
	if err := layers.Mul(s, flat, flat, flat); err != nil {
		return err
	}
	out, err := dst.Reshape()
	if err != nil {
		return err
	}
	return layers.Sum(s, out, flat, 0)
}

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
