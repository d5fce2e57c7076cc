package ssl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// TestMain closes the shared test device after the package's tests and
// fails the run if the validation layer reported anything.
func TestMain(m *testing.M) { vktest.Main(m) }

// testDevice returns the shared test device of the package's tests.
func testDevice(t testing.TB) *vk.Device { return vktest.Device(t) }

// regCase is one input of the MMCR / AUH checks: views of n samples of d
// values each.
type regCase struct {
	kind        string // "mmcr" or "auh"
	views, n, d int
	t           float64 // AUH's kernel width
}

func (c regCase) name() string {
	return fmt.Sprintf("%s_v%d_n%d_d%d", c.kind, c.views, c.n, c.d)
}

// regCases have awkward sizes: one sample, prime batches, more samples than
// dimensions and the reverse, two and three views.
var regCases = []regCase{
	{kind: "mmcr", views: 2, n: 1, d: 5},
	{kind: "mmcr", views: 2, n: 13, d: 7},
	{kind: "mmcr", views: 3, n: 7, d: 19},
	{kind: "mmcr", views: 3, n: 31, d: 128},
	{kind: "auh", views: 2, n: 2, d: 3, t: 3},
	{kind: "auh", views: 2, n: 17, d: 9, t: 3},
	{kind: "auh", views: 3, n: 29, d: 16, t: 2},
	{kind: "auh", views: 2, n: 37, d: 128, t: 3},
}

// regInput returns the case's views as float32 values (what a device
// holds), [views, n, d] row-major, from N(0, 1) with a per-case seed.
func regInput(c regCase) []float32 {
	rng := rand.New(rand.NewPCG(uint64(c.views*1000003+c.n*1009+c.d), 0x5eed))
	out := make([]float32, c.views*c.n*c.d)
	for i := range out {
		out[i] = float32(rng.NormFloat64())
	}
	return out
}

// splitViews widens x ([views, n, d]) and cuts it into views.
func splitViews(x []float32, c regCase) [][]float64 {
	vs := make([][]float64, c.views)
	for v := range vs {
		vs[v] = make([]float64, c.n*c.d)
		for i := range vs[v] {
			vs[v][i] = float64(x[v*c.n*c.d+i])
		}
	}
	return vs
}

// regHost is the host float64 computation of the case.
func regHost(c regCase, views [][]float64) (float64, [][]float64) {
	if c.kind == "mmcr" {
		return mmcrHost(views, c.n, c.d)
	}
	return auhHost(views, c.n, c.d, c.t)
}

// regRelErr is ||got - want|| / ||want||, refusing a zero reference.
func regRelErr(t *testing.T, got, want []float64) float64 {
	t.Helper()
	var d, n float64
	for i := range want {
		d += (got[i] - want[i]) * (got[i] - want[i])
		n += want[i] * want[i]
	}
	if n == 0 {
		t.Fatal("the reference is all zeros; choose inputs that test something")
	}
	return math.Sqrt(d / n)
}

// regFlat concatenates the views.
func regFlat(vs [][]float64) []float64 {
	var out []float64
	for _, v := range vs {
		out = append(out, v...)
	}
	return out
}

// TestRegularizersFiniteDifference checks the closed-form gradients of the
// host computations against central differences of their losses.
func TestRegularizersFiniteDifference(t *testing.T) {
	for _, c := range regCases {
		if c.n*c.d > 600 {
			continue // the small cases cover the formulas; the big ones meet torch
		}
		t.Run(c.name(), func(t *testing.T) {
			views := splitViews(regInput(c), c)
			_, grads := regHost(c, views)
			const h = 1e-5
			fd := make([][]float64, c.views)
			for v := range views {
				fd[v] = make([]float64, len(views[v]))
				for i := range views[v] {
					x := views[v][i]
					views[v][i] = x + h
					up, _ := regHost(c, views)
					views[v][i] = x - h
					down, _ := regHost(c, views)
					views[v][i] = x
					fd[v][i] = (up - down) / (2 * h)
				}
			}
			e := regRelErr(t, regFlat(grads), regFlat(fd))
			t.Logf("gradient vs central differences: relative error %.3g", e)
			if e > 1e-6 {
				t.Errorf("gradient: relative error %.3g against central differences > 1e-6", e)
			}
		})
	}
}

