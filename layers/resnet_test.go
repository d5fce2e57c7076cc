package layers

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// torchResNet runs testdata/torch_resnet.py (cached) and returns its output
// directory and manifest.
func torchResNet(t *testing.T, args ...string) (string, map[string][]int) {
	t.Helper()
	script, err := os.ReadFile("testdata/torch_resnet.py")
	if err != nil {
		t.Fatal(err)
	}
	dir := oracle.Cached(t, []string{"torch", "torchvision", "numpy"}, func(py, dir string) {
		oracle.RunFile(t, py, "testdata/torch_resnet.py", append([]string{dir}, args...)...)
	}, script, []byte(strings.Join(args, " ")))
	var manifest map[string][]int
	oracle.ReadJSON(t, filepath.Join(dir, "manifest.json"), &manifest)
	return dir, manifest
}

// TestResNet18MatchesTorch loads a torchvision ResNet-18's state, runs one
// train-mode forward and backward with cross-entropy, and compares the
// logits, the loss, every parameter's gradient and the running statistics
// with PyTorch's.
func TestResNet18MatchesTorch(t *testing.T) {
	const batch, size, classes = 3, 64, 10
	dir, manifest := torchResNet(t, "18", "3", "64", "10")
	ctx := context.Background()
	d := vktest.Device(t)
	r, err := NewResNet(ctx, d, ResNetConfig{Depth: 18, Classes: classes}, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Release)
	sd := map[string]HostTensor{}
	for name, shape := range manifest {
		if key, ok := strings.CutPrefix(name, "init/"); ok {
			sd[key] = HostTensor{Shape: shape, Data: oracle.ReadFloat32s(t, filepath.Join(dir, name)), Int64: strings.HasSuffix(key, "num_batches_tracked")}
		}
	}
	if err := LoadStateDict(ctx, r, sd, true); err != nil {
		t.Fatal(err)
	}
	var labels []int
	for _, v := range oracle.ReadFloat32s(t, filepath.Join(dir, "labels")) {
		labels = append(labels, int(v))
	}
	s := stream(t, d)
	tp := NewTape(s)
	logits := r.Forward(tp, Constant(upload(t, d, oracle.ReadFloat32s(t, filepath.Join(dir, "x")), batch, 3, size, size)))
	loss := tp.CrossEntropy(logits, labels)
	tp.Keep(logits)
	tp.Keep(loss)
	if err := tp.Backward(loss); err != nil {
		t.Fatal(err)
	}
	tp.Release()
	t.Cleanup(func() {
		logits.Value.Release()
		loss.Value.Release()
		for _, p := range Parameters(r) {
			p.ZeroGrad()
		}
	})
	assertClose(t, "logits", run(t, s, logits.Value), toF64(oracle.ReadFloat32s(t, filepath.Join(dir, "logits"))), 1e-4)
	got, err := loss.Value.Download(ctx)
	if err != nil {
		t.Fatal(err)
	}
	assertClose(t, "loss", got, toF64(oracle.ReadFloat32s(t, filepath.Join(dir, "loss"))), 1e-4)
	after, err := StateDict(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, e := range r.State("") {
		switch {
		case e.Param != nil:
			if e.Param.Grad == nil {
				t.Errorf("%s took no gradient", e.Name)
				continue
			}
			g, err := e.Param.Grad.Download(ctx)
			if err != nil {
				t.Fatal(err)
			}
			assertClose(t, "gradient of "+e.Name, g, toF64(oracle.ReadFloat32s(t, filepath.Join(dir, "grad/"+e.Name))), 1e-3)
		default:
			assertClose(t, e.Name+" after the step", after[e.Name].Data, toF64(oracle.ReadFloat32s(t, filepath.Join(dir, "after/"+e.Name))), 1e-4)
		}
		checked++
	}
	if checked != len(sd) {
		t.Errorf("checked %d state entries of %d", checked, len(sd))
	}
}

// TestResNetStateNames compares the state names and shapes of ResNet-18, -34
// and -50 with torchvision's, in order.
func TestResNetStateNames(t *testing.T) {
	py := oracle.Python(t, "torch", "torchvision")
	var want map[string][][2]json.RawMessage
	if err := json.Unmarshal(oracle.RunFile(t, py, "testdata/torch_resnet.py", "--names", "1000", "18", "34", "50"), &want); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d := vktest.Device(t)
	for _, depth := range []int{18, 34, 50} {
		r, err := NewResNet(ctx, d, ResNetConfig{Depth: depth, Classes: 1000}, rand.New(rand.NewPCG(1, 2)))
		if err != nil {
			t.Fatal(err)
		}
		got := r.State("")
		ref := want[strconv.Itoa(depth)]
		if len(got) != len(ref) {
			t.Errorf("resnet-%d: %d state entries, torchvision has %d", depth, len(got), len(ref))
		}
		for i := 0; i < min(len(got), len(ref)); i++ {
			var name string
			var shape []int
			if json.Unmarshal(ref[i][0], &name) != nil || json.Unmarshal(ref[i][1], &shape) != nil {
				t.Fatalf("bad oracle entry %s", ref[i])
			}
			e := got[i]
			var have []int
			switch {
			case e.Param != nil:
				have = e.Param.Value.Shape()
			case e.Buffer != nil:
				have = e.Buffer.Shape()
			default:
				have = []int{}
			}
			if e.Name != name || !slices.Equal(have, shape) {
				t.Errorf("resnet-%d entry %d: %s %v, torchvision has %s %v", depth, i, e.Name, have, name, shape)
				break
			}
		}
		r.Release()
	}
}

// TestResNet50Step runs one training step of ResNet-50 at batch 2 and 224 px
// (forward, cross-entropy, backward, SGD) and checks that the loss is finite
// and every parameter took a finite gradient and moved.
func TestResNet50Step(t *testing.T) {
	if testing.Short() {
		t.Skip("a ResNet-50 step takes seconds on lavapipe")
	}
	ctx := context.Background()
	d := vktest.Device(t)
	d.ResetPeakMemory()
	base := d.MemoryInUse()
	r, err := NewResNet(ctx, d, ResNetConfig{Depth: 50, Classes: 10}, rand.New(rand.NewPCG(3, 4)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Release)
	params := Parameters(r)
	opt, err := NewSGD([]Group{{Params: params, WeightDecay: 1e-4}}, 0.9)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(opt.Release)
	before := map[*Var][]float32{}
	for _, p := range params[:3] {
		before[p], _ = p.Value.Download(ctx)
	}
	s := stream(t, d)
	tp := NewTape(s)
	x := upload(t, d, randn(5, 2*3*224*224), 2, 3, 224, 224)
	loss := tp.CrossEntropy(r.Forward(tp, Constant(x)), []int{3, 7})
	tp.Keep(loss)
	if err := tp.Backward(loss); err != nil {
		t.Fatal(err)
	}
	tp.Release()
	if err := opt.Step(s, 0.1); err != nil {
		t.Fatal(err)
	}
	got := run(t, s, loss.Value)
	loss.Value.Release()
	t.Logf("loss %v; peak device memory %s above the %s in use before",
		got[0], vk.FormatBytes(d.PeakMemory()-base), vk.FormatBytes(base))
	if math.IsNaN(float64(got[0])) || math.IsInf(float64(got[0]), 0) || got[0] <= 0 {
		t.Fatalf("loss %v", got[0])
	}
	for _, p := range params {
		if p.Grad == nil {
			t.Fatalf("a parameter of shape %v took no gradient", p.Shape())
		}
	}
	for p, old := range before {
		now, err := p.Value.Download(ctx)
		if err != nil {
			t.Fatal(err)
		}
		moved := 0
		for i := range now {
			if math.IsNaN(float64(now[i])) {
				t.Fatalf("parameter %v is NaN after the step", p.Shape())
			}
			if now[i] != old[i] {
				moved++
			}
		}
		if moved < len(now)/2 {
			t.Errorf("parameter %v: only %d of %d values moved", p.Shape(), moved, len(now))
		}
	}
	for _, p := range params {
		p.ZeroGrad()
	}
}

// TestResNetFlops checks ForwardFlops against torchvision's published
// multiply-adds at 224 px (1.81 G for ResNet-18, 3.66 G for -34, 4.09 G for
// -50, each with the 1000-class fc).
func TestResNetFlops(t *testing.T) {
	for _, c := range []struct {
		depth int
		gmacs float64
	}{{18, 1.814}, {34, 3.664}, {50, 4.089}} {
		f, err := ResNetConfig{Depth: c.depth, Classes: 1000}.ForwardFlops(1, 224, 224)
		if err != nil {
			t.Fatal(err)
		}
		if got := f / 2 / 1e9; math.Abs(got-c.gmacs) > 0.01*c.gmacs {
			t.Errorf("resnet-%d: %.3f G multiply-adds, torchvision reports %.3f G", c.depth, got, c.gmacs)
		}
	}
}
