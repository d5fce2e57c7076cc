package ssl

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// TrainerConfig configures a data-parallel run.
type TrainerConfig struct {
	// Devices hold one replica each. The same *vk.Device may not appear
	// twice, but two devices opened from the same physical index
	// (--device 0,0) may.
	Devices []*vk.Device
	// NewMethod is called once per replica.
	NewMethod func() (Method, error)
	// NewRegularizer builds the add-on criterion of a replica on its
	// device; nil for none.
	NewRegularizer func(d *vk.Device) (Regularizer, error)
	// Backbone is the ResNet of every replica; Classes must be 0.
	Backbone layers.ResNetConfig
	// From holds the backbone and heads to start from; nil for a random
	// initialisation from Seed.
	From *loader.Parts
	// Seed seeds the initialisation. Every replica draws from a generator
	// seeded alike, so the replicas start identical.
	Seed uint64
	// LR gives the learning rate of each iteration, already scaled by the
	// global batch where the method does so.
	LR layers.Schedule
	// WeightDecay is the optimizer's weight decay.
	WeightDecay float64
	// PredLR is SimSiam's fixed predictor learning rate (scaled); 0 for
	// the other methods.
	PredLR float64
}

// StepResult reports one training iteration.
type StepResult struct {
	// Iteration is the iteration just taken, from 0.
	Iteration int
	// LR is the learning rate the step used.
	LR float64
	// Loss is the total: the method's loss plus the criterion's (the mean
	// over the replicas, like Terms).
	Loss float64
	// Terms are the method's loss terms ("sim", "std", "cov"; "swav";
	// "simsiam") and the criterion's ("ent", "cov_e2mc", "entropy", ...):
	// the mean of the replicas' values, which is replica 0's for the
	// global values the Method contract asks for, and the global batch's
	// for a term that is a mean over a replica's own samples. A criterion
	// term whose name a method term already has is reported as
	// "<criterion>_<name>".
	Terms map[string]float64
}

// NonFiniteLossError reports a NaN or infinite loss term. The step that met
// it changed no weight and no optimizer state (the forward pass did update
// the batch norms' running statistics, as it does in PyTorch before any loss
// can be looked at).
type NonFiniteLossError struct {
	// Iteration is the iteration whose loss was not finite.
	Iteration int
	// Term names the term: one of the step's terms, "loss" for the
	// method's total or "penalty" for the criterion's value.
	Term string
	// Value is the term's value (NaN or ±Inf).
	Value float64
}

func (e *NonFiniteLossError) Error() string {
	return fmt.Sprintf("iteration %d: loss term %q is %v", e.Iteration, e.Term, e.Value)
}

// TrainState is what a checkpoint needs to resume a run.
type TrainState struct {
	// Model is replica 0's network (layout e2mcvk; heads named
	// loader.HeadProjector, loader.HeadPredictor, loader.HeadPrototypes).
	Model *loader.Parts
	// Optimizer is replica 0's optimizer state; the replicas' states are
	// equal, as their gradients are averaged.
	Optimizer *layers.OptimizerState
	// Method is the method's own state of every replica, keyed
	// "replica<r>/<name>": SwAV's queues hold each replica's own
	// embeddings, so they differ between replicas. Nil when the method
	// keeps none.
	Method map[string]layers.HostTensor
	// Iteration is the number of steps taken.
	Iteration int
}

// Trainer runs data-parallel training steps of a Method (and an optional
// Regularizer) over one replica per device: each replica takes an equal
// share of every batch in its own goroutine, and the replicas meet in the
// collectives of a Group (all-gathered embeddings, synchronised batch norms,
// averaged gradients), so that n devices with B/n images each take the step
// one device with B would. A Trainer is used by one goroutine.
type Trainer struct {
	cfg      TrainerConfig
	replicas []*replica
	iter     int
}

// replica is one device's share of the run.
type replica struct {
	dev    *vk.Device
	stream *vk.Stream
	method Method
	reg    Regularizer
	model  *Model
	opt    *layers.Optimizer
	params []*layers.Var
}

