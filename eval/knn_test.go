package eval

import (
	"context"
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// knnReference is the vote computed directly in float64: cosine
// similarities of every pair, the k largest (earlier row first among
// equals), each adding exp(s/temp) to its class.
func knnReference(train, test *Features, k int, temp float64) []float64 {
	norm := func(f *Features, i int) []float64 {
		row := make([]float64, f.D)
		var ss float64
		for j, v := range f.Row(i) {
			row[j] = float64(v)
			ss += row[j] * row[j]
		}
		for j := range row {
			row[j] /= math.Sqrt(ss)
		}
		return row
	}
	tr := make([][]float64, train.N)
	for i := range tr {
		tr[i] = norm(train, i)
	}
	scores := make([]float64, test.N*train.Classes)
	for i := range test.N {
		q := norm(test, i)
		sims := make([]float64, train.N)
		order := make([]int, train.N)
		for j := range tr {
			for d := range q {
				sims[j] += q[d] * tr[j][d]
			}
			order[j] = j
		}
		sort.SliceStable(order, func(a, b int) bool { return sims[order[a]] > sims[order[b]] })
		for _, j := range order[:min(k, train.N)] {
			scores[i*train.Classes+train.Labels[j]] += math.Exp(sims[j] / temp)
		}
	}
	return scores
}

// TestKNNMatchesReference compares the kNN vote with the float64 reference
// on synthetic features of awkward sizes: each class score to a relative
// 1e-4 of the row's largest score (float32 similarities, exp(s/0.07)
// magnifies their rounding by about 15), the accuracies exactly; also k
// larger than the training set. Both ways: similarities on the host and on
// the device (also a device whose buffers are split).
func TestKNNMatchesReference(t *testing.T) {
	devs := map[string]*vk.Device{"host": nil, "device": vktest.Device(t), "split device": vktest.SplitDevice(t, 64<<10)}
	rng := rand.New(rand.NewPCG(3, 5))
	means := classMeans(rng, 7, 37, 0.5)
	train := syntheticFeatures(rng, means, 613)
	test := syntheticFeatures(rng, means, 157)
	for _, c := range []struct {
		k    int
		temp float64
	}{{KNNDefaultK, KNNDefaultTemp}, {20, 0.5}, {1000, 0.07}} {
		for name, dev := range devs {
			got, err := KNNScores(context.Background(), dev, train, test, c.k, c.temp)
			if err != nil {
				t.Fatal(err)
			}
			want := knnReference(train, test, c.k, c.temp)
			worst := 0.0
			for i := range test.N {
				row := want[i*train.Classes : (i+1)*train.Classes]
				top := 0.0
				for _, v := range row {
					top = max(top, v)
				}
				if top == 0 {
					t.Fatalf("row %d has no votes", i)
				}
				for j, v := range row {
					worst = max(worst, math.Abs(got[i*train.Classes+j]-v)/top)
				}
			}
			if worst > 1e-4 || !finite(got) {
				t.Errorf("%s, k %d T %g: scores differ from the reference by %.3g of the row's largest", name, c.k, c.temp, worst)
			}
			g1, g5 := TopK(got, train.Classes, test.Labels)
			w1, w5 := TopK(want, train.Classes, test.Labels)
			if g1 != w1 || g5 != w5 {
				t.Errorf("%s, k %d T %g: top1/top5 %.2f/%.2f, reference %.2f/%.2f", name, c.k, c.temp, g1, g5, w1, w5)
			}
			if c.k == KNNDefaultK && dev == nil {
				t.Logf("k %d: top1 %.2f top5 %.2f", c.k, g1, g5)
				if g1 < 100.0/float64(train.Classes)+10 {
					t.Errorf("top1 %.2f: hardly above chance, the test data says little", g1)
				}
			}
		}
	}
}

// TestTopK checks the rank rule on a hand-sized case: ties go to the lower
// class index.
func TestTopK(t *testing.T) {
	scores := []float64{
		1, 3, 2, 0, 0, 0, // label 1: top-1
		5, 5, 1, 1, 1, 1, // label 1: tied with 0, which wins: top-5 only
		9, 8, 7, 6, 5, 4, // label 5: rank 5, neither
	}
	top1, top5 := TopK(scores, 6, []int{1, 1, 5})
	if math.Abs(top1-100.0/3) > 1e-9 || math.Abs(top5-200.0/3) > 1e-9 {
		t.Errorf("top1 %.4f top5 %.4f, want 33.3333 and 66.6667", top1, top5)
	}
}

// BenchmarkKNN times the vote of 1000 test rows against Fashion-MNIST's
// 60000 training rows of 512 features (a tenth of its test set), the
// similarities on the host and on the device.
func BenchmarkKNN(b *testing.B) {
	for _, name := range []string{"host", "device"} {
		b.Run(name, func(b *testing.B) { benchKNN(b, name) })
	}
}

func benchKNN(b *testing.B, where string) {
	var dev *vk.Device
	if where == "device" {
		dev = vktest.Device(b)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	means := classMeans(rng, 10, 512, 0.2)
	train := syntheticFeatures(rng, means, 60000)
	test := syntheticFeatures(rng, means, 1000)
	for b.Loop() {
		if _, _, err := KNN(context.Background(), dev, train, test, KNNDefaultK, KNNDefaultTemp); err != nil {
			b.Fatal(err)
		}
	}
}
