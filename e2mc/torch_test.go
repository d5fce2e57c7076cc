package e2mc

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/loader"
)

// torchCase is one input of the PyTorch oracle.
type torchCase struct {
	n, d  int
	bound Bound
	eps   float64
	ties  bool // quantise some columns so that they hold repeated values
}

var torchCases = []torchCase{
	{n: 64, d: 9, bound: BoundSigmoid, eps: DefaultEps},
	{n: 37, d: 5, bound: BoundNormal, eps: Float32Eps},
	{n: 101, d: 3, bound: BoundNone, eps: DefaultEps},
	{n: 50, d: 7, bound: BoundSigmoid, eps: DefaultEps, ties: true},
}

// torchOracle is what torch_reference.py computed for one input.
type torchOracle struct {
	MeanEntropy float64 `json:"mean_entropy"`
	CovLoss     float64 `json:"cov_loss"`
	M           int     `json:"m"`
	entropy     []float64
	gradEntropy []float64
	gradCov     []float64
}

// caseInput returns the case's embeddings as float32 values (what the device
// sees), widened to float64.
func caseInput(c torchCase) []float32 {
	z := columns(uint64(c.n*31+c.d), c.n, c.d)
	out := make([]float32, len(z))
	for i, v := range z {
		if c.ties && (i%c.d)%2 == 0 {
			v = math.Round(v*2) / 2
		}
		out[i] = float32(v)
	}
	return out
}

// runTorch runs the oracle on z.
func runTorch(t *testing.T, c torchCase, z []float32) *torchOracle {
	t.Helper()
	script, err := os.ReadFile("testdata/torch_reference.py")
	if err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	if err := loader.EncodeNpy(&raw, []int{c.n, c.d}, z); err != nil {
		t.Fatal(err)
	}
	args := []string{c.bound.String(), fmt.Sprint(c.eps), "0"}
	dir := oracle.Cached(t, []string{"torch", "numpy"}, func(py, dir string) {
		in := filepath.Join(dir, "z.npy")
		if err := os.WriteFile(in, raw.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		out := oracle.RunFile(t, py, "testdata/torch_reference.py", append(append([]string{in}, args...), dir)...)
		if err := os.WriteFile(filepath.Join(dir, "result.json"), out, 0o644); err != nil {
			t.Fatal(err)
		}
	}, script, raw.Bytes(), []byte(strings.Join(args, " ")))
	var o torchOracle
	oracle.ReadJSON(t, filepath.Join(dir, "result.json"), &o)
	for name, dst := range map[string]*[]float64{"entropy": &o.entropy, "grad_entropy": &o.gradEntropy, "grad_cov": &o.gradCov} {
		a, err := loader.ReadNpy(filepath.Join(dir, name+".npy"))
		if err != nil {
			t.Fatal(err)
		}
		*dst = a.Data
	}
	return &o
}

func widen(z []float32) []float64 {
	out := make([]float64, len(z))
	for i, v := range z {
		out[i] = float64(v)
	}
	return out
}

// relErr is ||got - want|| / ||want||.
func relErr(got, want []float64) float64 {
	var d, n float64
	for i := range want {
		d += (got[i] - want[i]) * (got[i] - want[i])
		n += want[i] * want[i]
	}
	return math.Sqrt(d / n)
}

// TestReferenceMatchesTorch checks the Go reference against the authors'
// formulation run by PyTorch with autograd, ties included.
func TestReferenceMatchesTorch(t *testing.T) {
	for _, c := range torchCases {
		t.Run(fmt.Sprintf("%dx%d-%v-ties=%v", c.n, c.d, c.bound, c.ties), func(t *testing.T) {
			z := caseInput(c)
			o := runTorch(t, c, z)
			r, err := Reference(widen(z), c.n, c.d, Params{Bound: c.bound, Eps: c.eps}, true)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(r.MeanEntropy-o.MeanEntropy) > 1e-9 || math.Abs(r.CovLoss-o.CovLoss) > 1e-12 {
				t.Errorf("mean entropy %v cov %v; torch %v %v", r.MeanEntropy, r.CovLoss, o.MeanEntropy, o.CovLoss)
			}
			if e := relErr(r.Entropy, o.entropy); e > 1e-10 {
				t.Errorf("entropy: relative error %g", e)
			}
			if e := relErr(r.GradEntropy, o.gradEntropy); e > 1e-9 {
				t.Errorf("entropy gradient: relative error %g", e)
			}
			if e := relErr(r.GradCov, o.gradCov); e > 1e-9 {
				t.Errorf("covariance gradient: relative error %g", e)
			}
		})
	}
}
