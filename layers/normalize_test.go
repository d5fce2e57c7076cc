package layers

import (
	"fmt"
	"math"
	"testing"
)

// Row-wise normalisation in float32 against float64: the sums of squares
// and dot products are compensated sums, so the forward holds about 1e-6;
// the brief's bounds are 1e-5 forward and 1e-4 for gradients.
const (
	normFwdTol  = 1e-5
	normGradTol = 1e-4
)

// normalizeShapes: one row, one column (the gradient of a 1-element row's
// normalisation is 0, tested through a residual, below), primes, a matrix
// across 12 KiB segments and long rows across segments.
var normalizeShapes = [][]int{{1, 1}, {1, 7}, {13, 1}, {7, 13}, {31, 101}, {3, 1031}}

// l2NormalizeRef is F.normalize(x, dim=1, eps) in float64.
func l2NormalizeRef(x []float64, d int, eps float64) []float64 {
	y := make([]float64, len(x))
	for r := 0; r < len(x)/d; r++ {
		row := x[r*d : (r+1)*d]
		var ss float64
		for _, v := range row {
			ss += v * v
		}
		nrm := math.Max(math.Sqrt(ss), eps)
		for j, v := range row {
			y[r*d+j] = v / nrm
		}
	}
	return y
}

// cosineRef is torch 1.13's F.cosine_similarity(a, b, dim=1, eps): each
// norm clamped at eps on its own.
func cosineRef(a, b []float64, d int, eps float64) []float64 {
	y := make([]float64, len(a)/d)
	for r := range y {
		var ab, aa, bb float64
		for j := r * d; j < (r+1)*d; j++ {
			ab += a[j] * b[j]
			aa += a[j] * a[j]
			bb += b[j] * b[j]
		}
		y[r] = ab / (math.Max(math.Sqrt(aa), eps) * math.Max(math.Sqrt(bb), eps))
	}
	return y
}

// plusInputs adds the inputs xs to an op's output y of their size: for rows
// of one element the normalisations are constant (their gradient is 0), and
// the gradient check then sees that the op's backward adds nothing to the
// identity's.
func plusInputs(tp *Tape, y *Var, xs ...*Var) *Var {
	if y == nil {
		return nil
	}
	y = tp.Reshape(y, xs[0].Shape()...)
	for _, x := range xs {
		y = tp.Add(y, x)
	}
	return y
}

// addInputs is plusInputs in float64.
func addInputs(y []float64, xs ...[]float64) []float64 {
	out := append([]float64(nil), y...)
	for _, x := range xs {
		for i, v := range x {
			out[i] += v
		}
	}
	return out
}

func TestL2NormalizeGrad(t *testing.T) {
	for _, shape := range normalizeShapes {
		d := shape[1]
		c := gradCase{
			name:   fmt.Sprint(shape),
			inputs: [][]int{shape},
			op:     func(tp *Tape, in []*Var) *Var { return tp.L2Normalize(in[0]) },
			ref: memoRows([]int{d}, d, func(in [][]float64, out []float64) {
				copy(out, l2NormalizeRef(in[0], d, normalizeEps))
			}),
			fwdTol: normFwdTol, gradTol: normGradTol,
		}
		if d == 1 {
			c.op = func(tp *Tape, in []*Var) *Var { return plusInputs(tp, tp.L2Normalize(in[0]), in[0]) }
			c.ref = func(in [][]float64) []float64 { return addInputs(l2NormalizeRef(in[0], d, normalizeEps), in[0]) }
		}
		checkGrad(t, c)
	}
}

// TestL2NormalizeClamped normalises rows whose norms lie below eps = 1e-12:
// they are divided by eps and, as in PyTorch, their gradient is the output
// gradient over eps (the clamp passes none to the norm).
func TestL2NormalizeClamped(t *testing.T) {
	const d = 9
	checkGrad(t, gradCase{
		name:   "clamped",
		inputs: [][]int{{4, d}},
		init: func(_ int, x []float64) {
			for i, v := range randn(21, len(x)) {
				x[i] = 1e-14 * float64(v)
			}
		},
		op:     func(tp *Tape, in []*Var) *Var { return tp.L2Normalize(in[0]) },
		ref:    func(in [][]float64) []float64 { return l2NormalizeRef(in[0], d, normalizeEps) },
		step:   1e-18, // far below the rows' norms of about 3e-14
		fwdTol: normFwdTol, gradTol: normGradTol,
	})
}

