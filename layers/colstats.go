package layers

import "fmt"

// Column statistics of a batch of embeddings [N, D] (rows are samples,
// columns features), the pieces of VICReg's variance and covariance terms,
// composed from the reduction, elementwise and bias kernels.

// columns checks that x is [N, D] and returns N and D.
func (tp *Tape) columns(op string, x *Var) (n, d int, ok bool) {
	s := x.Value.shape
	if len(s) != 2 {
		tp.Fail(op, fmt.Errorf("value of shape %v: want [N, D]", s))
		return 0, 0, false
	}
	return s[0], s[1], true
}

// centre records y = x - the mean of each column of x [N, D].
func (tp *Tape) centre(op string, y, x *Tensor) {
	m := tp.scratch(op, x.shape[1])
	if m == nil {
		return
	}
	tp.Fail(op, Mean(tp.s, m, x, 0))
	tp.Fail(op, Scale(tp.s, m, m, -1))
	tp.Fail(op, Copy(tp.s, y, x))
	tp.Fail(op, AddBias(tp.s, y, m))
}

// broadcastRows records y[i, j] = v[j] for every row i of y [N, D].
func (tp *Tape) broadcastRows(op string, y, v *Tensor) {
	tp.Fail(op, Fill(tp.s, y, 0))
	tp.Fail(op, AddBias(tp.s, y, v))
}

// CenterColumns returns x [N, D] with each column's mean subtracted
// (x - x.mean(dim=0)). Its backward centres the gradient the same way.
func (tp *Tape) CenterColumns(x *Var) *Var {
	const op = "center columns"
	if !tp.ok(x) {
		return nil
	}
	if _, _, ok := tp.columns(op, x); !ok {
		return nil
	}
	y := tp.alloc(op, x.Value.shape...)
	if y == nil {
		return nil
	}
	tp.centre(op, y, x.Value)
	return tp.record(y, []*Var{x}, func(g *Tensor) []*Tensor {
		dx := tp.alloc(op+" backward", g.shape...)
		if dx != nil {
			tp.centre(op+" backward", dx, g)
		}
		return []*Tensor{dx}
	})
}

// SumColumns returns the sum of each column of x [N, D] as a [D] value
// (x.sum(dim=0)). Its backward gives every row the output's gradient.
func (tp *Tape) SumColumns(x *Var) *Var {
	const op = "sum columns"
	if !tp.ok(x) {
		return nil
	}
	_, d, ok := tp.columns(op, x)
	if !ok {
		return nil
	}
	y := tp.alloc(op, d)
	if y == nil {
		return nil
	}
	tp.Fail(op, Sum(tp.s, y, x.Value, 0))
	return tp.record(y, []*Var{x}, func(g *Tensor) []*Tensor {
		dx := tp.alloc(op+" backward", x.Value.shape...)
		if dx != nil {
			tp.broadcastRows(op+" backward", dx, g)
		}
		return []*Tensor{dx}
	})
}

// ColumnStd returns sqrt(var + eps) of each column of x [N, D] as a [D]
// value, var the unbiased variance (torch.sqrt(x.var(dim=0) + eps), VICReg's
// std term). The square root is exp(log(v)/2) on the device (there is no
// square-root kernel): a few float32 ulp relative for any positive v. The
// gradient of x[i, j] is g[j] (x[i, j] - mean_j) / ((N-1) std_j).
func (tp *Tape) ColumnStd(x *Var, eps float64) *Var {
	const op = "column std"
	if !tp.ok(x) {
		return nil
	}
	n, d, ok := tp.columns(op, x)
	if !ok {
		return nil
	}
	y := tp.alloc(op, d)
	v := tp.scratch(op, d)
	e := tp.scratch(op, d)
	keep := needsGrad(x)
	inv := tp.saved(op, keep, d) // 1/std, for the backward pass
	if y == nil || v == nil || e == nil || inv == nil {
		return nil
	}
	tp.Fail(op, Variance(tp.s, v, x.Value, 0, 1))
	tp.Fail(op, Fill(tp.s, e, float32(eps)))
	tp.Fail(op, Add(tp.s, v, v, e))
	tp.Fail(op, Log(tp.s, v, v))
	tp.Fail(op, Scale(tp.s, e, v, 0.5))
	tp.Fail(op, Exp(tp.s, y, e))
	tp.Fail(op, Scale(tp.s, e, v, -0.5))
	tp.Fail(op, Exp(tp.s, inv, e))
	out := tp.record(y, []*Var{x}, func(g *Tensor) []*Tensor {
		const bop = op + " backward"
		u := tp.scratch(bop, d)
		xc := tp.scratch(bop, n, d)
		dx := tp.alloc(bop, n, d)
		if u == nil || xc == nil || dx == nil {
			return []*Tensor{dx}
		}
		tp.Fail(bop, Mul(tp.s, u, g, inv))
		tp.Fail(bop, Scale(tp.s, u, u, 1/float32(n-1)))
		tp.centre(bop, xc, x.Value)
		tp.broadcastRows(bop, dx, u)
		tp.Fail(bop, Mul(tp.s, dx, dx, xc))
		tp.release(inv)
		return []*Tensor{dx}
	})
	return out
}

// Affine returns alpha*x + beta elementwise (VICReg's 1 - std is
// Affine(std, -1, 1)).
func (tp *Tape) Affine(x *Var, alpha, beta float32) *Var {
	const op = "affine"
	if !tp.ok(x) {
		return nil
	}
	y := tp.alloc(op, x.Value.shape...)
	if y == nil {
		return nil
	}
	tp.Fail(op, Fill(tp.s, y, beta))
	tp.Fail(op, Axpy(tp.s, y, alpha, x.Value))
	return tp.record(y, []*Var{x}, func(g *Tensor) []*Tensor {
		return []*Tensor{tp.scaled(op+" backward", g, alpha)}
	})
}
