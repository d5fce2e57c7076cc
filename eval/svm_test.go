package eval

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/loader"
)

// syntheticMultiLabel makes n rows of d features with classes labels: each
// image holds each class with probability 0.3, its features are N(0, 1)
// noise plus the prototypes of the classes it holds; a tenth of the present
// labels are marked difficult (0).
func syntheticMultiLabel(rng *rand.Rand, protos [][]float64, n int) *MultiLabel {
	classes, d := len(protos), len(protos[0])
	m := &MultiLabel{N: n, D: d, X: make([]float32, n*d), Targets: make([][]int8, n)}
	for c := range classes {
		m.Classes = append(m.Classes, string(rune('a'+c)))
	}
	for i := range n {
		m.Targets[i] = make([]int8, classes)
		row := make([]float64, d)
		for j := range row {
			row[j] = rng.NormFloat64()
		}
		for c := range classes {
			m.Targets[i][c] = -1
			if rng.Float64() < 0.3 {
				m.Targets[i][c] = 1
				if rng.Float64() < 0.1 {
					m.Targets[i][c] = 0
				}
				for j := range row {
					row[j] += protos[c][j]
				}
			}
		}
		for j, v := range row {
			m.X[i*d+j] = float32(v)
		}
	}
	return m
}

func writeMultiLabel(t *testing.T, dir, x, targets string, m *MultiLabel) {
	t.Helper()
	if err := loader.WriteNpy(filepath.Join(dir, x+".npy"), []int{m.N, m.D}, m.X); err != nil {
		t.Fatal(err)
	}
	var tt []int64
	for _, row := range m.Targets {
		for _, v := range row {
			tt = append(tt, int64(v))
		}
	}
	if err := loader.WriteNpyInt64(filepath.Join(dir, targets+".npy"), []int{m.N, len(m.Classes)}, tt); err != nil {
		t.Fatal(err)
	}
}

// TestVOC07MatchesLinearSVC runs the VOC07 protocol on a synthetic
// multi-label set and compares with scikit-learn's LinearSVC in VISSL's
// protocol (testdata/sklearn_svm.py): the final mAP, and the test AP of
// every cost's fit and each class's cross-validated AP at every cost where
// both solvers converged within the protocol's 2000 sweeps, all within 0.5
// points (the bound). Where a solver stops at the cap (the largest
// costs here), its answer depends on the order of its sweeps, which
// liblinear draws from its own generator: those are logged, not compared.
func TestVOC07MatchesLinearSVC(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 13))
	const classes, d = 4, 29
	protos := make([][]float64, classes)
	for c := range protos {
		protos[c] = make([]float64, d)
		for j := range protos[c] {
			protos[c][j] = 0.35 * rng.NormFloat64()
		}
	}
	train := syntheticMultiLabel(rng, protos, 241)
	test := syntheticMultiLabel(rng, protos, 203)
	script, err := os.ReadFile("testdata/sklearn_svm.py")
	if err != nil {
		t.Fatal(err)
	}
	dir := oracle.Cached(t, []string{"sklearn", "numpy"}, func(py, dir string) {
		writeMultiLabel(t, dir, "xtrain", "ttrain", train)
		writeMultiLabel(t, dir, "xtest", "ttest", test)
		oracle.RunFile(t, py, "testdata/sklearn_svm.py", dir)
	}, script, []byte("v2"), float32Bytes(train.X), float32Bytes(test.X), targetBytes(train), targetBytes(test))
	var want struct {
		AP, Cost    []float64
		CVAP        [][]float64
		APPerCost   [][]float64 `json:"ap_per_cost"`
		MAP         float64
		Converged   [][]bool `json:"converged"`
		CVConverged [][]bool `json:"cv_converged"`
	}
	oracle.ReadJSON(t, filepath.Join(dir, "result.json"), &want)

	cfg := DefaultSVMConfig()
	got, err := VOC07(context.Background(), train, test, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mAP %.2f (LinearSVC %.2f); costs %v (LinearSVC %v)", got.MAP, want.MAP, got.Cost, want.Cost)
	if math.Abs(got.MAP-want.MAP) > 0.5 {
		t.Errorf("mAP %.3f, LinearSVC %.3f: more than 0.5 points apart", got.MAP, want.MAP)
	}
	if want.MAP < 30 || want.MAP > 98 {
		t.Errorf("the synthetic problem is too hard or too easy: LinearSVC mAP %.2f", want.MAP)
	}
	xtr := normalizedRows(&Features{X: train.X, N: train.N, D: d})
	xte := normalizedRows(&Features{X: test.X, N: test.N, D: d})
	compared := 0
	defer func() {
		// At least the costs up to 10 of every class, both ways.
		if compared < classes*2*7 {
			t.Errorf("only %d of %d per-cost APs compared", compared, classes*2*len(cfg.Costs))
		}
	}()
	for c := range classes {
		y := make([]int8, train.N)
		tt := make([]int8, test.N)
		for i := range y {
			y[i] = -1
			if train.Targets[i][c] == 1 {
				y[i] = 1
			}
		}
		for i := range tt {
			tt[i] = test.Targets[i][c]
		}
		for ci, cost := range cfg.Costs {
			diff := math.Abs(got.CVAP[c][ci] - want.CVAP[c][ci])
			switch {
			case !got.CVConverged[c][ci] || !want.CVConverged[c][ci]:
				t.Logf("class %d cost %g: cross-validated AP %.3f, LinearSVC %.3f (not compared: a fit reached the sweep cap)", c, cost, got.CVAP[c][ci], want.CVAP[c][ci])
			case diff > 0.5:
				t.Errorf("class %d cost %g: cross-validated AP %.3f, LinearSVC %.3f", c, cost, got.CVAP[c][ci], want.CVAP[c][ci])
			default:
				compared++
			}
			m, err := TrainSVM(xtr, d, y, nil, cost, 2, 1, 1e-4, 2000, 1)
			if err != nil {
				t.Fatal(err)
			}
			ap := 100 * VOCAP(m.Decision(xte, test.N), tt)
			switch {
			case m.Iters >= 2000 || !want.Converged[c][ci]:
				t.Logf("class %d cost %g: test AP %.3f, LinearSVC %.3f (not compared: %d sweeps here, LinearSVC converged: %v)", c, cost, ap, want.APPerCost[c][ci], m.Iters, want.Converged[c][ci])
			case math.Abs(ap-want.APPerCost[c][ci]) > 0.5:
				t.Errorf("class %d cost %g: test AP %.3f, LinearSVC %.3f (%d sweeps)", c, cost, ap, want.APPerCost[c][ci], m.Iters)
			default:
				compared++
			}
		}
	}
}

