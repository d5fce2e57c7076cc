package ssl

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/e2mcvk/e2mcvk/layers"
)

var _ layers.Collective = (*Comm)(nil)

// replicas runs f for every rank of g, each in its own goroutine, and
// returns their errors by rank.
func replicas(g *Group, f func(c *Comm) error) []error {
	errs := make([]error, g.Size())
	var wg sync.WaitGroup
	for r := range g.Size() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = f(g.Comm(r))
		}()
	}
	wg.Wait()
	return errs
}

// within fails the test if f has not returned after a few seconds: the
// collectives under test must unblock, not hang the test binary.
func within(t *testing.T, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("collectives still blocked after 10 s")
	}
}

// TestGroupAllReduce sums vectors of widely different magnitudes over four
// replicas that arrive in random order, many rounds in a row: every replica
// must get, to the bit, the sum in rank order (which differs from the sum
// in reverse order for these values).
func TestGroupAllReduce(t *testing.T) {
	const size, n, rounds = 4, 64, 20
	rng := rand.New(rand.NewPCG(1, 2))
	vals := make([][][]float64, rounds) // [round][rank][i]
	for k := range vals {
		vals[k] = make([][]float64, size)
		for r := range size {
			vals[k][r] = make([]float64, n)
			for i := range n {
				vals[k][r][i] = rng.NormFloat64() * math.Pow(10, float64(rng.IntN(33)-16))
			}
		}
	}
	g := NewGroup(size)
	got := make([][][]float64, rounds)
	for k := range got {
		got[k] = make([][]float64, size)
	}
	var errs []error
	within(t, func() {
		errs = replicas(g, func(c *Comm) error {
			jitter := rand.New(rand.NewPCG(uint64(c.Rank()), 3))
			for k := range rounds {
				time.Sleep(time.Duration(jitter.IntN(300)) * time.Microsecond)
				v := slices.Clone(vals[k][c.Rank()])
				if err := c.AllReduce(context.Background(), v); err != nil {
					return err
				}
				got[k][c.Rank()] = v
			}
			return nil
		})
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", r, err)
		}
	}
	orderMatters := false
	for k := range rounds {
		want := make([]float64, n)
		for r := range size {
			for i, x := range vals[k][r] {
				want[i] += x
			}
		}
		for i := range n {
			var rev float64
			for r := size - 1; r >= 0; r-- {
				rev += vals[k][r][i]
			}
			orderMatters = orderMatters || rev != want[i]
		}
		for r := range size {
			if !slices.Equal(got[k][r], want) {
				t.Fatalf("round %d, replica %d: the sum differs from the rank-order sum", k, r)
			}
		}
	}
	if !orderMatters {
		t.Fatal("the test values sum alike in any order: they prove nothing about the order")
	}
}

// TestGroupAllGather concatenates vectors of different lengths (one empty)
// in rank order.
func TestGroupAllGather(t *testing.T) {
	lens := []int{3, 0, 5}
	g := NewGroup(len(lens))
	parts := make([][]float32, len(lens))
	var want []float32
	for r, n := range lens {
		for i := range n {
			parts[r] = append(parts[r], float32(10*r+i)+0.5)
		}
		want = append(want, parts[r]...)
	}
	got := make([][]float32, len(lens))
	var errs []error
	within(t, func() {
		errs = replicas(g, func(c *Comm) error {
			var err error
			got[c.Rank()], err = c.AllGather(context.Background(), parts[c.Rank()])
			return err
		})
	})
	for r := range lens {
		if errs[r] != nil {
			t.Fatalf("replica %d: %v", r, errs[r])
		}
		if !slices.Equal(got[r], want) {
			t.Errorf("replica %d gathered %v, want %v", r, got[r], want)
		}
	}
	// A group of one returns its own vector, without waiting.
	one, err := NewGroup(1).Comm(0).AllGather(context.Background(), parts[0])
	if err != nil || !slices.Equal(one, parts[0]) {
		t.Errorf("group of one: %v, %v", one, err)
	}
}

// TestGroupMismatch makes replicas call different collectives (or one of
// different lengths): every replica gets an error naming them, and the
// group stays failed.
func TestGroupMismatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(c *Comm) error
	}{
		{"lengths", func(c *Comm) error {
			return c.AllReduce(context.Background(), make([]float64, 3+c.Rank()))
		}},
		{"kinds", func(c *Comm) error {
			if c.Rank() == 1 {
				_, err := c.AllGather(context.Background(), []float32{1})
				return err
			}
			return c.AllReduce(context.Background(), []float64{1})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGroup(3)
			var errs []error
			within(t, func() { errs = replicas(g, tc.call) })
			for r, err := range errs {
				if err == nil || !strings.Contains(err.Error(), "out of step") {
					t.Errorf("replica %d: error %v, want replicas out of step", r, err)
				}
			}
			if err := g.Comm(0).AllReduce(context.Background(), []float64{1}); err == nil {
				t.Error("a collective after the mismatch succeeded")
			}
		})
	}
}

// TestGroupAbort aborts a group while two of three replicas wait in a
// collective: both return the abort's error, as does every later call.
func TestGroupAbort(t *testing.T) {
	g := NewGroup(3)
	boom := errors.New("replica 2 failed")
	var errs []error
	within(t, func() {
		var wg sync.WaitGroup
		errs = make([]error, 2)
		for r := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[r] = g.Comm(r).AllReduce(context.Background(), []float64{1, 2})
			}()
		}
		waitArrivals(g, 2)
		g.Abort(boom)
		wg.Wait()
	})
	for r, err := range errs {
		if !errors.Is(err, boom) {
			t.Errorf("replica %d: %v, want %v", r, err, boom)
		}
	}
	if _, err := g.Comm(2).AllGather(context.Background(), nil); !errors.Is(err, boom) {
		t.Errorf("after the abort: %v, want %v", err, boom)
	}
}

// TestGroupContextCancel cancels the context of one of two waiting
// replicas: both stop waiting with the cancellation.
func TestGroupContextCancel(t *testing.T) {
	g := NewGroup(3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errs []error
	within(t, func() {
		var wg sync.WaitGroup
		errs = make([]error, 2)
		for r := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := context.Background()
				if r == 0 {
					c = ctx
				}
				errs[r] = g.Comm(r).AllReduce(c, []float64{1})
			}()
		}
		waitArrivals(g, 2)
		cancel()
		wg.Wait()
	})
	for r, err := range errs {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("replica %d: %v, want %v", r, err, context.Canceled)
		}
	}
}

// waitArrivals waits until n replicas have contributed to g's current
// collective.
func waitArrivals(g *Group, n int) {
	for {
		g.mu.Lock()
		count := g.count
		g.mu.Unlock()
		if count >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
}
