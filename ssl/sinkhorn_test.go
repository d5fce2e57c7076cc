package ssl

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
)

// sinkhornDirect is main_swav.py's distributed_sinkhorn on one process,
// transcribed literally: Q as the k x B matrix of the paper's notation.
func sinkhornDirect(scores []float64, n, k int, eps float64, iters int) []float64 {
	Q := make([][]float64, k)
	for j := range Q {
		Q[j] = make([]float64, n)
		for i := range Q[j] {
			Q[j][i] = math.Exp(scores[i*k+j] / eps)
		}
	}
	B, K := float64(n), float64(k)
	sum := 0.0
	for j := range Q {
		for i := range Q[j] {
			sum += Q[j][i]
		}
	}
	for j := range Q {
		for i := range Q[j] {
			Q[j][i] /= sum
		}
	}
	for it := 0; it < iters; it++ {
		for j := range Q {
			r := 0.0
			for i := range Q[j] {
				r += Q[j][i]
			}
			for i := range Q[j] {
				Q[j][i] = Q[j][i] / r / K
			}
		}
		for i := 0; i < n; i++ {
			c := 0.0
			for j := range Q {
				c += Q[j][i]
			}
			for j := range Q {
				Q[j][i] = Q[j][i] / c / B
			}
		}
	}
	out := make([]float64, n*k)
	for j := range Q {
		for i := range Q[j] {
			out[i*k+j] = Q[j][i] * B
		}
	}
	return out
}

// cosineScores draws n x k scores in [-1, 1], as cosines of normalised
// embeddings and prototypes are.
func cosineScores(seed uint64, n, k int) []float64 {
	rng := rand.New(rand.NewPCG(seed, 0x51c))
	s := make([]float64, n*k)
	for i := range s {
		s[i] = 2*rng.Float64() - 1
	}
	return s
}

func maxRelDiff(got, want []float64) float64 {
	worst := 0.0
	for i := range want {
		d := math.Abs(got[i]-want[i]) / math.Max(math.Abs(want[i]), 1e-300)
		if math.IsNaN(got[i]) {
			return math.Inf(1)
		}
		worst = max(worst, d)
	}
	return worst
}

func TestSinkhornMatchesDirect(t *testing.T) {
	for _, c := range []struct{ n, k, iters int }{{13, 7, 3}, {40, 29, 3}, {9, 31, 1}, {5, 3, 0}} {
		scores := cosineScores(uint64(c.n*100+c.k), c.n, c.k)
		got, err := Sinkhorn(context.Background(), nil, scores, c.n, c.k, 0.05, c.iters)
		if err != nil {
			t.Fatal(err)
		}
		want := sinkhornDirect(scores, c.n, c.k, 0.05, c.iters)
		// Same operations in the same order, up to the order of the sums.
		if e := maxRelDiff(got, want); e > 1e-12 {
			t.Errorf("n %d k %d iters %d: max relative difference %.3g > 1e-12", c.n, c.k, c.iters, e)
		}
		if c.iters == 0 {
			continue
		}
		// Each sample's assignment is a distribution; the prototypes share
		// the samples about evenly.
		for i := 0; i < c.n; i++ {
			s := 0.0
			for _, v := range got[i*c.k : (i+1)*c.k] {
				s += v
			}
			if math.Abs(s-1) > 1e-12 {
				t.Errorf("n %d k %d: sample %d's assignment sums to %v", c.n, c.k, i, s)
			}
		}
	}
}

// Two replicas holding half the rows each get the rows one replica with all
// of them gets: the sums are all-reduced.
func TestSinkhornReplicas(t *testing.T) {
	const n, k, eps, iters = 18, 11, 0.05, 3
	scores := cosineScores(3, 2*n, k)
	whole, err := Sinkhorn(context.Background(), NewGroup(1).Comm(0), scores, 2*n, k, eps, iters)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGroup(2)
	parts := make([][]float64, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			parts[r], errs[r] = Sinkhorn(context.Background(), g.Comm(r), scores[r*n*k:(r+1)*n*k], n, k, eps, iters)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", r, err)
		}
	}
	got := append(parts[0], parts[1]...)
	if e := maxRelDiff(got, whole); e > 1e-12 {
		t.Errorf("two replicas vs one: max relative difference %.3g > 1e-12", e)
	}
	// Not trivially equal: each replica alone would give other assignments.
	alone, err := Sinkhorn(context.Background(), nil, scores[:n*k], n, k, eps, iters)
	if err != nil {
		t.Fatal(err)
	}
	if e := maxRelDiff(alone, whole[:n*k]); e < 1e-6 {
		t.Errorf("half the rows alone give the same assignments (%.3g): the test proves nothing", e)
	}
}

func TestSinkhornRefuses(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		scores []float64
		n, k   int
		eps    float64
	}{
		{"short", make([]float64, 5), 2, 3, 0.05},
		{"zero eps", make([]float64, 6), 2, 3, 0},
		{"overflow", []float64{1e6, 0, 0, 0, 0, 0}, 2, 3, 0.05},
		{"nan", []float64{math.NaN(), 0, 0, 0, 0, 0}, 2, 3, 0.05},
	} {
		_, err := Sinkhorn(ctx, nil, c.scores, c.n, c.k, c.eps, 3)
		if err == nil {
			t.Errorf("%s: no error", c.name)
		}
		if diverged := c.name == "overflow" || c.name == "nan"; errors.Is(err, errNonFinite) != diverged {
			t.Errorf("%s: %v: marked as diverged scores: %v, want %v", c.name, err, !diverged, diverged)
		}
	}
}