func (r *replica) release() {
	if r.opt != nil {
		r.opt.Release()
	}
	if r.reg != nil {
		r.reg.Release()
	}
	if r.model != nil {
		r.model.Release()
	}
	if r.method != nil {
		r.method.Release()
	}
	if r.stream != nil {
		r.stream.Close()
	}
}

// seedStream is the second word of the PCG generator every replica's model
// is drawn from (the first is TrainerConfig.Seed).
const seedStream = 0xe2c0de

// NewTrainer builds one replica per device: the method, its model (from
// c.From or from c.Seed, identically on every replica), its optimizer and the
// criterion.
func NewTrainer(ctx context.Context, c TrainerConfig) (*Trainer, error) {
	if len(c.Devices) == 0 {
		return nil, fmt.Errorf("trainer: no devices")
	}
	for i, d := range c.Devices {
		if d == nil {
			return nil, fmt.Errorf("trainer: device %d is nil", i)
		}
		if j := slices.Index(c.Devices, d); j != i {
			return nil, fmt.Errorf("trainer: devices %d and %d are the same logical device; open the physical device once per replica", j, i)
		}
	}
	if c.NewMethod == nil {
		return nil, fmt.Errorf("trainer: no method")
	}
	if c.LR == nil {
		return nil, fmt.Errorf("trainer: no learning-rate schedule")
	}
	if c.Backbone.Classes != 0 {
		return nil, fmt.Errorf("trainer: the backbone has %d classes; SSL trains it without fc (Classes 0)", c.Backbone.Classes)
	}
	t := &Trainer{cfg: c}
	for i, d := range c.Devices {
		r, err := newReplica(ctx, c, d)
		if err != nil {
			t.Release()
			return nil, fmt.Errorf("trainer: replica %d: %w", i, err)
		}
		t.replicas = append(t.replicas, r)
	}
	return t, nil
}

func newReplica(ctx context.Context, c TrainerConfig, d *vk.Device) (r *replica, err error) {
	r = &replica{dev: d}
	defer func() {
		if err != nil {
			r.release()
		}
	}()
	if r.method, err = c.NewMethod(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(c.Seed, seedStream))
	if r.model, err = r.method.NewModel(ctx, d, c.Backbone, c.From, rng); err != nil {
		return nil, fmt.Errorf("%s model: %w", r.method.Name(), err)
	}
	r.model.SetTraining(true)
	groups := r.method.ParamGroups(r.model, c.WeightDecay, c.PredLR)
	for _, g := range groups {
		r.params = append(r.params, g.Params...)
	}
	if r.opt, err = r.method.NewOptimizer(groups); err != nil {
		return nil, fmt.Errorf("%s optimizer: %w", r.method.Name(), err)
	}
	if c.NewRegularizer != nil {
		if r.reg, err = c.NewRegularizer(d); err != nil {
			return nil, err
		}
	}
	if r.stream, err = d.NewStream(); err != nil {
		return nil, err
	}
	return r, nil
}

// Replicas returns the number of replicas (devices).
func (t *Trainer) Replicas() int { return len(t.replicas) }

// Iteration returns the number of steps taken so far: the next Step's
// Iteration.
func (t *Trainer) Iteration() int { return t.iter }

// Release frees every replica's device memory.
func (t *Trainer) Release() {
	for _, r := range t.replicas {
		r.release()
	}
	t.replicas = nil
}

// parallel runs f for every replica in its own goroutine and returns the
// first error. The first replica to fail aborts g, so that the others,
// waiting for it in a collective, give up instead of waiting forever.
func (t *Trainer) parallel(g *Group, f func(rank int, r *replica) error) error {
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for rank, r := range t.replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(rank, r); err != nil {
				once.Do(func() {
					if len(t.replicas) > 1 {
						first = fmt.Errorf("replica %d: %w", rank, err)
					} else {
						first = err
					}
					g.Abort(first)
				})
			}
		}()
	}
	wg.Wait()
	return first
}

