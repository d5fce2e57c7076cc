package ssl

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/e2mc"
	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
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
func simsiamHost(t *testing.T, e layers.StateEntry) []float32 {
	t.Helper()
	ctx := context.Background()
	switch {
	case e.Param != nil:
		v, err := e.Param.Value.Download(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return v
	case e.Buffer != nil:
		v, err := e.Buffer.Download(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return v
	default:
		return []float32{float32(*e.Count)}
	}
}

// TestSimSiamMatchesTorch loads an official-layout SimSiam checkpoint that
// PyTorch wrote (a small ResNet-18 with randomised batch-norm state), takes
// one training step of main_simsiam.py on two views, without and with E2MC
// on z1 and z2, and compares with PyTorch's step from the same checkpoint:
// the loss terms, every parameter's gradient, and every weight, running
// statistic and counter after the SGD step.
func TestSimSiamMatchesTorch(t *testing.T) {
	dir, cases := simsiamOracle(t)
	ctx := context.Background()
	d := vktest.Device(t)
	root, err := loader.ReadPth(filepath.Join(dir, "checkpoint.pth"))
	if err != nil {
		t.Fatal(err)
	}
	parts, err := loader.SplitCheckpoint(root, "")
	if err != nil {
		t.Fatal(err)
	}
	if parts.Layout != loader.LayoutSimSiam {
		t.Fatalf("layout %s, want simsiam", parts.Layout)
	}
	cfg, err := loader.ResNetConfigFor(parts)
	if err != nil {
		t.Fatal(err)
	}
	if want := (layers.ResNetConfig{Depth: 18, Width: 8, SmallStem: true, InChannels: 3}); cfg != want {
		t.Fatalf("config %+v, want %+v", cfg, want)
	}
	views := [][]float32{simsiamView(t, filepath.Join(dir, "x1.npy")), simsiamView(t, filepath.Join(dir, "x2.npy"))}
	lr, predLR := simsiamLRs()

	for _, name := range []string{"plain", "e2mc"} {
		t.Run(name, func(t *testing.T) {
			want, ok := cases[name]
			if !ok {
				t.Fatalf("the oracle has no case %q", name)
			}
			// The default head sizes (2048, 512): the checkpoint's heads
			// must win over them.
			method, err := NewSimSiam(SimSiamOptions{})
			if err != nil {
				t.Fatal(err)
			}
			model, err := method.NewModel(ctx, d, cfg, parts, rand.New(rand.NewPCG(1, 2)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(model.Release)
			entries := simsiamEntries(model)
			frozen := model.Heads[loader.HeadProjector].Linears[2].Bias
			if frozen == nil || frozen.RequiresGrad() {
				t.Fatal("the projector's last bias is missing or trainable; SimSiam freezes it")
			}
			frozenBefore := simsiamHost(t, layers.StateEntry{Param: frozen})

			s, err := d.NewStream()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			tp := layers.NewTape(s)
			st := &Step{Ctx: ctx, Tape: tp, Model: model, Comm: NewGroup(1).Comm(0)}
			for _, v := range views {
				x, err := layers.FromHost(ctx, d, v, simsiamBatch, 3, simsiamSize, simsiamSize)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(x.Release)
				st.Views = append(st.Views, layers.Constant(x))
			}
			if err := method.Prepare(st); err != nil {
				t.Fatal(err)
			}
			l, err := method.Loss(st)
			if err != nil {
				t.Fatal(err)
			}
			if len(l.Embeddings) != 2 || !l.Embeddings[0].RequiresGrad() || !l.Embeddings[1].RequiresGrad() {
				t.Fatal("the embeddings must be z1 and z2 with their gradients")
			}
			total := l.Total
			var e2 *e2mc.Loss
			if name == "e2mc" {
				// TODO: switch to the ssl E2MC regularizer (NewE2MC(d,
				// "simsiam", ent, cov)) once ssl/e2mc.go lands.
				crit := &e2mc.Criterion{
					Params:       e2mc.Params{Bound: e2mc.BoundNormal, Eps: e2mc.Float32Eps},
					Coefficients: e2mc.Coefficients{Ent: simsiamEnt, Cov: simsiamCov},
				}
				z1, z2 := l.Embeddings[0], l.Embeddings[1]
				var gs [2]*layers.Tensor
				for i := range gs {
					if gs[i], err = layers.New(d, z1.Shape()...); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(gs[i].Release)
				}
				if e2, err = crit.Loss(ctx, s, z1.Value, z2.Value, gs[0], gs[1]); err != nil {
					t.Fatal(err)
				}
				total = tp.Add(total, tp.Add(Surrogate(tp, z1, gs[0]), Surrogate(tp, z2, gs[1])))
			}
			term := l.Terms["simsiam"]
			if term == nil {
				t.Fatal("no simsiam term")
			}
			tp.Keep(term)
			if err := tp.Backward(total); err != nil {
				t.Fatal(err)
			}
			if err := method.BeforeUpdate(st); err != nil {
				t.Fatal(err)
			}
			groups := method.ParamGroups(model, simsiamWD, predLR)
			if len(groups) != 2 || groups[1].FixedLR != predLR || groups[0].FixedLR != 0 {
				t.Fatalf("param groups %+v: want the encoder's and the predictor's at a fixed rate", groups)
			}
			opt, err := method.NewOptimizer(groups)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(opt.Release)
			// The gradients are read before the step, so that a wrong one is
			// seen as such and not hidden in a small update.
			if err := s.Run(ctx); err != nil {
				t.Fatal(err)
			}
			checked := 0
			for _, e := range entries {
				if e.Param == nil {
					continue
				}
				shape, ok := want.Grad[e.Name]
				switch {
				case !ok && e.Param.Grad != nil:
					t.Errorf("%s took a gradient; PyTorch's took none", e.Name)
				case ok && e.Param.Grad == nil:
					t.Errorf("%s took no gradient", e.Name)
				case ok:
					g, err := e.Param.Grad.Download(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if fmt.Sprint(shape) != fmt.Sprint(e.Param.Shape()) {
						t.Errorf("%s: shape %v, PyTorch's %v", e.Name, e.Param.Shape(), shape)
						continue
					}
					simsiamNormClose(t, "gradient of "+e.Name, g, oracle.ReadFloat32s(t, filepath.Join(dir, name, "grad", e.Name)), 3e-4)
					checked++
				}
			}
			if checked != len(want.Grad) {
				t.Errorf("checked %d gradients of PyTorch's %d", checked, len(want.Grad))
			}

			if err := opt.Step(s, lr); err != nil {
				t.Fatal(err)
			}
			if err := s.Run(ctx); err != nil {
				t.Fatal(err)
			}
			tp.Release()
			for _, e := range entries {
				if e.Param != nil {
					e.Param.ZeroGrad()
				}
			}

			got, err := term.Value.Download(ctx)
			term.Value.Release()
			if err != nil {
				t.Fatal(err)
			}
			terms := map[string]float64{"simsiam": float64(got[0])}
			if e2 != nil {
				terms["entropy_a"], terms["entropy_b"] = e2.A.MeanEntropy, e2.B.MeanEntropy
				terms["cov_a"], terms["cov_b"] = e2.A.CovLoss, e2.B.CovLoss
				terms["e2mc"] = e2.Total
			}
			terms["total"] = terms["simsiam"] + terms["e2mc"]
			for k, w := range want.Terms {
				g, ok := terms[k]
				if !ok {
					t.Errorf("term %s missing", k)
					continue
				}
				if math.Abs(g-w) > 1e-4*math.Abs(w) || w == 0 {
					t.Errorf("term %s = %.8g, PyTorch %.8g", k, g, w)
				}
			}

			checked = 0
			for _, e := range entries {
				shape, ok := want.After[e.Name]
				if !ok {
					t.Errorf("%s: not in PyTorch's state", e.Name)
					continue
				}
				w := oracle.ReadFloat32s(t, filepath.Join(dir, name, "after", e.Name))
				g := simsiamHost(t, e)
				if len(w) != len(g) {
					t.Errorf("%s: %d values, PyTorch's %v", e.Name, len(g), shape)
					continue
				}
				if e.Count != nil {
					if g[0] != w[0] {
						t.Errorf("%s = %v, PyTorch %v", e.Name, g[0], w[0])
					}
				} else {
					simsiamClose(t, e.Name+" after the step", g, w, 1e-4, simsiamFloor)
				}
				checked++
			}
			if checked != len(want.After) {
				t.Errorf("checked %d state entries of PyTorch's %d", checked, len(want.After))
			}
			if after := simsiamHost(t, layers.StateEntry{Param: frozen}); fmt.Sprint(after) != fmt.Sprint(frozenBefore) {
				t.Error("the projector's frozen bias moved")
			}
		})
	}
}

// simsiamFloor is the absolute tolerance added to the relative one for
// entries near zero: 1e-4 of the smallest typical magnitude among the
// state's tensors (running means and conv weights of order 1e-2).
const simsiamFloor = 1e-6
