package layers

import "context"

// Collective exchanges host vectors between the replicas of a data-parallel
// group (ssl.Comm implements it): the host-side counterpart of
// torch.distributed's all_reduce and all_gather. Every replica calls the same
// collectives in the same order.
type Collective interface {
	// Rank is the replica's index, from 0; Size the number of replicas.
	Rank() int
	Size() int
	// AllReduce replaces v on every replica by the element-wise sum over
	// the replicas, added in rank order.
	AllReduce(ctx context.Context, v []float64) error
	// AllGather returns every replica's v concatenated in rank order.
	AllGather(ctx context.Context, v []float32) ([]float32, error)
}