// stepState is one replica's part of a step between its two phases.
type stepState struct {
	st     *Step
	views  []*layers.Tensor
	terms  map[string]float64
	total  float64 // the method's Loss.Total
	pen    float64 // the criterion's value
	copies map[string]*layers.Tensor
}

// release frees the replica's step resources. It first runs what the
// stream still holds (a step that failed half-way leaves recorded work
// behind), so that no buffer is freed while recorded work may read it.
func (s *stepState) release(ctx context.Context, stream *vk.Stream) {
	if s.st != nil && s.st.Tape != nil {
		s.st.Tape.Release()
	}
	// An error here was reported by the step already, or will be by the
	// next one.
	_ = stream.Run(context.WithoutCancel(ctx))
	for _, v := range s.views {
		v.Release()
	}
	s.views = nil
	for _, c := range s.copies {
		c.Release()
	}
	s.copies = nil
}

// Names of the values a step reads besides the terms: as NonFiniteLossError
// names them, and as the step keys their copies (keys no term can have).
const (
	termTotal   = "loss"
	termPenalty = "penalty"
	keyTotal    = "\x00loss"
	keyPenalty  = "\x00penalty"
)

// termName is the name of the value a step reads under key k.
func termName(k string) string { return strings.TrimPrefix(k, "\x00") }

// Step splits b's views evenly over the replicas (b.Views[v] is [B,3,S,S];
// B divisible by the number of replicas), runs forward, backward, gradient
// averaging and the optimizer step. A NaN/Inf loss returns
// *NonFiniteLossError before any weight is changed.
//
// A step has two phases, each run by every replica in its own goroutine.
// The first records the forward pass, the losses and the backward pass,
// runs them and reads the loss terms. Between the phases the host checks
// every replica's terms, so a non-finite loss stops the step before any
// replica has averaged or applied a gradient. The second averages the
// gradients, lets the method adjust them and applies the optimizer.
//
// After a NonFiniteLossError the trainer may go on (the step's gradients
// are dropped and the iteration counter stays). After any other error a
// replica may have updated its weights while another did not: stop the run
// and resume it from a snapshot.
func (t *Trainer) Step(ctx context.Context, b *loader.Batch, epoch int) (*StepResult, error) {
	if len(t.replicas) == 0 {
		return nil, fmt.Errorf("step: the trainer was released")
	}
	n := len(t.replicas)
	shares, err := shareViews(b, n)
	if err != nil {
		return nil, fmt.Errorf("step %d: %w", t.iter, err)
	}
	iter := t.iter
	lr := t.cfg.LR.LR(iter)
	g := NewGroup(n)
	states := make([]*stepState, n)
	done := false
	defer func() {
		for i, s := range states {
			if s != nil {
				s.release(ctx, t.replicas[i].stream)
			}
		}
		if !done {
			// Gradients of a step that did not update start no later step.
			t.zeroGrads()
		}
	}()

	err = t.parallel(g, func(rank int, r *replica) error {
		s := &stepState{}
		states[rank] = s
		return r.forwardBackward(ctx, s, g.Comm(rank), shares[rank], b.Sizes, iter, epoch)
	})
	if err != nil {
		return nil, fmt.Errorf("step %d: %w", iter, err)
	}
	for _, s := range states {
		if name, v, bad := nonFinite(s); bad {
			return nil, &NonFiniteLossError{Iteration: iter, Term: name, Value: v}
		}
	}

	err = t.parallel(g, func(rank int, r *replica) error {
		return r.update(ctx, states[rank].st, g.Comm(rank), lr)
	})
	if err != nil {
		return nil, fmt.Errorf("step %d: %w", iter, err)
	}
	t.iter++
	done = true

	// A value is a replica's local mean where the official code averages
	// locally (SimSiam's loss, VICReg's invariance term) and the global
	// value where it gathers first: with equal shares, the mean over the
	// replicas is the global value in both cases (replica 0's value in the
	// second).
	res := &StepResult{Iteration: iter, LR: lr, Terms: map[string]float64{}}
	for _, s := range states {
		res.Loss += (s.total + s.pen) / float64(n)
		for k, v := range s.terms {
			res.Terms[k] += v / float64(n)
		}
	}
	return res, nil
}

