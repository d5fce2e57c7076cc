package ssl

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// The settings of testdata/torch_swav.py.
const (
	swavBatch      = 8
	swavLR, swavWD = 50.0, 0.05
	swavQueue      = 16
	// swavFloor is the absolute floor of the state comparisons: entries of
	// the state near zero (biases, running means) are held to 1e-4 of this
	// instead of 1e-4 of themselves.
	swavFloor = 1e-2
)

var swavSizes = []int{24, 24, 12, 12}

// swavOracle runs testdata/torch_swav.py (cached) and returns its directory.
func swavOracle(t *testing.T) string {
	t.Helper()
	script, err := os.ReadFile("testdata/torch_swav.py")
	if err != nil {
		t.Fatal(err)
	}
	ref, err := os.ReadFile("../e2mc/testdata/torch_reference.py")
	if err != nil {
		t.Fatal(err)
	}
	return oracle.Cached(t, []string{"torch", "torchvision", "numpy"}, func(py, dir string) {
		oracle.RunFile(t, py, "testdata/torch_swav.py", dir)
	}, script, ref)
}

// swavInputs runs the oracle and returns its directory, its checkpoint (as
// loader parts, layout detected) with the backbone's configuration, and the
// crops of the batch, one [swavBatch, 3, s, s] array per size of swavSizes.
func swavInputs(t *testing.T) (dir string, parts *loader.Parts, cfg layers.ResNetConfig, views [][]float32) {
	t.Helper()
	dir = swavOracle(t)
	root, err := loader.ReadPth(filepath.Join(dir, "model.pth"))
	if err != nil {
		t.Fatal(err)
	}
	if parts, err = loader.SplitCheckpoint(root, ""); err != nil {
		t.Fatal(err)
	}
	if cfg, err = loader.ResNetConfigFor(parts); err != nil {
		t.Fatal(err)
	}
	for i, s := range swavSizes {
		views = append(views, swavNpy(t, filepath.Join(dir, fmt.Sprintf("crop%d.npy", i)), swavBatch, 3, s, s))
	}
	return dir, parts, cfg, views
}

// swavNpy reads a float32 array the oracle saved and checks its shape.
func swavNpy(t *testing.T, path string, shape ...int) []float32 {
	t.Helper()
	a, err := loader.ReadNpy(path)
	if err != nil {
		t.Fatal(err)
	}
	if shape != nil && !slices.Equal(a.Shape, shape) {
		t.Fatalf("%s has shape %v, want %v", path, a.Shape, shape)
	}
	return a.Float32()
}

// swavEntries lists the model's state under the official model's names.
func swavEntries(m *Model) []layers.StateEntry {
	es := m.Backbone.State("")
	es = append(es, m.Heads[loader.HeadProjector].State("projection_head.")...)
	return append(es, m.Prototypes.State("prototypes.")...)
}

// swavHost downloads one state entry.
func swavHost(t *testing.T, e layers.StateEntry) []float32 {
	t.Helper()
	switch {
	case e.Param != nil:
		v, err := e.Param.Value.Download(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return v
	case e.Buffer != nil:
		v, err := e.Buffer.Download(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	return []float32{float32(*e.Count)}
}

// swavClose fails unless every |got - want| <= rel * max(|want|, floor); a
// reference of all zeros is refused.
func swavClose(t *testing.T, label string, got, want []float32, rel, floor float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, want %d", label, len(got), len(want))
		return
	}
	bad, worst, at, nonzero := 0, 0.0, 0, false
	for i := range want {
		w, g := float64(want[i]), float64(got[i])
		nonzero = nonzero || w != 0
		e := math.Abs(g-w) / math.Max(math.Abs(w), floor)
		if math.IsNaN(g) {
			e = math.Inf(1)
		}
		if e > rel {
			bad++
		}
		if e > worst {
			worst, at = e, i
		}
	}
	if !nonzero {
		t.Errorf("%s: the reference is all zeros; choose inputs that test something", label)
	}
	if worst > rel/4 {
		t.Logf("%s: worst error %.3g of the tolerance", label, worst/rel)
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d values off by more than %g relative (floor %g); worst %.3g at %d: got %v, want %v",
			label, bad, len(want), rel, floor, worst, at, got[at], want[at])
	}
}

// swavNorm returns the 2-norm of v.
func swavNorm(v []float32) float64 {
	var s float64
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	return math.Sqrt(s)
}

// swavNormClose fails unless ||got - want|| <= tol * ||want|| (2-norms).
func swavNormClose(t *testing.T, label string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, want %d", label, len(got), len(want))
		return
	}
	var diff, norm float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		diff += d * d
		norm += float64(want[i]) * float64(want[i])
	}
	switch e := math.Sqrt(diff / norm); {
	case norm == 0:
		t.Errorf("%s: the reference is all zeros; choose inputs that test something", label)
	case math.IsNaN(e) || e > tol:
		t.Errorf("%s: relative error %.3g > %.3g", label, e, tol)
	case e > tol/4:
		t.Logf("%s: relative error %.3g", label, e)
	}
}

