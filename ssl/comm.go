package ssl

import (
	"context"
	"fmt"
	"sync"
)

// Group is a data-parallel group of replicas in one process, one goroutine
// each. Its collectives are the host-side counterparts of torch.distributed's:
// every replica calls the same collectives in the same order, each call
// blocks until all replicas have made it, and all get the same result.
// Sums run in rank order in float64, so a result does not depend on which
// replica arrived first.
type Group struct {
	size int

	mu     sync.Mutex
	cond   *sync.Cond
	round  uint64   // the collective in progress, counted from 0
	parts  [][]byte // per rank, the current collective's contribution
	count  int      // contributions so far in this round
	result []byte   // the finished round's result
	err    error    // set when a replica gave up: every later call fails
	kinds  []string // per rank, the collective it called, to catch mismatches
}

// NewGroup makes a group of size replicas.
func NewGroup(size int) *Group {
	if size < 1 {
		size = 1
	}
	g := &Group{size: size, parts: make([][]byte, size), kinds: make([]string, size)}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// Size is the number of replicas.
func (g *Group) Size() int { return g.size }

// Comm returns replica rank's handle on the group.
func (g *Group) Comm(rank int) *Comm { return &Comm{g: g, rank: rank} }

// Abort makes every pending and later collective of the group fail with err:
// a replica that fails must call it, or the others would wait for it forever.
func (g *Group) Abort(err error) {
	g.mu.Lock()
	if g.err == nil {
		g.err = err
	}
	g.mu.Unlock()
	g.cond.Broadcast()
}

// Comm is one replica's handle on its Group. It implements
// layers.Collective.
type Comm struct {
	g    *Group
	rank int
}

// Rank is the replica's index in its group, from 0.
func (c *Comm) Rank() int { return c.rank }

// Size is the number of replicas in the group.
func (c *Comm) Size() int { return c.g.size }

// exchange contributes part to the current round and returns the round's
// result, made by combine from every rank's part once all have arrived.
func (c *Comm) exchange(ctx context.Context, kind string, part []byte, combine func(parts [][]byte) ([]byte, error)) ([]byte, error) {
	g := c.g
	if g.size == 1 {
		return combine([][]byte{part})
	}
	stop := context.AfterFunc(ctx, func() { g.Abort(ctx.Err()) })
	defer stop()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return nil, g.err
	}
	round := g.round
	g.parts[c.rank], g.kinds[c.rank] = part, kind
	g.count++
	if g.count == g.size {
		for r, k := range g.kinds {
			if k != kind {
				g.err = fmt.Errorf("replicas out of step: replica %d called %s while replica %d called %s", r, k, c.rank, kind)
			}
		}
		if g.err == nil {
			g.result, g.err = combine(g.parts)
		}
		clear(g.parts)
		g.count = 0
		g.round++
		g.cond.Broadcast()
	} else {
		for g.round == round && g.err == nil {
			g.cond.Wait()
		}
	}
	if g.err != nil {
		return nil, g.err
	}
	return g.result, nil
}

// AllReduce replaces v, on every replica, by the element-wise sum of all
// replicas' v (added in rank order). Every replica must pass the same length.
func (c *Comm) AllReduce(ctx context.Context, v []float64) error {
	res, err := c.exchange(ctx, fmt.Sprintf("AllReduce(%d)", len(v)), f64Bytes(v), func(parts [][]byte) ([]byte, error) {
		sum := make([]float64, len(v))
		for _, p := range parts {
			for i, x := range bytesF64(p) {
				sum[i] += x
			}
		}
		return f64Bytes(sum), nil
	})
	if err != nil {
		return err
	}
	copy(v, bytesF64(res))
	return nil
}

// AllGather returns every replica's v concatenated in rank order. The
// replicas may pass different lengths.
func (c *Comm) AllGather(ctx context.Context, v []float32) ([]float32, error) {
	res, err := c.exchange(ctx, "AllGather", f32Bytes(v), func(parts [][]byte) ([]byte, error) {
		var all []byte
		for _, p := range parts {
			all = append(all, p...)
		}
		return all, nil
	})
	if err != nil {
		return nil, err
	}
	return bytesF32(res), nil
}
