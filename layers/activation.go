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

// AddRelu returns relu(a + b) for values of one shape, as one op: the
// residual connection of a ResNet block with the ReLU after it. Forward it
// is one pass instead of two; backward one pass writes the masked gradient
// twice, once for each input (which takes it over: Backward adds into it),
// where Relu and Add took three.
func (tp *Tape) AddRelu(a, b *Var) *Var {
	if !tp.ok(a, b) {
		return nil
	}
	y := tp.alloc("add and relu", a.Value.shape...)
	if y == nil {
		return nil
	}
	tp.Fail("add and relu", binaryOp(tp.s, binAddRelu, y, a.Value, b.Value, 0))
	return tp.record(y, []*Var{a, b}, func(g *Tensor) []*Tensor {
		const op = "add and relu backward"
		da := tp.alloc(op, g.shape...)
		if da == nil {
			return nil
		}
		if !a.requiresGrad || !b.requiresGrad {
			tp.Fail(op, binaryOp(tp.s, binReluGrad, da, g, y, 0))
			if !a.requiresGrad {
				return []*Tensor{nil, da}
			}
			return []*Tensor{da, nil}
		}
		db := tp.alloc(op, g.shape...)
		if db == nil {
			return nil
		}
		tp.Fail(op, binaryOpInto(tp.s, binReluGrad2, da, db, g, y, 0))
		return []*Tensor{da, db}
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
