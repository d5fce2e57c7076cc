package layers

import (
	"context"
	"fmt"

	"github.com/e2mcvk/e2mcvk/vk"
)

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

// Data parallelism on the tape
//
// N replicas, one goroutine each with its own device, stream and tape, each
// on B/N images, compute what one replica computes on B images:
//
//   - Tape.AllGather concatenates a value over the replicas (the embeddings
//     that the E2MC criterion sorts); its backward sums the gathered
//     gradient over the replicas and keeps this replica's rows (VICReg's
//     FullGatherLayer).
//   - BatchNorm in training normalises with the statistics of the union of
//     the replicas' batches, as torch.nn.SyncBatchNorm: the input gradient
//     is the global one, the weight and bias gradients are this replica's
//     sums.
//   - AverageGradients, after Backward, replaces every parameter gradient by
//     its mean over the replicas, as DistributedDataParallel.
//
// Gradient scaling: with these three, a replica's backward pass computes
// its share of the gradient of the sum over the replicas of their losses
// (the collectives route every replica's loss gradient to the rows it came
// from), so the mean that AverageGradients takes is the gradient of the
// mean of the replicas' losses. When each replica's loss is the mean over
// its own B/N samples (or is one loss of the gathered batch, the same on
// every replica), that is exactly the gradient of one replica on B. With
// unequal local batches, local means weigh samples unequally, as in
// PyTorch.
//
// Every collective op runs the stream recorded so far (Stream.Run), moves
// the values it needs through the host, and records on; a replica that
// meets an error must abort its group (ssl.Group.Abort) or cancel the
// context given to SetCollective, or the others wait for it forever.

// SetCollective makes the tape one replica of the data-parallel group c:
// AllGather and training-mode BatchNorm then exchange values with the other
// replicas, waiting for them under ctx. A nil c, or one of Size 1, is a
// single replica: every op then records exactly what it would without a
// group and never runs the stream.
func (tp *Tape) SetCollective(ctx context.Context, c Collective) {
	if ctx == nil {
		ctx = context.Background()
	}
	tp.coll, tp.ctx = c, ctx
}

// Collective returns the group set by SetCollective, or nil.
func (tp *Tape) Collective() Collective { return tp.coll }

// parallel reports whether the tape has replicas to exchange values with.
func (tp *Tape) parallel() bool { return tp.coll != nil && tp.coll.Size() > 1 }

// runDownload runs what the stream recorded so far and downloads t: the
// first half of every collective op.
func (tp *Tape) runDownload(t *Tensor) ([]float32, error) {
	if !t.Contiguous() {
		return nil, fmt.Errorf("tensor %v is a strided view: make it contiguous first", t.shape)
	}
	if err := tp.s.Run(tp.ctx); err != nil {
		return nil, err
	}
	return t.Download(tp.ctx)
}

// upload makes a tape-owned tensor of host values. It runs after
// runDownload, so no recorded, unrun work can still be using the memory a
// fresh tensor is given.
func (tp *Tape) upload(data []float32, shape ...int) (*Tensor, error) {
	t, err := FromHost(tp.ctx, tp.Device(), data, shape...)
	if err != nil {
		return nil, err
	}
	tp.owned[t] = true
	return t, nil
}

