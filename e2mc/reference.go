// Package e2mc implements the E2MC criterion (DESIGN.md section 2): bounding,
// per-column m-spacing entropy and the covariance penalty, forward and
// backward, on the device, with a float64 CPU reference beside it.
package e2mc

import (
	"fmt"
	"math"
	"sort"

	"gonum.org/v1/gonum/mat"
)

// Bound is the squashing applied to each embedding value before the entropy
// and covariance are measured.
type Bound int

const (
	// BoundNone leaves the values as they are.
	BoundNone Bound = iota
	// BoundSigmoid is VICReg's hypercube bound, sigmoid(z).
	BoundSigmoid
	// BoundNormal is SwAV's and SimSiam's bound, the standard normal CDF.
	BoundNormal
)

// ParseBound reads "none", "sigmoid" or "normal".
func ParseBound(s string) (Bound, error) {
	switch s {
	case "none":
		return BoundNone, nil
	case "sigmoid":
		return BoundSigmoid, nil
	case "normal":
		return BoundNormal, nil
	}
	return 0, fmt.Errorf("bound %q: want none, sigmoid or normal", s)
}

func (b Bound) String() string {
	return [...]string{"none", "sigmoid", "normal"}[b]
}

// apply returns the bounded value and its derivative at z.
func (b Bound) apply(z float64) (float64, float64) {
	switch b {
	case BoundSigmoid:
		s := 1 / (1 + math.Exp(-z))
		return s, s * (1 - s)
	case BoundNormal:
		return 0.5 * (1 + math.Erf(z/math.Sqrt2)), math.Exp(-z*z/2) / math.Sqrt(2*math.Pi)
	}
	return z, 1
}

// DefaultEps is the eps of the authors' VICReg script; SwAV and SimSiam use
// float32's machine epsilon (Float32Eps).
const (
	DefaultEps = 1e-7
	Float32Eps = 1.1920928955078125e-07
)

// Window returns the default m-spacing window for a batch of n rows,
// round(sqrt(n)).
func Window(n int) int { return int(math.Round(math.Sqrt(float64(n)))) }

// Params are the settings of one measurement of a batch of embeddings.
type Params struct {
	Bound Bound
	M     int     // spacing window; 0 means Window(N)
	Eps   float64 // added inside the log
}

func (p Params) window(n int) (int, error) {
	m := p.M
	if m == 0 {
		m = Window(n)
	}
	if n < 2 || m < 1 || m >= n {
		return 0, fmt.Errorf("m-spacing entropy of %d rows with window %d: need 1 <= m < N and N >= 2", n, m)
	}
	return m, nil
}

// Result is one view's measurement and, when asked for, its gradients.
type Result struct {
	Entropy     []float64 // H_d per column
	MeanEntropy float64   // mean over columns
	CovLoss     float64   // sum of squared off-diagonal covariances / D
	// GradEntropy and GradCov are d(MeanEntropy)/dZ and d(CovLoss)/dZ,
	// row-major N x D, when gradients were requested.
	GradEntropy []float64
	GradCov     []float64
}

// Reference measures Z (row-major, n rows of d columns) in float64: the
// definition every device kernel is checked against.
func Reference(z []float64, n, d int, p Params, grads bool) (*Result, error) {
	if len(z) != n*d {
		return nil, fmt.Errorf("embeddings: %d values for %d x %d", len(z), n, d)
	}
	m, err := p.window(n)
	if err != nil {
		return nil, err
	}
	x := make([]float64, n*d)  // bounded, then centred
	dx := make([]float64, n*d) // derivative of the bound
	for i, v := range z {
		x[i], dx[i] = p.Bound.apply(v)
	}
	for j := 0; j < d; j++ {
		var mean float64
		for i := 0; i < n; i++ {
			mean += x[i*d+j]
		}
		mean /= float64(n)
		for i := 0; i < n; i++ {
			x[i*d+j] -= mean
		}
	}

	r := &Result{Entropy: make([]float64, d)}
	if grads {
		r.GradEntropy = make([]float64, n*d)
		r.GradCov = make([]float64, n*d)
	}
	col := make([]float64, n)
	perm := make([]int, n)
	scale := float64(n+1) / float64(m)
	for j := 0; j < d; j++ {
		for i := range perm {
			perm[i] = i
		}
		sort.SliceStable(perm, func(a, b int) bool { return x[perm[a]*d+j] < x[perm[b]*d+j] })
		for i, pi := range perm {
			col[i] = x[pi*d+j]
		}
		var h float64
		for i := 0; i+m < n; i++ {
			h += math.Log(scale*(col[i+m]-col[i]) + p.Eps)
		}
		r.Entropy[j] = h / float64(n-m)
		r.MeanEntropy += r.Entropy[j] / float64(d)
		if !grads {
			continue
		}
		// Sorted position k gains from the spacing it ends and loses from
		// the one it starts; the entropy is shift invariant, so centring
		// passes the gradient through unchanged.
		c := scale / float64(n-m) / float64(d)
		for k := 0; k < n; k++ {
			var g float64
			if k >= m {
				g += 1 / (scale*(col[k]-col[k-m]) + p.Eps)
			}
			if k+m < n {
				g -= 1 / (scale*(col[k+m]-col[k]) + p.Eps)
			}
			r.GradEntropy[perm[k]*d+j] = c * g * dx[perm[k]*d+j]
		}
	}

	covariance(r, x, dx, n, d, n <= d)
	return r, nil
}

