package layers

import (
	"fmt"
	"math"
	"testing"
)

// colStatShapes are [N, D] batches: odd sizes, one row and column past a
// 12 KiB segment of the split device, and a tall one.
var colStatShapes = [][2]int{{2, 1}, {7, 13}, {33, 101}, {130, 29}}

// colMeans returns the mean of each column of x [n, d] in float64.
func colMeans(x []float64, n, d int) []float64 {
	m := make([]float64, d)
	for i := 0; i < n; i++ {
		for j := 0; j < d; j++ {
			m[j] += x[i*d+j]
		}
	}
	for j := range m {
		m[j] /= float64(n)
	}
	return m
}

func TestCenterColumnsGrad(t *testing.T) {
	for _, s := range colStatShapes {
		n, d := s[0], s[1]
		checkGrad(t, gradCase{
			name:   fmt.Sprintf("%dx%d", n, d),
			inputs: [][]int{{n, d}},
			// An offset column mean makes the centring do something.
			init: func(_ int, x []float64) {
				for i, v := range randn(11, len(x)) {
					x[i] = 3 + float64(v)
				}
			},
			op: func(tp *Tape, in []*Var) *Var { return tp.CenterColumns(in[0]) },
			ref: func(in [][]float64) []float64 {
				m := colMeans(in[0], n, d)
				y := make([]float64, n*d)
				for i := range y {
					y[i] = in[0][i] - m[i%d]
				}
				return y
			},
			fwdTol: 1e-6, gradTol: 1e-5,
		})
	}
}

func TestSumColumnsGrad(t *testing.T) {
	for _, s := range colStatShapes {
		n, d := s[0], s[1]
		checkGrad(t, gradCase{
			name:   fmt.Sprintf("%dx%d", n, d),
			inputs: [][]int{{n, d}},
			op:     func(tp *Tape, in []*Var) *Var { return tp.SumColumns(in[0]) },
			ref: func(in [][]float64) []float64 {
				m := colMeans(in[0], n, d)
				for j := range m {
					m[j] *= float64(n)
				}
				return m
			},
			fwdTol: 1e-5, gradTol: 1e-5,
		})
	}
}

func TestColumnStdGrad(t *testing.T) {
	for _, eps := range []float64{1e-4, 0.5} {
		for _, s := range colStatShapes {
			n, d := s[0], s[1]
			checkGrad(t, gradCase{
				name:   fmt.Sprintf("%dx%d/eps=%g", n, d, eps),
				inputs: [][]int{{n, d}},
				// Columns of different spreads and offsets: std from
				// about 0.05 to 3.
				init: func(_ int, x []float64) {
					for i, v := range randn(13, len(x)) {
						j := i % d
						x[i] = float64(j%5) - 2 + (0.05+0.6*float64(j%6))*float64(v)
					}
				},
				op: func(tp *Tape, in []*Var) *Var { return tp.ColumnStd(in[0], eps) },
				ref: func(in [][]float64) []float64 {
					m := colMeans(in[0], n, d)
					v := make([]float64, d)
					for i, x := range in[0] {
						v[i%d] += (x - m[i%d]) * (x - m[i%d])
					}
					for j := range v {
						v[j] = math.Sqrt(v[j]/float64(n-1) + eps)
					}
					return v
				},
				fwdTol: 1e-5, gradTol: 1e-5, step: 1e-5,
			})
		}
	}
}

func TestAffineGrad(t *testing.T) {
	for _, shape := range [][]int{{1}, {17}, {9, 401}} {
		checkGrad(t, gradCase{
			name:   fmt.Sprintf("%v", shape),
			inputs: [][]int{shape},
			op:     func(tp *Tape, in []*Var) *Var { return tp.Affine(in[0], -1.5, 0.75) },
			ref: func(in [][]float64) []float64 {
				y := make([]float64, len(in[0]))
				for i, x := range in[0] {
					y[i] = -1.5*x + 0.75
				}
				return y
			},
			fwdTol: 1e-6, gradTol: 1e-6,
		})
	}
}

func TestColStatShapeErrors(t *testing.T) {
	checkOpErrors(t, map[string]opCall{
		"center rank 1": {[][]int{{5}}, func(tp *Tape, in []*Var) *Var { return tp.CenterColumns(in[0]) }},
		"sum rank 3":    {[][]int{{2, 3, 4}}, func(tp *Tape, in []*Var) *Var { return tp.SumColumns(in[0]) }},
		"std rank 1":    {[][]int{{5}}, func(tp *Tape, in []*Var) *Var { return tp.ColumnStd(in[0], 1e-4) }},
	})
}
