package layers

import (
	"fmt"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// MSE returns the mean of (a - b)^2 over all elements, as a one-element [1]
// value (F.mse_loss with reduction='mean').
func (tp *Tape) MSE(a, b *Var) *Var {
	const op = "mse"
	if !tp.ok(a, b) {
		return nil
	}
	if !slices.Equal(a.Value.shape, b.Value.shape) {
		tp.Fail(op, fmt.Errorf("shapes %v and %v differ", a.Value.shape, b.Value.shape))
		return nil
	}
	shape := a.Value.shape
	diff, sq, loss := tp.saved(op, needsGrad(a, b), shape...), tp.scratch(op, shape...), tp.alloc(op, 1)
	if diff == nil || sq == nil || loss == nil {
		return nil
	}
	tp.Fail(op, Sub(tp.s, diff, a.Value, b.Value))
	tp.Fail(op, Mul(tp.s, sq, diff, diff))
	tp.Fail(op, reduceAll(tp.s, loss, sq, true))
	alpha := 2 / float32(diff.Len())
	return tp.record(loss, []*Var{a, b}, func(g *Tensor) []*Tensor {
		defer tp.release(diff)
		// d/da = 2 (a - b) g / n, d/db = -d/da; g is read on the device.
		grad := func(v *Var, alpha float32) *Tensor {
			if !v.requiresGrad {
				return nil
			}
			dx := tp.alloc(op+" backward", shape...)
			if dx != nil {
				tp.Fail(op+" backward", rowsMap{op: rowsScaleBy, y: dx, a: diff, d: 1, u: rowVec{g, 0}, alpha: alpha}.record(tp.s))
			}
			return dx
		}
		return []*Tensor{grad(a, alpha), grad(b, -alpha)}
	})
}

// maxClasses bounds the classes of CrossEntropy: the labels reach the
// kernels as float32 values, exact below 2^24.
const maxClasses = 1 << 24

// CrossEntropy returns the mean over the rows of logits [N, K] of
// -log(softmax(row)[label]), as a one-element [1] value (F.cross_entropy
// with reduction='mean'). labels holds N class indices in [0, K); other
// labels, or another count, are an error. The labels are written to the
// device through the stream.
func (tp *Tape) CrossEntropy(logits *Var, labels []int) *Var {
	const op = "cross entropy"
	if !tp.ok(logits) {
		return nil
	}
	x := logits.Value
	n, k, err := rowsOf(op, x)
	if err == nil {
		err = checkLabels(labels, n, k)
	}
	if err != nil {
		tp.Fail(op, err)
		return nil
	}
	keep := needsGrad(logits)
	lab, lse, nll, loss := tp.saved(op, keep, n), tp.saved(op, keep, n), tp.scratch(op, n), tp.alloc(op, 1)
	if lab == nil || lse == nil || nll == nil || loss == nil {
		return nil
	}
	tp.Fail(op, writeLabels(tp.s, lab, labels))
	tp.Fail(op, crossEntropyRows(tp.s, lse, nll, x, lab))
	tp.Fail(op, Mean(tp.s, loss, nll, 0))
	return tp.record(loss, []*Var{logits}, func(g *Tensor) []*Tensor {
		defer tp.release(lab)
		defer tp.release(lse)
		// dx = g (softmax(x) - onehot(label)) / N, softmax = exp(x - lse).
		dx := tp.alloc(op+" backward", n, k)
		if dx != nil {
			tp.Fail(op+" backward", rowsMap{op: rowsCrossEntropyGrad, y: dx, a: x, d: k,
				u: rowVec{lse, 1}, v: rowVec{lab, 1}, w: rowVec{g, 0}, alpha: 1 / float32(n)}.record(tp.s))
		}
		return []*Tensor{dx}
	})
}

// checkLabels checks n class indices for k classes.
func checkLabels(labels []int, n, k int) error {
	if len(labels) != n {
		return fmt.Errorf("%d labels for %d rows", len(labels), n)
	}
	if k > maxClasses {
		return fmt.Errorf("%d classes: at most %d", k, maxClasses)
	}
	for i, l := range labels {
		if l < 0 || l >= k {
			return fmt.Errorf("label %d of row %d is not a class in [0, %d)", l, i, k)
		}
	}
	return nil
}

// crossEntropyRows records, for each row of logits x [N, K] with class
// labels lab [N] (float values), its log-sum-exp lse [N] and its negative
// log-likelihood nll [N] (loss_ce.comp).
func crossEntropyRows(s *vk.Stream, lse, nll, x, lab *Tensor) error {
	n, k := x.shape[0], x.shape[1]
	if !x.Contiguous() {
		return fmt.Errorf("logits are a strided view: make them contiguous first")
	}
	return rowKernel(s, n, k, []*Tensor{x}, nil, func(ts []*Tensor) error {
		x := ts[0]
		wg, ty := reduceSplit(n, k, 1)
		pieces, err := rowPieces(n, []rowOperand{{x, k, false}, {lab, 1, false}, {lse, 1, true}, {nll, 1, true}})
		if err != nil {
			return err
		}
		for _, p := range pieces {
			r0, m := p.lo[0], p.size(0)
			xArg, xOff, _ := x.locate(r0*k, m*k, false)
			lArg, lOff, _ := lab.locate(r0, m, false)
			sArg, sOff, _ := lse.locate(r0, m, true)
			eArg, eOff, _ := nll.locate(r0, m, true)
			if err := Launch(s, "loss_ce", []uint32{uint32(wg), uint32(ty)}, Grid(ceilDiv(m, wg/ty)),
				Push{}.U32(uint32(m), uint32(k), xOff, lOff, sOff, eOff), xArg, lArg, sArg, eArg); err != nil {
				return err
			}
		}
		return nil
	})
}

// labelsPerWrite is how many labels one loss_labels.comp dispatch writes:
// what its 128-byte push-constant block holds besides the count and offset.
const labelsPerWrite = 30

// writeLabels records writing labels into dst [N] as floats. The values
// travel in push constants so that the write is ordered with the recorded
// work: a host upload happens at once, and could land in memory that
// earlier recorded work, released through the stream, still uses when the
// stream runs.
func writeLabels(s *vk.Stream, dst *Tensor, labels []int) error {
	if dst.Len() != len(labels) || !dst.Contiguous() {
		return fmt.Errorf("%d labels into a tensor %v", len(labels), dst.shape)
	}
	for lo := 0; lo < len(labels); {
		// Up to labelsPerWrite labels, fewer where a segment ends.
		n := min(labelsPerWrite, len(labels)-lo)
		arg, off, ok := dst.locate(lo, n, true)
		for !ok && n > 1 {
			n--
			arg, off, ok = dst.locate(lo, n, true)
		}
		if !ok {
			return fmt.Errorf("label %d does not fit a buffer segment", lo)
		}
		vals := make([]uint32, labelsPerWrite)
		for i := range n {
			vals[i] = uint32(labels[lo+i])
		}
		if err := Launch(s, "loss_labels", []uint32{32}, [3]uint32{1, 1, 1},
			Push{}.U32(uint32(n), off).U32(vals...), arg); err != nil {
			return err
		}
		lo += n
	}
	return nil
}