// AllGather returns the concatenation along dimension 0 of every replica's
// v, in rank order; the replicas may have different row counts, but the
// other dimensions must agree. Backward sums the gradient of the gathered
// value over the replicas and gives v this replica's rows of the sum (so a
// loss of the gathered batch computed alike on every replica yields, after
// AverageGradients, the gradient of that one loss). Without a group it
// returns v itself.
//
// Each call runs the stream and makes two collectives (shapes, then values)
// forward and one backward.
func (tp *Tape) AllGather(v *Var) *Var {
	if !tp.ok(v) {
		return nil
	}
	if !tp.parallel() {
		return v
	}
	const op = "all-gather"
	shape := v.Value.shape
	if len(shape) == 0 {
		tp.Fail(op, fmt.Errorf("a value of no dimensions"))
		return nil
	}
	rows := shape[0]
	width := v.Value.Len() / rows
	rank, size := tp.coll.Rank(), tp.coll.Size()
	data, err := tp.runDownload(v.Value)
	if err != nil {
		tp.Fail(op, err)
		return nil
	}
	// Every replica's rows and row length, each in its rank's slots.
	dims := make([]float64, 2*size)
	dims[2*rank], dims[2*rank+1] = float64(rows), float64(width)
	if err := tp.coll.AllReduce(tp.ctx, dims); err != nil {
		tp.Fail(op, err)
		return nil
	}
	total, first := 0, 0
	for r := range size {
		if int(dims[2*r+1]) != width {
			tp.Fail(op, fmt.Errorf("replica %d has rows of %d values, replica %d of %d", r, int(dims[2*r+1]), rank, width))
			return nil
		}
		if r < rank {
			first += int(dims[2*r])
		}
		total += int(dims[2*r])
	}
	all, err := tp.coll.AllGather(tp.ctx, data)
	if err != nil {
		tp.Fail(op, err)
		return nil
	}
	if len(all) != total*width {
		tp.Fail(op, fmt.Errorf("gathered %d values, want %d rows of %d", len(all), total, width))
		return nil
	}
	out, err := tp.upload(all, append([]int{total}, shape[1:]...)...)
	if err != nil {
		tp.Fail(op, err)
		return nil
	}
	return tp.record(out, []*Var{v}, func(g *Tensor) []*Tensor {
		const op = "all-gather backward"
		gh, err := tp.runDownload(g)
		if err != nil {
			tp.Fail(op, err)
			return nil
		}
		sum := make([]float64, len(gh))
		for i, x := range gh {
			sum[i] = float64(x)
		}
		if err := tp.coll.AllReduce(tp.ctx, sum); err != nil {
			tp.Fail(op, err)
			return nil
		}
		mine := make([]float32, rows*width)
		for i := range mine {
			mine[i] = float32(sum[first*width+i])
		}
		dx, err := tp.upload(mine, shape...)
		if err != nil {
			tp.Fail(op, err)
			return nil
		}
		return []*Tensor{dx}
	})
}

// AverageGradients replaces the gradient of every parameter by its mean
// over the replicas of c, as DistributedDataParallel does after backward:
// call it after Backward on every replica with the same parameters in the
// same order. It runs s (the stream Backward recorded into), downloads all
// gradients, sums them in one AllReduce and uploads the means. Every
// replica must agree on which parameters have a gradient (a parameter with
// none on every replica is left alone); it is an error otherwise, reported
// alike on every replica. A nil c or one of Size 1 leaves the gradients
// alone and runs nothing.
func AverageGradients(ctx context.Context, s *vk.Stream, params []*Var, c Collective) error {
	if c == nil || c.Size() <= 1 {
		return nil
	}
	size := c.Size()
	// Which parameters have a gradient, counted over the replicas: agreeing
	// first keeps the packed vectors of the second AllReduce the same
	// length everywhere.
	have := make([]float64, len(params))
	n := 0
	for i, p := range params {
		if p == nil {
			return fmt.Errorf("average gradients: parameter %d is nil", i)
		}
		if p.Grad != nil {
			have[i] = 1
			n += p.Grad.Len()
		}
	}
	if err := c.AllReduce(ctx, have); err != nil {
		return fmt.Errorf("average gradients: %w", err)
	}
	for i, h := range have {
		if h != 0 && int(h) != size {
			return fmt.Errorf("average gradients: parameter %d %v has a gradient on %d of %d replicas", i, params[i].Shape(), int(h), size)
		}
	}
	if err := s.Run(ctx); err != nil {
		return fmt.Errorf("average gradients: %w", err)
	}
	packed := make([]float64, 0, n)
	for i, p := range params {
		if p.Grad == nil {
			continue
		}
		g, err := p.Grad.Download(ctx)
		if err != nil {
			return fmt.Errorf("average gradients: parameter %d: %w", i, err)
		}
		for _, x := range g {
			packed = append(packed, float64(x))
		}
	}
	if err := c.AllReduce(ctx, packed); err != nil {
		return fmt.Errorf("average gradients: %w", err)
	}
	at := 0
	for i, p := range params {
		if p.Grad == nil {
			continue
		}
		mean := make([]float32, p.Grad.Len())
		for j := range mean {
			mean[j] = float32(packed[at+j] / float64(size))
		}
		at += len(mean)
		if err := p.Grad.Upload(ctx, mean); err != nil {
			return fmt.Errorf("average gradients: parameter %d: %w", i, err)
		}
	}
	return nil
}
