package layers

import (
	"math"
	"testing"
)

func TestReluGrad(t *testing.T) {
	for _, shape := range [][]int{{1}, {7, 13}, {3, 5, 211}} {
		checkGrad(t, gradCase{
			name:   "relu",
			inputs: [][]int{shape},
			op:     func(tp *Tape, in []*Var) *Var { return tp.Relu(in[0]) },
			ref:    func(in [][]float64) []float64 { return reluRef(in[0]) },
			init:   awayFromKink,
			fwdTol: 1e-7, gradTol: 1e-6,
		})
	}
}

func TestAddGrad(t *testing.T) {
	cases := []struct {
		name   string
		op     func(tp *Tape, in []*Var) *Var
		noGrad []int
	}{
		{"add", func(tp *Tape, in []*Var) *Var { return tp.Relu(tp.Add(in[0], in[1])) }, nil},
		{"add-relu", func(tp *Tape, in []*Var) *Var { return tp.AddRelu(in[0], in[1]) }, nil},
		{"add-relu/a-only", func(tp *Tape, in []*Var) *Var { return tp.AddRelu(in[0], in[1]) }, []int{1}},
		{"add-relu/b-only", func(tp *Tape, in []*Var) *Var { return tp.AddRelu(in[0], in[1]) }, []int{0}},
	}
	for _, tc := range cases {
		checkGrad(t, gradCase{
			name:   tc.name,
			inputs: [][]int{{5, 331}, {5, 331}},
			noGrad: tc.noGrad,
			op:     tc.op,
			ref: func(in [][]float64) []float64 {
				out := make([]float64, len(in[0]))
				for i := range out {
					out[i] = max(in[0][i]+in[1][i], 0)
				}
				return out
			},
			fwdTol: 1e-6, gradTol: 1e-5,
		})
	}
}

// reluRef is max(x, 0) in float64.
func reluRef(x []float64) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = max(v, 0)
	}
	return out
}

// awayFromKink fills x with N(0, 1) values none of which lies within 0.01
// of 0, where ReLU's finite differences would straddle the kink.
func awayFromKink(_ int, x []float64) {
	for i, v := range randn(3, len(x)) {
		x[i] = float64(v)
		if x[i] > -0.01 && x[i] < 0.01 {
			x[i] = 0.5
		}
	}
}

// TestFusedReluKeepsNaN checks that the ReLUs fused into other ops pass a
// NaN on, as Relu and PyTorch's relu do (max(NaN, 0) may give 0 on some
// devices), so that a non-finite input still shows in the loss.
func TestFusedReluKeepsNaN(t *testing.T) {
	nan := float32(math.NaN())
	cases := []struct {
		name string
		op   func(tp *Tape, x *Var) *Var
	}{
		{"relu", func(tp *Tape, x *Var) *Var { return tp.Relu(x) }},
		{"add-relu", func(tp *Tape, x *Var) *Var { return tp.AddRelu(x, x) }},
		{"batchnorm-relu", func(tp *Tape, x *Var) *Var {
			bn, release := testBatchNorm(tp, 4, nil)
			defer release()
			return bn.ForwardRelu(tp, x, true)
		}},
	}
	for _, tc := range cases {
		for _, td := range testDevices(t) {
			t.Run(tc.name+"/"+td.name, func(t *testing.T) {
				x := randn(3, 2*4*3*4)
				x[5] = nan // channel 0 of image 0
				s := stream(t, td.dev)
				tp := NewTape(s)
				y := tc.op(tp, Constant(upload(t, td.dev, x, 2, 4, 3, 4)))
				if y == nil {
					t.Fatal(tp.Err())
				}
				tp.Keep(y)
				t.Cleanup(y.Value.Release)
				tp.Release()
				got := run(t, s, y.Value)
				if !math.IsNaN(float64(got[5])) {
					t.Errorf("output %g where the input is NaN, want NaN", got[5])
				}
			})
		}
	}
}
