package eval

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
)

// TestLinearMatchesLogisticRegression trains the fast-mode probe with the
// default settings (100 epochs, lr 0.3, wd 1e-6, batch 256) on synthetic
// frozen features and compares its test top-1 with scikit-learn's
// cross-validated LogisticRegression on the same features: within 2 points
// (the bound).
func TestLinearMatchesLogisticRegression(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	// About as many samples a dimension as Fashion-MNIST's 60000 x 512
	// features have (the regime the default settings are for).
	means := classMeans(rng, 10, 48, 0.2)
	train := syntheticFeatures(rng, means, 6000)
	test := syntheticFeatures(rng, means, 1000)
	script, err := os.ReadFile("testdata/sklearn_logreg.py")
	if err != nil {
		t.Fatal(err)
	}
	dir := oracle.Cached(t, []string{"sklearn", "numpy"}, func(py, dir string) {
		writeFeaturesNpy(t, dir, "xtrain", "ytrain", train)
		writeFeaturesNpy(t, dir, "xtest", "ytest", test)
		oracle.RunFile(t, py, "testdata/sklearn_logreg.py", dir)
	}, script, npyBytes(t, train), npyBytes(t, test))
	var want struct{ Top1, C float64 }
	oracle.ReadJSON(t, filepath.Join(dir, "result.json"), &want)

	start := time.Now()
	cfg := DefaultLinearConfig()
	var last float64
	p, err := TrainLinear(context.Background(), train, cfg, func(_ int, loss float64) { last = loss })
	if err != nil {
		t.Fatal(err)
	}
	top1, top5, err := p.Evaluate(test)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("probe: top1 %.2f top5 %.2f (final training loss %.4f, %s); LogisticRegression (C=%g): top1 %.2f",
		top1, top5, last, time.Since(start).Round(time.Millisecond), want.C, want.Top1)
	if want.Top1 < 30 || want.Top1 > 95 {
		t.Fatalf("the synthetic problem is too hard or too easy: LogisticRegression top1 %.2f", want.Top1)
	}
	if math.Abs(top1-want.Top1) > 2 {
		t.Errorf("probe top1 %.2f, LogisticRegression %.2f: more than 2 points apart", top1, want.Top1)
	}
	if top5 < top1 {
		t.Errorf("top5 %.2f < top1 %.2f", top5, top1)
	}
}

// BenchmarkLinearEpoch times one fast-mode epoch at Fashion-MNIST's size:
// 60000 rows of 512 features (ResNet-18's), 10 classes, batch 256.
func BenchmarkLinearEpoch(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	f := syntheticFeatures(rng, classMeans(rng, 10, 512, 0.2), 60000)
	cfg := DefaultLinearConfig()
	cfg.Epochs = 1
	for b.Loop() {
		if _, err := TrainLinear(context.Background(), f, cfg, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLinearProbeStepsMatchTorch runs three SGD steps of the probe, with
// and without the batch norm, on random batches of awkward sizes (13
// features, 6 classes, batches of 9, 9 and 5 rows) and compares with
// PyTorch in float64 (testdata/torch_probe.py): the losses, every
// parameter, the running statistics and the evaluation-mode logits, each to
// a relative 1e-5 (2-norm; float32 here).
func TestLinearProbeStepsMatchTorch(t *testing.T) {
	for _, bn := range []bool{false, true} {
		rng := rand.New(rand.NewPCG(21, 22))
		const d, classes = 13, 6
		cfg := DefaultLinearConfig()
		cfg.BN, cfg.WeightDecay, cfg.Momentum = bn, 1e-3, 0.9
		p, err := NewLinearProbe(d, classes, cfg)
		if err != nil {
			t.Fatal(err)
		}
		for i := range p.W {
			p.W[i] = float32(0.3 * rng.NormFloat64())
		}
		for i := range p.B {
			p.B[i] = float32(0.1 * rng.NormFloat64())
		}
		type batch struct {
			X [][]float64 `json:"x"`
			Y []int       `json:"y"`
		}
		in := map[string]any{"d": d, "classes": classes, "bn": bn, "wd": cfg.WeightDecay, "momentum": cfg.Momentum,
			"lrs": []float64{0.5, 0.3, 0.2}}
		w0 := make([][]float64, classes)
		for c := range w0 {
			for j := range d {
				w0[c] = append(w0[c], float64(p.W[c*d+j]))
			}
		}
		b0 := make([]float64, classes)
		for c := range b0 {
			b0[c] = float64(p.B[c])
		}
		in["w0"], in["b0"] = w0, b0
		var batches []batch
		var flat [][]float32
		for _, n := range []int{9, 9, 5} {
			var bt batch
			var xs []float32
			for range n {
				row := make([]float64, d)
				for j := range row {
					v := float32(max(0, 1+1.5*rng.NormFloat64()))
					row[j] = float64(v)
					xs = append(xs, v)
				}
				bt.X = append(bt.X, row)
				bt.Y = append(bt.Y, rng.IntN(classes))
			}
			batches = append(batches, bt)
			flat = append(flat, xs)
		}
		in["batches"] = batches
		raw, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		script, err := os.ReadFile("testdata/torch_probe.py")
		if err != nil {
			t.Fatal(err)
		}
		dir := oracle.Cached(t, []string{"torch"}, func(py, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "in.json"), raw, 0o644); err != nil {
				t.Fatal(err)
			}
			oracle.RunFile(t, py, "testdata/torch_probe.py", dir)
		}, script, raw)
		var want struct {
			Losses, B, Gamma, Beta []float64
			RunningMean            []float64 `json:"running_mean"`
			RunningVar             []float64 `json:"running_var"`
			W, Logits              [][]float64
		}
		oracle.ReadJSON(t, filepath.Join(dir, "out.json"), &want)
		var losses []float64
		for k, bt := range batches {
			loss, err := p.Step(flat[k], bt.Y, in["lrs"].([]float64)[k])
			if err != nil {
				t.Fatal(err)
			}
			losses = append(losses, loss)
		}
		check := func(name string, got []float32, want []float64) {
			t.Helper()
			var diff, norm float64
			if len(got) != len(want) {
				t.Fatalf("bn %v, %s: %d values, want %d", bn, name, len(got), len(want))
			}
			for i, w := range want {
				diff += (float64(got[i]) - w) * (float64(got[i]) - w)
				norm += w * w
			}
			if rel := math.Sqrt(diff / norm); !(rel <= 1e-5) || norm == 0 {
				t.Errorf("bn %v, %s: relative error %.3g", bn, name, rel)
			}
		}
		f32 := func(x []float64) []float32 {
			out := make([]float32, len(x))
			for i, v := range x {
				out[i] = float32(v)
			}
			return out
		}
		flatten := func(m [][]float64) []float64 {
			var out []float64
			for _, r := range m {
				out = append(out, r...)
			}
			return out
		}
		check("losses", f32(losses), want.Losses)
		check("weight", p.W, flatten(want.W))
		check("bias", p.B, want.B)
		check("logits", p.Scores(flat[0], 9), flatten(want.Logits))
		if bn {
			check("bn weight", p.Gamma, want.Gamma)
			check("bn bias", p.Beta, want.Beta)
			check("running mean", p.RunningMean, want.RunningMean)
			check("running var", p.RunningVar, want.RunningVar)
		}
	}
}