// swavRun is one training step of method on model, as the trainer takes it
// on one replica: prepare, forward and loss, the regularizer, backward,
// BeforeUpdate, the optimizer step.
type swavRun struct {
	swav, term, e2mc float64
	pen              *Penalty
	grads            map[string][]float32 // before the optimizer step
}

func swavStep(t *testing.T, d *vk.Device, method *SwAV, model *Model, comm *Comm, views [][]float32, batch, iteration int, reg Regularizer) swavRun {
	t.Helper()
	ctx := context.Background()
	var run swavRun
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tp := layers.NewTape(s)
	defer tp.Release()
	tp.SetCollective(ctx, comm)
	st := &Step{Ctx: ctx, Tape: tp, Model: model, Comm: comm, Iteration: iteration}
	for i, v := range views {
		x, err := layers.FromHost(ctx, d, v, batch, 3, swavSizes[i], swavSizes[i])
		if err != nil {
			t.Fatal(err)
		}
		defer x.Release()
		st.Views = append(st.Views, layers.Constant(x))
	}
	if err := method.Prepare(st); err != nil {
		t.Fatal(err)
	}
	l, err := method.Loss(st)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Embeddings) != len(views) || !slices.Equal(l.Embeddings[0].Shape(), []int{batch, 16}) || !l.Embeddings[1].RequiresGrad() {
		t.Fatalf("embeddings: want the projections of all %d crops, [%d, 16] each, with gradients", len(views), batch)
	}
	term := l.Terms["swav"]
	if term == nil {
		t.Fatal("no swav term")
	}
	tp.Keep(l.Total)
	tp.Keep(term)
	defer l.Total.Value.Release()
	defer term.Value.Release()
	total := l.Total
	if reg != nil {
		p, err := reg.Apply(st, l.Embeddings)
		if err != nil {
			t.Fatal(err)
		}
		total = tp.Add(total, p.Add)
		run.pen, run.e2mc = p, p.Value
	}
	if err := tp.Backward(total); err != nil {
		t.Fatal(err)
	}
	if comm.Size() > 1 {
		t.Fatal("swavStep does not average gradients; use it on one replica")
	}
	if err := method.BeforeUpdate(st); err != nil {
		t.Fatal(err)
	}
	// The gradients as the optimizer will see them.
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	run.grads = map[string][]float32{}
	for _, e := range swavEntries(model) {
		if e.Param != nil && e.Param.Grad != nil {
			g, err := e.Param.Grad.Download(ctx)
			if err != nil {
				t.Fatal(err)
			}
			run.grads[e.Name] = g
		}
	}
	opt, err := method.NewOptimizer(method.ParamGroups(model, swavWD, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer opt.Release()
	if err := opt.Step(s, swavLR); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct {
		dst *float64
		x   *layers.Var
	}{{&run.swav, l.Total}, {&run.term, term}} {
		h, err := v.x.Value.Download(ctx)
		if err != nil {
			t.Fatal(err)
		}
		*v.dst = float64(h[0])
	}
	return run
}

func TestSwAVMatchesTorch(t *testing.T) {
	dir, parts, cfg, views := swavInputs(t)
	ctx := context.Background()
	d := vktest.Device(t)
	if parts.Layout != loader.LayoutSwAV {
		t.Fatalf("layout %s, want swav", parts.Layout)
	}
	if want := (layers.ResNetConfig{Depth: 18, Width: 8, SmallStem: true, InChannels: 3}); cfg != want {
		t.Fatalf("config %+v, want %+v", cfg, want)
	}
	queue0 := swavNpy(t, filepath.Join(dir, "queue.npy"), 2, swavQueue, 16)

	for _, name := range []string{"frozen", "plain", "e2mc", "queue"} {
		t.Run(name, func(t *testing.T) {
			var want struct{ Swav, E2MC, Total float64 }
			oracle.ReadJSON(t, filepath.Join(dir, name, "result.json"), &want)
			// Head sizes other than the checkpoint's: its heads must win.
			o := SwAVOptions{MLP: "64-64", Prototypes: 5, Crops: []int{2, 2}, QueueStartEpoch: -1, FreezePrototypesIters: 10}
			if name == "queue" {
				o.QueueLength = swavQueue
			}
			method, err := NewSwAV(o)
			if err != nil {
				t.Fatal(err)
			}
			if name == "queue" {
				if err := method.LoadState(ctx, map[string]layers.HostTensor{"queue": {Shape: []int{2, swavQueue, 16}, Data: slices.Clone(queue0)}}); err != nil {
					t.Fatal(err)
				}
			}
			model, err := method.NewModel(ctx, d, cfg, parts, rand.New(rand.NewPCG(1, 2)))
			if err != nil {
				t.Fatal(err)
			}
			defer model.Release()
			model.SetTraining(true)
			if k := model.Prototypes.Weight.Shape(); !slices.Equal(k, []int{20, 16}) {
				t.Fatalf("prototypes %v, want the checkpoint's [20 16]", k)
			}
			iteration := 10 // past FreezePrototypesIters
			var reg Regularizer
			switch name {
			case "frozen":
				iteration = 9
			case "e2mc":
				if reg, err = NewE2MC(d, "swav", 10, 1); err != nil {
					t.Fatal(err)
				}
			}
			run := swavStep(t, d, method, model, NewGroup(1).Comm(0), views, swavBatch, iteration, reg)
			swavClose(t, "swav loss (device)", []float32{float32(run.swav)}, []float32{float32(want.Swav)}, 1e-4, 0)
			swavClose(t, "swav term (host)", []float32{float32(run.term)}, []float32{float32(want.Swav)}, 1e-4, 0)
			if reg != nil {
				swavClose(t, "e2mc", []float32{float32(run.e2mc)}, []float32{float32(want.E2MC)}, 1e-4, 0)
			}
			// The gradients first (held to 1e-3 of their norm, as the
			// layers package holds the ResNet's), then the step's result.
			for _, e := range swavEntries(model) {
				if e.Param == nil {
					continue
				}
				path := filepath.Join(dir, name, "grad", e.Name+".npy")
				g, have := run.grads[e.Name]
				if _, err := os.Stat(path); err != nil {
					if have {
						t.Errorf("%s has a gradient; the official step drops it", e.Name)
					}
					continue
				}
				if !have {
					t.Errorf("%s has no gradient", e.Name)
					continue
				}
				want := swavNpy(t, path)
				if e.Name == "projection_head.0.bias" {
					// A bias before a training-mode batch norm: its exact
					// gradient is zero, both sides hold rounding noise.
					// Gradients here are of order 1: hold both to 1e-5.
					for _, v := range []struct {
						side string
						g    []float32
					}{{"ours", g}, {"torch's", want}} {
						if n := swavNorm(v.g); n > 1e-5 {
							t.Errorf("gradient of %s (%s): norm %.3g, want about 0", e.Name, v.side, n)
						}
					}
					continue
				}
				swavNormClose(t, "gradient of "+e.Name, g, want, 1e-3)
			}
			for _, e := range swavEntries(model) {
				w := swavNpy(t, filepath.Join(dir, name, "after", e.Name+".npy"))
				swavClose(t, e.Name+" after the step", swavHost(t, e), w, 1e-4, swavFloor)
			}
			if name == "queue" {
				st, err := method.State(ctx)
				if err != nil {
					t.Fatal(err)
				}
				w := swavNpy(t, filepath.Join(dir, name, "queue_after.npy"), 2, swavQueue, 16)
				// The queue's rows are unit vectors: their entries are
				// held to 1e-4 of the rms entry of a unit 16-vector, 1/4.
				swavClose(t, "queue after the step", st["queue"].Data, w, 1e-4, 0.25)
				if f := st["queue_in_use"].Data; len(f) != 1 || f[0] != 1 {
					t.Errorf("queue_in_use %v, want [1]", f)
				}
			}
		})
	}
}

// TestSwAVUpdates checks that the comparisons above see the update: the
// oracle's step moves every trainable tensor (the prototypes only when not
// frozen) by more than the tolerance.
func TestSwAVUpdates(t *testing.T) {
	dir := swavOracle(t)
	root, err := loader.ReadPth(filepath.Join(dir, "model.pth"))
	if err != nil {
		t.Fatal(err)
	}
	parts, err := loader.SplitCheckpoint(root, loader.LayoutSwAV)
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]layers.HostTensor{}
	for k, v := range parts.Backbone {
		before[k] = v
	}
	for k, v := range parts.Heads[loader.HeadProjector] {
		before["projection_head."+k] = v
	}
	for _, name := range []string{"conv1.weight", "layer4.1.conv2.weight", "projection_head.3.weight"} {
		after := swavNpy(t, filepath.Join(dir, "plain", "after", name+".npy"))
		var diff, norm float64
		for i, v := range before[name].Data {
			diff += math.Abs(float64(after[i] - v))
			norm += math.Abs(float64(v))
		}
		if diff/norm < 1e-2 {
			t.Errorf("%s moved by %.3g of its size: too little for a 1e-4 comparison to test the step", name, diff/norm)
		}
	}
	frozen := swavNpy(t, filepath.Join(dir, "frozen", "after", "prototypes.weight.npy"))
	plain := swavNpy(t, filepath.Join(dir, "plain", "after", "prototypes.weight.npy"))
	var diff float64
	for i := range frozen {
		diff = max(diff, math.Abs(float64(frozen[i]-plain[i])))
	}
	if diff < 1e-3 {
		t.Errorf("frozen and trained prototypes differ by %.3g only", diff)
	}
}