func TestCosineSimilarityGrad(t *testing.T) {
	for _, shape := range normalizeShapes {
		d := shape[1]
		c := gradCase{
			name:   fmt.Sprint(shape),
			inputs: [][]int{shape, shape},
			op:     func(tp *Tape, in []*Var) *Var { return tp.CosineSimilarity(in[0], in[1]) },
			ref: memoRows([]int{d, d}, 1, func(in [][]float64, out []float64) {
				copy(out, cosineRef(in[0], in[1], d, cosineEps))
			}),
			fwdTol: normFwdTol, gradTol: normGradTol,
		}
		if d == 1 {
			c.op = func(tp *Tape, in []*Var) *Var {
				return plusInputs(tp, tp.CosineSimilarity(in[0], in[1]), in[0], in[1])
			}
			c.ref = func(in [][]float64) []float64 {
				return addInputs(cosineRef(in[0], in[1], d, cosineEps), in[0], in[1])
			}
		}
		checkGrad(t, c)
	}
}

// TestCosineSimilaritySelf takes the cosine of a value with itself (1 for
// every row; the two gradients of the one input accumulate) plus its cosine
// with another value.
func TestCosineSimilaritySelf(t *testing.T) {
	checkGrad(t, gradCase{
		name:   "self",
		inputs: [][]int{{6, 11}, {6, 11}},
		op: func(tp *Tape, in []*Var) *Var {
			return tp.Add(tp.CosineSimilarity(in[0], in[0]), tp.CosineSimilarity(in[0], in[1]))
		},
		ref: func(in [][]float64) []float64 {
			return addInputs(cosineRef(in[0], in[0], 11, cosineEps), cosineRef(in[0], in[1], 11, cosineEps))
		},
		fwdTol: normFwdTol, gradTol: normGradTol,
	})
}

// TestNormalizeKernels checks the exported kernel-level functions, and
// L2Normalize in place.
func TestNormalizeKernels(t *testing.T) {
	for _, dev := range testDevices(t) {
		for _, shape := range [][]int{{1, 1}, {7, 13}, {31, 101}} {
			t.Run(fmt.Sprintf("%s/%v", dev.name, shape), func(t *testing.T) {
				n, d := shape[0], shape[1]
				ha, hb := randn(uint64(n*d), n*d), randn(uint64(n*d+1), n*d)
				a, b := upload(t, dev.dev, ha, n, d), upload(t, dev.dev, hb, n, d)
				cos := empty(t, dev.dev, n)
				s := stream(t, dev.dev)
				if err := CosineSimilarity(s, cos, a, b); err != nil {
					t.Fatal(err)
				}
				if err := L2Normalize(s, a, a); err != nil {
					t.Fatal(err)
				}
				assertClose(t, "cosine", run(t, s, cos), cosineRef(opsWiden(ha), opsWiden(hb), d, cosineEps), normFwdTol)
				got, err := a.Download(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				assertClose(t, "l2 normalize in place", got, l2NormalizeRef(opsWiden(ha), d, normalizeEps), normFwdTol)
			})
		}
	}
}

func TestNormalizeShapeErrors(t *testing.T) {
	checkOpErrors(t, map[string]opCall{
		"l2 rank 1":   {[][]int{{5}}, func(tp *Tape, in []*Var) *Var { return tp.L2Normalize(in[0]) }},
		"l2 rank 3":   {[][]int{{2, 3, 4}}, func(tp *Tape, in []*Var) *Var { return tp.L2Normalize(in[0]) }},
		"cosine pair": {[][]int{{3, 4}, {4, 3}}, func(tp *Tape, in []*Var) *Var { return tp.CosineSimilarity(in[0], in[1]) }},
	})
}