// zeroGrads drops every replica's accumulated gradients, after a failed
// step, so that the next step starts clean. The streams have run by then.
func (t *Trainer) zeroGrads() {
	for _, r := range t.replicas {
		for _, p := range r.params {
			p.ZeroGrad()
		}
	}
}

// nonFinite returns the first term of s that is NaN or infinite, in a fixed
// order: the terms by name, then the method's total, then the penalty.
func nonFinite(s *stepState) (string, float64, bool) {
	names := make([]string, 0, len(s.terms))
	for k := range s.terms {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if v := s.terms[k]; math.IsNaN(v) || math.IsInf(v, 0) {
			return k, v, true
		}
	}
	for _, kv := range []struct {
		k string
		v float64
	}{{termTotal, s.total}, {termPenalty, s.pen}} {
		if math.IsNaN(kv.v) || math.IsInf(kv.v, 0) {
			return kv.k, kv.v, true
		}
	}
	return "", 0, false
}

// shareViews cuts each view of b into n equal shares of rows.
func shareViews(b *loader.Batch, n int) ([][][]float32, error) {
	if b == nil || len(b.Views) == 0 {
		return nil, fmt.Errorf("empty batch")
	}
	if len(b.Sizes) != len(b.Views) {
		return nil, fmt.Errorf("batch has %d views but %d sizes", len(b.Views), len(b.Sizes))
	}
	shares := make([][][]float32, n)
	batch := -1
	for v, data := range b.Views {
		img := 3 * b.Sizes[v] * b.Sizes[v]
		if img == 0 || len(data)%img != 0 {
			return nil, fmt.Errorf("view %d: %d values are not a whole number of 3x%dx%d images", v, len(data), b.Sizes[v], b.Sizes[v])
		}
		rows := len(data) / img
		if batch >= 0 && rows != batch {
			return nil, fmt.Errorf("view %d holds %d images, view 0 %d", v, rows, batch)
		}
		batch = rows
		if rows == 0 || rows%n != 0 {
			return nil, fmt.Errorf("batch of %d images does not split evenly over %d replicas", rows, n)
		}
		per := rows / n * img
		for r := range shares {
			shares[r] = append(shares[r], data[r*per:(r+1)*per])
		}
	}
	return shares, nil
}

