package layers

import (
	"fmt"
	"testing"
)

// arithShapes: one element, primes, rank 3; the reductions also take a
// matrix across 12 KiB segments (the elementwise kernels' own tests cross
// segments, and the finite differences of an elementwise op cost the square
// of its size).
var (
	arithShapes  = [][]int{{1}, {13}, {7, 13}, {3, 5, 11}}
	reduceShapes = append(arithShapes, []int{31, 101})
)

// Elementwise float32 arithmetic holds a few roundings of the float64
// reference: forward 1e-6. Sum and Mean reduce with compensation (a few ulp)
// but the sum of N(0, 1) values cancels, so their forward bound is the
// brief's 1e-5. Gradients: 1e-4 (finite differences of float64 references).
const (
	arithFwdTol  = 1e-6
	arithGradTol = 1e-4
)

func TestArithGrad(t *testing.T) {
	ops := []struct {
		name   string
		inputs int
		op     func(tp *Tape, in []*Var) *Var
		ref    func(in [][]float64) []float64
		fwdTol float64
		shapes [][]int
	}{
		{"scale", 1, func(tp *Tape, in []*Var) *Var { return tp.Scale(in[0], -1.75) },
			func(in [][]float64) []float64 { return scaled(in[0], -1.75) }, arithFwdTol, arithShapes},
		{"sub", 2, func(tp *Tape, in []*Var) *Var { return tp.Sub(in[0], in[1]) },
			func(in [][]float64) []float64 {
				return zipWith(in[0], in[1], func(a, b float64) float64 { return a - b })
			}, arithFwdTol, arithShapes},
		{"mul", 2, func(tp *Tape, in []*Var) *Var { return tp.Mul(in[0], in[1]) },
			func(in [][]float64) []float64 {
				return zipWith(in[0], in[1], func(a, b float64) float64 { return a * b })
			}, arithFwdTol, arithShapes},
		// x * x: one input read twice, its two gradients accumulate.
		{"square", 1, func(tp *Tape, in []*Var) *Var { return tp.Mul(in[0], in[0]) },
			func(in [][]float64) []float64 {
				return zipWith(in[0], in[0], func(a, b float64) float64 { return a * b })
			}, arithFwdTol, arithShapes},
		{"sum", 1, func(tp *Tape, in []*Var) *Var { return tp.Sum(in[0]) },
			func(in [][]float64) []float64 { return []float64{sum64(in[0])} }, 1e-5, reduceShapes},
		{"mean", 1, func(tp *Tape, in []*Var) *Var { return tp.Mean(in[0]) },
			func(in [][]float64) []float64 { return []float64{sum64(in[0]) / float64(len(in[0]))} }, 1e-5, reduceShapes},
		// A loss of the shape a scalar loss term takes: mean((2a - b) * b).
		{"chain", 2, func(tp *Tape, in []*Var) *Var {
			return tp.Mean(tp.Mul(tp.Sub(tp.Scale(in[0], 2), in[1]), in[1]))
		}, func(in [][]float64) []float64 {
			var s float64
			for i := range in[0] {
				s += (2*in[0][i] - in[1][i]) * in[1][i]
			}
			return []float64{s / float64(len(in[0]))}
		}, 1e-5, reduceShapes},
	}
	for _, o := range ops {
		for _, shape := range o.shapes {
			inputs := make([][]int, o.inputs)
			for i := range inputs {
				inputs[i] = shape
			}
			checkGrad(t, gradCase{
				name:   fmt.Sprintf("%s/%v", o.name, shape),
				inputs: inputs,
				op:     o.op,
				ref:    o.ref,
				fwdTol: o.fwdTol, gradTol: arithGradTol,
			})
		}
	}
}

// TestSumOffset sums values on a large offset: the two-stage sum keeps its
// accuracy (a naive float32 sum of 3131 values near 100 would lose about
// 1e-5 relative).
func TestSumOffset(t *testing.T) {
	checkGrad(t, gradCase{
		name:   "offset",
		inputs: [][]int{{31, 101}},
		init: func(_ int, x []float64) {
			for i, v := range randn(9, len(x)) {
				x[i] = 100 + float64(v)
			}
		},
		op:     func(tp *Tape, in []*Var) *Var { return tp.Sum(in[0]) },
		ref:    func(in [][]float64) []float64 { return []float64{sum64(in[0])} },
		fwdTol: 1e-6, gradTol: arithGradTol,
	})
}

func TestArithShapeErrors(t *testing.T) {
	checkOpErrors(t, map[string]opCall{
		"sub": {[][]int{{3, 4}, {4, 3}}, func(tp *Tape, in []*Var) *Var { return tp.Sub(in[0], in[1]) }},
		"mul": {[][]int{{3, 4}, {12}}, func(tp *Tape, in []*Var) *Var { return tp.Mul(in[0], in[1]) }},
	})
}

func zipWith(a, b []float64, f func(a, b float64) float64) []float64 {
	out := make([]float64, len(a))
	for i := range a {
		out[i] = f(a[i], b[i])
	}
	return out
}

func sum64(x []float64) float64 {
	var s float64
	for _, v := range x {
		s += v
	}
	return s
}

// opCall is an op on fresh N(0, 1) parameters of the given shapes.
type opCall struct {
	shapes [][]int
	op     func(tp *Tape, in []*Var) *Var
}

// checkOpErrors checks that each call fails its tape and returns nil.
func checkOpErrors(t *testing.T, calls map[string]opCall) {
	t.Helper()
	d := testDevices(t)[0].dev
	for name, c := range calls {
		in := make([]*Var, len(c.shapes))
		for i, shape := range c.shapes {
			in[i] = Param(upload(t, d, randn(uint64(i), elemCount(shape)), shape...))
		}
		tp := NewTape(stream(t, d))
		if v := c.op(tp, in); v != nil || tp.Err() == nil {
			t.Errorf("%s: got a value and error %v; want an error", name, tp.Err())
		} else {
			t.Logf("%s: %v", name, tp.Err())
		}
		tp.Release()
	}
}
