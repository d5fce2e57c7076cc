package ssl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// The trainer's tests run a small network: ResNet-18 at width 8 with the
// small stem on 8 px images, batches of 8, and heads of a few dozen units.

var trainerBackbone = layers.ResNetConfig{Depth: 18, Width: 8, SmallStem: true, InChannels: 3}

const (
	trainerBatchSize = 8
	trainerImageSize = 8
)

// trainerTinyMethod is a test-only Method: the backbone, a two-layer head with a
// batch norm, and a loss of the gathered embeddings of two views,
// mse(za, zb) + 0.5*mean(za^2), the same on every replica as VICReg's is.
// It keeps a per-replica state (its rank and the rows it has seen) to test
// that Snapshot and Restore keep each replica's method state its own.
type trainerTinyMethod struct {
	rank, rows float32
}

func (m *trainerTinyMethod) Name() string { return "tiny" }

func (m *trainerTinyMethod) NewModel(ctx context.Context, d *vk.Device, cfg layers.ResNetConfig, parts *loader.Parts, rng *rand.Rand) (*Model, error) {
	r, err := layers.NewResNet(ctx, d, cfg, rng)
	if err != nil {
		return nil, err
	}
	head, err := layers.NewMLP(ctx, d, r.Features, layers.MLPConfig{Spec: "24-16", HiddenBias: true, LastBias: true}, rng)
	if err != nil {
		r.Release()
		return nil, err
	}
	model := &Model{Backbone: r, Heads: map[string]*layers.MLP{loader.HeadProjector: head}}
	if parts != nil {
		if err := loader.LoadBackbone(ctx, r, parts); err != nil {
			model.Release()
			return nil, err
		}
		if err := loader.LoadHead(ctx, head, parts, loader.HeadProjector); err != nil {
			model.Release()
			return nil, err
		}
	}
	return model, nil
}

func (m *trainerTinyMethod) Prepare(st *Step) error { return nil }

func (m *trainerTinyMethod) Loss(st *Step) (*Loss, error) {
	tp := st.Tape
	var z []*layers.Var
	for _, v := range st.Views {
		z = append(z, st.Model.Heads[loader.HeadProjector].Forward(tp, st.Model.Backbone.Forward(tp, v)))
	}
	za, zb := tp.AllGather(z[0]), tp.AllGather(z[1])
	sim := tp.MSE(za, zb)
	mag := tp.Mean(tp.Mul(za, za))
	total := tp.Add(sim, tp.Scale(mag, 0.5))
	if err := tp.Err(); err != nil {
		return nil, err
	}
	m.rank = float32(st.Comm.Rank())
	m.rows += float32(st.Views[0].Shape()[0])
	return &Loss{Total: total, Terms: map[string]*layers.Var{"sim": sim, "mag": mag}, Embeddings: z}, nil
}

func (m *trainerTinyMethod) ParamGroups(model *Model, wd, predLR float64) []layers.Group {
	params := layers.Parameters(model.Backbone)
	params = append(params, layers.Parameters(model.Heads[loader.HeadProjector])...)
	return []layers.Group{{Params: params, WeightDecay: wd}}
}

func (m *trainerTinyMethod) NewOptimizer(groups []layers.Group) (*layers.Optimizer, error) {
	return layers.NewSGD(groups, 0.9)
}

func (m *trainerTinyMethod) BeforeUpdate(st *Step) error { return nil }

func (m *trainerTinyMethod) State(ctx context.Context) (map[string]layers.HostTensor, error) {
	return map[string]layers.HostTensor{"seen": {Shape: []int{2}, Data: []float32{m.rank, m.rows}}}, nil
}

func (m *trainerTinyMethod) LoadState(ctx context.Context, st map[string]layers.HostTensor) error {
	s, ok := st["seen"]
	if !ok || len(s.Data) != 2 {
		return fmt.Errorf("tiny: no state \"seen\"")
	}
	m.rank, m.rows = s.Data[0], s.Data[1]
	return nil
}

func (m *trainerTinyMethod) Release() {}