// torchRegs runs testdata/torch_regs.py on every case (once, cached) and
// returns its losses and gradients by case name.
func torchRegs(t *testing.T) (map[string]float64, map[string][]float64) {
	t.Helper()
	script, err := os.ReadFile("testdata/torch_regs.py")
	if err != nil {
		t.Fatal(err)
	}
	type manifestCase struct {
		Name string  `json:"name"`
		Kind string  `json:"kind"`
		T    float64 `json:"t"`
		Path string  `json:"path"`
	}
	inputs := map[string][]byte{}
	parts := [][]byte{script}
	for _, c := range regCases {
		var raw bytes.Buffer
		if err := loader.EncodeNpy(&raw, []int{c.views, c.n, c.d}, regInput(c)); err != nil {
			t.Fatal(err)
		}
		inputs[c.name()] = raw.Bytes()
		parts = append(parts, []byte(fmt.Sprintf("%s t=%g", c.name(), c.t)), raw.Bytes())
	}
	dir := oracle.Cached(t, []string{"torch", "numpy"}, func(py, dir string) {
		var manifest []manifestCase
		for _, c := range regCases {
			path := filepath.Join(dir, c.name()+".npy")
			if err := os.WriteFile(path, inputs[c.name()], 0o644); err != nil {
				t.Fatal(err)
			}
			manifest = append(manifest, manifestCase{Name: c.name(), Kind: c.kind, T: c.t, Path: path})
		}
		m, err := json.Marshal(manifest)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cases.json"), m, 0o644); err != nil {
			t.Fatal(err)
		}
		out := oracle.RunFile(t, py, "testdata/torch_regs.py", dir)
		if err := os.WriteFile(filepath.Join(dir, "result.json"), out, 0o644); err != nil {
			t.Fatal(err)
		}
	}, parts...)
	losses := map[string]float64{}
	oracle.ReadJSON(t, filepath.Join(dir, "result.json"), &losses)
	grads := map[string][]float64{}
	for _, c := range regCases {
		a, err := loader.ReadNpy(filepath.Join(dir, c.name()+"_grad.npy"))
		if err != nil {
			t.Fatal(err)
		}
		grads[c.name()] = a.Data
	}
	return losses, grads
}

// TestRegularizersMatchTorch checks the host float64 losses and gradients
// against PyTorch's autograd (matrix_norm 'nuc', pdist) in float64.
func TestRegularizersMatchTorch(t *testing.T) {
	losses, grads := torchRegs(t)
	for _, c := range regCases {
		t.Run(c.name(), func(t *testing.T) {
			want, ok := losses[c.name()]
			if !ok {
				t.Fatalf("the oracle gave no loss for %s", c.name())
			}
			loss, g := regHost(c, splitViews(regInput(c), c))
			if math.Abs(loss-want) > 1e-6*math.Abs(want) {
				t.Errorf("loss %.15g, torch %.15g", loss, want)
			}
			e := regRelErr(t, regFlat(g), grads[c.name()])
			t.Logf("loss %.15g (torch %.15g), gradient relative error %.3g", loss, want, e)
			if e > 1e-6 {
				t.Errorf("gradient: relative error %.3g against torch > 1e-6", e)
			}
		})
	}
}

