package layers

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// Losses reduce to one value: the forward holds the brief's 1e-5 relative,
// gradients 1e-4.
const (
	lossFwdTol  = 1e-5
	lossGradTol = 1e-4
)

func mseRef(a, b []float64) []float64 {
	var s float64
	for i := range a {
		s += (a[i] - b[i]) * (a[i] - b[i])
	}
	return []float64{s / float64(len(a))}
}

func TestMSEGrad(t *testing.T) {
	for _, shape := range [][]int{{1}, {13}, {7, 13}, {3, 5, 7}, {31, 101}} {
		checkGrad(t, gradCase{
			name:   fmt.Sprint(shape),
			inputs: [][]int{shape, shape},
			op:     func(tp *Tape, in []*Var) *Var { return tp.MSE(in[0], in[1]) },
			ref:    func(in [][]float64) []float64 { return mseRef(in[0], in[1]) },
			fwdTol: lossFwdTol, gradTol: lossGradTol,
		})
	}
	// A target that takes no gradient, as in a regression.
	checkGrad(t, gradCase{
		name:   "target",
		inputs: [][]int{{5, 9}, {5, 9}},
		noGrad: []int{1},
		op:     func(tp *Tape, in []*Var) *Var { return tp.MSE(in[0], in[1]) },
		ref:    func(in [][]float64) []float64 { return mseRef(in[0], in[1]) },
		fwdTol: lossFwdTol, gradTol: lossGradTol,
	})
}

// ceLabels are class indices for n rows of k classes: every class where
// n >= k, the first and the last among them.
func ceLabels(n, k int) []int {
	labels := make([]int, n)
	for i := range labels {
		labels[i] = (7*i + k - 1) % k
	}
	return labels
}

// crossEntropyRef is F.cross_entropy (mean over rows) in float64, through
// a memoised row-wise negative log-likelihood (the labels enter memoRows as
// a second input, one value per row).
func crossEntropyRef(k int, labels []int) func(in [][]float64) []float64 {
	lab := make([]float64, len(labels))
	for i, l := range labels {
		lab[i] = float64(l)
	}
	nll := memoRows([]int{k, 1}, 1, func(in [][]float64, out []float64) {
		out[0] = -softmaxRef(in[0], k, true)[int(in[1][0])]
	})
	return func(in [][]float64) []float64 {
		return []float64{sum64(nll([][]float64{in[0], lab})) / float64(len(labels))}
	}
}

func TestCrossEntropyGrad(t *testing.T) {
	cases := []struct {
		n, k  int
		scale float64
	}{
		{1, 1, 1}, // the loss is 0: tested through the sum of the logits
		{1, 7, 1},
		{7, 13, 1},
		{64, 10, 3},  // many short rows, confident logits
		{31, 101, 1}, // across 12 KiB segments
		{3, 1031, 1}, // long rows across segments
		{7, 13, 40},  // logits beyond exp's float32 range
	}
	for _, c := range cases {
		labels := ceLabels(c.n, c.k)
		ref := crossEntropyRef(c.k, labels)
		gc := gradCase{
			name:   fmt.Sprintf("%dx%d/scale=%v", c.n, c.k, c.scale),
			inputs: [][]int{{c.n, c.k}},
			init:   scaledInit(uint64(c.n*c.k), c.scale),
			op:     func(tp *Tape, in []*Var) *Var { return tp.CrossEntropy(in[0], labels) },
			ref:    ref,
			fwdTol: lossFwdTol, gradTol: lossGradTol,
		}
		if c.k == 1 {
			gc.op = func(tp *Tape, in []*Var) *Var { return tp.Add(tp.CrossEntropy(in[0], labels), tp.Sum(in[0])) }
			gc.ref = func(in [][]float64) []float64 { return []float64{ref(in)[0] + sum64(in[0])} }
		}
		checkGrad(t, gc)
	}
}

