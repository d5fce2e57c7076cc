package layers

import (
	"fmt"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// The eps of PyTorch's defaults: F.normalize clamps the norm at 1e-12,
// F.cosine_similarity at 1e-8.
const (
	normalizeEps = 1e-12
	cosineEps    = 1e-8
)

// L2Normalize records dst = each row of x [N, D] divided by max(its 2-norm,
// 1e-12), as F.normalize(x, dim=1). dst is contiguous with x's shape and may
// be x. The rows' sums of squares come from reduce.go's Sum (compensated), so
// the norms hold a few ulp.
func L2Normalize(s *vk.Stream, dst, x *Tensor) error {
	n, d, err := rowsOf("l2 normalize", x)
	if err != nil {
		return err
	}
	if !slices.Equal(dst.shape, x.shape) {
		return fmt.Errorf("l2 normalize: shapes %v and %v differ", dst.shape, x.shape)
	}
	ss, tmp, err := newScratch(x.Device(), n, d)
	if err != nil {
		return fmt.Errorf("l2 normalize: %w", err)
	}
	releaseAfterRun(s, ss)
	releaseAfterRun(s, tmp)
	if err := rowDot(s, ss, x, x, tmp); err != nil {
		return fmt.Errorf("l2 normalize: %w", err)
	}
	return rowsMap{op: rowsL2Normalize, y: dst, a: x, d: d, u: rowVec{ss, 1}, eps: normalizeEps}.record(s)
}

// CosineSimilarity records dst[i] = the cosine of rows i of a and b [N, D]
// with PyTorch 1.13's F.cosine_similarity(a, b, dim=1, eps=1e-8): the dot
// product over max(||a_i||, eps) * max(||b_i||, eps). dst is contiguous [N].
func CosineSimilarity(s *vk.Stream, dst, a, b *Tensor) error {
	n, d, err := rowsOf("cosine similarity", a)
	if err != nil {
		return err
	}
	if !slices.Equal(a.shape, b.shape) || dst.Len() != n || len(dst.shape) != 1 {
		return fmt.Errorf("cosine similarity of %v and %v into %v: want two [N, D] and an [N]", a.shape, b.shape, dst.shape)
	}
	dots, err := New(a.Device(), 3, n)
	if err != nil {
		return fmt.Errorf("cosine similarity: %w", err)
	}
	releaseAfterRun(s, dots)
	tmp, err := New(a.Device(), n, d)
	if err != nil {
		return fmt.Errorf("cosine similarity: %w", err)
	}
	releaseAfterRun(s, tmp)
	ab, aa, bb := dots.Narrow(0, 0, 1), dots.Narrow(0, 1, 1), dots.Narrow(0, 2, 1)
	if err := cosineDots(s, ab, aa, bb, a, b, tmp); err != nil {
		return fmt.Errorf("cosine similarity: %w", err)
	}
	return rowsMap{op: rowsCosine, y: dst, a: ab, d: 1, u: rowVec{aa, 1}, v: rowVec{bb, 1}, eps: cosineEps}.record(s)
}

// L2Normalize returns each row of x [N, D] divided by max(its 2-norm,
// 1e-12), as F.normalize(x, dim=1). Where a row's norm is below 1e-12 the
// clamp passes no gradient to the norm, as in PyTorch: that row's gradient
// is the output gradient over 1e-12.
func (tp *Tape) L2Normalize(x *Var) *Var {
	const op = "l2 normalize"
	if !tp.ok(x) {
		return nil
	}
	n, d, err := rowsOf(op, x.Value)
	if err != nil {
		tp.Fail(op, err)
		return nil
	}
	ss, tmp, y := tp.saved(op, needsGrad(x), n), tp.scratch(op, n, d), tp.alloc(op, n, d)
	if ss == nil || tmp == nil || y == nil {
		return nil
	}
	tp.Fail(op, rowDot(tp.s, ss, x.Value, x.Value, tmp))
	tp.Fail(op, rowsMap{op: rowsL2Normalize, y: y, a: x.Value, d: d, u: rowVec{ss, 1}, eps: normalizeEps}.record(tp.s))
	return tp.record(y, []*Var{x}, func(g *Tensor) []*Tensor {
		defer tp.release(ss)
		// dx = (g - y (y . g)) / ||x|| for each row.
		dot, tmp, dx := tp.alloc(op, n), tp.alloc(op, n, d), tp.alloc(op, n, d)
		if dot == nil || tmp == nil || dx == nil {
			return nil
		}
		tp.Fail(op+" backward", rowDot(tp.s, dot, g, y, tmp))
		tp.release(tmp)
		tp.Fail(op+" backward", rowsMap{op: rowsL2NormalizeGrad, y: dx, a: g, b: y, d: d,
			u: rowVec{ss, 1}, v: rowVec{dot, 1}, eps: normalizeEps}.record(tp.s))
		tp.release(dot)
		return []*Tensor{dx}
	})
}

// CosineSimilarity returns the cosine of each pair of rows of a and b [N, D]
// as an [N] value, with PyTorch 1.13's F.cosine_similarity(a, b, dim=1,
// eps=1e-8): a_i . b_i / (max(||a_i||, eps) * max(||b_i||, eps)). As there,
// the clamps are made without a gradient: where a norm is clamped, its
// gradient is still taken as that of the norm (valued eps).
func (tp *Tape) CosineSimilarity(a, b *Var) *Var {
	const op = "cosine similarity"
	if !tp.ok(a, b) {
		return nil
	}
	n, d, err := rowsOf(op, a.Value)
	if err != nil {
		tp.Fail(op, err)
		return nil
	}
	if !slices.Equal(a.Value.shape, b.Value.shape) {
		tp.Fail(op, fmt.Errorf("shapes %v and %v differ", a.Value.shape, b.Value.shape))
		return nil
	}
	keep := needsGrad(a, b)
	ab, aa, bb := tp.scratch(op, n), tp.saved(op, keep, n), tp.saved(op, keep, n)
	tmp, y := tp.scratch(op, n, d), tp.alloc(op, n)
	if ab == nil || aa == nil || bb == nil || tmp == nil || y == nil {
		return nil
	}
	tp.Fail(op, cosineDots(tp.s, ab, aa, bb, a.Value, b.Value, tmp))
	tp.Fail(op, rowsMap{op: rowsCosine, y: y, a: ab, d: 1, u: rowVec{aa, 1}, v: rowVec{bb, 1}, eps: cosineEps}.record(tp.s))
	return tp.record(y, []*Var{a, b}, func(g *Tensor) []*Tensor {
		defer tp.release(aa)
		defer tp.release(bb)
		// d cos / d a = g (b / (na nb) - cos a / na^2), and the same with
		// a and b exchanged.
		grad := func(self, other *Var, ssSelf, ssOther *Tensor) *Tensor {
			if !self.requiresGrad {
				return nil
			}
			dx := tp.alloc(op+" backward", n, d)
			if dx != nil {
				tp.Fail(op+" backward", rowsMap{op: rowsCosineGrad, y: dx, a: self.Value, b: other.Value, d: d,
					u: rowVec{ssSelf, 1}, v: rowVec{ssOther, 1}, w: rowVec{g, 1}, z: rowVec{y, 1}, eps: cosineEps}.record(tp.s))
			}
			return dx
		}
		return []*Tensor{grad(a, b, aa, bb), grad(b, a, bb, aa)}
	})
}

// rowsOf returns the rows and columns of a 2-D tensor.
func rowsOf(op string, t *Tensor) (n, d int, err error) {
	if len(t.shape) != 2 {
		return 0, 0, fmt.Errorf("%s of a tensor %v: want [N, D]", op, t.shape)
	}
	return t.shape[0], t.shape[1], nil
}

// newScratch allocates a row vector [n] and a matrix [n, d].
func newScratch(dev *vk.Device, n, d int) (vec, mat *Tensor, err error) {
	if vec, err = New(dev, n); err != nil {
		return nil, nil, err
	}
	if mat, err = New(dev, n, d); err != nil {
		vec.Release()
		return nil, nil, err
	}
	return vec, mat, nil
}

// rowDot records dst[i] = sum_j a[i, j] * b[i, j] for [N, D] tensors, through
// tmp [N, D] and reduce.go's row sum.
func rowDot(s *vk.Stream, dst, a, b, tmp *Tensor) error {
	if err := Mul(s, tmp, a, b); err != nil {
		return err
	}
	n := tmp.shape[0]
	row, err := dst.Reshape(n)
	if err != nil {
		return err
	}
	return Sum(s, row, tmp, 1)
}

// cosineDots records the row dot products a.b, a.a and b.b.
func cosineDots(s *vk.Stream, ab, aa, bb, a, b, tmp *Tensor) error {
	for _, p := range []struct{ dst, x, y *Tensor }{{ab, a, b}, {aa, a, a}, {bb, b, b}} {
		if err := rowDot(s, p.dst, p.x, p.y, tmp); err != nil {
			return err
		}
	}
	return nil
}
