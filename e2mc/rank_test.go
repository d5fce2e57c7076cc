package e2mc

import (
	"math"
	"testing"
)

// TestEffectiveRank checks the two extremes: columns that are copies of one
// column have rank 1; independent columns of equal variance have a rank near
// their number.
func TestEffectiveRank(t *testing.T) {
	const n, d = 400, 6
	base := columns(11, n, 1)
	z := make([]float32, n*d)
	for i := 0; i < n; i++ {
		for j := 0; j < d; j++ {
			z[i*d+j] = float32(base[i])
		}
	}
	r, err := EffectiveRank(z, n, d, BoundNone)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(r-1) > 1e-6 {
		t.Errorf("copied columns: effective rank %v, want 1", r)
	}

	rng := columns(12, n, 3*d)
	for i := 0; i < n; i++ {
		for j := 0; j < d; j++ {
			z[i*d+j] = float32(rng[i*3*d+3*j]) // the normal columns
		}
	}
	r, err = EffectiveRank(z, n, d, BoundNone)
	if err != nil {
		t.Fatal(err)
	}
	if r < 0.9*d || r > d {
		t.Errorf("independent columns: effective rank %v, want close to %d", r, d)
	}
	// Wide batches take the Gram path; the answer is the same.
	wide, err := EffectiveRank(z[:5*d], 5, d, BoundSigmoid)
	if err != nil {
		t.Fatal(err)
	}
	if wide <= 1 || wide > 4+1e-9 {
		t.Errorf("5 rows: effective rank %v, want in (1, 4]", wide)
	}
}
