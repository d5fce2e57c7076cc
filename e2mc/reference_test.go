package e2mc

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
)

// columns returns n x d values whose columns are drawn from a normal, a
// uniform and a heavy-tailed (Student t, 2 d.o.f.) law in turn.
func columns(seed uint64, n, d int) []float64 {
	rng := rand.New(rand.NewPCG(seed, 7))
	z := make([]float64, n*d)
	for i := 0; i < n; i++ {
		for j := 0; j < d; j++ {
			var v float64
			switch j % 3 {
			case 0:
				v = rng.NormFloat64()
			case 1:
				v = 4*rng.Float64() - 2
			case 2:
				g := rng.NormFloat64()
				c := rng.NormFloat64()*rng.NormFloat64() + rng.NormFloat64()*rng.NormFloat64()
				v = g / math.Sqrt(math.Abs(c)/2+1e-3)
			}
			z[i*d+j] = v
		}
	}
	return z
}

// TestReferenceMatchesScipy checks the entropy against scipy's van Es
// estimator with the bias correction of DESIGN.md section 2 (eps = 0).
func TestReferenceMatchesScipy(t *testing.T) {
	py := oracle.Python(t, "scipy", "numpy")
	for _, n := range []int{10, 97, 512} {
		const d = 6
		z := columns(uint64(n), n, d)
		r, err := Reference(z, n, d, Params{Bound: BoundNone}, false)
		if err != nil {
			t.Fatal(err)
		}
		m := Window(n)
		vals := make([]string, len(z))
		for i, v := range z {
			vals[i] = strconv.FormatFloat(v, 'g', -1, 64)
		}
		out := oracle.Run(t, py, `
import sys, numpy as np
from scipy.stats import differential_entropy
n, d, m = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
z = np.array(sys.argv[4].split(","), dtype=float).reshape(n, d)
corr = sum(1.0 / k for k in range(m, n + 1)) + np.log(m) - np.log(n + 1)
for j in range(d):
    print(differential_entropy(z[:, j], window_length=m, method="van es") - corr)
`, fmt.Sprint(n), fmt.Sprint(d), fmt.Sprint(m), strings.Join(vals, ","))
		for j, f := range strings.Fields(string(out)) {
			want, _ := strconv.ParseFloat(f, 64)
			if math.Abs(r.Entropy[j]-want) > 1e-9 {
				t.Errorf("n=%d column %d: entropy %v, scipy %v", n, j, r.Entropy[j], want)
			}
		}
	}
}

// TestReferenceGradients checks the analytic gradients by central finite
// differences on a small batch with distinct values (no ties).
func TestReferenceGradients(t *testing.T) {
	for _, b := range []Bound{BoundNone, BoundSigmoid, BoundNormal} {
		const n, d = 17, 5
		z := columns(3, n, d)
		p := Params{Bound: b, Eps: DefaultEps}
		r, err := Reference(z, n, d, p, true)
		if err != nil {
			t.Fatal(err)
		}
		const h = 1e-6
		for _, idx := range []int{0, 7, 23, 51, n*d - 1} {
			zp := append([]float64(nil), z...)
			zm := append([]float64(nil), z...)
			zp[idx] += h
			zm[idx] -= h
			rp, _ := Reference(zp, n, d, p, false)
			rm, _ := Reference(zm, n, d, p, false)
			gH := (rp.MeanEntropy - rm.MeanEntropy) / (2 * h)
			gC := (rp.CovLoss - rm.CovLoss) / (2 * h)
			if math.Abs(gH-r.GradEntropy[idx]) > 1e-5*math.Max(1, math.Abs(gH)) {
				t.Errorf("%v: dH/dz[%d] = %v, finite difference %v", b, idx, r.GradEntropy[idx], gH)
			}
			if math.Abs(gC-r.GradCov[idx]) > 1e-5*math.Max(1, math.Abs(gC)) {
				t.Errorf("%v: dCov/dz[%d] = %v, finite difference %v", b, idx, r.GradCov[idx], gC)
			}
		}
	}
}

func TestReferenceBadInput(t *testing.T) {
	if _, err := Reference(make([]float64, 3), 1, 3, Params{}, false); err == nil {
		t.Error("N=1: no error")
	}
	if _, err := Reference(make([]float64, 5), 2, 3, Params{}, false); err == nil {
		t.Error("wrong length: no error")
	}
}

// TestReferenceCovariancePaths checks that the Gram-matrix path and the
// covariance-matrix path give the same loss and gradient.
func TestReferenceCovariancePaths(t *testing.T) {
	for _, sh := range [][2]int{{9, 4}, {6, 11}, {13, 13}} {
		n, d := sh[0], sh[1]
		x := columns(5, n, d)
		dx := make([]float64, n*d)
		for i := range dx {
			dx[i] = 1 + float64(i%3)
		}
		var r [2]Result
		for i, gram := range []bool{false, true} {
			r[i].GradCov = make([]float64, n*d)
			covariance(&r[i], x, dx, n, d, gram)
		}
		if math.Abs(r[0].CovLoss-r[1].CovLoss) > 1e-12*math.Abs(r[0].CovLoss) {
			t.Errorf("%dx%d: cov loss %v (covariance) vs %v (Gram)", n, d, r[0].CovLoss, r[1].CovLoss)
		}
		for i := range r[0].GradCov {
			if math.Abs(r[0].GradCov[i]-r[1].GradCov[i]) > 1e-12 {
				t.Fatalf("%dx%d: gradient %d: %v vs %v", n, d, i, r[0].GradCov[i], r[1].GradCov[i])
			}
		}
	}
}
