package ssl

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/e2mcvk/e2mcvk/layers"
)

// errNonFinite marks a Sinkhorn failure caused by the scores (NaN, or too
// large): the network has diverged. Every replica meets it at the same
// point, since the sums it is found in are all-reduced.
var errNonFinite = errors.New("not finite")

// Sinkhorn computes SwAV's soft cluster assignments of n samples to k
// prototypes from their scores (row-major n x k, this replica's rows) with
// the Sinkhorn-Knopp iterations of distributed_sinkhorn in the authors'
// main_swav.py: Q = exp(scores/eps), transposed to k x B, where B counts the
// samples of every replica; Q is scaled to sum to 1, then iters times each
// prototype's row (summed over all replicas) to 1/k and each sample's column
// to 1/B; at the end the columns are scaled to sum to 1. It returns the
// assignments as row-major n x k, each row summing to 1.
//
// c, when not nil, is the replica's group: the total and the per-prototype
// sums are all-reduced over it, as the official code all-reduces them, so
// that replicas holding parts of a batch get the assignments one replica
// with the whole batch would. Every replica must pass the same k, eps and
// iters and the same n (B is n times the group size, as there). The work is
// done on the host in float64.
func Sinkhorn(ctx context.Context, c layers.Collective, scores []float64, n, k int, eps float64, iters int) ([]float64, error) {
	switch {
	case n <= 0 || k <= 0:
		return nil, fmt.Errorf("sinkhorn: %d samples and %d prototypes: want both positive", n, k)
	case len(scores) != n*k:
		return nil, fmt.Errorf("sinkhorn: %d scores for %d samples of %d prototypes", len(scores), n, k)
	case !(eps > 0) || math.IsInf(eps, 0):
		return nil, fmt.Errorf("sinkhorn: epsilon %v must be positive", eps)
	case iters < 0:
		return nil, fmt.Errorf("sinkhorn: %d iterations", iters)
	}
	world := 1
	if c != nil {
		world = c.Size()
	}
	allReduce := func(v []float64) error {
		if c == nil || world == 1 {
			return nil
		}
		return c.AllReduce(ctx, v)
	}
	// q keeps the scores' layout (sample-major): the official k x B matrix
	// is its transpose, so its "rows" are our columns and vice versa.
	q := make([]float64, n*k)
	total := []float64{0}
	for i, s := range scores {
		v := math.Exp(s / eps)
		q[i] = v
		total[0] += v
	}
	if err := allReduce(total); err != nil {
		return nil, fmt.Errorf("sinkhorn: sum: %w", err)
	}
	if !(total[0] > 0) || math.IsInf(total[0], 0) {
		return nil, fmt.Errorf("sinkhorn: the sum of exp(scores/%v) is %v: scores too large or %w", eps, total[0], errNonFinite)
	}
	for i := range q {
		q[i] /= total[0]
	}
	b := float64(n * world)
	kf := float64(k)
	perProto := make([]float64, k)
	for it := 0; it < iters; it++ {
		// Each prototype's total weight over all samples becomes 1/k.
		clear(perProto)
		for r := 0; r < n; r++ {
			for j, v := range q[r*k : (r+1)*k] {
				perProto[j] += v
			}
		}
		if err := allReduce(perProto); err != nil {
			return nil, fmt.Errorf("sinkhorn: iteration %d: prototype sums: %w", it, err)
		}
		for r := 0; r < n; r++ {
			row := q[r*k : (r+1)*k]
			for j := range row {
				row[j] = row[j] / perProto[j] / kf
			}
		}
		// Each sample's total weight becomes 1/B (local: a sample lives on
		// one replica).
		for r := 0; r < n; r++ {
			row := q[r*k : (r+1)*k]
			var s float64
			for _, v := range row {
				s += v
			}
			for j := range row {
				row[j] = row[j] / s / b
			}
		}
	}
	for i := range q {
		q[i] *= b
	}
	for i, v := range q {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("sinkhorn: assignment %d of sample %d is %v: %w", i%k, i/k, v, errNonFinite)
		}
	}
	return q, nil
}
