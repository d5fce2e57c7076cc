package layers

import "fmt"

// MatMul returns op(a) op(b) for 2-D values, where op(x) is x or, when its
// flag is set, x transposed: torch.matmul with optional .T on either side.
// VICReg's covariance x^T x is MatMul(x, x, true, false). a and b may be the
// same Var; its gradient is then the sum of both parts.
func (tp *Tape) MatMul(a, b *Var, transA, transB bool) *Var {
	const op = "matmul"
	if !tp.ok(a, b) {
		return nil
	}
	as, bs := a.Value.shape, b.Value.shape
	if len(as) != 2 || len(bs) != 2 {
		tp.Fail(op, fmt.Errorf("shapes %v and %v: want 2-D values", as, bs))
		return nil
	}
	m, k := as[0], as[1]
	if transA {
		m, k = k, m
	}
	kb, n := bs[0], bs[1]
	if transB {
		kb, n = n, kb
	}
	if k != kb {
		tp.Fail(op, fmt.Errorf("shapes %v (transposed %v) and %v (transposed %v) do not chain", as, transA, bs, transB))
		return nil
	}
	y := tp.alloc(op, m, n)
	if y == nil {
		return nil
	}
	tp.Fail(op, Gemm(tp.s, 1, a.Value, transA, b.Value, transB, 0, y))
	return tp.record(y, []*Var{a, b}, func(g *Tensor) []*Tensor {
		// With C = op(A) op(B): d op(A) = G op(B)^T and d op(B) = op(A)^T G,
		// each transposed back where its operand entered transposed.
		var da, db *Tensor
		if a.requiresGrad {
			if da = tp.alloc(op+" backward", as...); da != nil {
				if transA {
					tp.Fail(op+" backward", Gemm(tp.s, 1, b.Value, transB, g, true, 0, da))
				} else {
					tp.Fail(op+" backward", Gemm(tp.s, 1, g, false, b.Value, !transB, 0, da))
				}
			}
		}
		if b.requiresGrad {
			if db = tp.alloc(op+" backward", bs...); db != nil {
				if transB {
					tp.Fail(op+" backward", Gemm(tp.s, 1, g, true, a.Value, transA, 0, db))
				} else {
					tp.Fail(op+" backward", Gemm(tp.s, 1, a.Value, !transA, g, false, 0, db))
				}
			}
		}
		return []*Tensor{da, db}
	})
}
