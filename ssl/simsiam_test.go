package ssl

import (
	"context"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// The settings of the SimSiam oracle step: main_simsiam.py's init_lr =
// 0.05 * batch / 256 for the predictor (fix_pred_lr), the encoder at the
// cosine schedule's rate of epoch 3 of 10 (so that the two rates differ),
// weight decay 1e-4, E2MC's SimSiam coefficients.
const (
	simsiamBatch, simsiamSize = 8, 20
	simsiamWD                 = 1e-4
	simsiamEnt, simsiamCov    = 1, 25
)

func simsiamLRs() (lr, predLR float64) {
	predLR = 0.05 * simsiamBatch / 256
	return predLR * 0.5 * (1 + math.Cos(math.Pi*3/10)), predLR
}

// simsiamCase is what torch_simsiam.py wrote for one case.
type simsiamCase struct {
	Terms map[string]float64 `json:"terms"`
	Grad  map[string][]int   `json:"grad"`
	After map[string][]int   `json:"after"`
}

// simsiamOracle runs testdata/torch_simsiam.py (cached) and returns its
// output directory and manifest.
func simsiamOracle(t *testing.T) (string, map[string]simsiamCase) {
	t.Helper()
	const script, ref = "testdata/torch_simsiam.py", "../e2mc/testdata/torch_reference.py"
	var texts [][]byte
	for _, p := range []string{script, ref} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		texts = append(texts, b)
	}
	lr, predLR := simsiamLRs()
	args := []string{fmt.Sprint(lr), fmt.Sprint(predLR), fmt.Sprint(simsiamWD), fmt.Sprint(simsiamEnt), fmt.Sprint(simsiamCov)}
	dir := oracle.Cached(t, []string{"torch", "torchvision", "numpy"}, func(py, dir string) {
		absRef, err := filepath.Abs(ref)
		if err != nil {
			t.Fatal(err)
		}
		oracle.RunFile(t, py, script, append([]string{dir, absRef}, args...)...)
	}, texts[0], texts[1], []byte(strings.Join(args, " ")))
	var m struct {
		Cases map[string]simsiamCase `json:"cases"`
	}
	oracle.ReadJSON(t, filepath.Join(dir, "manifest.json"), &m)
	return dir, m.Cases
}

// simsiamView reads a view the oracle saved as .npy.
func simsiamView(t *testing.T, path string) []float32 {
	t.Helper()
	a, err := loader.ReadNpy(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{simsiamBatch, 3, simsiamSize, simsiamSize}; fmt.Sprint(a.Shape) != fmt.Sprint(want) {
		t.Fatalf("%s has shape %v, want %v", path, a.Shape, want)
	}
	out := make([]float32, len(a.Data))
	for i, v := range a.Data {
		out[i] = float32(v)
	}
	return out
}

// simsiamClose fails unless every |got - want| <= rel*|want| + floor. A
// reference of all zeros is refused: it would prove nothing.
func simsiamClose(t *testing.T, label string, got, want []float32, rel, floor float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, want %d", label, len(got), len(want))
		return
	}
	bad, worst, worstAt, nonzero := 0, 0.0, 0, false
	for i := range want {
		w, g := float64(want[i]), float64(got[i])
		nonzero = nonzero || w != 0
		d := math.Abs(g - w)
		if math.IsNaN(g) || d > rel*math.Abs(w)+floor {
			bad++
		}
		if e := d / (rel*math.Abs(w) + floor); e > worst || math.IsNaN(g) {
			worst, worstAt = e, i
		}
	}
	if !nonzero {
		t.Errorf("%s: the reference is all zeros; choose inputs that test something", label)
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d values off by more than %g relative + %g (worst element %d: got %v, want %v)",
			label, bad, len(want), rel, floor, worstAt, got[worstAt], want[worstAt])
	}
}

// simsiamNormClose fails unless ||got - want|| <= tol * ||want|| (2-norms).
func simsiamNormClose(t *testing.T, label string, got, want []float32, tol float64) {
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
	switch {
	case norm == 0:
		t.Errorf("%s: the reference is all zeros; choose inputs that test something", label)
	case math.IsNaN(diff) || math.Sqrt(diff/norm) > tol:
		t.Errorf("%s: relative error %.3g > %.3g", label, math.Sqrt(diff/norm), tol)
	}
}