// Two replicas holding half the batch each report the loss one replica with
// the whole batch reports (Sinkhorn's sums and the loss are all-reduced,
// the batch norms synchronised).
func TestSwAVReplicas(t *testing.T) {
	_, parts, cfg, views := swavInputs(t)
	ctx := context.Background()
	o := SwAVOptions{Crops: []int{2, 2}, QueueStartEpoch: -1}
	forward := func(d *vk.Device, comm *Comm, views [][]float32, batch int) (float64, error) {
		method, err := NewSwAV(o)
		if err != nil {
			return 0, err
		}
		model, err := method.NewModel(ctx, d, cfg, parts, rand.New(rand.NewPCG(1, 2)))
		if err != nil {
			return 0, err
		}
		defer model.Release()
		s, err := d.NewStream()
		if err != nil {
			return 0, err
		}
		defer s.Close()
		tp := layers.NewTape(s)
		defer tp.Release()
		tp.SetCollective(ctx, comm)
		st := &Step{Ctx: ctx, Tape: tp, Model: model, Comm: comm}
		for i, v := range views {
			x, err := layers.FromHost(ctx, d, v, batch, 3, swavSizes[i], swavSizes[i])
			if err != nil {
				return 0, err
			}
			defer x.Release()
			st.Views = append(st.Views, layers.Constant(x))
		}
		if err := method.Prepare(st); err != nil {
			return 0, err
		}
		l, err := method.Loss(st)
		if err != nil {
			return 0, err
		}
		term := l.Terms["swav"]
		tp.Keep(term)
		defer term.Value.Release()
		if err := s.Run(ctx); err != nil {
			return 0, err
		}
		h, err := term.Value.Download(ctx)
		if err != nil {
			return 0, err
		}
		return float64(h[0]), nil
	}
	d := vktest.Device(t)
	whole, err := forward(d, NewGroup(1).Comm(0), views, swavBatch)
	if err != nil {
		t.Fatal(err)
	}
	// Each replica on its own logical device, as the trainer runs them
	// (slot 1 is the one the package's other tests open too).
	devs := []*vk.Device{d, vktest.Open(t, d.Info.Index, 1)}
	g := NewGroup(2)
	half := swavBatch / 2
	got := make([]float64, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		var part [][]float32
		for i, v := range views {
			per := 3 * swavSizes[i] * swavSizes[i]
			part = append(part, v[r*half*per:(r+1)*half*per])
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got[r], errs[r] = forward(devs[r], g.Comm(r), part, half); errs[r] != nil {
				g.Abort(errs[r])
			}
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", r, err)
		}
	}
	for r, v := range got {
		swavClose(t, fmt.Sprintf("replica %d's swav term", r), []float32{float32(v)}, []float32{float32(whole)}, 1e-4, 0)
	}
	// Not trivially equal: half the batch alone reports another loss.
	var part [][]float32
	for i, v := range views {
		part = append(part, v[:half*3*swavSizes[i]*swavSizes[i]])
	}
	alone, err := forward(d, NewGroup(1).Comm(0), part, half)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(alone-whole) < 1e-3*math.Abs(whole) {
		t.Errorf("half the batch alone reports %v, the whole batch %v: the test proves nothing", alone, whole)
	}
}