func float32Bytes(x []float32) []byte {
	b := make([]byte, 0, 4*len(x))
	for _, v := range x {
		u := math.Float32bits(v)
		b = append(b, byte(u), byte(u>>8), byte(u>>16), byte(u>>24))
	}
	return b
}

func targetBytes(m *MultiLabel) []byte {
	var b []byte
	for _, row := range m.Targets {
		for _, v := range row {
			b = append(b, byte(v))
		}
	}
	return b
}

// TestAveragePrecisions checks the two AP rules against direct
// computations on random scores with ties: VOC's all-point interpolated AP
// (difficult left out) against its definition as the area under the
// monotone precision envelope, and scikit-learn's step AP against the mean
// over positives of the precision at their score threshold.
func TestAveragePrecisions(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 20 {
		n := 5 + rng.IntN(60)
		scores := make([]float64, n)
		targets := make([]int8, n)
		for i := range n {
			scores[i] = float64(rng.IntN(12)) // ties
			targets[i] = int8(rng.IntN(3) - 1)
		}
		targets[0] = 1
		// sklearn rule: AP = mean over positives of precision at the
		// positive's threshold (all samples scoring at least as high).
		y := make([]int8, n)
		var want float64
		npos := 0
		for i := range n {
			y[i] = -1
			if targets[i] == 1 {
				y[i] = 1
			}
		}
		for i := range n {
			if y[i] != 1 {
				continue
			}
			npos++
			tp, all := 0, 0
			for j := range n {
				if scores[j] >= scores[i] {
					all++
					if y[j] == 1 {
						tp++
					}
				}
			}
			want += float64(tp) / float64(all)
		}
		want /= float64(npos)
		if got := averagePrecision(scores, y); math.Abs(got-want) > 1e-12 {
			t.Errorf("trial %d: average precision %.6f, direct %.6f", trial, got, want)
		}
		// VOC rule with distinct scores (the rule ranks ties by order):
		// for each positive at rank r (difficult left out), the best
		// precision at rank >= r, averaged over positives.
		for i := range scores {
			scores[i] += 1e-3 * float64(i)
		}
		var kept []int
		for i := range n {
			if targets[i] != 0 {
				kept = append(kept, i)
			}
		}
		prec := func(i int) (float64, bool) {
			tp, all := 0, 0
			for _, j := range kept {
				if scores[j] >= scores[i] {
					all++
					if targets[j] == 1 {
						tp++
					}
				}
			}
			return float64(tp) / float64(all), targets[i] == 1
		}
		var voc float64
		vpos := 0
		for _, i := range kept {
			if targets[i] != 1 {
				continue
			}
			vpos++
			best := 0.0
			for _, j := range kept {
				if scores[j] <= scores[i] {
					if p, _ := prec(j); p > best {
						best = p
					}
				}
			}
			voc += best
		}
		voc /= float64(vpos)
		if got := VOCAP(scores, targets); math.Abs(got-voc) > 1e-12 {
			t.Errorf("trial %d: VOC AP %.6f, direct %.6f", trial, got, voc)
		}
	}
}

// TestStratifiedFolds checks the fold sizes and class balance of the
// StratifiedKFold rule: every fold within one sample of its share of each
// class, each class's samples in blocks of increasing fold.
func TestStratifiedFolds(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	y := make([]int8, 101)
	for i := range y {
		y[i] = -1
		if rng.Float64() < 0.27 {
			y[i] = 1
		}
	}
	folds, err := stratifiedFolds(y, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, cls := range []int8{1, -1} {
		count := make([]int, 3)
		last, total := 0, 0
		for i, f := range folds {
			if y[i] != cls {
				continue
			}
			if f < last {
				t.Errorf("class %d: fold %d after fold %d", cls, f, last)
			}
			last = f
			count[f]++
			total++
		}
		for f, c := range count {
			if math.Abs(float64(c)-float64(total)/3) >= 1 {
				t.Errorf("class %d fold %d holds %d of %d", cls, f, c, total)
			}
		}
	}
	if _, err := stratifiedFolds([]int8{1, 1, -1, -1, -1}, 3); err == nil {
		t.Error("a class of 2 samples split 3 ways: no error")
	}
}