// trainerBatch makes a two-view batch of n images of N(0, 1) values.
func trainerBatch(seed uint64, n int) *loader.Batch {
	rng := rand.New(rand.NewPCG(seed, 77))
	b := &loader.Batch{Sizes: []int{trainerImageSize, trainerImageSize}}
	for range 2 {
		v := make([]float32, n*3*trainerImageSize*trainerImageSize)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		b.Views = append(b.Views, v)
	}
	return b
}

// trainerDevices returns n distinct logical devices of the test device's
// physical device, other than the shared test device itself.
func trainerDevices(t *testing.T, n int) []*vk.Device {
	t.Helper()
	base := vktest.Device(t)
	var ds []*vk.Device
	for i := range n {
		ds = append(ds, vktest.Open(t, base.Info.Index, 1+i))
	}
	return ds
}

func newTrainerForTest(t *testing.T, devs []*vk.Device, from *loader.Parts, newMethod func() (Method, error), newReg func(*vk.Device) (Regularizer, error)) *Trainer {
	t.Helper()
	if newMethod == nil {
		newMethod = func() (Method, error) { return &trainerTinyMethod{}, nil }
	}
	tr, err := NewTrainer(context.Background(), TrainerConfig{
		Devices:        devs,
		NewMethod:      newMethod,
		NewRegularizer: newReg,
		Backbone:       trainerBackbone,
		From:           from,
		Seed:           11,
		LR:             layers.ConstantLR(0.05),
		WeightDecay:    1e-4,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Release)
	return tr
}

// trainerState downloads replica r's whole model state: parameters,
// running statistics and batch counters, by name.
func trainerState(t *testing.T, tr *Trainer, r int) map[string]layers.HostTensor {
	t.Helper()
	ctx := context.Background()
	m := tr.replicas[r].model
	out, err := layers.StateDict(ctx, m.Backbone)
	if err != nil {
		t.Fatal(err)
	}
	for name, h := range m.Heads {
		hs, err := layers.StateDict(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hs {
			out[name+"."+k] = v
		}
	}
	if m.Prototypes != nil {
		w, err := m.Prototypes.Weight.Value.Download(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out["prototypes.weight"] = layers.HostTensor{Shape: m.Prototypes.Weight.Shape(), Data: w}
	}
	return out
}

// trainerClose reports whether got is within tol of want: |got-want| <=
// rel*|want| + abs.
func trainerClose(got, want, rel, abs float64) bool {
	return math.Abs(got-want) <= rel*math.Abs(want)+abs
}

// trainerCompare checks two model states name by name with the tolerance
// of trainerClose and returns the largest error relative to the tolerance.
func trainerCompare(t *testing.T, what string, got, want map[string]layers.HostTensor, rel, abs float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d state entries, want %d", what, len(got), len(want))
	}
	names := make([]string, 0, len(want))
	for k := range want {
		names = append(names, k)
	}
	sort.Strings(names)
	bad := 0
	worst, worstName := 0.0, ""
	for _, k := range names {
		g, ok := got[k]
		if !ok {
			t.Fatalf("%s: no entry %s", what, k)
		}
		w := want[k]
		if !slices.Equal(g.Shape, w.Shape) {
			t.Fatalf("%s: %s has shape %v, want %v", what, k, g.Shape, w.Shape)
		}
		for i := range w.Data {
			gv, wv := float64(g.Data[i]), float64(w.Data[i])
			e := 0.0
			if d := math.Abs(gv - wv); d > 0 || math.IsNaN(d) {
				e = d / (rel*math.Abs(wv) + abs)
			}
			if e > worst || math.IsNaN(e) {
				worst, worstName = e, fmt.Sprintf("%s[%d] = %g, want %g", k, i, gv, wv)
			}
			if !trainerClose(gv, wv, rel, abs) {
				if bad++; bad <= 5 {
					t.Errorf("%s: %s[%d] = %.9g, want %.9g", what, k, i, gv, wv)
				}
			}
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d values off", what, bad)
	}
	t.Logf("%s: worst error %.3g of the tolerance at %s", what, worst, worstName)
}

// trainerSpread fails the test when every value of the state is the same: a
// comparison of constant data proves nothing.
func trainerSpread(t *testing.T, st map[string]layers.HostTensor) {
	t.Helper()
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range st {
		for _, x := range v.Data {
			lo, hi = math.Min(lo, float64(x)), math.Max(hi, float64(x))
		}
	}
	if !(hi > lo) {
		t.Fatalf("the model state is constant (%g..%g)", lo, hi)
	}
}

// Tolerances of the multi-device comparison. The replicas sum batch-norm
// statistics and gradients over the devices in float64 on the host where
// one device sums them in float32 on the device, in another order: the
// results agree to float32 rounding, amplified by the backward pass through
// 20 layers and two steps. Such rounding differences can flip a ReLU whose
// input lies within rounding of zero, which changes a gradient by far more
// than rounding (16 px images did that once in two steps); the 8 px images
// keep the number of ReLU inputs small enough that none is that close here.
// trainerEquivRel is the part of a tensor's norm (and of the loss) allowed
// beyond the noise bound of TestTrainerReplicasMatchOneDevice.
const trainerEquivRel = 1e-5

// trainerNoiseFactor bounds how far the two replicas may lie from the one
// device relative to how far one device moves when its inputs move by one
// ulp (see TestTrainerReplicasMatchOneDevice). Measured: 0.6 to 1.9.
const trainerNoiseFactor = 4

// TestTrainerReplicasMatchOneDevice is the multi-device equivalence test:
// two replicas (two logical devices of one physical device) with 4 images
// each take the same two steps as one device with 8: the same losses and
// terms, the same weights and running statistics, on both replicas.
//
// How far float32 rounding alone moves the result is measured, not assumed:
// two more trainers, on one device, take the steps on inputs one ulp up and
// one ulp down, and the farther of the two sets the scale (one sample of
// the noise is itself noisy: with the GPU batch-norm tuning the one-ulp-up
// trainer moved a bias of VICReg+E2MC 4.4 times less than the replicas lay
// from the one device, the one-ulp-down trainer 13 times more). A
// fixed element-wise tolerance (1e-5 relative plus 1e-6) lay at that noise
// floor even for the test method: the one-ulp nudge moved its weights by
// up to 1.51 times it (CPU kernels; 0.97 with the GPU kernels, where the
// replicas lay at 1.12 of it after the convolutions' sums changed order),
// plain VICReg's by 0.74. E2MC is far less well conditioned: its entropy
// gradient goes as 1/spacing of the sorted, bounded embeddings, and the
// small spacings of a batch of 8 turn rounding differences of the
// embeddings into gradient differences a thousand times larger (its
// m-spacings may also swap between near ties). So every tensor of the
// replicas must lie within trainerNoiseFactor times the nudged trainer's
// distance from the one device (2-norms, plus trainerEquivRel of the
// tensor's norm), and the loss and
// terms within trainerNoiseFactor times its loss and term differences plus
// trainerEquivRel. A real fault (a gradient not averaged or averaged twice,
// rows gathered in the wrong order, statistics not synchronised) moves the
// weights by a sizeable fraction of the update, orders of magnitude more:
// gradients averaged 1% too large put the replicas 414 to 13300 times
// beyond the bound in the three cases (a mutation tried once).
func TestTrainerReplicasMatchOneDevice(t *testing.T) {
	for _, c := range trainerEquivalenceCases() {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			one := newTrainerForTest(t, []*vk.Device{vktest.Device(t)}, nil, c.newMethod, c.newRegularizer)
			two := newTrainerForTest(t, trainerDevices(t, 2), nil, c.newMethod, c.newRegularizer)
			// The directions of the one-ulp nudges: up and down.
			dirs := []float32{float32(math.Inf(1)), float32(math.Inf(-1))}
			var nudged []*Trainer
			for range dirs {
				nudged = append(nudged, newTrainerForTest(t, []*vk.Device{vktest.Device(t)}, nil, c.newMethod, c.newRegularizer))
			}
			trainerCompare(t, "start", trainerState(t, two, 0), trainerState(t, one, 0), 0, 0)
			for step := range 2 {
				b := trainerBatch(uint64(100+step), trainerBatchSize)
				r1, err := one.Step(ctx, b, 0)
				if err != nil {
					t.Fatal(err)
				}
				r2, err := two.Step(ctx, b, 0)
				if err != nil {
					t.Fatal(err)
				}
				if r1.Iteration != step || r2.Iteration != step {
					t.Errorf("step %d: iterations %d and %d", step, r1.Iteration, r2.Iteration)
				}
				var rn []*StepResult
				for i, dir := range dirs {
					r, err := nudged[i].Step(ctx, trainerNudge(b, dir), 0)
					if err != nil {
						t.Fatal(err)
					}
					rn = append(rn, r)
				}
				// tol is the allowed difference of a value v of the one
				// device that moves to at(r) of the nudged runs r when its
				// inputs move by one ulp.
				tol := func(v float64, at func(r *StepResult) float64) float64 {
					noise := 0.0
					for _, r := range rn {
						noise = max(noise, math.Abs(at(r)-v))
					}
					return trainerEquivRel*math.Abs(v) + trainerNoiseFactor*noise
				}
				if math.Abs(r2.Loss-r1.Loss) > tol(r1.Loss, func(r *StepResult) float64 { return r.Loss }) {
					t.Errorf("step %d: loss %.9g on two devices, %.9g on one", step, r2.Loss, r1.Loss)
				}
				if len(r2.Terms) != len(r1.Terms) || len(r1.Terms) == 0 {
					t.Errorf("step %d: terms %v on two devices, %v on one", step, r2.Terms, r1.Terms)
				}
				for k, v := range r1.Terms {
					if math.Abs(r2.Terms[k]-v) > tol(v, func(r *StepResult) float64 { return r.Terms[k] }) {
						t.Errorf("step %d: term %s = %.9g on two devices, %.9g on one", step, k, r2.Terms[k], v)
					}
				}
				t.Logf("step %d: loss %.9g (one) %.9g (two), terms %v", step, r1.Loss, r2.Loss, r1.Terms)
			}
			want := trainerState(t, one, 0)
			trainerSpread(t, want)
			for r := range 2 {
				got := trainerState(t, two, r)
				what := fmt.Sprintf("replica %d", r)
				var ns []map[string]layers.HostTensor
				for _, n := range nudged {
					ns = append(ns, trainerState(t, n, 0))
				}
				trainerCompareNoise(t, what, got, want, ns)
			}
		})
	}
}

// trainerNudge returns a copy of b with every value one ulp towards dir.
func trainerNudge(b *loader.Batch, dir float32) *loader.Batch {
	n := &loader.Batch{Sizes: slices.Clone(b.Sizes)}
	for _, v := range b.Views {
		u := make([]float32, len(v))
		for i, x := range v {
			u[i] = math.Nextafter32(x, dir)
		}
		n.Views = append(n.Views, u)
	}
	return n
}

// trainerCompareNoise checks every tensor of got against want in 2-norm:
// ||got - want|| <= trainerNoiseFactor*max ||nudged[i] - want|| +
// trainerEquivRel*||want||, nudged being where want's run ends from inputs
// one ulp away.
func trainerCompareNoise(t *testing.T, what string, got, want map[string]layers.HostTensor, nudged []map[string]layers.HostTensor) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d state entries, want %d", what, len(got), len(want))
	}
	worst, worstName := 0.0, ""
	for k, w := range want {
		g := got[k]
		if !slices.Equal(g.Shape, w.Shape) {
			t.Fatalf("%s: %s has shape %v, want %v", what, k, g.Shape, w.Shape)
		}
		var dg, ww float64
		for i, x := range w.Data {
			dg += math.Pow(float64(g.Data[i])-float64(x), 2)
			ww += float64(x) * float64(x)
		}
		dn := 0.0 // the farthest nudged run
		for _, nm := range nudged {
			n := nm[k]
			if !slices.Equal(n.Shape, w.Shape) {
				t.Fatalf("%s: %s has shape %v in a nudged run, want %v", what, k, n.Shape, w.Shape)
			}
			var d float64
			for i, x := range w.Data {
				d += math.Pow(float64(n.Data[i])-float64(x), 2)
			}
			dn = max(dn, math.Sqrt(d))
		}
		dg, ww = math.Sqrt(dg), math.Sqrt(ww)
		bound := trainerNoiseFactor*dn + trainerEquivRel*ww
		if !(dg <= bound) {
			t.Errorf("%s: %s lies %.3g from one device's, beyond %.3g (one device moves %.3g for one ulp of input)", what, k, dg, bound, dn)
		}
		if bound > 0 && dg/bound > worst {
			worst, worstName = dg/bound, k
		}
	}
	t.Logf("%s: worst %.3g of the bound at %s", what, worst, worstName)
}

