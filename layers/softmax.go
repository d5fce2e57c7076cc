package layers

import (
	"fmt"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// Modes of softmax_fwd.comp, its specialization constant OP.
const (
	softmaxPlain = iota
	softmaxLog
)

// Softmax records dst = softmax(x) over the last dimension: exp(x - m) /
// sum(exp(x - m)) with m each row's maximum, so no value overflows. x is
// contiguous; dst is contiguous with x's shape and does not overlap x.
func Softmax(s *vk.Stream, dst, x *Tensor) error { return softmaxRows(s, softmaxPlain, dst, x) }

// LogSoftmax records dst = log(softmax(x)) over the last dimension, computed
// as (x - m) - log(sum(exp(x - m))), under the rules of Softmax.
func LogSoftmax(s *vk.Stream, dst, x *Tensor) error { return softmaxRows(s, softmaxLog, dst, x) }

func softmaxRows(s *vk.Stream, mode int, dst, x *Tensor) error {
	name := [...]string{"softmax", "log-softmax"}[mode]
	if len(x.shape) == 0 || !slices.Equal(dst.shape, x.shape) {
		return fmt.Errorf("%s: shapes %v and %v: want one shape of rank 1 or more", name, dst.shape, x.shape)
	}
	if !x.Contiguous() || !dst.Contiguous() {
		return fmt.Errorf("%s of a strided view: make it contiguous first", name)
	}
	if sharesMemory(dst, x) {
		return fmt.Errorf("%s: the result overlaps the input; write it to another tensor", name)
	}
	k := x.shape[len(x.shape)-1]
	rows := x.Len() / k
	err := rowKernel(s, rows, k, []*Tensor{x}, []*Tensor{dst}, func(ts []*Tensor) error {
		x, dst := ts[0], ts[1]
		wg, ty := reduceSplit(rows, k, 1)
		pieces, err := rowPieces(rows, []rowOperand{{x, k, false}, {dst, k, true}})
		if err != nil {
			return err
		}
		for _, p := range pieces {
			r0, n := p.lo[0], p.size(0)
			xArg, xOff, _ := x.locate(r0*k, n*k, false)
			yArg, yOff, _ := dst.locate(r0*k, n*k, true)
			if err := Launch(s, "softmax_fwd", []uint32{uint32(wg), uint32(ty), uint32(mode)}, Grid(ceilDiv(n, wg/ty)),
				Push{}.U32(uint32(n), uint32(k), xOff, yOff), xArg, yArg); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// Softmax returns softmax(x) over the last dimension (rows of [N, K], or of
// any rank), numerically stable.
func (tp *Tape) Softmax(x *Var) *Var {
	const op = "softmax"
	if !tp.ok(x) {
		return nil
	}
	y := tp.alloc(op, x.Value.shape...)
	if y == nil {
		return nil
	}
	tp.Fail(op, Softmax(tp.s, y, x.Value))
	return tp.record(y, []*Var{x}, func(g *Tensor) []*Tensor {
		// dx = y (g - sum(g y)) for each row.
		k := g.shape[len(g.shape)-1]
		rows := g.Len() / k
		dot, tmp, dx := tp.alloc(op, rows), tp.alloc(op, rows, k), tp.alloc(op, g.shape...)
		if dot == nil || tmp == nil || dx == nil {
			return nil
		}
		g2, err := g.Reshape(rows, k)
		if err == nil {
			y2, _ := y.Reshape(rows, k)
			err = rowDot(tp.s, dot, g2, y2, tmp)
		}
		tp.Fail(op+" backward", err)
		tp.release(tmp)
		tp.Fail(op+" backward", rowsMap{op: rowsSoftmaxGrad, y: dx, a: g, b: y, d: k, u: rowVec{dot, 1}}.record(tp.s))
		tp.release(dot)
		return []*Tensor{dx}
	})
}

// LogSoftmax returns log(softmax(x)) over the last dimension (rows of
// [N, K], or of any rank), numerically stable.
func (tp *Tape) LogSoftmax(x *Var) *Var {
	const op = "log-softmax"
	if !tp.ok(x) {
		return nil
	}
	y := tp.alloc(op, x.Value.shape...)
	if y == nil {
		return nil
	}
	tp.Fail(op, LogSoftmax(tp.s, y, x.Value))
	return tp.record(y, []*Var{x}, func(g *Tensor) []*Tensor {
		// dx = g - exp(y) sum(g) for each row.
		k := g.shape[len(g.shape)-1]
		rows := g.Len() / k
		sum, dx := tp.alloc(op, rows), tp.alloc(op, g.shape...)
		if sum == nil || dx == nil {
			return nil
		}
		g2, err := g.Reshape(rows, k)
		if err == nil {
			err = Sum(tp.s, sum, g2, 1)
		}
		tp.Fail(op+" backward", err)
		tp.Fail(op+" backward", rowsMap{op: rowsLogSoftmaxGrad, y: dx, a: g, b: y, d: k, u: rowVec{sum, 1}}.record(tp.s))
		tp.release(sum)
		return []*Tensor{dx}
	})
}

// rowOperand is a tensor read or written by whole rows of width elements
// (width 1 for a value per row).
type rowOperand struct {
	t     *Tensor
	width int
	write bool
}

// rowPieces splits rows [0, rows) into pieces in which every operand's rows
// lie in one buffer segment, for the kernels that take a row per workgroup
// (softmax_fwd.comp, loss_ce.comp). New keeps each row inside a segment where
// one fits, so this cuts between rows.
func rowPieces(rows int, ops []rowOperand) ([]box, error) {
	pieces, err := split(box{hi: [maxRank]int{rows}}, longest, func(b box) bool {
		for _, o := range ops {
			if _, _, ok := o.t.locate(b.lo[0]*o.width, b.size(0)*o.width, o.write); !ok {
				return false
			}
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("a row crosses a buffer segment boundary: %w", err)
	}
	return pieces, nil
}

// rowsInSegments reports whether every row of k elements of t lies inside
// one buffer segment.
func rowsInSegments(t *Tensor, k int) bool {
	_, err := rowPieces(t.Len()/k, []rowOperand{{t, k, false}})
	return err == nil
}

// rowKernel runs fn on ins and outs (contiguous, rows of k elements), the
// tensors in that order. A tensor allocated under another shape (a reshaped
// view) may have rows that cross buffer segments; fn then gets a copy with
// whole rows in segments instead, which New gives wherever a row fits one
// segment (an output's copy is copied back).
func rowKernel(s *vk.Stream, rows, k int, ins, outs []*Tensor, fn func([]*Tensor) error) error {
	ts := make([]*Tensor, 0, len(ins)+len(outs))
	var back [][2]*Tensor // (copy, original) of outputs
	for i, t := range append(append([]*Tensor(nil), ins...), outs...) {
		if rowsInSegments(t, k) {
			ts = append(ts, t)
			continue
		}
		c, err := New(t.Device(), rows, k)
		if err != nil {
			return err
		}
		releaseAfterRun(s, c)
		if i < len(ins) {
			if err := Copy(s, c, reshaped(t, rows, k)); err != nil {
				return err
			}
		} else {
			back = append(back, [2]*Tensor{c, t})
		}
		ts = append(ts, c)
	}
	if err := fn(ts); err != nil {
		return err
	}
	for _, b := range back {
		if err := Copy(s, reshaped(b[1], rows, k), b[0]); err != nil {
			return err
		}
	}
	return nil
}

// reshaped reshapes a contiguous tensor whose size is known to match.
func reshaped(t *Tensor, shape ...int) *Tensor {
	v, err := t.Reshape(shape...)
	if err != nil {
		panic(err)
	}
	return v
}

// sharesMemory reports whether two tensors share any memory.
func sharesMemory(a, b *Tensor) bool {
	return a.buf == b.buf && a.offset < b.offset+b.Len() && b.offset < a.offset+a.Len()
}
