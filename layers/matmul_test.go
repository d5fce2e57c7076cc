package layers

import (
	"fmt"
	"testing"
)

// matmulRef is op(a) op(b) in float64 for a [ar, ac] and b [br, bc].
func matmulRef(a, b []float64, ar, ac, br, bc int, transA, transB bool) []float64 {
	at := func(i, k int) float64 {
		if transA {
			return a[k*ac+i]
		}
		return a[i*ac+k]
	}
	bt := func(k, j int) float64 {
		if transB {
			return b[j*bc+k]
		}
		return b[k*bc+j]
	}
	m, k := ar, ac
	if transA {
		m, k = ac, ar
	}
	n := bc
	if transB {
		n = br
	}
	y := make([]float64, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for l := 0; l < k; l++ {
				s += at(i, l) * bt(l, j)
			}
			y[i*n+j] = s
		}
	}
	return y
}

func TestMatMulGrad(t *testing.T) {
	cases := []struct {
		m, k, n        int
		transA, transB bool
	}{
		{5, 7, 3, false, false},
		{9, 13, 6, true, false},
		{4, 11, 10, false, true},
		{7, 3, 5, true, true},
		{33, 70, 47, true, false}, // operands span several 12 KiB segments
	}
	for _, c := range cases {
		ashape := []int{c.m, c.k}
		if c.transA {
			ashape = []int{c.k, c.m}
		}
		bshape := []int{c.k, c.n}
		if c.transB {
			bshape = []int{c.n, c.k}
		}
		checkGrad(t, gradCase{
			name:   fmt.Sprintf("%dx%dx%d/transA=%v/transB=%v", c.m, c.k, c.n, c.transA, c.transB),
			inputs: [][]int{ashape, bshape},
			op:     func(tp *Tape, in []*Var) *Var { return tp.MatMul(in[0], in[1], c.transA, c.transB) },
			ref: func(in [][]float64) []float64 {
				return matmulRef(in[0], in[1], ashape[0], ashape[1], bshape[0], bshape[1], c.transA, c.transB)
			},
			fwdTol: 1e-5, gradTol: 1e-5,
		})
	}
}

// TestMatMulSelf is VICReg's x^T x: one Var on both sides, whose gradient
// sums both paths.
func TestMatMulSelf(t *testing.T) {
	checkGrad(t, gradCase{
		name:   "xTx",
		inputs: [][]int{{23, 17}},
		op:     func(tp *Tape, in []*Var) *Var { return tp.MatMul(in[0], in[0], true, false) },
		ref:    func(in [][]float64) []float64 { return matmulRef(in[0], in[0], 23, 17, 23, 17, true, false) },
		fwdTol: 1e-5, gradTol: 1e-5,
	})
}

func TestMatMulShapeErrors(t *testing.T) {
	checkOpErrors(t, map[string]opCall{
		"inner":  {[][]int{{3, 4}, {3, 4}}, func(tp *Tape, in []*Var) *Var { return tp.MatMul(in[0], in[1], false, false) }},
		"rank 3": {[][]int{{2, 3, 4}, {4, 3}}, func(tp *Tape, in []*Var) *Var { return tp.MatMul(in[0], in[1], false, false) }},
	})
}
