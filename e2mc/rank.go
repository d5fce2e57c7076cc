package e2mc

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/mat"
)

// EffectiveRank returns exp of the Shannon entropy of the normalised
// eigenvalues of the covariance of the bounded, centred embeddings z (n rows
// of d columns), the effective rank of Roy and Vetterli. It runs on the host
// in float64, through the n x n Gram matrix when n <= d (same non-zero
// eigenvalues, fewer flops).
func EffectiveRank(z []float32, n, d int, b Bound) (float64, error) {
	if len(z) != n*d || n < 2 {
		return 0, fmt.Errorf("effective rank of %d values as %d x %d", len(z), n, d)
	}
	x := make([]float64, n*d)
	for j := 0; j < d; j++ {
		var mean float64
		for i := 0; i < n; i++ {
			v, _ := b.apply(float64(z[i*d+j]))
			x[i*d+j] = v
			mean += v
		}
		mean /= float64(n)
		for i := 0; i < n; i++ {
			x[i*d+j] -= mean
		}
	}
	X := mat.NewDense(n, d, x)
	k := min(n, d)
	S := mat.NewSymDense(k, nil)
	if n <= d {
		S.SymOuterK(1, X)
	} else {
		S.SymOuterK(1, X.T())
	}
	var eig mat.EigenSym
	if !eig.Factorize(S, false) {
		return 0, fmt.Errorf("effective rank: the eigendecomposition did not converge")
	}
	vals := eig.Values(nil)
	var total float64
	for _, v := range vals {
		if v > 0 {
			total += v
		}
	}
	if total == 0 {
		return 0, nil // every column is constant
	}
	var h float64
	for _, v := range vals {
		if p := v / total; p > 0 {
			h -= p * math.Log(p)
		}
	}
	return math.Exp(h), nil
}
