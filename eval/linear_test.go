package eval

import (
	"context"
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