// simsiamEntries lists the model's state under the names of the official
// checkpoint's DDP state dict.
func simsiamEntries(m *Model) []layers.StateEntry {
	var out []layers.StateEntry
	for _, part := range []struct {
		prefix string
		mod    layers.Module
	}{
		{"module.encoder.", m.Backbone},
		{"module.encoder.fc.", m.Heads[loader.HeadProjector]},
		{"module.predictor.", m.Heads[loader.HeadPredictor]},
	} {
		out = append(out, part.mod.State(part.prefix)...)
	}
	return out
}

// simsiamHost downloads one state entry.
func simsiamHost(ctx context.Context, e layers.StateEntry) ([]float32, error) {
	switch {
	case e.Param != nil:
		return e.Param.Value.Download(ctx)
	case e.Buffer != nil:
		return e.Buffer.Download(ctx)
	default:
		return []float32{float32(*e.Count)}, nil
	}
}

// simsiamWant is one oracle case read into memory (so that replicas on
// their goroutines need not touch the testing.T's fatal paths).
type simsiamWant struct {
	terms       map[string]float64
	grad, after map[string][]float32
}

func simsiamLoad(t *testing.T, dir, name string, c simsiamCase) *simsiamWant {
	t.Helper()
	w := &simsiamWant{terms: c.Terms, grad: map[string][]float32{}, after: map[string][]float32{}}
	for k := range c.Grad {
		w.grad[k] = oracle.ReadFloat32s(t, filepath.Join(dir, name, "grad", k))
	}
	for k := range c.After {
		w.after[k] = oracle.ReadFloat32s(t, filepath.Join(dir, name, "after", k))
	}
	return w
}

// simsiamSetup reads the oracle's checkpoint and views.
func simsiamSetup(t *testing.T) (dir string, cases map[string]simsiamCase, parts *loader.Parts, cfg layers.ResNetConfig, x1, x2 []float32) {
	t.Helper()
	dir, cases = simsiamOracle(t)
	root, err := loader.ReadPth(filepath.Join(dir, "checkpoint.pth"))
	if err != nil {
		t.Fatal(err)
	}
	if parts, err = loader.SplitCheckpoint(root, ""); err != nil {
		t.Fatal(err)
	}
	if parts.Layout != loader.LayoutSimSiam {
		t.Fatalf("layout %s, want simsiam", parts.Layout)
	}
	if cfg, err = loader.ResNetConfigFor(parts); err != nil {
		t.Fatal(err)
	}
	if want := (layers.ResNetConfig{Depth: 18, Width: 8, SmallStem: true, InChannels: 3}); cfg != want {
		t.Fatalf("config %+v, want %+v", cfg, want)
	}
	return dir, cases, parts, cfg, simsiamView(t, filepath.Join(dir, "x1.npy")), simsiamView(t, filepath.Join(dir, "x2.npy"))
}

