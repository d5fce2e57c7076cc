package loader

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
)

// Pipeline feeds SSL training: each epoch it shuffles the data set, cuts
// the order into full batches and augments every sample into each of the
// views, decoding and augmenting on worker goroutines ahead of the
// consumer.
type Pipeline struct {
	// Data is the training set.
	Data Dataset
	// Views are the transforms applied to each sample (see Views).
	Views []View
	// BatchSize is the number of samples in a batch; the last partial
	// batch of an epoch is dropped, as the SSL methods' drop_last=True
	// does.
	BatchSize int
	// Seed keys the shuffles and every view's randomness.
	Seed uint64
	// Workers is the number of decoding goroutines; 0 means one a CPU.
	Workers int
	// Prefetch is the number of batches built ahead of the consumer; 0
	// means 2.
	Prefetch int
	// Strict makes an unreadable image an error instead of a skip.
	Strict bool
	// Log receives one line for each skipped image; nil discards them.
	Log io.Writer
	// InOrder takes the images in data-set order every epoch instead of
	// shuffling them (e2mcvk train --no-shuffle).
	InOrder bool
	// Alloc, when set, provides the memory batches are assembled in, such
	// as pinned memory a device uploads from directly (vk.HostBuffer). It
	// returns a slice of at least lens[v] values for each view v (their
	// contents need not be initialised) and a function taking the memory
	// back, which Batch.Release calls once. It is called from several
	// goroutines at once. An error from it ends the epoch. Nil allocates
	// Go slices.
	//
	// Memory comes back when the consumer releases its batch, or at Close
	// for batches built and never taken; so at most Prefetch batches not
	// yet taken, plus those the consumer holds unreleased, are allocated at
	// a time.
	Alloc func(lens []int) (views [][]float32, release func(), err error)
}

// Batch is one training batch.
type Batch struct {
	// Number is the batch's index in its epoch.
	Number int
	// Views holds, for each view, the batch as a [B, 3, S, S] tensor
	// normalised with the ImageNet statistics, S being Sizes[view]. With
	// Pipeline.Alloc the memory is Alloc's, and it must not be used after
	// Release.
	Views [][]float32
	// Sizes are the views' output sizes.
	Sizes []int
	// Samples are the data set indices of the batch's images, and Labels
	// their classes.
	Samples, Labels []int
	// Skipped are the data set indices of unreadable images passed over
	// while filling this batch.
	Skipped []int
	// skipErrs are the Skipped images' errors, for the log.
	skipErrs []error
	// release hands Views' memory back to Pipeline.Alloc; nil for Go
	// slices.
	release func()
}

// Release hands the batch's memory back to the pipeline's Alloc for a
// later batch and sets Views to nil: Views, and any slice of it, must not
// be used after. Call it once the batch's views have been uploaded or
// copied. Without Alloc it only drops Views. It is safe to call more than
// once.
func (b *Batch) Release() {
	if b.release != nil {
		b.release()
		b.release = nil
	}
	b.Views = nil
}

// NumBatches returns the number of full batches in an epoch.
func (p *Pipeline) NumBatches() int {
	if p.Data == nil || p.BatchSize <= 0 {
		return 0
	}
	return p.Data.Len() / p.BatchSize
}

// Order returns the epoch's shuffled order of the data set: a permutation
// drawn from a PCG generator seeded with (Seed, epoch), or data-set order
// with InOrder.
func (p *Pipeline) Order(epoch int) []int {
	if p.InOrder {
		order := make([]int, p.Data.Len())
		for i := range order {
			order[i] = i
		}
		return order
	}
	return rand.New(rand.NewPCG(p.Seed, uint64(epoch))).Perm(p.Data.Len())
}