func TestCrossEntropyLabelErrors(t *testing.T) {
	ce := func(labels []int) opCall {
		return opCall{[][]int{{3, 4}}, func(tp *Tape, in []*Var) *Var { return tp.CrossEntropy(in[0], labels) }}
	}
	checkOpErrors(t, map[string]opCall{
		"negative": ce([]int{0, -1, 2}),
		"too big":  ce([]int{0, 4, 2}),
		"too few":  ce([]int{0, 1}),
		"too many": ce([]int{0, 1, 2, 3}),
		"rank 3":   {[][]int{{3, 4, 1}}, func(tp *Tape, in []*Var) *Var { return tp.CrossEntropy(in[0], []int{0, 1, 2}) }},
		"mse":      {[][]int{{3, 4}, {4, 3}}, func(tp *Tape, in []*Var) *Var { return tp.MSE(in[0], in[1]) }},
	})
}

// torchCase is one op checked against PyTorch (testdata/torch_ops.py).
type torchCase struct {
	Name   string  `json:"name"`
	Op     string  `json:"op"`
	Shapes [][]int `json:"shapes"`
	labels []int
	outLen int
	// tiny scales row 0 of input i by tiny[i] (0: leave it): rows whose
	// norms fall below the ops' eps, where the clamps act.
	tiny []float64
	run  func(tp *Tape, in []*Var) *Var
	// rows compares each row of the output and the gradients on its own
	// (width: the output row's length); clamped rows have gradients many
	// orders of magnitude larger than the others, which would hide them
	// from a whole-tensor norm.
	rows     bool
	outWidth int
}

func torchCases() []torchCase {
	return []torchCase{
		{Name: "ce", Op: "cross_entropy", Shapes: [][]int{{37, 11}}, labels: ceLabels(37, 11), outLen: 1,
			run: func(tp *Tape, in []*Var) *Var { return tp.CrossEntropy(in[0], ceLabels(37, 11)) }},
		{Name: "logsoftmax", Op: "log_softmax", Shapes: [][]int{{13, 17}}, outLen: 13 * 17,
			run: func(tp *Tape, in []*Var) *Var { return tp.LogSoftmax(in[0]) }},
		{Name: "cosine", Op: "cosine_similarity", Shapes: [][]int{{11, 19}, {11, 19}}, outLen: 11,
			tiny: []float64{1e-10, 0}, rows: true, outWidth: 1,
			run: func(tp *Tape, in []*Var) *Var { return tp.CosineSimilarity(in[0], in[1]) }},
		{Name: "normalize", Op: "normalize", Shapes: [][]int{{11, 19}}, outLen: 11 * 19,
			tiny: []float64{1e-14}, rows: true, outWidth: 19,
			run: func(tp *Tape, in []*Var) *Var { return tp.L2Normalize(in[0]) }},
		{Name: "mse", Op: "mse", Shapes: [][]int{{7, 23}, {7, 23}}, outLen: 1,
			run: func(tp *Tape, in []*Var) *Var { return tp.MSE(in[0], in[1]) }},
	}
}

// torchInputs returns the case's inputs (N(0, 1), scaled by 3 for the
// logits) and output gradient.
func torchInputs(c torchCase, seed uint64) (in [][]float32, w []float32) {
	for i, shape := range c.Shapes {
		x := randn(seed+uint64(i), elemCount(shape))
		for j := range x {
			if c.Op == "cross_entropy" {
				x[j] *= 3
			}
			if i < len(c.tiny) && c.tiny[i] != 0 && j < shape[len(shape)-1] {
				x[j] *= float32(c.tiny[i])
			}
		}
		in = append(in, x)
	}
	return in, randn(seed+99, c.outLen)
}