// trainerEquivalenceCase is a method (and criterion) the equivalence test
// runs.
type trainerEquivalenceCase struct {
	name           string
	newMethod      func() (Method, error)
	newRegularizer func(d *vk.Device) (Regularizer, error)
}

func trainerEquivalenceCases() []trainerEquivalenceCase {
	vicreg := func() (Method, error) { return NewVICReg(VICRegOptions{MLP: "32-32-24"}) }
	return []trainerEquivalenceCase{
		{name: "tiny", newMethod: func() (Method, error) { return &trainerTinyMethod{}, nil }},
		{name: "vicreg", newMethod: vicreg},
		{
			name:      "vicreg+e2mc",
			newMethod: vicreg,
			newRegularizer: func(d *vk.Device) (Regularizer, error) {
				return NewRegularizer("e2mc", "vicreg", d, -1, -1)
			},
		},
	}
}

// TestTrainerNonFiniteLoss feeds a NaN image to replica 1 after a good step:
// the step fails with a NonFiniteLossError naming the iteration, changes no
// weight and no optimizer state, and the step after it (on good data) takes
// the same step as a trainer that never met the NaN.
func TestTrainerNonFiniteLoss(t *testing.T) {
	ctx := context.Background()
	devs := trainerDevices(t, 2)
	tr := newTrainerForTest(t, devs, nil, nil, nil)
	good := trainerBatch(200, trainerBatchSize)
	if _, err := tr.Step(ctx, good, 0); err != nil {
		t.Fatal(err)
	}
	before := trainerState(t, tr, 0)
	optBefore, err := tr.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nan := trainerBatch(201, trainerBatchSize)
	nan.Views[1][len(nan.Views[1])-5] = float32(math.NaN()) // in replica 1's share
	_, err = tr.Step(ctx, nan, 0)
	var nf *NonFiniteLossError
	if !errors.As(err, &nf) {
		t.Fatalf("step on a NaN image: %v, want a NonFiniteLossError", err)
	}
	if nf.Iteration != 1 || !math.IsNaN(nf.Value) || nf.Term == "" {
		t.Errorf("error %+v: want iteration 1, a named term and NaN", nf)
	}
	if !strings.Contains(err.Error(), "iteration 1") || !strings.Contains(err.Error(), nf.Term) {
		t.Errorf("error %q names neither the iteration nor the term", err)
	}
	if tr.Iteration() != 1 {
		t.Errorf("iteration %d after the failed step, want 1", tr.Iteration())
	}
	after := trainerState(t, tr, 0)
	for k, w := range before {
		if strings.Contains(k, "running_") || strings.Contains(k, "num_batches_tracked") {
			continue // the forward pass updates them before the loss is known
		}
		if !slices.Equal(after[k].Data, w.Data) {
			t.Errorf("%s changed in the failed step", k)
		}
	}
	optAfter, err := tr.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if optAfter.Optimizer.Steps != optBefore.Optimizer.Steps {
		t.Errorf("optimizer steps %d after the failed step, %d before", optAfter.Optimizer.Steps, optBefore.Optimizer.Steps)
	}
	for k, v := range optBefore.Optimizer.Tensors {
		if !slices.Equal(optAfter.Optimizer.Tensors[k].Data, v.Data) {
			t.Errorf("optimizer state %s changed in the failed step", k)
		}
	}

	// No gradient of the failed step may leak into the next one.
	ref := newTrainerForTest(t, devs, nil, nil, nil)
	if _, err := ref.Step(ctx, good, 0); err != nil {
		t.Fatal(err)
	}
	next := trainerBatch(202, trainerBatchSize)
	r1, err := tr.Step(ctx, next, 0)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := ref.Step(ctx, next, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Iteration != 1 || r1.Loss != r2.Loss {
		t.Errorf("after the failed step: iteration %d loss %.9g, want 1 and %.9g", r1.Iteration, r1.Loss, r2.Loss)
	}
	got, want := trainerState(t, tr, 0), trainerState(t, ref, 0)
	for k, w := range want {
		if strings.Contains(k, "running_") || strings.Contains(k, "num_batches_tracked") {
			continue
		}
		if !slices.Equal(got[k].Data, w.Data) {
			t.Errorf("%s differs from the run without the failed step", k)
		}
	}
}

// TestTrainerSnapshotRestore checks that a run resumed from a snapshot (the
// model through TrainerConfig.From, the rest through Restore) takes the
// same next step as the run that went on, and that each replica gets its
// own method state back.
func TestTrainerSnapshotRestore(t *testing.T) {
	ctx := context.Background()
	devs := trainerDevices(t, 2)
	run := newTrainerForTest(t, devs, nil, nil, nil)
	if _, err := run.Step(ctx, trainerBatch(300, trainerBatchSize), 0); err != nil {
		t.Fatal(err)
	}
	snap, err := run.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Iteration != 1 || snap.Model.Layout != loader.LayoutE2MCVK || snap.Model.Heads[loader.HeadProjector] == nil {
		t.Fatalf("snapshot: iteration %d, layout %q, heads %v", snap.Iteration, snap.Model.Layout, snap.Model.HeadNames())
	}
	if len(snap.Optimizer.Tensors) == 0 {
		t.Fatal("snapshot: no optimizer state")
	}
	for r := range 2 {
		s, ok := snap.Method[fmt.Sprintf("replica%d/seen", r)]
		if !ok || s.Data[0] != float32(r) || s.Data[1] != trainerBatchSize/2 {
			t.Fatalf("snapshot: replica %d's method state %v", r, s)
		}
	}

	resumed := newTrainerForTest(t, devs, snap.Model, nil, nil)
	if err := resumed.Restore(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if resumed.Iteration() != 1 {
		t.Fatalf("restored iteration %d, want 1", resumed.Iteration())
	}
	for r := range 2 {
		m := resumed.replicas[r].method.(*trainerTinyMethod)
		if m.rank != float32(r) || m.rows != trainerBatchSize/2 {
			t.Errorf("replica %d restored method state rank %g rows %g", r, m.rank, m.rows)
		}
	}
	trainerCompare(t, "restored model", trainerState(t, resumed, 0), trainerState(t, run, 0), 0, 0)

	b := trainerBatch(301, trainerBatchSize)
	r1, err := run.Step(ctx, b, 0)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := resumed.Step(ctx, b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Iteration != 1 || r2.Iteration != 1 || r1.Loss != r2.Loss {
		t.Errorf("next step: iteration %d loss %.9g (run), %d %.9g (resumed)", r1.Iteration, r1.Loss, r2.Iteration, r2.Loss)
	}
	want := trainerState(t, run, 0)
	trainerSpread(t, want)
	trainerCompare(t, "after the next step", trainerState(t, resumed, 0), want, 0, 0)

	// Per-replica method state does not fit another number of replicas.
	single := newTrainerForTest(t, []*vk.Device{vktest.Device(t)}, snap.Model, nil, nil)
	if err := single.Restore(ctx, snap); err == nil {
		t.Error("restoring two replicas' method state into one replica did not fail")
	}
}

// TestTrainerSnapshotRestoreSwAV resumes SwAV with a running queue on two
// replicas: the snapshot carries the prototypes and each replica's own
// queue (they differ), and the resumed run takes the same next step.
func TestTrainerSnapshotRestoreSwAV(t *testing.T) {
	ctx := context.Background()
	devs := trainerDevices(t, 2)
	swav := func() (Method, error) {
		return NewMethod("swav", MethodOptions{
			MLP: "32-16", Prototypes: 10, Crops: []int{2},
			QueueLength: 16, QueueStartEpoch: 1, FreezePrototypesIters: -1,
		})
	}
	run := newTrainerForTest(t, devs, nil, swav, nil)
	for step := range 2 {
		if _, err := run.Step(ctx, trainerBatch(uint64(400+step), trainerBatchSize), 1); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := run.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	protos := snap.Model.Heads[loader.HeadPrototypes]["weight"]
	if !slices.Equal(protos.Shape, []int{10, 16}) {
		t.Fatalf("snapshot: prototypes of shape %v, want [10 16]", protos.Shape)
	}
	q0, q1 := snap.Method["replica0/queue"], snap.Method["replica1/queue"]
	if len(q0.Data) == 0 || len(q1.Data) != len(q0.Data) || slices.Equal(q0.Data, q1.Data) {
		t.Fatalf("snapshot: queues of %d and %d values (equal: %v); want two different queues", len(q0.Data), len(q1.Data), slices.Equal(q0.Data, q1.Data))
	}

	resumed := newTrainerForTest(t, devs, snap.Model, swav, nil)
	if err := resumed.Restore(ctx, snap); err != nil {
		t.Fatal(err)
	}
	again, err := resumed.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range snap.Method {
		if !slices.Equal(again.Method[k].Data, v.Data) {
			t.Errorf("restored method state %s differs", k)
		}
	}
	b := trainerBatch(402, trainerBatchSize)
	r1, err := run.Step(ctx, b, 1)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := resumed.Step(ctx, b, 1)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Iteration != 2 || r2.Iteration != 2 || r1.Loss != r2.Loss {
		t.Errorf("next step: iteration %d loss %.9g (run), %d %.9g (resumed)", r1.Iteration, r1.Loss, r2.Iteration, r2.Loss)
	}
	want := trainerState(t, run, 0)
	trainerSpread(t, want)
	trainerCompare(t, "after the next step", trainerState(t, resumed, 0), want, 0, 0)
}

// TestTrainerRejects checks the configurations and batches a trainer refuses.
func TestTrainerRejects(t *testing.T) {
	ctx := context.Background()
	d := vktest.Device(t)
	tiny := func() (Method, error) { return &trainerTinyMethod{}, nil }
	for name, c := range map[string]TrainerConfig{
		"no devices":  {NewMethod: tiny, Backbone: trainerBackbone, LR: layers.ConstantLR(1)},
		"same device": {Devices: []*vk.Device{d, d}, NewMethod: tiny, Backbone: trainerBackbone, LR: layers.ConstantLR(1)},
		"no method":   {Devices: []*vk.Device{d}, Backbone: trainerBackbone, LR: layers.ConstantLR(1)},
		"no schedule": {Devices: []*vk.Device{d}, NewMethod: tiny, Backbone: trainerBackbone},
		"fc":          {Devices: []*vk.Device{d}, NewMethod: tiny, Backbone: layers.ResNetConfig{Depth: 18, Width: 8, SmallStem: true, InChannels: 3, Classes: 10}, LR: layers.ConstantLR(1)},
	} {
		if tr, err := NewTrainer(ctx, c); err == nil {
			tr.Release()
			t.Errorf("%s: NewTrainer did not fail", name)
		}
	}
	for name, b := range map[string]*loader.Batch{
		"uneven":     trainerBatch(1, 3),
		"ragged":     {Sizes: []int{4, 4}, Views: [][]float32{make([]float32, 2*48), make([]float32, 4*48)}},
		"no sizes":   {Views: [][]float32{make([]float32, 2*48)}},
		"fractional": {Sizes: []int{4}, Views: [][]float32{make([]float32, 2*48+1)}},
		"empty":      {},
	} {
		if _, err := shareViews(b, 2); err == nil {
			t.Errorf("%s batch: shareViews did not fail", name)
		}
	}
	shares, err := shareViews(trainerBatch(2, 4), 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(shares) != 2 || len(shares[1]) != 2 || len(shares[1][0]) != 2*3*trainerImageSize*trainerImageSize {
		t.Errorf("shareViews: %d shares of %d views", len(shares), len(shares[1]))
	}
}
