package layers

import (
	"fmt"
	"math"
	"testing"
)

// Softmax in float32 against float64: exp and log hold a few ulp and the
// row sums are compensated, so the forward holds about 1e-6; the bounds are
// the brief's 1e-5 forward and 1e-4 for gradients.
const (
	softmaxFwdTol  = 1e-5
	softmaxGradTol = 1e-4
)

// softmaxShapes: one element, one column (constant outputs, tested through
// a residual), primes, many short rows (several rows per workgroup), a
// matrix across 12 KiB segments, long rows (128 invocations per row) across
// segments, and rank 3.
var softmaxShapes = [][]int{{1, 1}, {13, 1}, {1, 7}, {7, 13}, {100, 10}, {31, 101}, {3, 1031}, {2, 3, 5}}

// softmaxRef is softmax (log: log-softmax) over rows of k in float64.
func softmaxRef(x []float64, k int, log bool) []float64 {
	y := make([]float64, len(x))
	for r := 0; r < len(x)/k; r++ {
		row := x[r*k : (r+1)*k]
		m := math.Inf(-1)
		for _, v := range row {
			m = math.Max(m, v)
		}
		var s float64
		for _, v := range row {
			s += math.Exp(v - m)
		}
		for j, v := range row {
			if log {
				y[r*k+j] = v - m - math.Log(s)
			} else {
				y[r*k+j] = math.Exp(v-m) / s
			}
		}
	}
	return y
}

// scaledInit draws N(0, scale^2) inputs.
func scaledInit(seed uint64, scale float64) func(i int, x []float64) {
	return func(i int, x []float64) {
		for j, v := range randn(seed+uint64(i), len(x)) {
			x[j] = scale * float64(v)
		}
	}
}

func TestSoftmaxGrad(t *testing.T) {
	for _, log := range []bool{false, true} {
		name, op := "softmax", (*Tape).Softmax
		if log {
			name, op = "log-softmax", (*Tape).LogSoftmax
		}
		for _, shape := range softmaxShapes {
			k := shape[len(shape)-1]
			c := gradCase{
				name:   fmt.Sprintf("%s/%v", name, shape),
				inputs: [][]int{shape},
				op:     func(tp *Tape, in []*Var) *Var { return op(tp, in[0]) },
				ref: memoRows([]int{k}, k, func(in [][]float64, out []float64) {
					copy(out, softmaxRef(in[0], k, log))
				}),
				fwdTol: softmaxFwdTol, gradTol: softmaxGradTol,
			}
			if k == 1 {
				c.op = func(tp *Tape, in []*Var) *Var { return plusInputs(tp, op(tp, in[0]), in[0]) }
				c.ref = func(in [][]float64) []float64 { return addInputs(softmaxRef(in[0], k, log), in[0]) }
			}
			checkGrad(t, c)
		}
		// Logits of spread 40: exp overflows float32 beyond 88, so this
		// needs the maximum subtracted.
		checkGrad(t, gradCase{
			name:   name + "/large",
			inputs: [][]int{{7, 13}},
			init:   scaledInit(31, 40),
			op:     func(tp *Tape, in []*Var) *Var { return op(tp, in[0]) },
			ref:    func(in [][]float64) []float64 { return softmaxRef(in[0], 13, log) },
			fwdTol: softmaxFwdTol, gradTol: softmaxGradTol,
		})
	}
}

// TestSoftmaxKernels runs the kernel-level functions on tensors allocated
// flat and viewed as [N, K], whose rows cross buffer segments on the split
// device (the kernels then work on copies with whole rows per segment).
func TestSoftmaxKernels(t *testing.T) {
	for _, dev := range testDevices(t) {
		for _, shape := range [][]int{{3, 5}, {29, 211}, {4, 3001}} {
			for _, log := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%v/log=%v", dev.name, shape, log), func(t *testing.T) {
					n, k := shape[0], shape[1]
					hx := randn(uint64(n*k), n*k)
					x, err := upload(t, dev.dev, hx, n*k).Reshape(n, k)
					if err != nil {
						t.Fatal(err)
					}
					flat := empty(t, dev.dev, n*k)
					y, err := flat.Reshape(n, k)
					if err != nil {
						t.Fatal(err)
					}
					s := stream(t, dev.dev)
					fn := Softmax
					if log {
						fn = LogSoftmax
					}
					if err := fn(s, y, x); err != nil {
						t.Fatal(err)
					}
					assertClose(t, "softmax", run(t, s, flat), softmaxRef(opsWiden(hx), k, log), softmaxFwdTol)
					if err := fn(s, x, x); err == nil {
						t.Error("no error for a result over the input")
					}
				})
			}
		}
	}
}

// memoRows makes a row-wise reference cheap to differentiate: f computes
// one output row (outW values) from one row of each input (rows of the
// given widths), and the returned reference recomputes only the rows whose
// inputs changed since its last call. The finite differences change one
// element at a time, so a gradient check then costs a copy per evaluation
// instead of a full reference (which made large cases take seconds).
func memoRows(widths []int, outW int, f func(in [][]float64, out []float64)) func(in [][]float64) []float64 {
	var last [][]float64
	var out []float64
	return func(in [][]float64) []float64 {
		rows := len(in[0]) / widths[0]
		fresh := last == nil
		if fresh {
			last = make([][]float64, len(in))
			for i := range in {
				last[i] = append([]float64(nil), in[i]...)
			}
			out = make([]float64, rows*outW)
		}
		row := make([][]float64, len(in))
		for r := 0; r < rows; r++ {
			changed := fresh
			for i, w := range widths {
				row[i] = in[i][r*w : (r+1)*w]
				for j, v := range row[i] {
					if v != last[i][r*w+j] {
						changed = true
						last[i][r*w+j] = v
					}
				}
			}
			if changed {
				f(row, out[r*outW:(r+1)*outW])
			}
		}
		return append([]float64(nil), out...)
	}
}
