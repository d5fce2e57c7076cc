package layers

import (
	"fmt"
	"slices"
)

// Reshape returns x with another shape of the same number of elements; one
// dimension may be -1, inferred from the others (as in torch.reshape). A
// contiguous value is reshaped as a view of its memory, anything else is
// copied first. The gradient is reshaped back.
//
// The view shares its memory with x's value: it lives as long as that does,
// so keep x (Tape.Keep) to read the result after Backward.
func (tp *Tape) Reshape(x *Var, shape ...int) *Var {
	if !tp.ok(x) {
		return nil
	}
	full, err := inferShape(x.Value.Len(), shape)
	if err != nil {
		tp.Fail("reshape", fmt.Errorf("%v to %v: %w", x.Value.shape, shape, err))
		return nil
	}
	from := x.Value.Shape()
	var y *Tensor
	if x.Value.Contiguous() {
		y, err = x.Value.Reshape(full...)
		tp.Fail("reshape", err)
	} else {
		if y = tp.alloc("reshape", full...); y == nil {
			return nil
		}
		yv, err := y.Reshape(from...)
		if err == nil {
			err = Copy(tp.s, yv, x.Value)
		}
		tp.Fail("reshape", err)
	}
	if y == nil {
		return nil
	}
	return tp.record(y, []*Var{x}, func(g *Tensor) []*Tensor {
		dx := tp.alloc("reshape backward", from...)
		if dx != nil {
			gv, err := g.Reshape(from...)
			if err == nil {
				err = Copy(tp.s, dx, gv)
			}
			tp.Fail("reshape backward", err)
		}
		return []*Tensor{dx}
	})
}

// inferShape resolves a -1 in shape for a tensor of n elements.
func inferShape(n int, shape []int) ([]int, error) {
	full := append([]int(nil), shape...)
	known, free := 1, -1
	for i, s := range full {
		switch {
		case s == -1 && free < 0:
			free = i
		case s <= 0:
			return nil, fmt.Errorf("dimension %d is %d: want positive sizes and at most one -1", i, s)
		default:
			known *= s
		}
	}
	if free >= 0 {
		if n%known != 0 {
			return nil, fmt.Errorf("%d elements do not divide into %v", n, shape)
		}
		full[free] = n / known
		known = n
	}
	if known != n {
		return nil, fmt.Errorf("%d elements do not fill %v", n, shape)
	}
	return full, nil
}

// Flatten returns x [N, ...] as [N, rest]: the features of each sample in
// one row (after global pooling, before a Linear). It is a Reshape.
func (tp *Tape) Flatten(x *Var) *Var {
	if !tp.ok(x) {
		return nil
	}
	if len(x.Value.shape) == 0 {
		tp.Fail("flatten", fmt.Errorf("a tensor without dimensions"))
		return nil
	}
	return tp.Reshape(x, x.Value.shape[0], -1)
}

// Concat joins values along dimension 0; their other dimensions must agree.
// It puts the two augmented views of a batch into one batch; each input's
// gradient is its part of the output's.
func (tp *Tape) Concat(xs ...*Var) *Var {
	if len(xs) == 0 {
		tp.Fail("concat", fmt.Errorf("nothing to concatenate"))
		return nil
	}
	if !tp.ok(xs...) {
		return nil
	}
	rest := xs[0].Value.shape
	if len(rest) == 0 {
		tp.Fail("concat", fmt.Errorf("a tensor without dimensions"))
		return nil
	}
	rest = rest[1:]
	rows := 0
	for _, x := range xs {
		if len(x.Value.shape) == 0 || !slices.Equal(x.Value.shape[1:], rest) {
			tp.Fail("concat", fmt.Errorf("shapes %v and %v differ beyond dimension 0", xs[0].Value.shape, x.Value.shape))
			return nil
		}
		rows += x.Value.shape[0]
	}
	y := tp.alloc("concat", append([]int{rows}, rest...)...)
	if y == nil {
		return nil
	}
	starts := make([]int, len(xs))
	at := 0
	for i, x := range xs {
		starts[i] = at
		n := x.Value.shape[0]
		tp.Fail("concat", Copy(tp.s, y.Narrow(0, at, n), x.Value))
		at += n
	}
	return tp.record(y, xs, func(g *Tensor) []*Tensor {
		grads := make([]*Tensor, len(xs))
		for i, x := range xs {
			if !x.requiresGrad {
				continue
			}
			n := x.Value.shape[0]
			if grads[i] = tp.alloc("concat backward", x.Value.shape...); grads[i] != nil {
				tp.Fail("concat backward", Copy(tp.s, grads[i], g.Narrow(0, starts[i], n)))
			}
		}
		return grads
	})
}

// Split cuts x along dimension 0 into parts of the given sizes, which must
// add up to x's first dimension: the inverse of Concat. The parts are views
// of x's value (so keep x, not a part, to read one after Backward); the
// gradient of x has each part's gradient in its rows, and zeros in the rows
// of parts that took none.
func (tp *Tape) Split(x *Var, sizes ...int) []*Var {
	if !tp.ok(x) {
		return nil
	}
	shape := x.Value.Shape()
	total := 0
	for _, n := range sizes {
		if n <= 0 {
			tp.Fail("split", fmt.Errorf("sizes %v: want positive sizes", sizes))
			return nil
		}
		total += n
	}
	if len(shape) == 0 || total != shape[0] {
		tp.Fail("split", fmt.Errorf("a tensor %v into parts of %v rows", shape, sizes))
		return nil
	}
	parts := make([]*Var, len(sizes))
	start := 0
	for i, n := range sizes {
		at := start
		parts[i] = tp.record(x.Value.Narrow(0, at, n), []*Var{x}, func(g *Tensor) []*Tensor {
			dx := tp.alloc("split backward", shape...)
			if dx == nil {
				return nil
			}
			if at > 0 {
				tp.Fail("split backward", Fill(tp.s, dx.Narrow(0, 0, at), 0))
			}
			tp.Fail("split backward", Copy(tp.s, dx.Narrow(0, at, n), g))
			if end := at + n; end < shape[0] {
				tp.Fail("split backward", Fill(tp.s, dx.Narrow(0, end, shape[0]-end), 0))
			}
			return []*Tensor{dx}
		})
		start += n
	}
	return parts
}
