package layers

import (
	"fmt"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// Scale returns alpha * x.
func (tp *Tape) Scale(x *Var, alpha float32) *Var {
	if !tp.ok(x) {
		return nil
	}
	y := tp.alloc("scale", x.Value.shape...)
	if y == nil {
		return nil
	}
	tp.Fail("scale", Scale(tp.s, y, x.Value, alpha))
	return tp.record(y, []*Var{x}, func(g *Tensor) []*Tensor {
		return []*Tensor{tp.scaled("scale backward", g, alpha)}
	})
}

// Sub returns a - b for values of one shape.
func (tp *Tape) Sub(a, b *Var) *Var {
	if !tp.ok(a, b) {
		return nil
	}
	if !slices.Equal(a.Value.shape, b.Value.shape) {
		tp.Fail("sub", fmt.Errorf("shapes %v and %v differ", a.Value.shape, b.Value.shape))
		return nil
	}
	y := tp.alloc("sub", a.Value.shape...)
	if y == nil {
		return nil
	}
	tp.Fail("sub", Sub(tp.s, y, a.Value, b.Value))
	return tp.record(y, []*Var{a, b}, func(g *Tensor) []*Tensor {
		var da, db *Tensor
		if a.requiresGrad {
			da = tp.clone(g)
		}
		if b.requiresGrad {
			db = tp.scaled("sub backward", g, -1)
		}
		return []*Tensor{da, db}
	})
}

// Mul returns the elementwise product a * b for values of one shape.
func (tp *Tape) Mul(a, b *Var) *Var {
	if !tp.ok(a, b) {
		return nil
	}
	if !slices.Equal(a.Value.shape, b.Value.shape) {
		tp.Fail("mul", fmt.Errorf("shapes %v and %v differ", a.Value.shape, b.Value.shape))
		return nil
	}
	y := tp.alloc("mul", a.Value.shape...)
	if y == nil {
		return nil
	}
	tp.Fail("mul", Mul(tp.s, y, a.Value, b.Value))
	return tp.record(y, []*Var{a, b}, func(g *Tensor) []*Tensor {
		// The inputs' values outlive this backward: an op's output is
		// released only once the backward pass is past its producer.
		var da, db *Tensor
		if a.requiresGrad {
			if da = tp.alloc("mul backward", g.shape...); da != nil {
				tp.Fail("mul backward", Mul(tp.s, da, g, b.Value))
			}
		}
		if b.requiresGrad {
			if db = tp.alloc("mul backward", g.shape...); db != nil {
				tp.Fail("mul backward", Mul(tp.s, db, g, a.Value))
			}
		}
		return []*Tensor{da, db}
	})
}

// Sum returns the sum of all elements of x as a one-element [1] value.
func (tp *Tape) Sum(x *Var) *Var { return tp.reduceAllOp("sum", x, false) }

// Mean returns the mean of all elements of x as a one-element [1] value.
func (tp *Tape) Mean(x *Var) *Var { return tp.reduceAllOp("mean", x, true) }

func (tp *Tape) reduceAllOp(op string, x *Var, mean bool) *Var {
	if !tp.ok(x) {
		return nil
	}
	y := tp.alloc(op, 1)
	if y == nil {
		return nil
	}
	tp.Fail(op, reduceAll(tp.s, y, x.Value, mean))
	alpha := float32(1)
	if mean {
		alpha = 1 / float32(x.Value.Len())
	}
	return tp.record(y, []*Var{x}, func(g *Tensor) []*Tensor {
		// Every element receives the loss gradient (over n for the mean),
		// read from the device.
		dx := tp.alloc(op+" backward", x.Value.shape...)
		if dx != nil {
			tp.Fail(op+" backward", rowsMap{op: rowsBroadcast, y: dx, d: 1, u: rowVec{g, 0}, alpha: alpha}.record(tp.s))
		}
		return []*Tensor{dx}
	})
}

// scaled returns a tape-owned alpha * t.
func (tp *Tape) scaled(op string, t *Tensor, alpha float32) *Tensor {
	y := tp.alloc(op, t.shape...)
	if y != nil {
		tp.Fail(op, Scale(tp.s, y, t, alpha))
	}
	return y
}

// needsGrad reports whether any of vs takes a gradient, so that an op keeps
// what its backward reads only when a backward will run.
func needsGrad(vs ...*Var) bool {
	for _, v := range vs {
		if v != nil && v.requiresGrad {
			return true
		}
	}
	return false
}

// reduceAll records dst[0] = the sum (mean: the mean) of every element of
// the contiguous tensor x. A tensor of rank 2 or more is reduced in two
// stages, its rows first and then the row results, so that each reduced slice
// is short: reduce.go binds a slice over at most a few buffer segments, and a
// GPU gets a workgroup per row instead of one for everything. (The mean of
// the row means is the mean: the rows have one length.)
func reduceAll(s *vk.Stream, dst, x *Tensor, mean bool) error {
	name := "sum"
	run := Sum
	if mean {
		name, run = "mean", Mean
	}
	if dst.Len() != 1 {
		return fmt.Errorf("%s of all elements into a tensor %v: want one element", name, dst.shape)
	}
	one, err := dst.Reshape(1)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	n, cols := x.Len(), x.Len()
	if len(x.shape) >= 2 {
		cols = x.shape[len(x.shape)-1]
	}
	if cols == n || cols == 1 {
		flat, err := x.Reshape(n)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return run(s, one, flat, 0)
	}
	m, err := x.Reshape(n/cols, cols)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	part, err := New(x.Device(), n/cols)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	releaseAfterRun(s, part)
	if err := run(s, part, m, 1); err != nil {
		return err
	}
	return run(s, one, part, 0)
}

// releaseAfterRun frees a scratch tensor once the stream has run. Scratch
// memory is not released through the stream (vk.Stream.Release), where later
// recorded work would reuse it at once: forward work may be followed by host
// uploads into fresh tensors (inputs, targets, a seed gradient), which take
// effect at once and must not land in memory that recorded work still uses.
func releaseAfterRun(s *vk.Stream, t *Tensor) { s.AfterRun(t.Release) }

// scratch allocates a temporary of an op's forward pass, freed once the
// stream has run (releaseAfterRun); nil after an error.
func (tp *Tape) scratch(op string, shape ...int) *Tensor {
	t, err := New(tp.Device(), shape...)
	if err != nil {
		tp.Fail(op, err)
		return nil
	}
	releaseAfterRun(tp.s, t)
	return t
}

// saved allocates a tensor that an op's backward pass reads when keep (the
// backward releases it), or a scratch tensor when no backward will run.
func (tp *Tape) saved(op string, keep bool, shape ...int) *Tensor {
	if keep {
		return tp.alloc(op, shape...)
	}
	return tp.scratch(op, shape...)
}

// rowsGroup is the workgroup size of rows_map.comp.
const rowsGroup = 256

// Operations of rows_map.comp, its specialization constant OP (the shader
// states each formula).
const (
	rowsL2Normalize = iota
	rowsL2NormalizeGrad
	rowsCosine
	rowsCosineGrad
	rowsSoftmaxGrad
	rowsLogSoftmaxGrad
	rowsCrossEntropyGrad
	rowsScaleBy
	rowsBroadcast
)

var rowsNames = [...]string{"l2 normalize", "l2 normalize backward", "cosine similarity", "cosine similarity backward",
	"softmax backward", "log-softmax backward", "cross-entropy backward", "scale by a device value", "broadcast"}

// rowVec is a vector operand of rows_map.comp: one value per row (stride 1)
// or a single value for all rows (stride 0), such as a loss gradient.
type rowVec struct {
	t      *Tensor
	stride int
}

// rowsMap is one recording of rows_map.comp: y = f(a, b, u, v, w, z) over
// contiguous tensors y, a and b of one size, read as rows of d elements (a
// and b nil where the operation does not read them), with per-row vectors u,
// v, w and z (t nil where unused).
type rowsMap struct {
	op         int
	y, a, b    *Tensor
	d          int
	u, v, w, z rowVec
	alpha, eps float32
}

// record splits the elements of y into pieces whose operands each lie in
// one buffer segment: the pieces cut rows anywhere, so a row longer than a
// segment is no obstacle.
func (m rowsMap) record(s *vk.Stream) error {
	name := rowsNames[m.op]
	total := m.y.Len()
	if m.d <= 0 || total%m.d != 0 {
		return fmt.Errorf("%s: %d elements are not rows of %d", name, total, m.d)
	}
	rows := total / m.d
	mats := []operand{{m.y, true}}
	for _, t := range []*Tensor{m.a, m.b} {
		if t != nil {
			mats = append(mats, operand{t, false})
		}
	}
	for _, o := range mats {
		if !o.t.Contiguous() {
			return fmt.Errorf("%s of a strided view %v: make it contiguous first", name, o.t.shape)
		}
		if o.t.Len() != total {
			return fmt.Errorf("%s: tensors %v and %v differ in size", name, m.y.shape, o.t.shape)
		}
	}
	vecs := []rowVec{m.u, m.v, m.w, m.z}
	for _, v := range vecs {
		if v.t == nil {
			continue
		}
		if !v.t.Contiguous() {
			return fmt.Errorf("%s of a strided view %v: make it contiguous first", name, v.t.shape)
		}
		want := rows
		if v.stride == 0 {
			want = 1
		}
		if v.t.Len() != want {
			return fmt.Errorf("%s: a vector %v for %d rows (stride %d)", name, v.t.shape, rows, v.stride)
		}
	}
	// vecRange is the part of a vector the elements [lo, lo+n) read.
	vecRange := func(v rowVec, lo, n int) (first, count int) {
		if v.stride == 0 {
			return 0, 1
		}
		r0, r1 := lo/m.d, (lo+n-1)/m.d
		return r0, r1 - r0 + 1
	}
	pieces, err := split(box{hi: [maxRank]int{total}}, longest, func(b box) bool {
		for _, o := range mats {
			if _, _, ok := o.t.locate(b.lo[0], b.size(0), o.write); !ok {
				return false
			}
		}
		for _, v := range vecs {
			if v.t != nil {
				first, count := vecRange(v, b.lo[0], b.size(0))
				if _, _, ok := v.t.locate(first, count, false); !ok {
					return false
				}
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for _, p := range pieces {
		lo, n := p.lo[0], p.size(0)
		// Bindings a, b, u, v, w, z, y; an unused one repeats a used input.
		args := make([]vk.Arg, 7)
		offs := make([]uint32, 7)
		var spare vk.Arg
		haveSpare := false
		for i, t := range []*Tensor{m.a, m.b} {
			if t != nil {
				args[i], offs[i], _ = t.locate(lo, n, false)
				spare, haveSpare = args[i], true
			}
		}
		strides := make([]uint32, 4)
		for i, v := range vecs {
			if v.t != nil {
				first, count := vecRange(v, lo, n)
				args[2+i], offs[2+i], _ = v.t.locate(first, count, false)
				strides[i] = uint32(v.stride)
				spare, haveSpare = args[2+i], true
			}
		}
		if !haveSpare {
			return fmt.Errorf("%s: no input", name)
		}
		for i, t := range []*Tensor{m.a, m.b, m.u.t, m.v.t, m.w.t, m.z.t} {
			if t == nil {
				args[i] = spare
			}
		}
		args[6], offs[6], _ = m.y.locate(lo, n, true)
		push := Push{}.U32(uint32(n), uint32(m.d), uint32(lo%m.d), offs[0], offs[1], offs[6], offs[2], offs[3], offs[4], offs[5]).
			U32(strides...).F32(m.alpha, m.eps)
		if err := Launch(s, "rows_map", []uint32{rowsGroup, uint32(m.op)}, Grid(ceilDiv(n, rowsGroup)), push, args...); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}
