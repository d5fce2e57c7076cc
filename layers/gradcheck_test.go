package layers

// The harness of the differentiable ops: every op is run forward on the
// device and compared with a float64 reference forward on the CPU, then its
// backward pass (seeded with a random output gradient w) is compared with
// central finite differences of sum(w * reference(x)) in float64.

import (
	"context"
	"fmt"
	"testing"
)

// gradCase is one op under test at one set of input shapes.
type gradCase struct {
	name   string
	inputs [][]int // shapes of the op's inputs, in order
	// noGrad lists inputs that enter as Constants (indices, targets).
	noGrad []int
	// init fills input i; nil means N(0, 1) values.
	init func(i int, x []float64)
	// op records the op on the device.
	op func(tp *Tape, in []*Var) *Var
	// ref computes the op's output in float64 from the inputs.
	ref func(in [][]float64) []float64
	// fwdTol and gradTol are the relative error bounds (2-norm) of the
	// output and of the input gradients.
	fwdTol, gradTol float64
	// step is the finite-difference step; 0 means 1e-4 (in float64 the
	// truncation error of central differences is then about 1e-8).
	step float64
}

// checkGrad runs c on every test device.
func checkGrad(t *testing.T, c gradCase) {
	t.Helper()
	for _, td := range testDevices(t) {
		t.Run(c.name+"/"+td.name, func(t *testing.T) {
			ctx := context.Background()
			d := td.dev
			frozen := map[int]bool{}
			for _, i := range c.noGrad {
				frozen[i] = true
			}
			host := make([][]float64, len(c.inputs))
			vars := make([]*Var, len(c.inputs))
			for i, shape := range c.inputs {
				n := 1
				for _, s := range shape {
					n *= s
				}
				host[i] = make([]float64, n)
				if c.init != nil {
					c.init(i, host[i])
				} else {
					for j, v := range randn(uint64(100+i), n) {
						host[i][j] = float64(v)
					}
				}
				x := upload(t, d, toF32(host[i]), shape...)
				if frozen[i] {
					vars[i] = Constant(x)
				} else {
					vars[i] = Param(x)
					t.Cleanup(vars[i].ZeroGrad)
				}
			}
			s := stream(t, d)
			tp := NewTape(s)
			out := tp.op(c, vars)
			if out == nil {
				t.Fatalf("op: %v", tp.Err())
			}
			tp.Keep(out)
			t.Cleanup(out.Value.Release)
			want := c.ref(host)
			w := randn(7, len(want))
			// A host upload, not tp.alloc: tape memory may be pooled memory
			// that recorded work still writes.
			gOut := upload(t, d, w, out.Value.shape...)
			if err := tp.BackwardWith(out, gOut); err != nil {
				t.Fatalf("backward: %v", err)
			}
			t.Cleanup(out.ZeroGrad)
			tp.Release()
			assertClose(t, "forward", run(t, s, out.Value), want, c.fwdTol)
			for i, v := range vars {
				if frozen[i] {
					continue
				}
				if v.Grad == nil {
					t.Fatalf("input %d took no gradient", i)
				}
				got, err := v.Grad.Download(ctx)
				if err != nil {
					t.Fatal(err)
				}
				assertClose(t, fmt.Sprintf("gradient of input %d", i), got, numericGrad(c, host, i, w), c.gradTol)
			}
		})
	}
}

// op records c's op; a method so that the harness reads in order.
func (tp *Tape) op(c gradCase, in []*Var) *Var { return c.op(tp, in) }

// numericGrad is d/dx_i of sum(w * ref(x)) by central differences.
func numericGrad(c gradCase, host [][]float64, i int, w []float32) []float64 {
	h := c.step
	if h == 0 {
		h = 1e-4
	}
	loss := func() float64 {
		var s float64
		for j, y := range c.ref(host) {
			s += float64(w[j]) * y
		}
		return s
	}
	g := make([]float64, len(host[i]))
	for j := range host[i] {
		x := host[i][j]
		host[i][j] = x + h
		up := loss()
		host[i][j] = x - h
		down := loss()
		host[i][j] = x
		g[j] = (up - down) / (2 * h)
	}
	return g
}

func toF64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

func toF32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}