// TestRegularizersOnDevice runs Apply end to end on a real tape: the views
// are row blocks of one parameter scaled on the device (as SwAV's
// concatenated crops are), the stream runs mid-recording for the download,
// and the gradient reaches the parameter through Backward.
func TestRegularizersOnDevice(t *testing.T) {
	d := testDevice(t)
	cases := []struct {
		c     regCase
		coeff float64
	}{
		{regCase{kind: "mmcr", views: 3, n: 13, d: 128}, 0.7},
		{regCase{kind: "mmcr", views: 2, n: 1, d: 11}, 1},
		{regCase{kind: "auh", views: 2, n: 17, d: 33, t: 3}, 1.3},
	}
	for _, tc := range cases {
		c := tc.c
		t.Run(c.name(), func(t *testing.T) {
			ctx := context.Background()
			x := regInput(c)
			pt, err := layers.FromHost(ctx, d, x, c.views*c.n, c.d)
			if err != nil {
				t.Fatal(err)
			}
			p := layers.Param(pt)
			s, err := d.NewStream()
			if err != nil {
				t.Fatal(err)
			}
			tp := layers.NewTape(s)
			defer func() {
				tp.Release()
				s.Close()
				p.ZeroGrad()
				pt.Release()
			}()
			const scale = 2
			sizes := make([]int, c.views)
			for i := range sizes {
				sizes[i] = c.n
			}
			z := tp.Split(tp.Scale(p, scale), sizes...)
			var reg Regularizer = NewAUH(tc.coeff, c.t)
			if c.kind == "mmcr" {
				reg = NewMMCR(tc.coeff)
			}
			pen, err := reg.Apply(&Step{Ctx: ctx, Tape: tp}, z)
			if err != nil {
				t.Fatal(err)
			}
			if err := tp.Backward(pen.Add); err != nil {
				t.Fatal(err)
			}
			if err := s.Run(ctx); err != nil {
				t.Fatal(err)
			}
			got, err := p.Grad.Download(ctx)
			if err != nil {
				t.Fatal(err)
			}

			// The reference: the host computation on the scaled float32
			// values (scaling by 2 is exact), chained through the scale.
			scaled := make([]float32, len(x))
			for i, v := range x {
				scaled[i] = scale * v
			}
			loss, grads := regHost(c, splitViews(scaled, c))
			want := regFlat(grads)
			for i := range want {
				want[i] *= tc.coeff * scale
			}
			g64 := make([]float64, len(got))
			for i, v := range got {
				g64[i] = float64(v)
			}
			e := regRelErr(t, g64, want)
			t.Logf("device gradient: relative error %.3g", e)
			if e > 1e-4 {
				t.Errorf("gradient: relative error %.3g > 1e-4", e)
			}
			if math.Abs(pen.Value-tc.coeff*loss) > 1e-6*math.Abs(tc.coeff*loss) {
				t.Errorf("value %v, want %v", pen.Value, tc.coeff*loss)
			}
			if term := pen.HostTerms[reg.Name()]; math.Abs(term-loss) > 1e-6*math.Abs(loss) {
				t.Errorf("term %q = %v, want %v", reg.Name(), term, loss)
			}
		})
	}
}

// TestMMCRKnownValue checks a case with an exact answer: when every view of
// sample i is a multiple of the basis vector e_i, the centroids are the
// rows of the identity and the nuclear norm is N.
func TestMMCRKnownValue(t *testing.T) {
	const n, d = 5, 8
	views := make([][]float64, 3)
	for v := range views {
		views[v] = make([]float64, n*d)
		for i := range n {
			views[v][i*d+i] = float64(v + i + 1) // normalised away
		}
	}
	loss, _ := mmcrHost(views, n, d)
	if math.Abs(loss+n) > 1e-12 {
		t.Errorf("loss %v, want %v", loss, -float64(n))
	}
}