// forwardBackward is a replica's first phase: it records the forward pass
// of its share, the method's loss, the criterion and the backward pass,
// runs them and reads the loss values into s.
func (r *replica) forwardBackward(ctx context.Context, s *stepState, comm *Comm, share [][]float32, sizes []int, iter, epoch int) error {
	tp := layers.NewTape(r.stream)
	tp.SetCollective(ctx, comm)
	st := &Step{Ctx: ctx, Tape: tp, Model: r.model, Comm: comm, Iteration: iter, Epoch: epoch}
	s.st = st
	if err := r.method.Prepare(st); err != nil {
		return fmt.Errorf("%s prepare: %w", r.method.Name(), err)
	}
	for v, data := range share {
		size := sizes[v]
		x, err := layers.FromHost(ctx, r.dev, data, len(data)/(3*size*size), 3, size, size)
		if err != nil {
			return fmt.Errorf("view %d: %w", v, err)
		}
		s.views = append(s.views, x)
		st.Views = append(st.Views, layers.Constant(x))
	}
	loss, err := r.method.Loss(st)
	if err != nil {
		return fmt.Errorf("%s loss: %w", r.method.Name(), err)
	}
	if loss == nil || loss.Total == nil {
		if err := tp.Err(); err != nil {
			return fmt.Errorf("%s loss: %w", r.method.Name(), err)
		}
		return fmt.Errorf("%s loss: no total", r.method.Name())
	}
	total := loss.Total
	// The values to read after the run are copied into tensors of the
	// trainer's own: the backward pass frees the tape's values as it goes.
	vars := map[string]*layers.Var{keyTotal: loss.Total}
	for k, v := range loss.Terms {
		vars[k] = v
	}
	hostTerms := map[string]float64{}
	if r.reg != nil {
		pen, err := r.reg.Apply(st, loss.Embeddings)
		if err != nil {
			return fmt.Errorf("%s: %w", r.reg.Name(), err)
		}
		if pen == nil || pen.Add == nil {
			if err := tp.Err(); err != nil {
				return fmt.Errorf("%s: %w", r.reg.Name(), err)
			}
			return fmt.Errorf("%s: no penalty", r.reg.Name())
		}
		total = tp.Add(total, pen.Add)
		if pen.ValueVar != nil {
			vars[keyPenalty] = pen.ValueVar
		} else {
			s.pen = pen.Value
		}
		name := func(k string) string {
			if _, taken := loss.Terms[k]; taken {
				return r.reg.Name() + "_" + k
			}
			return k
		}
		for k, v := range pen.Terms {
			vars[name(k)] = v
		}
		for k, v := range pen.HostTerms {
			hostTerms[name(k)] = v
		}
	}
	s.copies = map[string]*layers.Tensor{}
	for k, v := range vars {
		if v == nil {
			if err := tp.Err(); err != nil {
				return err
			}
			return fmt.Errorf("loss term %q is missing", termName(k))
		}
		if v.Value.Len() != 1 {
			return fmt.Errorf("loss term %q has shape %v; want a scalar", termName(k), v.Shape())
		}
		c, err := layers.Contiguous(r.stream, v.Value)
		if err != nil {
			return fmt.Errorf("loss term %q: %w", termName(k), err)
		}
		s.copies[k] = c
	}
	if err := tp.Backward(total); err != nil {
		return fmt.Errorf("backward: %w", err)
	}
	if err := r.stream.Run(ctx); err != nil {
		return fmt.Errorf("forward and backward: %w", err)
	}
	s.terms = hostTerms
	for k, c := range s.copies {
		val, err := c.Download(ctx)
		if err != nil {
			return fmt.Errorf("loss term %q: %w", termName(k), err)
		}
		switch k {
		case keyTotal:
			s.total = float64(val[0])
		case keyPenalty:
			s.pen = float64(val[0])
		default:
			s.terms[k] = float64(val[0])
		}
	}
	return nil
}

// update is a replica's second phase: gradient averaging, the method's
// last word on the gradients and the optimizer step.
func (r *replica) update(ctx context.Context, st *Step, comm *Comm, lr float64) error {
	s := r.stream
	if comm.Size() > 1 {
		if err := layers.AverageGradients(ctx, s, r.params, comm); err != nil {
			return fmt.Errorf("averaging gradients: %w", err)
		}
	}
	if err := r.method.BeforeUpdate(st); err != nil {
		return fmt.Errorf("%s before update: %w", r.method.Name(), err)
	}
	if err := r.opt.Step(s, lr); err != nil {
		return fmt.Errorf("optimizer step: %w", err)
	}
	if err := s.Run(ctx); err != nil {
		return fmt.Errorf("optimizer step: %w", err)
	}
	for _, p := range r.params {
		p.ZeroGrad()
	}
	return nil
}