// The queue starts at QueueStartEpoch, takes each batch's normalised
// embeddings of the assign crops newest first, is used once its last row is
// written, and survives State and LoadState.
func TestSwAVQueue(t *testing.T) {
	_, parts, cfg, views := swavInputs(t)
	ctx := context.Background()
	d := vktest.Device(t)
	// The second batch: the crops of each resolution swapped.
	swapped := [][]float32{views[1], views[0], views[3], views[2]}
	method, err := NewSwAV(SwAVOptions{Crops: []int{2, 2}, QueueLength: 2 * swavBatch})
	if err != nil {
		t.Fatal(err)
	}
	model, err := method.NewModel(ctx, d, cfg, parts, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	defer model.Release()
	// forward runs the loss of one batch and returns the normalised
	// projections of crops 0 and 1.
	forward := func(views [][]float32, epoch int) [2][]float32 {
		s, err := d.NewStream()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		tp := layers.NewTape(s)
		defer tp.Release()
		st := &Step{Ctx: ctx, Tape: tp, Model: model, Epoch: epoch, Iteration: 1000}
		for i, v := range views {
			x, err := layers.FromHost(ctx, d, v, swavBatch, 3, swavSizes[i], swavSizes[i])
			if err != nil {
				t.Fatal(err)
			}
			defer x.Release()
			st.Views = append(st.Views, layers.Constant(x))
		}
		if err := method.Prepare(st); err != nil {
			t.Fatal(err)
		}
		l, err := method.Loss(st)
		if err != nil {
			t.Fatal(err)
		}
		var out [2][]float32
		for i := range out {
			z, err := l.Embeddings[i].Value.Download(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for r := 0; r < swavBatch; r++ {
				row := z[r*16 : (r+1)*16]
				n := float32(swavNorm(row))
				for j := range row {
					row[j] /= n
				}
			}
			out[i] = z
		}
		if err := s.Run(ctx); err != nil {
			t.Fatal(err)
		}
		return out
	}
	state := func() map[string]layers.HostTensor {
		st, err := method.State(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	inUse := func(st map[string]layers.HostTensor) bool { return st["queue_in_use"].Data[0] != 0 }
	half := swavBatch * 16

	forward(views, 14)
	if st := state(); st != nil {
		t.Fatalf("a queue before epoch 15: %v", st["queue"].Shape)
	}
	a := forward(views, 15)
	st := state()
	if st == nil || !slices.Equal(st["queue"].Shape, []int{2, 2 * swavBatch, 16}) {
		t.Fatalf("no queue of [2 16 16] at epoch 15: %v", st)
	}
	for i := range 2 {
		q := st["queue"].Data[i*2*half : (i+1)*2*half]
		swavClose(t, fmt.Sprintf("queue %d after one batch", i), q[:half], a[i], 1e-5, 0.25)
		if slices.ContainsFunc(q[half:], func(v float32) bool { return v != 0 }) {
			t.Errorf("queue %d: rows past the first batch are not zero", i)
		}
	}
	if inUse(st) {
		t.Error("the queue is in use before it is full")
	}
	b := forward(swapped, 15)
	st = state()
	for i := range 2 {
		q := st["queue"].Data[i*2*half : (i+1)*2*half]
		swavClose(t, fmt.Sprintf("queue %d's newest batch", i), q[:half], b[i], 1e-5, 0.25)
		swavClose(t, fmt.Sprintf("queue %d's older batch", i), q[half:], a[i], 1e-5, 0.25)
	}
	if inUse(st) {
		t.Error("the queue is in use before a step found it full")
	}
	forward(views, 15)
	st = state()
	if !inUse(st) {
		t.Error("the full queue is not in use")
	}
	// A restored method carries on with the same queue.
	restored, err := NewSwAV(SwAVOptions{Crops: []int{2, 2}, QueueLength: 2 * swavBatch})
	if err != nil {
		t.Fatal(err)
	}
	if err := restored.LoadState(ctx, st); err != nil {
		t.Fatal(err)
	}
	again, err := restored.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range st {
		if !slices.Equal(again[k].Shape, v.Shape) || !slices.Equal(again[k].Data, v.Data) {
			t.Errorf("state %q changed in State/LoadState", k)
		}
	}
	// A batch size the queue does not fit is refused at the next step.
	if err := restored.LoadState(ctx, map[string]layers.HostTensor{"queue": {Shape: []int{2, 3, 16}, Data: make([]float32, 96)}}); err != nil {
		t.Fatal(err)
	}
	if err := restored.startQueue(15, swavBatch, 1, 16); err == nil {
		t.Error("a restored queue of 3 rows accepted for a batch of 8 and length 16")
	}
}

// Diverged scores make the loss NaN, not an error: the trainer stops on it
// as on any non-finite loss.
func TestSwAVDivergedLoss(t *testing.T) {
	ctx := context.Background()
	d := vktest.Device(t)
	method, err := NewSwAV(SwAVOptions{MLP: "16-8", Prototypes: 6, Crops: []int{2, 1}, QueueStartEpoch: -1})
	if err != nil {
		t.Fatal(err)
	}
	cfg := layers.ResNetConfig{Depth: 18, Width: 4, SmallStem: true, InChannels: 3}
	model, err := method.NewModel(ctx, d, cfg, nil, rand.New(rand.NewPCG(3, 4)))
	if err != nil {
		t.Fatal(err)
	}
	defer model.Release()
	w := make([]float32, 6*8)
	for i := range w {
		w[i] = float32(math.NaN())
	}
	if err := model.Prototypes.Weight.Value.Upload(ctx, w); err != nil {
		t.Fatal(err)
	}
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tp := layers.NewTape(s)
	defer tp.Release()
	st := &Step{Ctx: ctx, Tape: tp, Model: model}
	rng := rand.New(rand.NewPCG(5, 6))
	for _, size := range []int{12, 12, 8} {
		v := make([]float32, 4*3*size*size)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		x, err := layers.FromHost(ctx, d, v, 4, 3, size, size)
		if err != nil {
			t.Fatal(err)
		}
		defer x.Release()
		st.Views = append(st.Views, layers.Constant(x))
	}
	if err := method.Prepare(st); err != nil {
		t.Fatal(err)
	}
	l, err := method.Loss(st)
	if err != nil {
		t.Fatalf("diverged scores: %v; want a NaN loss", err)
	}
	tp.Keep(l.Total)
	tp.Keep(l.Terms["swav"])
	defer l.Total.Value.Release()
	defer l.Terms["swav"].Value.Release()
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]*layers.Var{"total": l.Total, "swav term": l.Terms["swav"]} {
		h, err := v.Value.Download(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !math.IsNaN(float64(h[0])) {
			t.Errorf("%s is %v, want NaN", name, h[0])
		}
	}
}