// TestRegularizersOverReplicas runs Apply on two replicas with unequal
// shares of a prime batch (each on its own logical device, joined by a
// Group): both report the global batch's value, and each replica's rows
// receive the global gradient summed over the replicas (the all-gather's
// backward; the Trainer's gradient averaging divides by the group size).
func TestRegularizersOverReplicas(t *testing.T) {
	base := testDevice(t)
	devs := []*vk.Device{base, vktest.Open(t, base.Info.Index, 1)}
	shares := []int{5, 8}
	cases := []struct {
		c     regCase
		coeff float64
	}{
		{regCase{kind: "mmcr", views: 3, n: 13, d: 24}, 0.9},
		{regCase{kind: "auh", views: 2, n: 13, d: 17, t: 3}, 1.1},
	}
	for _, tc := range cases {
		c := tc.c
		t.Run(c.name(), func(t *testing.T) {
			x := regInput(c)
			loss, grads := regHost(c, splitViews(x, c))
			g := NewGroup(len(shares))
			values := make([]float64, len(shares))
			got := make([][]float32, len(shares))
			errs := make([]error, len(shares))
			var wg sync.WaitGroup
			first := 0
			for r, b := range shares {
				wg.Add(1)
				go func(r, b, first int) {
					defer wg.Done()
					values[r], got[r], errs[r] = regReplica(devs[r], g.Comm(r), c, tc.coeff, x, first, b)
					if errs[r] != nil {
						g.Abort(fmt.Errorf("replica %d failed", r))
					}
				}(r, b, first)
				first += b
			}
			wg.Wait()
			for r, err := range errs {
				if err != nil {
					t.Fatalf("replica %d: %v", r, err)
				}
			}
			first = 0
			for r, b := range shares {
				if math.Abs(values[r]-tc.coeff*loss) > 1e-6*math.Abs(tc.coeff*loss) {
					t.Errorf("replica %d: value %v, want %v", r, values[r], tc.coeff*loss)
				}
				var want, g64 []float64
				for v := range c.views {
					for _, w := range grads[v][first*c.d : (first+b)*c.d] {
						want = append(want, float64(len(shares))*tc.coeff*w)
					}
				}
				for _, w := range got[r] {
					g64 = append(g64, float64(w))
				}
				e := regRelErr(t, g64, want)
				t.Logf("replica %d gradient: relative error %.3g", r, e)
				if e > 1e-4 {
					t.Errorf("replica %d gradient: relative error %.3g > 1e-4", r, e)
				}
				first += b
			}
		})
	}
}

// regReplica is one replica of TestRegularizersOverReplicas: it holds rows
// [first, first+b) of every view of x ([views, n, d]) as one parameter,
// applies the case's criterion and returns its value and the parameter's
// gradient.
func regReplica(d *vk.Device, comm *Comm, c regCase, coeff float64, x []float32, first, b int) (float64, []float32, error) {
	ctx := context.Background()
	var mine []float32
	for v := range c.views {
		mine = append(mine, x[(v*c.n+first)*c.d:(v*c.n+first+b)*c.d]...)
	}
	pt, err := layers.FromHost(ctx, d, mine, c.views*b, c.d)
	if err != nil {
		return 0, nil, err
	}
	defer pt.Release()
	p := layers.Param(pt)
	defer p.ZeroGrad()
	s, err := d.NewStream()
	if err != nil {
		return 0, nil, err
	}
	defer s.Close()
	tp := layers.NewTape(s)
	defer tp.Release()
	tp.SetCollective(ctx, comm)
	sizes := make([]int, c.views)
	for i := range sizes {
		sizes[i] = b
	}
	var reg Regularizer = NewAUH(coeff, c.t)
	if c.kind == "mmcr" {
		reg = NewMMCR(coeff)
	}
	pen, err := reg.Apply(&Step{Ctx: ctx, Tape: tp, Comm: comm}, tp.Split(p, sizes...))
	if err != nil {
		return 0, nil, err
	}
	if err := tp.Backward(pen.Add); err != nil {
		return 0, nil, err
	}
	if err := s.Run(ctx); err != nil {
		return 0, nil, err
	}
	g, err := p.Grad.Download(ctx)
	return pen.Value, g, err
}