// check validates the pipeline's settings.
func (p *Pipeline) check() error {
	if p.Data == nil || p.Data.Len() == 0 {
		return errors.New("pipeline: the data set is empty")
	}
	if p.BatchSize <= 0 {
		return fmt.Errorf("pipeline: batch size %d must be positive", p.BatchSize)
	}
	if p.BatchSize > p.Data.Len() {
		return fmt.Errorf("pipeline: batch size %d is larger than the data set (%d images)", p.BatchSize, p.Data.Len())
	}
	if len(p.Views) == 0 {
		return errors.New("pipeline: no views")
	}
	for i, v := range p.Views {
		if err := v.Check(); err != nil {
			return fmt.Errorf("pipeline: view %d: %w", i, err)
		}
	}
	if p.Workers < 0 || p.Prefetch < 0 {
		return fmt.Errorf("pipeline: %d workers and a prefetch of %d must not be negative", p.Workers, p.Prefetch)
	}
	return nil
}

// Epoch starts producing epoch's batches from batch startBatch on; a run
// resumed at startBatch gets the same batches as a full run from there.
//
// Batch k holds the first BatchSize readable images of the epoch's order
// from position k*BatchSize on (wrapping round to the start), so it depends
// on nothing but k and the set of unreadable images: resuming needs no
// record of earlier batches. An unreadable image therefore pulls the first
// image of the next batch into this one, which then appears twice in the
// epoch, with the same views (a view's randomness is ViewRNG(Seed, epoch,
// sample, view)). Unreadable images are logged, counted and passed over,
// or with Strict end the epoch with an error naming the image.
//
// The caller must call Close on the iterator, and Release on every batch
// it takes when the pipeline has an Alloc.
func (p *Pipeline) Epoch(ctx context.Context, epoch, startBatch int) (*BatchIter, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	nb := p.NumBatches()
	if startBatch < 0 || startBatch > nb {
		return nil, fmt.Errorf("pipeline: start batch %d outside the epoch's %d batches", startBatch, nb)
	}
	workers := p.Workers
	if workers == 0 {
		workers = runtime.NumCPU()
	}
	prefetch := p.Prefetch
	if prefetch == 0 {
		prefetch = 2
	}
	ctx, cancel := context.WithCancel(ctx)
	it := &BatchIter{
		ctx:     ctx,
		cancel:  cancel,
		log:     p.Log,
		pending: make(chan chan batchResult, prefetch),
		slots:   make(chan struct{}, prefetch),
		seen:    make(map[int]bool),
	}
	b := &batchBuilder{p: p, epoch: epoch, order: p.Order(epoch), tasks: make(chan sampleTask)}
	for range workers {
		it.wg.Add(1)
		go func() {
			defer it.wg.Done()
			b.work(ctx)
		}()
	}
	it.wg.Add(1)
	go func() {
		defer it.wg.Done()
		defer close(it.pending)
		for k := startBatch; k < nb; k++ {
			// A slot bounds the batches built and not yet taken.
			select {
			case it.slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			res := make(chan batchResult, 1)
			it.pending <- res // never blocks: pending has a slot's room
			it.wg.Add(1)
			go func() {
				defer it.wg.Done()
				batch, err := b.build(ctx, k)
				res <- batchResult{batch, err}
			}()
		}
	}()
	return it, nil
}

// BatchIter yields an epoch's batches in order.
type BatchIter struct {
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	log     io.Writer
	pending chan chan batchResult // the batches' results, in batch order
	slots   chan struct{}
	batch   *Batch
	err     error
	seen    map[int]bool // skipped samples, counted once
	// unread are results taken from pending whose batch Next gave up
	// waiting for (the context ended): Close releases their batches.
	unread []chan batchResult
}

type batchResult struct {
	batch *Batch
	err   error
}

// Next advances to the next batch, returning false at the end of the
// epoch, on an error (see Err) or once the context is cancelled.
func (it *BatchIter) Next() bool {
	it.batch = nil
	if it.err != nil {
		return false
	}
	var res batchResult
	select {
	case ch, ok := <-it.pending:
		if !ok {
			if err := it.ctx.Err(); err != nil {
				it.err = err
			}
			it.cancel()
			return false
		}
		select {
		case res = <-ch:
		case <-it.ctx.Done():
			res.err = it.ctx.Err()
			it.unread = append(it.unread, ch)
		}
	case <-it.ctx.Done():
		res.err = it.ctx.Err()
	}
	if res.err != nil {
		it.err = res.err
		it.cancel()
		return false
	}
	<-it.slots
	// Logging here, not in the workers, writes the lines in batch order
	// from one goroutine, each image once.
	for i, s := range res.batch.Skipped {
		if it.seen[s] {
			continue
		}
		it.seen[s] = true
		if it.log != nil {
			fmt.Fprintf(it.log, "pipeline: batch %d: skipped unreadable image: %v\n", res.batch.Number, res.batch.skipErrs[i])
		}
	}
	it.batch = res.batch
	return true
}

// Batch returns the batch Next advanced to; the caller may keep it (with
// Pipeline.Alloc, until it calls the batch's Release).
func (it *BatchIter) Batch() *Batch { return it.batch }

// Err returns the error that ended the epoch early, if any.
func (it *BatchIter) Err() error { return it.err }

// Skipped returns the number of distinct unreadable images passed over in
// the batches returned so far.
func (it *BatchIter) Skipped() int { return len(it.seen) }

// Close stops the workers, waits for them to exit and releases the
// batches built but not taken. It is safe to call more than once.
func (it *BatchIter) Close() error {
	it.cancel()
	it.wg.Wait()
	// Every builder has finished: each result still queued holds its
	// batch or error, and pending is closed.
	for ch := range it.pending {
		it.unread = append(it.unread, ch)
	}
	for _, ch := range it.unread {
		select {
		case res := <-ch:
			if res.batch != nil {
				res.batch.Release()
			}
		default:
		}
	}
	it.unread = nil
	return nil
}

// batchBuilder builds the batches of one epoch.
type batchBuilder struct {
	p     *Pipeline
	epoch int
	order []int
	tasks chan sampleTask
}

// sampleTask asks a worker to augment one sample into a batch slot.
type sampleTask struct {
	sample int
	dst    [][]float32 // one slice per view: the slot's [3, S, S] values
	done   chan<- sampleResult
	slot   int
}

type sampleResult struct {
	slot int
	err  error
	bad  bool // the image could not be read: skippable
}

// work runs tasks until ctx is cancelled.
func (b *batchBuilder) work(ctx context.Context) {
	for {
		select {
		case t := <-b.tasks:
			bad, err := b.augment(t.sample, t.dst)
			t.done <- sampleResult{slot: t.slot, err: err, bad: bad}
		case <-ctx.Done():
			return
		}
	}
}

// augment decodes sample and writes its views into dst; bad reports an
// image that could not be read.
func (b *batchBuilder) augment(sample int, dst [][]float32) (bad bool, err error) {
	ds := b.p.Data
	img, err := ds.Image(sample)
	if err != nil {
		// Errors of images read from files (DecodeImage) name the path
		// already; others get the image's name.
		if !strings.Contains(err.Error(), ds.Name(sample)) {
			err = fmt.Errorf("%s: %w", ds.Name(sample), err)
		}
		return true, err
	}
	rgb := ToRGB(img)
	if rgb.Width <= 0 || rgb.Height <= 0 {
		return true, fmt.Errorf("%s: empty %dx%d image", ds.Name(sample), rgb.Width, rgb.Height)
	}
	for v, view := range b.p.Views {
		out, err := view.Apply(rgb, ViewRNG(b.p.Seed, b.epoch, sample, v))
		if err != nil {
			return false, fmt.Errorf("%s: view %d: %w", ds.Name(sample), v, err)
		}
		if err := out.Normalize(dst[v]); err != nil {
			return false, fmt.Errorf("%s: view %d: %w", ds.Name(sample), v, err)
		}
	}
	return false, nil
}

// build fills batch k: the first BatchSize readable images of the order
// from position k*BatchSize, in order. It decodes in waves: the positions
// still needed go to the workers, readable results are packed to the
// front of the batch in position order, and the next wave takes the
// positions that follow.
func (b *batchBuilder) build(ctx context.Context, k int) (*Batch, error) {
	p := b.p
	n, bs := len(b.order), p.BatchSize
	per := make([]int, len(p.Views))
	sizes := make([]int, len(p.Views))
	for v, view := range p.Views {
		sizes[v] = view.Size
		per[v] = 3 * view.Size * view.Size
	}
	views, release, err := b.alloc(per)
	if err != nil {
		return nil, fmt.Errorf("pipeline: batch %d: allocate: %w", k, err)
	}
	batch := &Batch{
		Number:  k,
		Views:   views,
		Sizes:   sizes,
		Samples: make([]int, 0, bs),
		Labels:  make([]int, 0, bs),
		release: release,
	}
	built := false
	defer func() {
		if !built {
			batch.Release()
		}
	}()
	slotDst := func(slot int) [][]float32 {
		d := make([][]float32, len(per))
		for v := range per {
			d[v] = batch.Views[v][slot*per[v] : (slot+1)*per[v]]
		}
		return d
	}
	next := k * bs // the next position of the order to try
	tried := 0
	for len(batch.Samples) < bs {
		filled := len(batch.Samples)
		want := bs - filled
		if tried+want > n {
			return nil, fmt.Errorf("pipeline: batch %d: fewer than %d of the data set's %d images are readable", k, bs, n)
		}
		// Wave: slot filled+j gets position next+j.
		done := make(chan sampleResult, want)
		samples := make([]int, want)
		sent := 0
		var stopped error
		for j := range want {
			samples[j] = b.order[(next+j)%n]
			t := sampleTask{sample: samples[j], dst: slotDst(filled + j), done: done, slot: j}
			select {
			case b.tasks <- t:
				sent++
			case <-ctx.Done():
				stopped = ctx.Err()
			}
			if stopped != nil {
				break
			}
		}
		// A worker finishes every task it took, writing into the batch,
		// so the batch's memory may go back only once all have answered
		// (done has room for every answer: none waits for this loop).
		results := make([]sampleResult, want)
		for range sent {
			r := <-done
			results[r.slot] = r
		}
		if stopped != nil {
			return nil, stopped
		}
		next += want
		tried += want
		// Pack the readable results to the front, in position order.
		for j, r := range results {
			if r.err != nil {
				if !r.bad || p.Strict {
					return nil, fmt.Errorf("pipeline: batch %d: %w", k, r.err)
				}
				batch.Skipped = append(batch.Skipped, samples[j])
				batch.skipErrs = append(batch.skipErrs, r.err)
				continue
			}
			to := len(batch.Samples)
			if to != filled+j {
				for v := range per {
					copy(batch.Views[v][to*per[v]:(to+1)*per[v]], batch.Views[v][(filled+j)*per[v]:(filled+j+1)*per[v]])
				}
			}
			batch.Samples = append(batch.Samples, samples[j])
			batch.Labels = append(batch.Labels, p.Data.Label(samples[j]))
		}
	}
	built = true
	return batch, nil
}

// alloc returns the memory of a batch whose views hold per[v] values an
// image, from Pipeline.Alloc or as Go slices.
func (b *batchBuilder) alloc(per []int) ([][]float32, func(), error) {
	lens := make([]int, len(per))
	for v := range per {
		lens[v] = b.p.BatchSize * per[v]
	}
	if b.p.Alloc == nil {
		views := make([][]float32, len(lens))
		for v, n := range lens {
			views[v] = make([]float32, n)
		}
		return views, nil, nil
	}
	views, release, err := b.p.Alloc(slices.Clone(lens))
	if err != nil {
		return nil, nil, err
	}
	fits := len(views) == len(lens)
	for v := 0; fits && v < len(views); v++ {
		fits = len(views[v]) >= lens[v]
	}
	if !fits {
		if release != nil {
			release()
		}
		return nil, nil, fmt.Errorf("Alloc returned views of %v values, want %v", viewLens(views), lens)
	}
	for v := range views {
		// Capped, so that nothing appends into memory past the view.
		views[v] = views[v][:lens[v]:lens[v]]
	}
	return views, release, nil
}

func viewLens(views [][]float32) []int {
	out := make([]int, len(views))
	for v := range views {
		out[v] = len(views[v])
	}
	return out
}
