package ssl

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// vicregOracle is what testdata/torch_vicreg.py writes.
type vicregOracle struct {
	dir string
	LR  float64 `json:"lr"`
	WD  float64 `json:"wd"`
	Ent float64 `json:"ent"`
	Cov float64 `json:"cov"`
	MLP string  `json:"mlp"`
	// Plain and E2MC are the loss terms of the two steps.
	Plain map[string]float64 `json:"plain"`
	E2MC  map[string]float64 `json:"e2mc"`
}

// torchVICReg runs the oracle once (cached) and returns its results.
func torchVICReg(t *testing.T) *vicregOracle {
	t.Helper()
	script, err := os.ReadFile("testdata/torch_vicreg.py")
	if err != nil {
		t.Fatal(err)
	}
	dir := oracle.Cached(t, []string{"torch", "torchvision", "numpy"}, func(py, dir string) {
		oracle.RunFile(t, py, "testdata/torch_vicreg.py", dir)
	}, script)
	o := &vicregOracle{dir: dir}
	oracle.ReadJSON(t, filepath.Join(dir, "result.json"), o)
	return o
}

// readParts reads a VICReg-layout checkpoint of the oracle's.
func (o *vicregOracle) readParts(t *testing.T, name string) *loader.Parts {
	t.Helper()
	root, err := loader.ReadPth(filepath.Join(o.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	p, err := loader.SplitCheckpoint(root, loader.LayoutVICReg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestVICRegMatchesTorch loads an official-layout VICReg checkpoint, takes
// one training step (forward, loss, backward, LARS) with and without E2MC,
// and compares the loss terms and the whole updated state with PyTorch's
// step of main_vicreg.py.
func TestVICRegMatchesTorch(t *testing.T) {
	o := torchVICReg(t)
	ckpt := o.readParts(t, "ckpt.pth")
	views, err := loader.ReadNpy(filepath.Join(o.dir, "views.npy"))
	if err != nil {
		t.Fatal(err)
	}
	for _, withE2MC := range []bool{false, true} {
		name, want := "plain", o.Plain
		if withE2MC {
			name, want = "e2mc", o.E2MC
		}
		t.Run(name, func(t *testing.T) {
			after := o.readParts(t, "after_"+name+".pth")
			got, state := vicregStep(t, o, ckpt, views, withE2MC)
			// The loss terms: float32 forward passes of the same network,
			// held to 1e-4 relative.
			for term, w := range want {
				g, ok := got[term]
				if !ok {
					continue
				}
				if math.Abs(g-w) > 1e-4*math.Abs(w) {
					t.Errorf("term %s = %.7g, want %.7g (relative error %.2g)", term, g, w, math.Abs(g-w)/math.Abs(w))
				}
			}
			for _, term := range []string{"sim", "std", "cov", "loss"} {
				if _, ok := got[term]; !ok {
					t.Errorf("no term %s", term)
				}
			}
			init := map[string]layers.HostTensor{}
			for k, v := range ckpt.Backbone {
				init["backbone."+k] = v
			}
			for k, v := range ckpt.Heads[loader.HeadProjector] {
				init["projector."+k] = v
			}
			wantState := map[string]layers.HostTensor{}
			for k, v := range after.Backbone {
				wantState["backbone."+k] = v
			}
			for k, v := range after.Heads[loader.HeadProjector] {
				wantState["projector."+k] = v
			}
			compareState(t, state, wantState, init)
		})
	}
}

// vicregStep takes one step of the method (and E2MC) on the oracle's
// checkpoint and views on the test device, alone.
func vicregStep(t *testing.T, o *vicregOracle, ckpt *loader.Parts, views *loader.Array, withE2MC bool) (map[string]float64, map[string]layers.HostTensor) {
	t.Helper()
	per := len(views.Data) / views.Shape[0]
	var vs [][]float32
	for v := 0; v < views.Shape[0]; v++ {
		vs = append(vs, toF32s(views.Data[v*per:(v+1)*per]))
	}
	terms, state, err := vicregReplicaStep(vktest.Device(t), NewGroup(1).Comm(0), o, ckpt, vs, views.Shape[2:], withE2MC)
	if err != nil {
		t.Fatal(err)
	}
	return terms, state
}

// vicregReplicaStep is one replica's step, as the trainer takes it: forward
// and loss on its share of the batch (views, each [b, C, H, W] with image
// shape img), E2MC, backward, gradient averaging over comm's group, LARS.
// It returns the loss terms ("loss" the total) and the model's state. It
// reports errors rather than failing the test, for replicas on goroutines.
func vicregReplicaStep(d *vk.Device, comm *Comm, o *vicregOracle, ckpt *loader.Parts, views [][]float32, img []int, withE2MC bool) (map[string]float64, map[string]layers.HostTensor, error) {
	ctx := context.Background()
	m, err := NewVICReg(VICRegOptions{})
	if err != nil {
		return nil, nil, err
	}
	cfg, err := loader.ResNetConfigFor(ckpt)
	if err != nil {
		return nil, nil, err
	}
	model, err := m.NewModel(ctx, d, cfg, ckpt, nil)
	if err != nil {
		return nil, nil, err
	}
	defer model.Release()
	if spec := model.Heads[loader.HeadProjector].Config.Spec; spec != o.MLP {
		return nil, nil, fmt.Errorf("projector %q, want the checkpoint's %q", spec, o.MLP)
	}
	s, err := d.NewStream()
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	per := 1
	for _, n := range img {
		per *= n
	}
	var vs []*layers.Var
	for _, v := range views {
		x, err := layers.FromHost(ctx, d, v, append([]int{len(v) / per}, img...)...)
		if err != nil {
			return nil, nil, err
		}
		defer x.Release()
		vs = append(vs, layers.Constant(x))
	}
	tp := layers.NewTape(s)
	defer tp.Release()
	tp.SetCollective(ctx, comm)
	st := &Step{Ctx: ctx, Tape: tp, Model: model, Views: vs, Comm: comm}
	loss, err := m.Loss(st)
	if err != nil {
		return nil, nil, err
	}
	total := loss.Total
	host := map[string]float64{}
	if withE2MC {
		reg, err := NewE2MC(d, "vicreg", o.Ent, o.Cov)
		if err != nil {
			return nil, nil, err
		}
		defer reg.Release()
		pen, err := reg.Apply(st, loss.Embeddings)
		if err != nil {
			return nil, nil, err
		}
		total = tp.Add(total, pen.Add)
		for k, v := range pen.HostTerms {
			host[k] = v
		}
		host["e2mc"] = pen.Value
	}
	kept := map[string]*layers.Var{"vicreg": loss.Total}
	for k, v := range loss.Terms {
		kept[k] = v
	}
	for _, v := range kept {
		tp.Keep(v)
		defer v.Value.Release()
	}
	if err := tp.Backward(total); err != nil {
		return nil, nil, err
	}
	params := append(layers.Parameters(model.Backbone), layers.Parameters(model.Heads[loader.HeadProjector])...)
	defer func() {
		for _, p := range params {
			p.ZeroGrad()
		}
	}()
	if err := layers.AverageGradients(ctx, s, params, comm); err != nil {
		return nil, nil, err
	}
	opt, err := m.NewOptimizer(m.ParamGroups(model, o.WD, 0))
	if err != nil {
		return nil, nil, err
	}
	defer opt.Release()
	if err := opt.Step(s, o.LR); err != nil {
		return nil, nil, err
	}
	if err := s.Run(ctx); err != nil {
		return nil, nil, err
	}
	for k, v := range kept {
		x, err := v.Value.Download(ctx)
		if err != nil {
			return nil, nil, err
		}
		host[k] = float64(x[0])
	}
	host["loss"] = host["vicreg"] + host["e2mc"]
	state := map[string]layers.HostTensor{}
	for prefix, mod := range map[string]layers.Module{"backbone.": model.Backbone, "projector.": model.Heads[loader.HeadProjector]} {
		sd, err := layers.StateDict(ctx, mod)
		if err != nil {
			return nil, nil, err
		}
		for k, v := range sd {
			state[prefix+k] = v
		}
	}
	return host, state, nil
}

// TestVICRegReplicas: two replicas with half the batch each take the step
// one replica takes with the whole batch (std, cov and E2MC on the gathered
// embeddings, batch norms synchronised, gradients averaged): the same
// global terms (the invariance term is each replica's own half, so their
// mean is the whole batch's) and the same updated state, to the tolerances
// of the PyTorch comparison.
func TestVICRegReplicas(t *testing.T) {
	o := torchVICReg(t)
	ckpt := o.readParts(t, "ckpt.pth")
	views, err := loader.ReadNpy(filepath.Join(o.dir, "views.npy"))
	if err != nil {
		t.Fatal(err)
	}
	wholeTerms, wholeState := vicregStep(t, o, ckpt, views, true)
	d := vktest.Device(t)
	devs := []*vk.Device{d, vktest.Open(t, d.Info.Index, 1)}
	g := NewGroup(2)
	per := len(views.Data) / views.Shape[0]
	half := per / 2
	terms := make([]map[string]float64, 2)
	states := make([]map[string]layers.HostTensor, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		var part [][]float32
		for v := 0; v < views.Shape[0]; v++ {
			part = append(part, toF32s(views.Data[v*per+r*half:v*per+(r+1)*half]))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if terms[r], states[r], errs[r] = vicregReplicaStep(devs[r], g.Comm(r), o, ckpt, part, views.Shape[2:], true); errs[r] != nil {
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
	for r := range 2 {
		for _, term := range []string{"std", "cov", "e2mc", "ent", "cov_e2mc"} {
			if g, w := terms[r][term], wholeTerms[term]; math.Abs(g-w) > 1e-4*math.Abs(w) {
				t.Errorf("replica %d: %s = %.7g, want %.7g", r, term, g, w)
			}
		}
		init := map[string]layers.HostTensor{}
		for k, v := range ckpt.Backbone {
			init["backbone."+k] = v
		}
		for k, v := range ckpt.Heads[loader.HeadProjector] {
			init["projector."+k] = v
		}
		t.Run(fmt.Sprintf("replica%d", r), func(t *testing.T) { compareState(t, states[r], wholeState, init) })
	}
	sim := (terms[0]["sim"] + terms[1]["sim"]) / 2
	if w := wholeTerms["sim"]; math.Abs(sim-w) > 1e-4*math.Abs(w) {
		t.Errorf("the replicas' mean sim = %.7g, want %.7g", sim, w)
	}
	if math.Abs(terms[0]["sim"]-terms[1]["sim"]) < 1e-3*math.Abs(sim) {
		t.Errorf("both halves report sim %v: the test proves nothing", terms[0]["sim"])
	}
}

// compareState holds every tensor of got to want: 1e-4 relative error in
// 2-norm (LARS lets the batch norms' parameters, which it does not adapt,
// move by about their own size in one step, so an entry's error is a
// fraction of the update's, not of the entry's value). The step's effect on the
// parameters is checked on its own as well, since LARS moves a weight by
// only lr * eta = 0.1% of its norm: the update got - init must match want -
// init to 1e-3 relative in 2-norm (float32 gradients through the whole
// network, and the rounding of init and of both results, about 1e-4 of the
// update).
func compareState(t *testing.T, got, want, init map[string]layers.HostTensor) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d state entries, want %d", len(got), len(want))
	}
	moved := 0
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if len(g.Data) != len(w.Data) {
			t.Errorf("%s: %d values, want %d", name, len(g.Data), len(w.Data))
			continue
		}
		var ss, dd float64
		for i, v := range w.Data {
			ss += float64(v) * float64(v)
			e := float64(g.Data[i]) - float64(v)
			dd += e * e
		}
		if ss == 0 {
			t.Errorf("%s: the reference is all zeros", name)
			continue
		}
		if e := math.Sqrt(dd / ss); e > 1e-4 {
			t.Errorf("%s: relative error %.3g > 1e-4", name, e)
		}
		if w.Int64 || strings.Contains(name, "running") {
			continue
		}
		in := init[name]
		var diff, norm float64
		for i := range w.Data {
			dw := float64(w.Data[i]) - float64(in.Data[i])
			dg := float64(g.Data[i]) - float64(in.Data[i])
			diff += (dg - dw) * (dg - dw)
			norm += dw * dw
		}
		if norm <= 1e-10*ss {
			// An update below 1e-5 of the parameter's norm is no more
			// than float32 noise: the biases of the Linears before a
			// batch norm, whose exact gradient is zero.
			continue
		}
		moved++
		if e := math.Sqrt(diff / norm); e > 1e-3 {
			t.Errorf("%s: the update differs from the reference's by %.3g relative", name, e)
		}
	}
	if moved == 0 {
		t.Error("no parameter moved: the step tested nothing")
	}
}

// newTestRand is a seeded generator for initialisations.
func newTestRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x71c)) }

func toF32s(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}

func TestNewVICRegOptions(t *testing.T) {
	m, err := NewVICReg(VICRegOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if o := m.Options(); o != (VICRegOptions{MLP: "8192-8192-8192", SimCoeff: 25, StdCoeff: 25, CovCoeff: 1}) {
		t.Errorf("defaults %+v", o)
	}
	m, err = NewVICReg(VICRegOptions{MLP: "64-32", CovCoeff: 2})
	if err != nil {
		t.Fatal(err)
	}
	if o := m.Options(); o != (VICRegOptions{MLP: "64-32", SimCoeff: 25, StdCoeff: 25, CovCoeff: 2}) {
		t.Errorf("options %+v", o)
	}
	for _, bad := range []string{"8192-x", "0-3", "-"} {
		if _, err := NewVICReg(VICRegOptions{MLP: bad}); err == nil {
			t.Errorf("mlp %q accepted", bad)
		}
	}
	if m.Name() != "vicreg" {
		t.Errorf("name %q", m.Name())
	}
}

// TestVICRegFreshModel builds the model without a checkpoint: the expander
// from the options, and the parameter groups cover every parameter once.
func TestVICRegFreshModel(t *testing.T) {
	ctx := context.Background()
	d := vktest.Device(t)
	m, err := NewVICReg(VICRegOptions{MLP: "24-24-16"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := layers.ResNetConfig{Depth: 18, Width: 4, SmallStem: true, InChannels: 3}
	model, err := m.NewModel(ctx, d, cfg, nil, newTestRand(1))
	if err != nil {
		t.Fatal(err)
	}
	defer model.Release()
	proj := model.Heads[loader.HeadProjector]
	if proj == nil || len(proj.Linears) != 3 || proj.Linears[2].Bias != nil || proj.Linears[0].Bias == nil {
		t.Fatalf("projector %+v: want 3 Linears, biases on the hidden ones only", proj)
	}
	// zero_init_residual: the last batch norm of every block starts at 0.
	for _, stage := range model.Backbone.Layers {
		for _, blk := range stage {
			w, err := blk.BNs[len(blk.BNs)-1].Weight.Value.Download(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range w {
				if v != 0 {
					t.Fatalf("a residual block's last batch norm weight is %v, want 0", v)
				}
			}
		}
	}
	if w, err := model.Backbone.BN1.Weight.Value.Download(ctx); err != nil || w[0] != 1 {
		t.Errorf("the stem's batch norm weight is %v (%v), want 1", w, err)
	}
	groups := m.ParamGroups(model, 1e-6, 0)
	n := len(layers.Parameters(model.Backbone)) + len(layers.Parameters(proj))
	if len(groups) != 1 || len(groups[0].Params) != n || groups[0].WeightDecay != 1e-6 || groups[0].NoAdapt {
		t.Errorf("groups: %d, want one of %d parameters with weight decay 1e-6", len(groups), n)
	}
	if st, err := m.State(ctx); err != nil || st != nil {
		t.Errorf("State = %v, %v", st, err)
	}
	if err := m.LoadState(ctx, map[string]layers.HostTensor{"x": {}}); err == nil {
		t.Error("LoadState accepted a tensor")
	}
}