// covariance sets r.CovLoss = sum_{j!=k} C_jk² / d for C = XᵀX/(n-1) and, if
// r has gradient slices, r.GradCov = 4/(d(n-1)) (XC - X diag(C)) ⊙ dx. With
// gram it works through the n x n Gram matrix K = XXᵀ, which has the same
// squared Frobenius norm (n-1)²||C||² and gives XC = KX/(n-1) in n²d
// instead of d²n flops. X is centred, so the centring passes the gradient
// through unchanged.
func covariance(r *Result, x, dx []float64, n, d int, gram bool) {
	X := mat.NewDense(n, d, x)
	diag := make([]float64, d)
	for i := 0; i < n; i++ {
		for k, v := range x[i*d : (i+1)*d] {
			diag[k] += v * v
		}
	}
	var diagSq float64
	for k := range diag {
		diag[k] /= float64(n - 1)
		diagSq += diag[k] * diag[k]
	}
	var M mat.Dense
	if gram {
		var K mat.Dense
		K.Mul(X, X.T())
		f := mat.Norm(&K, 2) / float64(n-1)
		r.CovLoss = (f*f - diagSq) / float64(d)
		if r.GradCov != nil {
			M.Mul(&K, X)
			M.Scale(1/float64(n-1), &M)
		}
	} else {
		var C mat.Dense
		C.Mul(X.T(), X)
		C.Scale(1/float64(n-1), &C)
		var off float64
		for j := 0; j < d; j++ {
			for k := 0; k < d; k++ {
				if j != k {
					off += C.At(j, k) * C.At(j, k)
				}
			}
		}
		r.CovLoss = off / float64(d)
		if r.GradCov != nil {
			M.Mul(X, &C)
		}
	}
	if r.GradCov == nil {
		return
	}
	c := 4 / (float64(d) * float64(n-1))
	for i := 0; i < n; i++ {
		for k := 0; k < d; k++ {
			r.GradCov[i*d+k] = c * (M.At(i, k) - x[i*d+k]*diag[k]) * dx[i*d+k]
		}
	}
}

// Coefficients weigh the two terms of the criterion.
type Coefficients struct {
	Ent float64 // ent_coeff
	Cov float64 // cov_coeff
}

// Combine returns the criterion over two views a and b,
// cov*(cov_a+cov_b) - ent*(meanH_a+meanH_b)/2, and, when both results carry
// gradients, the gradients with respect to each view's embeddings.
func Combine(a, b *Result, c Coefficients) (loss float64, gradA, gradB []float64) {
	loss = c.Cov*(a.CovLoss+b.CovLoss) - c.Ent*(a.MeanEntropy+b.MeanEntropy)/2
	if a.GradEntropy == nil || b.GradEntropy == nil {
		return loss, nil, nil
	}
	g := func(r *Result) []float64 {
		out := make([]float64, len(r.GradEntropy))
		for i := range out {
			out[i] = c.Cov*r.GradCov[i] - c.Ent/2*r.GradEntropy[i]
		}
		return out
	}
	return loss, g(a), g(b)
}
