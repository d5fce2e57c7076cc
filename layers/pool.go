package layers

import (
	"fmt"
	"math"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// PoolParams are the window of a 2-D pooling over (H, W): kernel size,
// stride (zero means the kernel size, as PyTorch's default) and zero-based
// padding on each side. ceil_mode is always false.
type PoolParams struct {
	Kernel, Stride, Padding [2]int
}

// poolGroup is the workgroup size of pool_forward.comp and pool_backward.comp.
const poolGroup = 256

// Operations of the pooling kernels, their specialization constant OP.
const (
	poolMax = iota
	poolAvg
)

var poolNames = [...]string{"max pool", "avg pool"}

// poolGeom is a pooling of x viewed as [planes, h, w] into [planes, ho, wo].
type poolGeom struct {
	planes, h, w, ho, wo   int
	kh, kw, sh, sw, ph, pw int
}

// geometry checks p for an input of the given shape as PyTorch does and
// returns the pooling's geometry.
func (p PoolParams) geometry(shape []int) (poolGeom, error) {
	if len(shape) != 4 {
		return poolGeom{}, fmt.Errorf("input of shape %v: want [N, C, H, W]", shape)
	}
	g := poolGeom{planes: shape[0] * shape[1], h: shape[2], w: shape[3],
		kh: p.Kernel[0], kw: p.Kernel[1], sh: p.Stride[0], sw: p.Stride[1], ph: p.Padding[0], pw: p.Padding[1]}
	if g.kh <= 0 || g.kw <= 0 {
		return poolGeom{}, fmt.Errorf("kernel %v: must be positive", p.Kernel)
	}
	if g.sh < 0 || g.sw < 0 {
		return poolGeom{}, fmt.Errorf("stride %v: must not be negative", p.Stride)
	}
	if g.sh == 0 {
		g.sh = g.kh
	}
	if g.sw == 0 {
		g.sw = g.kw
	}
	if g.ph < 0 || g.pw < 0 || 2*g.ph > g.kh || 2*g.pw > g.kw {
		return poolGeom{}, fmt.Errorf("padding %v: must be between 0 and half the kernel %v", p.Padding, p.Kernel)
	}
	g.ho = (g.h+2*g.ph-g.kh)/g.sh + 1
	g.wo = (g.w+2*g.pw-g.kw)/g.sw + 1
	if g.h+2*g.ph < g.kh || g.w+2*g.pw < g.kw {
		return poolGeom{}, fmt.Errorf("input %v padded by %v is smaller than the kernel %v", shape, p.Padding, p.Kernel)
	}
	if int64(g.planes)*int64(g.h)*int64(g.w) >= math.MaxInt32 {
		return poolGeom{}, fmt.Errorf("input %v has 2^31 elements or more", shape)
	}
	return g, nil
}

// outShape is the pooled shape of an input [n, c, h, w].
func (g poolGeom) outShape(shape []int) []int { return []int{shape[0], shape[1], g.ho, g.wo} }

// inRows returns the input rows [lo, hi) that output rows [oh0, oh1) read.
func (g poolGeom) inRows(oh0, oh1 int) (lo, hi int) {
	return max(0, oh0*g.sh-g.ph), min(g.h, (oh1-1)*g.sh-g.ph+g.kh)
}

// outRows returns the output rows [lo, hi) whose windows hold input rows
// [h0, h1); empty (lo >= hi) when no window does.
func (g poolGeom) outRows(h0, h1 int) (lo, hi int) {
	a := h0 + g.ph - g.kh + 1
	if a > 0 {
		lo = ceilDiv(a, g.sh)
	}
	return lo, min(g.ho, (h1-1+g.ph)/g.sh+1)
}

// planeRange is the element range of rows [r0, r1) of planes [q0, q1) of a
// tensor of planes of rows x cols: from row r0 of plane q0 to row r1 - 1 of
// plane q1 - 1 (a box of several planes has all their rows).
func planeRange(q0, q1, r0, r1, rows, cols int) (first, count int) {
	first = (q0*rows + r0) * cols
	return first, ((q1-1)*rows+r1)*cols - first
}

// MaxPool2d records y = torch's max_pool2d(x) for x [N, C, H, W] (padding
// counts as -inf, ceil_mode false). Its backward pass routes each output
// gradient to the window's first maximum, as PyTorch does.
func (tp *Tape) MaxPool2d(x *Var, p PoolParams) *Var { return tp.pool2d(poolMax, x, p) }

// AvgPool2d records y = torch's avg_pool2d(x) for x [N, C, H, W]
// (count_include_pad true, ceil_mode false).
func (tp *Tape) AvgPool2d(x *Var, p PoolParams) *Var { return tp.pool2d(poolAvg, x, p) }

func (tp *Tape) pool2d(op int, x *Var, p PoolParams) *Var {
	if !tp.ok(x) {
		return nil
	}
	name := poolNames[op]
	g, err := p.geometry(x.Value.shape)
	if err != nil {
		tp.Fail(name, err)
		return nil
	}
	y := tp.alloc(name, g.outShape(x.Value.shape)...)
	if y == nil {
		return nil
	}
	var idx *Tensor
	if op == poolMax && x.requiresGrad {
		if idx = tp.alloc(name, y.shape...); idx == nil {
			return nil
		}
	}
	if err := poolForward(tp.s, op, g, y, x.Value, idx); err != nil {
		tp.Fail(name, err)
		return nil
	}
	return tp.record(y, []*Var{x}, func(gy *Tensor) []*Tensor {
		defer tp.release(idx)
		dx := tp.alloc(name+" backward", x.Value.shape...)
		if dx != nil {
			tp.Fail(name+" backward", poolBackward(tp.s, op, g, dx, gy, idx))
		}
		return []*Tensor{dx}
	})
}

// GlobalAvgPool records the mean of each plane of x [N, C, H, W]: y [N, C],
// adaptive average pooling to 1x1 and a flatten (ResNet's head).
func (tp *Tape) GlobalAvgPool(x *Var) *Var {
	if !tp.ok(x) {
		return nil
	}
	const name = "global avg pool"
	sh := x.Value.shape
	if len(sh) != 4 {
		tp.Fail(name, fmt.Errorf("input of shape %v: want [N, C, H, W]", sh))
		return nil
	}
	y := tp.alloc(name, sh[0], sh[1])
	if y == nil {
		return nil
	}
	if err := GlobalAvgPool(tp.s, y, x.Value); err != nil {
		tp.Fail(name, err)
		return nil
	}
	return tp.record(y, []*Var{x}, func(gy *Tensor) []*Tensor {
		// The backward of an average pool whose one window is the plane.
		g := poolGeom{planes: sh[0] * sh[1], h: sh[2], w: sh[3], ho: 1, wo: 1, kh: sh[2], kw: sh[3], sh: 1, sw: 1}
		dx := tp.alloc(name+" backward", sh...)
		if dx != nil {
			g4, err := gy.Reshape(sh[0], sh[1], 1, 1)
			if err == nil {
				err = poolBackward(tp.s, poolAvg, g, dx, g4, nil)
			}
			tp.Fail(name+" backward", err)
		}
		return []*Tensor{dx}
	})
}

// MaxPool2d records y = torch's max_pool2d(x) for contiguous x [N, C, H, W]
// and y [N, C, Ho, Wo], without autograd.
func MaxPool2d(s *vk.Stream, y, x *Tensor, p PoolParams) error { return pool2d(s, poolMax, y, x, p) }

// AvgPool2d records y = torch's avg_pool2d(x) (count_include_pad) for
// contiguous x [N, C, H, W] and y [N, C, Ho, Wo], without autograd.
func AvgPool2d(s *vk.Stream, y, x *Tensor, p PoolParams) error { return pool2d(s, poolAvg, y, x, p) }

func pool2d(s *vk.Stream, op int, y, x *Tensor, p PoolParams) error {
	g, err := p.geometry(x.shape)
	if err != nil {
		return fmt.Errorf("%s: %w", poolNames[op], err)
	}
	if want := g.outShape(x.shape); !slices.Equal(y.shape, want) {
		return fmt.Errorf("%s: output %v for input %v, want %v", poolNames[op], y.shape, x.shape, want)
	}
	return poolForward(s, op, g, y, x, nil)
}

// GlobalAvgPool records y [N, C] = the mean of each plane of contiguous x
// [N, C, H, W] (Mean over the flattened plane, to a few ulp).
func GlobalAvgPool(s *vk.Stream, y, x *Tensor) error {
	sh := x.shape
	if len(sh) != 4 {
		return fmt.Errorf("global avg pool: input of shape %v: want [N, C, H, W]", sh)
	}
	flat, err := x.Reshape(sh[0], sh[1], sh[2]*sh[3])
	if err != nil {
		return fmt.Errorf("global avg pool: %w", err)
	}
	if err := Mean(s, y, flat, 2); err != nil {
		return fmt.Errorf("global avg pool: %w", err)
	}
	return nil
}

// magic returns divMagic(d) as the two push constants of fastdiv.
func magic(d int) []uint32 {
	m, l := divMagic(uint32(d))
	return []uint32{m, l}
}

// window2 binds elements [first, first+count) of t for a kernel that reads
// them through two bindings: the first segment from element off, the second
// (the same one when all lie in one) from its start, holding the elements
// from end on (end is 2^32 - 1 when one segment holds all).
func window2(t *Tensor, first, count int) (args [2]vk.Arg, off, end uint32, ok bool) {
	w, ok := bindWindow(t, first, count)
	if !ok || len(w.args) > 2 {
		return args, 0, 0, false
	}
	args[0], args[1], off, end = w.args[0], w.args[len(w.args)-1], w.off, math.MaxUint32
	if len(w.args) == 2 {
		end = w.ends[0]
	}
	return args, off, end, true
}

// poolForward records pool_forward.comp over boxes of (plane, output row)
// whose input rows lie in at most two buffer segments and whose outputs and
// indices (idx, unless nil) each lie in one.
func poolForward(s *vk.Stream, op int, g poolGeom, y, x, idx *Tensor) error {
	for _, t := range []*Tensor{x, y, idx} {
		if t != nil && !t.Contiguous() {
			return fmt.Errorf("%s of a strided view %v: make it contiguous first", poolNames[op], t.shape)
		}
	}
	ranges := func(b box) (xf, xn, yf, yn int) {
		r0, r1 := g.inRows(b.lo[1], b.hi[1])
		xf, xn = planeRange(b.lo[0], b.hi[0], r0, r1, g.h, g.w)
		yf, yn = planeRange(b.lo[0], b.hi[0], b.lo[1], b.hi[1], g.ho, g.wo)
		return
	}
	pieces, err := split(box{hi: [maxRank]int{g.planes, g.ho}}, outerFirst, func(b box) bool {
		xf, xn, yf, yn := ranges(b)
		if _, _, _, ok := window2(x, xf, xn); !ok {
			return false
		}
		if _, _, ok := y.locate(yf, yn, true); !ok {
			return false
		}
		if idx != nil {
			if _, _, ok := idx.locate(yf, yn, true); !ok {
				return false
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("%s: %w", poolNames[op], err)
	}
	for _, b := range pieces {
		xf, xn, yf, yn := ranges(b)
		xArgs, xOff, xEnd, _ := window2(x, xf, xn)
		yArg, yOff, _ := y.locate(yf, yn, true)
		iArg, iOff := yArg, yOff
		if idx != nil {
			iArg, iOff, _ = idx.locate(yf, yn, true)
		}
		r0, _ := g.inRows(b.lo[1], b.hi[1])
		planes, rows := b.size(0), b.size(1)
		push := Push{}.U32(uint32(planes), uint32(rows)).I32(b.lo[1], r0, g.h, g.w, g.wo, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw).
			U32(xOff, xEnd, yOff, iOff).U32(magic(g.wo)...).U32(magic(rows)...)
		if err := Launch(s, "pool_forward", []uint32{poolGroup, uint32(op), specFlag(idx != nil)},
			Grid(ceilDiv(planes*rows*g.wo, poolGroup)), push, xArgs[0], xArgs[1], yArg, iArg); err != nil {
			return fmt.Errorf("%s: %w", poolNames[op], err)
		}
	}
	return nil
}

// poolBackward records pool_backward.comp over boxes of (plane, input row)
// whose gradients lie in one buffer segment and whose output gradients and
// indices each lie in at most two. idx (the argmax of max pooling) is nil
// for average pooling.
func poolBackward(s *vk.Stream, op int, g poolGeom, dx, dy, idx *Tensor) error {
	name := poolNames[op] + " backward"
	for _, t := range []*Tensor{dx, dy, idx} {
		if t != nil && !t.Contiguous() {
			return fmt.Errorf("%s of a strided view %v: make it contiguous first", name, t.shape)
		}
	}
	if op == poolMax && idx == nil {
		return fmt.Errorf("%s: no indices", name)
	}
	// The output rows [o0, ...) a box reads; a box that no window reaches
	// binds one output (row 0 of its first plane) that it does not read.
	ranges := func(b box) (xf, xn, o0, yf, yn int) {
		xf, xn = planeRange(b.lo[0], b.hi[0], b.lo[1], b.hi[1], g.h, g.w)
		o0, o1 := g.outRows(b.lo[1], b.hi[1])
		if o0 >= o1 {
			return xf, xn, 0, b.lo[0] * g.ho * g.wo, 1
		}
		yf, yn = planeRange(b.lo[0], b.hi[0], o0, o1, g.ho, g.wo)
		return
	}
	pieces, err := split(box{hi: [maxRank]int{g.planes, g.h}}, outerFirst, func(b box) bool {
		xf, xn, _, yf, yn := ranges(b)
		if _, _, ok := dx.locate(xf, xn, true); !ok {
			return false
		}
		if _, _, _, ok := window2(dy, yf, yn); !ok {
			return false
		}
		if idx != nil {
			if _, _, _, ok := window2(idx, yf, yn); !ok {
				return false
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for _, b := range pieces {
		xf, xn, o0, yf, yn := ranges(b)
		dxArg, dxOff, _ := dx.locate(xf, xn, true)
		dyArgs, dyOff, dyEnd, _ := window2(dy, yf, yn)
		iArgs, iOff, iEnd := dyArgs, dyOff, dyEnd
		if idx != nil {
			iArgs, iOff, iEnd, _ = window2(idx, yf, yn)
		}
		planes, rows := b.size(0), b.size(1)
		push := Push{}.U32(uint32(planes), uint32(rows)).I32(b.lo[1], o0, g.w, g.ho, g.wo, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw).
			U32(dxOff, dyOff, dyEnd, iOff, iEnd).U32(magic(g.w)...).U32(magic(rows)...).U32(magic(g.sh)...).U32(magic(g.sw)...)
		if err := Launch(s, "pool_backward", []uint32{poolGroup, uint32(op)},
			Grid(ceilDiv(planes*rows*g.w, poolGroup)), push, dyArgs[0], dyArgs[1], iArgs[0], iArgs[1], dxArg); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}
