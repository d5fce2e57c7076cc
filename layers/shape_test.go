package layers

import (
	"fmt"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// Shape ops only move data: their forward is exact. The gradient tolerance
// covers the float64 rounding of the finite differences and one float32
// rounding where the gradients of a part used twice are added.
const (
	moveFwdTol  = 0
	moveGradTol = 1e-7
)

func TestReshapeGrad(t *testing.T) {
	cases := []struct {
		from, to []int
	}{
		{[]int{1}, []int{1, 1}},
		{[]int{6, 35}, []int{5, 42}},
		{[]int{6, 35}, []int{-1, 7}},
		{[]int{2, 3, 5, 7}, []int{30, -1}},
		{[]int{31, 101}, []int{101, 31}}, // across 12 KiB segments
	}
	for _, c := range cases {
		checkGrad(t, gradCase{
			name:   fmt.Sprintf("%v->%v", c.from, c.to),
			inputs: [][]int{c.from},
			// Scale after the reshape, so that the view has a reader.
			op:     func(tp *Tape, in []*Var) *Var { return tp.Scale(tp.Reshape(in[0], c.to...), 2) },
			ref:    func(in [][]float64) []float64 { return scaled(in[0], 2) },
			fwdTol: moveFwdTol, gradTol: moveGradTol,
		})
	}
}

func TestFlattenGrad(t *testing.T) {
	for _, shape := range [][]int{{3}, {1, 2048, 1, 1}, {3, 4, 5, 7}} {
		checkGrad(t, gradCase{
			name:   fmt.Sprint(shape),
			inputs: [][]int{shape},
			op: func(tp *Tape, in []*Var) *Var {
				y := tp.Flatten(in[0])
				if y != nil && (len(y.Shape()) != 2 || y.Shape()[0] != shape[0]) {
					tp.Fail("test", fmt.Errorf("flatten of %v gave %v", shape, y.Shape()))
				}
				return tp.Relu(y)
			},
			ref:    func(in [][]float64) []float64 { return reluRef(in[0]) },
			init:   awayFromKink,
			fwdTol: moveFwdTol, gradTol: moveGradTol,
		})
	}
}

// TestReshapeStrided reshapes a transposed view, which must be copied.
func TestReshapeStrided(t *testing.T) {
	for _, dev := range testDevices(t) {
		t.Run(dev.name, func(t *testing.T) {
			const r, c = 37, 101
			hx := randn(5, r*c)
			x := Constant(upload(t, dev.dev, hx, r, c).Transpose(0, 1))
			s := stream(t, dev.dev)
			tp := NewTape(s)
			y := tp.Reshape(x, -1)
			if y == nil {
				t.Fatal(tp.Err())
			}
			tp.Keep(y)
			defer y.Value.Release()
			tp.Release()
			want := make([]float64, r*c)
			for i := 0; i < c; i++ {
				for j := 0; j < r; j++ {
					want[i*r+j] = float64(hx[j*c+i])
				}
			}
			assertClose(t, "reshape of a transpose", run(t, s, y.Value), want, 0)
		})
	}
}

func TestConcatGrad(t *testing.T) {
	cases := [][][]int{
		{{1}, {1}},
		{{2, 5}, {7, 5}, {1, 5}},
		{{3, 2, 7}, {4, 2, 7}},
		{{13, 130}, {11, 130}}, // the output spans two 12 KiB segments
	}
	for _, shapes := range cases {
		checkGrad(t, gradCase{
			name:   fmt.Sprint(shapes),
			inputs: shapes,
			op:     func(tp *Tape, in []*Var) *Var { return tp.Concat(in...) },
			ref: func(in [][]float64) []float64 {
				var out []float64
				for _, x := range in {
					out = append(out, x...)
				}
				return out
			},
			fwdTol: moveFwdTol, gradTol: moveGradTol,
		})
	}
}

// TestConcatFrozen concatenates a constant and a parameter: only the
// parameter takes a gradient.
func TestConcatFrozen(t *testing.T) {
	checkGrad(t, gradCase{
		name:   "frozen",
		inputs: [][]int{{3, 4}, {2, 4}},
		noGrad: []int{0},
		op:     func(tp *Tape, in []*Var) *Var { return tp.Concat(in...) },
		ref:    func(in [][]float64) []float64 { return append(append([]float64(nil), in[0]...), in[1]...) },
		fwdTol: moveFwdTol, gradTol: moveGradTol,
	})
}

func TestSplitGrad(t *testing.T) {
	cases := []struct {
		shape []int
		sizes []int
		// use lists the parts the output concatenates, in order; parts not
		// listed take no gradient (their rows of x get zeros).
		use []int
	}{
		{[]int{1, 3}, []int{1}, []int{0}},
		{[]int{2, 5}, []int{1, 1}, []int{1, 0}},
		{[]int{10, 3}, []int{2, 5, 3}, []int{2, 0}},
		{[]int{7, 2, 3}, []int{3, 4}, []int{1, 1, 0}}, // a part used twice
		{[]int{26, 130}, []int{12, 14}, []int{1, 0}},  // x spans two 12 KiB segments
	}
	for _, c := range cases {
		checkGrad(t, gradCase{
			name:   fmt.Sprintf("%v/%v/%v", c.shape, c.sizes, c.use),
			inputs: [][]int{c.shape},
			op: func(tp *Tape, in []*Var) *Var {
				parts := tp.Split(in[0], c.sizes...)
				if parts == nil {
					return nil
				}
				var xs []*Var
				for _, i := range c.use {
					xs = append(xs, parts[i])
				}
				return tp.Concat(xs...)
			},
			ref: func(in [][]float64) []float64 {
				row := len(in[0]) / c.shape[0]
				starts := []int{0}
				for _, n := range c.sizes {
					starts = append(starts, starts[len(starts)-1]+n)
				}
				var out []float64
				for _, i := range c.use {
					out = append(out, in[0][starts[i]*row:starts[i+1]*row]...)
				}
				return out
			},
			fwdTol: moveFwdTol, gradTol: moveGradTol,
		})
	}
}

// TestShapeErrors checks that bad shapes fail the tape instead of
// recording anything.
func TestShapeErrors(t *testing.T) {
	d := vktest.Device(t)
	x := Param(upload(t, d, randn(1, 12), 3, 4))
	y := Param(upload(t, d, randn(2, 10), 2, 5))
	cases := map[string]func(tp *Tape) bool{
		"reshape size":     func(tp *Tape) bool { return tp.Reshape(x, 5, 2) == nil },
		"reshape two -1":   func(tp *Tape) bool { return tp.Reshape(x, -1, -1) == nil },
		"reshape indivis.": func(tp *Tape) bool { return tp.Reshape(x, 5, -1) == nil },
		"concat widths":    func(tp *Tape) bool { return tp.Concat(x, y) == nil },
		"concat nothing":   func(tp *Tape) bool { return tp.Concat() == nil },
		"split sum":        func(tp *Tape) bool { return tp.Split(x, 1, 1) == nil },
		"split zero":       func(tp *Tape) bool { return tp.Split(x, 3, 0) == nil },
	}
	for name, c := range cases {
		tp := NewTape(stream(t, d))
		if !c(tp) || tp.Err() == nil {
			t.Errorf("%s: no error", name)
		}
		tp.Release()
	}
}
