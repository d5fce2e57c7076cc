package e2mc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

func TestMain(m *testing.M) { vktest.Main(m) }

// Tolerances of issue 4: entropy and covariance loss to 1e-5 absolute,
// gradients to 1e-4 relative (2-norm of the difference over the reference's).
const (
	valueTol = 1e-5
	gradTol  = 1e-4
)

func toDevice(t *testing.T, d *vk.Device, z []float32, n, dim int) *layers.Tensor {
	t.Helper()
	x, err := layers.FromHost(context.Background(), d, z, n, dim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Release)
	return x
}

// newTensor makes an uninitialised device tensor, released when the test ends.
func newTensor(t *testing.T, d *vk.Device, shape ...int) *layers.Tensor {
	t.Helper()
	x, err := layers.New(d, shape...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Release)
	return x
}

func newStream(t *testing.T, d *vk.Device) *vk.Stream {
	t.Helper()
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// deviceView measures z on the device as one view of a two-view loss whose
// other view is z too, and returns the measurement and the gradient of
// Cov*cov - Ent/2*meanH with respect to z.
func deviceView(t *testing.T, d *vk.Device, z []float32, n, dim int, crit *Criterion) (*Measurement, []float32) {
	t.Helper()
	zt := toDevice(t, d, z, n, dim)
	ga, gb := newTensor(t, d, n, dim), newTensor(t, d, n, dim)
	c := crit.Coefficients
	loss, err := crit.Loss(context.Background(), newStream(t, d), zt, zt, ga, gb)
	if err != nil {
		t.Fatal(err)
	}
	g, err := ga.Download(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := c.Cov*2*loss.A.CovLoss - c.Ent*loss.A.MeanEntropy; math.Abs(loss.Total-want) > 1e-12*math.Max(1, math.Abs(want)) {
		t.Errorf("total %v, want %v from its parts", loss.Total, want)
	}
	return loss.A, g
}

func compareMeasurement(t *testing.T, got *Measurement, gotGrad []float32, entropy []float64, meanH, cov float64, wantGrad []float64) {
	t.Helper()
	if math.Abs(got.MeanEntropy-meanH) > valueTol {
		t.Errorf("mean entropy %v, want %v", got.MeanEntropy, meanH)
	}
	if math.Abs(got.CovLoss-cov) > valueTol {
		t.Errorf("cov loss %v, want %v", got.CovLoss, cov)
	}
	worst := 0.0
	for j, h := range entropy {
		worst = math.Max(worst, math.Abs(float64(got.Entropy[j])-h))
	}
	if worst > valueTol {
		t.Errorf("per-column entropy off by up to %g", worst)
	}
	if e := relErr(widen(gotGrad), wantGrad); e > gradTol {
		t.Errorf("gradient: relative error %g", e)
	}
}

// combined is the gradient of Cov*cov - Ent/2*meanH from the parts.
func combined(gEnt, gCov []float64, c Coefficients) []float64 {
	out := make([]float64, len(gEnt))
	for i := range out {
		out[i] = c.Cov*gCov[i] - c.Ent/2*gEnt[i]
	}
	return out
}

// TestDeviceMatchesReference runs random inputs of awkward shapes through the
// device and compares with the float64 reference.
func TestDeviceMatchesReference(t *testing.T) {
	d := vktest.Device(t)
	cases := []struct {
		n, d       int
		bound      Bound
		sortRows   uint32 // shared-memory sort capacity; 0: the device's
		sharedSort bool   // the shared-memory column kernel, also on CPU devices
	}{
		{4, 1, BoundSigmoid, 0, false},
		{5, 3, BoundNone, 0, false},
		{31, 7, BoundNormal, 0, false},
		{97, 130, BoundSigmoid, 0, false}, // N < D: Gram path; npad crosses a power of two
		{300, 17, BoundNormal, 0, false},  // N > D: covariance path
		{1024, 64, BoundSigmoid, 0, false},
		{4096, 3, BoundNormal, 0, false}, // the most a 32 KiB device sorts in shared memory
		{5, 3, BoundSigmoid, 0, true},    // the GPUs' kernel
		{300, 17, BoundNormal, 0, true},
		{4096, 3, BoundNone, 0, true},
		{1000, 5, BoundNormal, 64, false}, // multi-pass sort: 16 blocks, 4 merge stages
		{5003, 3, BoundSigmoid, 0, false}, // longer than any 32 KiB device sorts in shared memory
	}
	coef := Coefficients{Ent: 10, Cov: 1}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%dx%d-%v-sort%d-shared=%v", c.n, c.d, c.bound, c.sortRows, c.sharedSort), func(t *testing.T) {
			z := caseInput(torchCase{n: c.n, d: c.d})
			p := Params{Bound: c.bound, Eps: DefaultEps}
			ref, err := Reference(widen(z), c.n, c.d, p, true)
			if err != nil {
				t.Fatal(err)
			}
			crit := &Criterion{Params: p, Coefficients: coef, sortRows: c.sortRows, sharedSort: c.sharedSort}
			got, g := deviceView(t, d, z, c.n, c.d, crit)
			compareMeasurement(t, got, g, ref.Entropy, ref.MeanEntropy, ref.CovLoss, combined(ref.GradEntropy, ref.GradCov, coef))
		})
	}
}

// TestDeviceMatchesTorch compares the device with the authors' formulation
// run by PyTorch, on the shapes of the three methods, odd N and ties.
func TestDeviceMatchesTorch(t *testing.T) {
	d := vktest.Device(t)
	cases := append([]torchCase{
		{n: 512, d: 8192, bound: BoundSigmoid, eps: DefaultEps}, // VICReg
		{n: 256, d: 128, bound: BoundNormal, eps: Float32Eps},   // SwAV
		{n: 257, d: 2048, bound: BoundNormal, eps: Float32Eps},  // SimSiam, odd N
	}, torchCases...)
	for _, c := range cases {
		t.Run(fmt.Sprintf("%dx%d-%v-ties=%v", c.n, c.d, c.bound, c.ties), func(t *testing.T) {
			z := caseInput(c)
			o := runTorch(t, c, z)
			coef := Coefficients{Ent: 1, Cov: 25}
			crit := &Criterion{Params: Params{Bound: c.bound, Eps: c.eps}, Coefficients: coef}
			got, g := deviceView(t, d, z, c.n, c.d, crit)
			compareMeasurement(t, got, g, o.entropy, o.MeanEntropy, o.CovLoss, combined(o.gradEntropy, o.gradCov, coef))
		})
	}
}

// TestLossNonFinite checks that a NaN in the embeddings ends in an error
// naming the loss term, not in a silently NaN loss.
func TestLossNonFinite(t *testing.T) {
	d := vktest.Device(t)
	const n, dim = 16, 3
	z := caseInput(torchCase{n: n, d: dim})
	bad := append([]float32(nil), z...)
	bad[5] = float32(math.NaN())
	crit := &Criterion{Params: Params{Bound: BoundSigmoid, Eps: DefaultEps}, Coefficients: Coefficients{Ent: 10, Cov: 1}}
	_, err := crit.Loss(context.Background(), newStream(t, d), toDevice(t, d, z, n, dim), toDevice(t, d, bad, n, dim), nil, nil)
	var nf *NonFiniteError
	if !errors.As(err, &nf) || !strings.Contains(err.Error(), "view b") {
		t.Fatalf("got %v, want a NonFiniteError naming view b", err)
	}
}
