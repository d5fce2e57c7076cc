package layers

// Relu returns max(x, 0). Its backward passes the gradient where the output
// is positive (PyTorch's convention: zero at x = 0).
func (tp *Tape) Relu(x *Var) *Var {
	if !tp.ok(x) {
		return nil
	}
	y := tp.alloc("relu", x.Value.shape...)
	if y == nil {
		return nil
	}
	tp.Fail("relu", Relu(tp.s, y, x.Value))
	return tp.record(y, []*Var{x}, func(g *Tensor) []*Tensor {
		dx := tp.alloc("relu backward", g.shape...)
		if dx != nil {
			tp.Fail("relu backward", binaryOp(tp.s, binReluGrad, dx, g, y, 0))
		}
		return []*Tensor{dx}
	})
}

// Add returns a + b for values of one shape (the residual connection).
func (tp *Tape) Add(a, b *Var) *Var {
	if !tp.ok(a, b) {
		return nil
	}
	y := tp.alloc("add", a.Value.shape...)
	if y == nil {
		return nil
	}
	tp.Fail("add", Add(tp.s, y, a.Value, b.Value))
	return tp.record(y, []*Var{a, b}, func(g *Tensor) []*Tensor {
		return []*Tensor{tp.clone(g), tp.clone(g)}
	})
}

// clone returns a tape-owned copy of t (a contiguous tensor).
func (tp *Tape) clone(t *Tensor) *Tensor {
	c := tp.alloc("copy", t.shape...)
	if c != nil {
		tp.Fail("copy", Copy(tp.s, c, t))
	}
	return c
}