// simsiamReplica runs one replica's training step, from parts, on its rows
// of the views (x1 and x2 hold them, rows each), in comm's group, with E2MC
// when withE2MC, and checks it against PyTorch's step on the whole batch:
// the global loss terms, the (averaged) gradients, and the state after the
// SGD step. Mismatches are reported with t.Errorf; what stops the replica
// is returned.
func simsiamReplica(t *testing.T, label string, d *vk.Device, comm *Comm, parts *loader.Parts, cfg layers.ResNetConfig, x1, x2 []float32, rows int, withE2MC bool, want *simsiamWant) error {
	ctx := context.Background()
	lr, predLR := simsiamLRs()
	// The default head sizes (2048, 512): the checkpoint's heads must win
	// over them.
	method, err := NewSimSiam(SimSiamOptions{})
	if err != nil {
		return err
	}
	model, err := method.NewModel(ctx, d, cfg, parts, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		return err
	}
	defer model.Release()
	entries := simsiamEntries(model)
	frozen := model.Heads[loader.HeadProjector].Linears[2].Bias
	if frozen == nil || frozen.RequiresGrad() {
		return fmt.Errorf("the projector's last bias is missing or trainable; SimSiam freezes it")
	}
	frozenBefore, err := frozen.Value.Download(ctx)
	if err != nil {
		return err
	}

	s, err := d.NewStream()
	if err != nil {
		return err
	}
	defer s.Close()
	tp := layers.NewTape(s)
	defer tp.Release()
	tp.SetCollective(ctx, comm)
	st := &Step{Ctx: ctx, Tape: tp, Model: model, Comm: comm}
	for _, v := range [][]float32{x1, x2} {
		x, err := layers.FromHost(ctx, d, v, rows, 3, simsiamSize, simsiamSize)
		if err != nil {
			return err
		}
		defer x.Release()
		st.Views = append(st.Views, layers.Constant(x))
	}
	if err := method.Prepare(st); err != nil {
		return err
	}
	l, err := method.Loss(st)
	if err != nil {
		return err
	}
	if len(l.Embeddings) != 2 || !l.Embeddings[0].RequiresGrad() || !l.Embeddings[1].RequiresGrad() {
		return fmt.Errorf("the embeddings must be z1 and z2 with their gradients")
	}
	total := l.Total
	var pen *Penalty
	if withE2MC {
		reg, err := NewE2MC(d, "simsiam", simsiamEnt, simsiamCov)
		if err != nil {
			return err
		}
		defer reg.Release()
		if pen, err = reg.Apply(st, l.Embeddings); err != nil {
			return err
		}
		total = tp.Add(total, pen.Add)
	}
	term := l.Terms["simsiam"]
	if term == nil {
		return fmt.Errorf("no simsiam term")
	}
	tp.Keep(term)
	defer func() { term.Value.Release() }()
	if err := tp.Backward(total); err != nil {
		return err
	}
	if err := method.BeforeUpdate(st); err != nil {
		return err
	}
	groups := method.ParamGroups(model, simsiamWD, predLR)
	if len(groups) != 2 || groups[1].FixedLR != predLR || groups[0].FixedLR != 0 {
		return fmt.Errorf("param groups %+v: want the encoder's and the predictor's at a fixed rate", groups)
	}
	var params []*layers.Var
	for _, g := range groups {
		params = append(params, g.Params...)
	}
	defer func() {
		for _, p := range params {
			p.ZeroGrad()
		}
	}()
	if err := layers.AverageGradients(ctx, s, params, comm); err != nil {
		return err
	}
	opt, err := method.NewOptimizer(groups)
	if err != nil {
		return err
	}
	defer opt.Release()
	// The gradients are read before the step, so that a wrong one is seen
	// as such and not hidden in a small update.
	if err := s.Run(ctx); err != nil {
		return err
	}
	checked := 0
	for _, e := range entries {
		if e.Param == nil {
			continue
		}
		w, ok := want.grad[e.Name]
		switch {
		case !ok && e.Param.Grad != nil:
			t.Errorf("%s: %s took a gradient; PyTorch's took none", label, e.Name)
		case ok && e.Param.Grad == nil:
			t.Errorf("%s: %s took no gradient", label, e.Name)
		case ok:
			g, err := e.Param.Grad.Download(ctx)
			if err != nil {
				return err
			}
			simsiamNormClose(t, label+": gradient of "+e.Name, g, w, 3e-4)
			checked++
		}
	}
	if checked != len(want.grad) {
		t.Errorf("%s: checked %d gradients of PyTorch's %d", label, checked, len(want.grad))
	}

	if err := opt.Step(s, lr); err != nil {
		return err
	}
	if err := s.Run(ctx); err != nil {
		return err
	}
	got, err := term.Value.Download(ctx)
	if err != nil {
		return err
	}
	terms := map[string]float64{"simsiam": float64(got[0]), "total": float64(got[0])}
	if pen != nil {
		if pen.ValueVar != nil {
			return fmt.Errorf("the E2MC penalty's value is on the tape; the test reads host values")
		}
		terms["e2mc"] = pen.Value
		terms["total"] += pen.Value
		terms["ent"], terms["cov_e2mc"] = pen.HostTerms["ent"], pen.HostTerms["cov_e2mc"]
	}
	wantTerms := maps.Clone(want.terms)
	if withE2MC {
		wantTerms["ent"] = (wantTerms["entropy_a"] + wantTerms["entropy_b"]) / 2
		wantTerms["cov_e2mc"] = wantTerms["cov_a"] + wantTerms["cov_b"]
		delete(wantTerms, "entropy_a")
		delete(wantTerms, "entropy_b")
		delete(wantTerms, "cov_a")
		delete(wantTerms, "cov_b")
	}
	for k, w := range wantTerms {
		g, ok := terms[k]
		if !ok {
			t.Errorf("%s: term %s missing", label, k)
			continue
		}
		if w == 0 || !(math.Abs(g-w) <= 1e-4*math.Abs(w)) {
			t.Errorf("%s: term %s = %.8g, PyTorch %.8g", label, k, g, w)
		}
	}

	checked = 0
	for _, e := range entries {
		w, ok := want.after[e.Name]
		if !ok {
			t.Errorf("%s: %s is not in PyTorch's state", label, e.Name)
			continue
		}
		g, err := simsiamHost(ctx, e)
		if err != nil {
			return err
		}
		switch {
		case len(w) != len(g):
			t.Errorf("%s: %s has %d values, PyTorch's %d", label, e.Name, len(g), len(w))
		case e.Count != nil:
			if g[0] != w[0] {
				t.Errorf("%s: %s = %v, PyTorch %v", label, e.Name, g[0], w[0])
			}
		default:
			simsiamClose(t, label+": "+e.Name+" after the step", g, w, 1e-4, simsiamFloor)
		}
		checked++
	}
	if checked != len(want.after) {
		t.Errorf("%s: checked %d state entries of PyTorch's %d", label, checked, len(want.after))
	}
	after, err := frozen.Value.Download(ctx)
	if err != nil {
		return err
	}
	if !slices.Equal(after, frozenBefore) {
		t.Errorf("%s: the projector's frozen bias moved", label)
	}
	return nil
}