func float32Bytes(x []float32) []byte {
	b := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

func readFloat64s(t *testing.T, path string) []float64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float64, len(b)/8)
	for i := range out {
		out[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return out
}

// runTorchOps writes the cases' inputs, runs the oracle once (its output is
// cached between runs) and returns the directory holding its results.
func runTorchOps(t *testing.T, cases []torchCase, inputs [][][]float32, ws [][]float32) string {
	t.Helper()
	script, err := os.ReadFile("testdata/torch_ops.py")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for i, c := range cases {
		for j, x := range inputs[i] {
			files[fmt.Sprintf("%s.in%d", c.Name, j)] = float32Bytes(x)
		}
		files[c.Name+".w"] = float32Bytes(ws[i])
		if c.labels != nil {
			var b bytes.Buffer
			for _, l := range c.labels {
				binary.Write(&b, binary.LittleEndian, int32(l))
			}
			files[c.Name+".labels"] = b.Bytes()
		}
	}
	spec, err := json.Marshal(cases)
	if err != nil {
		t.Fatal(err)
	}
	files["cases.json"] = spec
	parts := [][]byte{script}
	for _, c := range cases {
		for _, suffix := range []string{".in0", ".in1", ".w", ".labels"} {
			parts = append(parts, []byte(c.Name+suffix), files[c.Name+suffix])
		}
	}
	parts = append(parts, spec)
	dir, done := oracle.CacheDir(t, parts...)
	if !done {
		// Only now look for PyTorch: importing it takes seconds.
		py := oracle.Python(t, "torch", "numpy")
		complete := false
		defer func() {
			if !complete { // also on t.Fatal: leave no partial output
				os.RemoveAll(dir)
			}
		}()
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		oracle.RunFile(t, py, "testdata/torch_ops.py", dir)
		oracle.MarkDone(t, dir)
		complete = true
	}
	return dir
}

// runOnDevice records op on fresh parameters holding inputs, runs backward
// from the output gradient w, and returns the output and the gradients.
func runOnDevice(t *testing.T, d *vk.Device, shapes [][]int, inputs [][]float32, w []float32,
	op func(tp *Tape, in []*Var) *Var) (out []float32, grads [][]float32) {
	t.Helper()
	ctx := context.Background()
	vars := make([]*Var, len(inputs))
	for i, x := range inputs {
		vars[i] = Param(upload(t, d, x, shapes[i]...))
		t.Cleanup(vars[i].ZeroGrad)
	}
	s := stream(t, d)
	tp := NewTape(s)
	y := op(tp, vars)
	if y == nil {
		t.Fatal(tp.Err())
	}
	tp.Keep(y)
	t.Cleanup(y.Value.Release)
	g := upload(t, d, w, y.Shape()...)
	if err := tp.BackwardWith(y, tp.clone(g)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(y.ZeroGrad)
	tp.Release()
	out = run(t, s, y.Value)
	for _, v := range vars {
		gv, err := v.Grad.Download(ctx)
		if err != nil {
			t.Fatal(err)
		}
		grads = append(grads, gv)
	}
	return out, grads
}

// assertRowsClose is assertClose on each row of width values.
func assertRowsClose(t *testing.T, label string, got []float32, want []float64, width int, tol float64) {
	t.Helper()
	for r := 0; r < len(want)/width; r++ {
		assertClose(t, fmt.Sprintf("%s, row %d", label, r), got[r*width:(r+1)*width], want[r*width:(r+1)*width], tol)
	}
}

// TestOpsMatchTorch checks cross-entropy, log-softmax, cosine similarity,
// L2 normalisation and MSE, forward and gradient, against PyTorch on one
// random input each; the cosine and normalisation inputs have a row whose
// norm falls below eps, where PyTorch's clamps decide the gradient.
func TestOpsMatchTorch(t *testing.T) {
	cases := torchCases()
	inputs := make([][][]float32, len(cases))
	ws := make([][]float32, len(cases))
	for i, c := range cases {
		inputs[i], ws[i] = torchInputs(c, uint64(1000*i+1))
	}
	dir := runTorchOps(t, cases, inputs, ws)
	d := vktest.Device(t)
	for i, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			base := filepath.Join(dir, c.Name)
			out, grads := runOnDevice(t, d, c.Shapes, inputs[i], ws[i], c.run)
			want := readFloat64s(t, base+".out")
			if c.rows {
				assertRowsClose(t, "forward", out, want, c.outWidth, lossFwdTol)
			} else {
				assertClose(t, "forward", out, want, lossFwdTol)
			}
			for j, g := range grads {
				want := readFloat64s(t, fmt.Sprintf("%s.grad%d", base, j))
				label := fmt.Sprintf("gradient of input %d", j)
				if c.rows {
					assertRowsClose(t, label, g, want, c.Shapes[j][1], lossGradTol)
				} else {
					assertClose(t, label, g, want, lossGradTol)
				}
			}
		})
	}
}
