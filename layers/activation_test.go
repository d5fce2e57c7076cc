package layers

import "testing"

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
	checkGrad(t, gradCase{
		name:   "add",
		inputs: [][]int{{5, 331}, {5, 331}},
		op:     func(tp *Tape, in []*Var) *Var { return tp.Relu(tp.Add(in[0], in[1])) },
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