// TestSimSiamMatchesTorch loads an official-layout SimSiam checkpoint that
// PyTorch wrote (a small ResNet-18 with randomised batch-norm state), takes
// one training step of main_simsiam.py on two views, without and with E2MC
// (the ssl regulariser) on z1 and z2, and compares with PyTorch's step from
// the same checkpoint: the loss terms, every parameter's gradient, and
// every weight, running statistic and counter after the SGD step.
func TestSimSiamMatchesTorch(t *testing.T) {
	dir, cases, parts, cfg, x1, x2 := simsiamSetup(t)
	d := vktest.Device(t)
	for _, name := range []string{"plain", "e2mc"} {
		t.Run(name, func(t *testing.T) {
			c, ok := cases[name]
			if !ok {
				t.Fatalf("the oracle has no case %q", name)
			}
			want := simsiamLoad(t, dir, name, c)
			if err := simsiamReplica(t, name, d, NewGroup(1).Comm(0), parts, cfg, x1, x2, simsiamBatch, name == "e2mc", want); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSimSiamTwoReplicasMatchTorch takes the same steps on two replicas
// (two logical devices, half of the batch each): with synchronised batch
// norms, gathered embeddings for E2MC and averaged gradients, each replica
// must end where PyTorch's single process on the whole batch does, and
// report the whole batch's loss terms.
func TestSimSiamTwoReplicasMatchTorch(t *testing.T) {
	dir, cases, parts, cfg, x1, x2 := simsiamSetup(t)
	d0 := vktest.Device(t)
	devs := []*vk.Device{d0, vktest.Open(t, d0.Info.Index, 1)}
	const rows = simsiamBatch / 2
	per := 3 * simsiamSize * simsiamSize * rows
	for _, name := range []string{"plain", "e2mc"} {
		t.Run(name, func(t *testing.T) {
			c, ok := cases[name]
			if !ok {
				t.Fatalf("the oracle has no case %q", name)
			}
			want := simsiamLoad(t, dir, name, c)
			g := NewGroup(len(devs))
			errs := make([]error, len(devs))
			var wg sync.WaitGroup
			for r, d := range devs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					label := fmt.Sprintf("%s, replica %d", name, r)
					errs[r] = simsiamReplica(t, label, d, g.Comm(r), parts, cfg, x1[r*per:(r+1)*per], x2[r*per:(r+1)*per], rows, name == "e2mc", want)
					if errs[r] != nil {
						g.Abort(errs[r])
					}
				}()
			}
			wg.Wait()
			for r, err := range errs {
				if err != nil {
					t.Errorf("replica %d: %v", r, err)
				}
			}
		})
	}
}

// simsiamFloor is the absolute tolerance added to the relative one for
// entries near zero: 1e-4 of the smallest typical magnitude among the
// state's tensors (running means and conv weights of order 1e-2).
const simsiamFloor = 1e-6

// TestSimSiamFreshModel builds SimSiam without a checkpoint and checks it
// against simsiam/builder.py as PyTorch built it for the oracle: the same
// state names and shapes in the same order, the projector's last bias
// frozen, zero_init_residual, and the official head sizes by default.
func TestSimSiamFreshModel(t *testing.T) {
	_, cases, _, cfg, _, _ := simsiamSetup(t)
	ctx := context.Background()
	d := vktest.Device(t)
	method, err := NewSimSiam(SimSiamOptions{Dim: 64, PredDim: 16})
	if err != nil {
		t.Fatal(err)
	}
	model, err := method.NewModel(ctx, d, cfg, nil, rand.New(rand.NewPCG(3, 4)))
	if err != nil {
		t.Fatal(err)
	}
	defer model.Release()
	want := cases["plain"].After
	entries := simsiamEntries(model)
	if len(entries) != len(want) {
		t.Errorf("%d state entries, PyTorch's SimSiam has %d", len(entries), len(want))
	}
	for _, e := range entries {
		var shape []int
		switch {
		case e.Param != nil:
			shape = e.Param.Shape()
		case e.Buffer != nil:
			shape = e.Buffer.Shape()
		default:
			shape = []int{}
		}
		if w, ok := want[e.Name]; !ok || !slices.Equal(w, shape) {
			t.Errorf("%s: shape %v, PyTorch's %v (present: %v)", e.Name, shape, w, ok)
		}
	}
	if b := model.Heads[loader.HeadProjector].Linears[2].Bias; b == nil || b.RequiresGrad() {
		t.Error("the projector's last bias is missing or trainable")
	}
	// zero_init_residual: the last norm of each block starts at 0, the
	// others at 1.
	for si, stage := range model.Backbone.Layers {
		for bi, blk := range stage {
			for ni, bn := range blk.BNs {
				w, err := bn.Weight.Value.Download(ctx)
				if err != nil {
					t.Fatal(err)
				}
				want := float32(1)
				if ni == len(blk.BNs)-1 {
					want = 0
				}
				for _, v := range w {
					if v != want {
						t.Errorf("layer%d.%d.bn%d.weight holds %v, want all %v", si+1, bi, ni+1, v, want)
						break
					}
				}
			}
		}
	}
	// The encoder group holds encoder.parameters(), the frozen bias too, as
	// main_simsiam.py hands them to SGD.
	groups := method.ParamGroups(model, simsiamWD, 0.5)
	var enc, pred int
	for name := range want {
		if strings.HasSuffix(name, "running_mean") || strings.HasSuffix(name, "running_var") || strings.HasSuffix(name, "num_batches_tracked") {
			continue
		}
		if strings.HasPrefix(name, "module.encoder.") {
			enc++
		} else {
			pred++
		}
	}
	if len(groups) != 2 || len(groups[0].Params) != enc || len(groups[1].Params) != pred ||
		groups[0].WeightDecay != simsiamWD || groups[1].WeightDecay != simsiamWD || groups[1].FixedLR != 0.5 {
		t.Errorf("param groups of %d and %d parameters, want %d and %d", len(groups[0].Params), len(groups[1].Params), enc, pred)
	}

	def, err := NewSimSiam(SimSiamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	big, err := def.NewModel(ctx, d, cfg, nil, rand.New(rand.NewPCG(5, 6)))
	if err != nil {
		t.Fatal(err)
	}
	defer big.Release()
	f := big.Backbone.Features
	for head, spec := range map[string]layers.MLPConfig{
		loader.HeadProjector: {Spec: fmt.Sprintf("%d-%d-2048", f, f), LastBias: true, LastBN: true},
		loader.HeadPredictor: {Spec: "512-2048", LastBias: true},
	} {
		if got := big.Heads[head].Config; got != spec {
			t.Errorf("default %s %+v, want %+v", head, got, spec)
		}
	}
}

// TestSimSiamRefuses checks the errors of bad options, views and state.
func TestSimSiamRefuses(t *testing.T) {
	if _, err := NewSimSiam(SimSiamOptions{Dim: -1}); err == nil {
		t.Error("a negative dim was accepted")
	}
	m, err := NewSimSiam(SimSiamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Loss(&Step{Views: make([]*layers.Var, 3)}); err == nil {
		t.Error("three views were accepted")
	}
	if err := m.LoadState(context.Background(), map[string]layers.HostTensor{"queue": {}}); err == nil {
		t.Error("a state was accepted")
	}
	if _, err := m.NewModel(context.Background(), vktest.Device(t), layers.ResNetConfig{Depth: 18, Width: 8, Classes: 10}, nil, rand.New(rand.NewPCG(1, 1))); err == nil {
		t.Error("a backbone with classes was accepted")
	}
}