// Snapshot returns what a checkpoint needs: the model (replica 0) as
// loader.Parts (layout e2mcvk, heads named loader.HeadProjector,
// loader.HeadPredictor, loader.HeadPrototypes), the optimizer state and the
// method's own state of every replica (SwAV's queues; nil for others).
func (t *Trainer) Snapshot(ctx context.Context) (*TrainState, error) {
	if len(t.replicas) == 0 {
		return nil, fmt.Errorf("snapshot: the trainer was released")
	}
	r0 := t.replicas[0]
	parts, err := loader.ModelParts(ctx, r0.model.Backbone, r0.model.Heads)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if p := r0.model.Prototypes; p != nil {
		w, err := p.Weight.Value.Download(ctx)
		if err != nil {
			return nil, fmt.Errorf("snapshot: prototypes: %w", err)
		}
		if parts.Heads == nil {
			parts.Heads = map[string]map[string]layers.HostTensor{}
		}
		parts.Heads[loader.HeadPrototypes] = map[string]layers.HostTensor{
			"weight": {Shape: slices.Clone(p.Weight.Shape()), Data: w},
		}
	}
	opt, err := r0.opt.State(ctx)
	if err != nil {
		return nil, fmt.Errorf("snapshot: optimizer: %w", err)
	}
	st := &TrainState{Model: parts, Optimizer: opt, Iteration: t.iter}
	for rank, r := range t.replicas {
		m, err := r.method.State(ctx)
		if err != nil {
			return nil, fmt.Errorf("snapshot: replica %d: %s state: %w", rank, r.method.Name(), err)
		}
		for k, v := range m {
			if st.Method == nil {
				st.Method = map[string]layers.HostTensor{}
			}
			st.Method[replicaKey(rank, k)] = v
		}
	}
	return st, nil
}

// replicaKey names replica rank's entry k of the method state.
func replicaKey(rank int, k string) string { return "replica" + strconv.Itoa(rank) + "/" + k }

// splitReplicaKey undoes replicaKey; ok is false for a key without the prefix.
func splitReplicaKey(key string) (rank int, k string, ok bool) {
	rest, found := strings.CutPrefix(key, "replica")
	if !found {
		return 0, "", false
	}
	num, k, found := strings.Cut(rest, "/")
	if !found {
		return 0, "", false
	}
	rank, err := strconv.Atoi(num)
	if err != nil || rank < 0 {
		return 0, "", false
	}
	return rank, k, true
}

// Restore loads optimizer state, method state and the iteration counter
// into every replica (the weights come in through TrainerConfig.From). Each
// replica gets its own method state ("replica<r>/<name>"); keys without
// that prefix go to every replica. A state saved by more or fewer replicas
// than this trainer has is refused, since SwAV's queues are per replica.
func (t *Trainer) Restore(ctx context.Context, st *TrainState) error {
	if len(t.replicas) == 0 {
		return fmt.Errorf("restore: the trainer was released")
	}
	if st == nil {
		return fmt.Errorf("restore: no state")
	}
	if st.Iteration < 0 {
		return fmt.Errorf("restore: iteration %d", st.Iteration)
	}
	n := len(t.replicas)
	per := make([]map[string]layers.HostTensor, n)
	common := map[string]layers.HostTensor{}
	saved := 0 // replicas in the state
	for key, v := range st.Method {
		rank, k, ok := splitReplicaKey(key)
		if !ok {
			common[key] = v
			continue
		}
		if rank >= n {
			return fmt.Errorf("restore: the method state holds replica %d, this run has %d replicas: resume with as many devices as the run was saved with", rank, n)
		}
		if per[rank] == nil {
			per[rank] = map[string]layers.HostTensor{}
			saved++
		}
		per[rank][k] = v
	}
	if saved > 0 && saved != n {
		return fmt.Errorf("restore: the method state holds %d replicas, this run has %d: resume with as many devices as the run was saved with", saved, n)
	}
	for rank, r := range t.replicas {
		if st.Optimizer != nil {
			if err := r.opt.LoadState(ctx, st.Optimizer); err != nil {
				return fmt.Errorf("restore: replica %d: optimizer: %w", rank, err)
			}
		}
		m := per[rank]
		if len(common) > 0 {
			if m == nil {
				m = map[string]layers.HostTensor{}
			}
			for k, v := range common {
				m[k] = v
			}
		}
		if m != nil {
			if err := r.method.LoadState(ctx, m); err != nil {
				return fmt.Errorf("restore: replica %d: %s state: %w", rank, r.method.Name(), err)
			}
		}
	}
	t.iter = st.Iteration
	return nil
}
