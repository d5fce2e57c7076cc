package ssl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// SwAVOptions are SwAV's settings. Zero values mean the official defaults
// of main_swav.py as the E2MC paper trains with them.
type SwAVOptions struct {
	// MLP is the projection head's widths after the backbone, hidden-out:
	// "2048-128" (hidden_mlp 2048, feat_dim 128). A checkpoint's head, where
	// the checkpoint has one, decides instead.
	MLP string
	// Prototypes is the number of prototypes, 3000 (nmb_prototypes); a
	// checkpoint's prototypes decide instead.
	Prototypes int
	// Temperature of the swapped prediction, 0.1; Epsilon of the
	// Sinkhorn-Knopp regularisation, 0.05.
	Temperature, Epsilon float64
	// SinkhornIters is the number of Sinkhorn-Knopp iterations, 3.
	SinkhornIters int
	// Crops is the number of crops of each resolution in view order
	// (nmb_crops), {2, 6}.
	Crops []int
	// CropsForAssign are the crops whose assignments are predicted
	// (crops_for_assign), {0, 1}.
	CropsForAssign []int
	// QueueLength is the global queue length, 3584 (queue_length). As in
	// the official code it is cut to a multiple of the global batch, and
	// each replica keeps its share, QueueLength / replicas rows per assign
	// crop.
	QueueLength int
	// QueueStartEpoch is the first epoch with a queue (epoch_queue_starts),
	// 15; -1 never starts one.
	QueueStartEpoch int
	// FreezePrototypesIters is the number of first iterations in which the
	// prototypes are not updated (freeze_prototypes_niters), 313; -1
	// freezes them never.
	FreezePrototypesIters int
}

// withDefaults fills the zero values with the official defaults and checks
// the rest.
func (o SwAVOptions) withDefaults() (SwAVOptions, error) {
	if o.MLP == "" {
		o.MLP = "2048-128"
	}
	if o.Prototypes == 0 {
		o.Prototypes = 3000
	}
	if o.Temperature == 0 {
		o.Temperature = 0.1
	}
	if o.Epsilon == 0 {
		o.Epsilon = 0.05
	}
	if o.SinkhornIters == 0 {
		o.SinkhornIters = 3
	}
	if o.Crops == nil {
		o.Crops = []int{2, 6}
	}
	if o.CropsForAssign == nil {
		o.CropsForAssign = []int{0, 1}
	}
	if o.QueueLength == 0 {
		o.QueueLength = 3584
	}
	if o.QueueStartEpoch == 0 {
		o.QueueStartEpoch = 15
	}
	if o.FreezePrototypesIters == 0 {
		o.FreezePrototypesIters = 313
	}
	o.Crops = slices.Clone(o.Crops)
	o.CropsForAssign = slices.Clone(o.CropsForAssign)
	if _, err := layers.ParseWidths(o.MLP); err != nil {
		return o, fmt.Errorf("swav: head %q: %w", o.MLP, err)
	}
	crops := 0
	for _, c := range o.Crops {
		if c <= 0 {
			return o, fmt.Errorf("swav: crops %v: want positive counts", o.Crops)
		}
		crops += c
	}
	switch {
	case o.Prototypes < 0:
		return o, fmt.Errorf("swav: %d prototypes", o.Prototypes)
	case !(o.Temperature > 0) || math.IsInf(o.Temperature, 0):
		return o, fmt.Errorf("swav: temperature %v must be positive", o.Temperature)
	case !(o.Epsilon > 0) || math.IsInf(o.Epsilon, 0):
		return o, fmt.Errorf("swav: epsilon %v must be positive", o.Epsilon)
	case o.SinkhornIters < 0:
		return o, fmt.Errorf("swav: %d Sinkhorn iterations", o.SinkhornIters)
	case crops < 2:
		return o, fmt.Errorf("swav: crops %v: want at least two crops", o.Crops)
	case len(o.CropsForAssign) == 0:
		return o, fmt.Errorf("swav: no crops for assignment")
	case o.QueueLength < 0:
		return o, fmt.Errorf("swav: queue length %d", o.QueueLength)
	case o.QueueStartEpoch < -1:
		return o, fmt.Errorf("swav: queue start epoch %d (-1 for never)", o.QueueStartEpoch)
	case o.FreezePrototypesIters < -1:
		return o, fmt.Errorf("swav: freeze prototypes iterations %d (-1 for never)", o.FreezePrototypesIters)
	}
	for i, c := range o.CropsForAssign {
		if c < 0 || c >= crops || slices.Contains(o.CropsForAssign[:i], c) {
			return o, fmt.Errorf("swav: crops for assignment %v: want distinct crops of 0..%d", o.CropsForAssign, crops-1)
		}
	}
	return o, nil
}

// SwAV is the SwAV method (Caron et al., 2020) as facebookresearch/swav's
// main_swav.py trains it: multi-crop views through a ResNet, a projection
// head, L2-normalised embeddings scored against L2-normalised prototypes,
// Sinkhorn-Knopp assignments of the crops for assignment (with a queue of
// earlier embeddings from QueueStartEpoch on) predicted from every other
// crop, SGD wrapped in LARC.
//
// A SwAV serves one replica: its queue is the replica's own, as each
// process of the official code keeps its queue (queue<rank>.pth).
type SwAV struct {
	o     SwAVOptions
	crops int

	// queue holds, per assign crop, the replica's last queueLen normalised
	// embeddings of that crop, newest first (row-major [queueLen, dim]);
	// nil until the queue starts.
	queue    [][]float32
	queueLen int
	dim      int
	// useQueue is the official use_the_queue: set once the queue is full
	// (its last row written), reset at the start of every epoch.
	useQueue   bool
	queueEpoch int
	// loaded is a queue from LoadState, checked against the batch's sizes
	// and taken at the first step.
	loaded *swavQueueState
}

type swavQueueState struct {
	queue      [][]float32
	length     int
	dim        int
	useQueue   bool
	queueEpoch int
}

// NewSwAV returns the SwAV method with options o.
func NewSwAV(o SwAVOptions) (*SwAV, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	crops := 0
	for _, c := range o.Crops {
		crops += c
	}
	return &SwAV{o: o, crops: crops, queueEpoch: -1}, nil
}

// Options returns the method's settings with the defaults filled in.
func (m *SwAV) Options() SwAVOptions { return m.o }

// Name returns "swav".
func (m *SwAV) Name() string { return "swav" }

// NewModel builds the backbone, the projection head (Linear, BatchNorm1d,
// ReLU, Linear) and the prototypes (a Linear without bias) on d. Where
// parts holds them (a SwAV checkpoint) they are loaded from it; everything
// else is initialised from rng, in the order the official model creates its
// modules: backbone, head, prototypes.
func (m *SwAV) NewModel(ctx context.Context, d *vk.Device, cfg layers.ResNetConfig, parts *loader.Parts, rng *rand.Rand) (model *Model, err error) {
	bb, err := newBackbone(ctx, d, cfg, parts, rng, false)
	if err != nil {
		return nil, fmt.Errorf("swav: %w", err)
	}
	model = &Model{Backbone: bb, Heads: map[string]*layers.MLP{}}
	defer func() {
		if err != nil {
			model.Release()
			model = nil
		}
	}()
	head, err := newHead(ctx, d, parts, loader.HeadProjector, bb.Features, layers.MLPConfig{Spec: m.o.MLP, HiddenBias: true, LastBias: true}, rng)
	if err != nil {
		return nil, fmt.Errorf("swav: %w", err)
	}
	model.Heads[loader.HeadProjector] = head
	widths, err := layers.ParseWidths(head.Config.Spec)
	if err != nil {
		return nil, fmt.Errorf("swav: projection head: %w", err)
	}
	dim := widths[len(widths)-1]
	k := m.o.Prototypes
	var protoState map[string]layers.HostTensor
	if parts != nil && parts.Heads[loader.HeadPrototypes] != nil {
		protoState = parts.Heads[loader.HeadPrototypes]
		w, ok := protoState["weight"]
		if !ok || len(w.Shape) != 2 {
			return nil, fmt.Errorf("swav: the checkpoint's prototypes have no [K, D] weight")
		}
		if w.Shape[1] != dim {
			return nil, fmt.Errorf("swav: the checkpoint's prototypes %v take %d-d embeddings; the head gives %d", w.Shape, w.Shape[1], dim)
		}
		k = w.Shape[0]
	}
	if k <= 0 {
		return nil, fmt.Errorf("swav: %d prototypes", k)
	}
	protos, err := layers.NewLinear(ctx, d, dim, k, false, rng)
	if err != nil {
		return nil, fmt.Errorf("swav: prototypes: %w", err)
	}
	model.Prototypes = protos
	if protoState != nil {
		if err := layers.LoadStateDict(ctx, protos, protoState, true); err != nil {
			return nil, fmt.Errorf("swav: load prototypes: %w", err)
		}
	}
	return model, nil
}

// Prepare L2-normalises the prototypes' rows, without gradient, as the
// official loop does at the start of every iteration.
func (m *SwAV) Prepare(st *Step) error {
	if st.Model.Prototypes == nil {
		return fmt.Errorf("swav: the model has no prototypes")
	}
	w := st.Model.Prototypes.Weight.Value
	if err := layers.L2Normalize(st.Tape.Stream(), w, w); err != nil {
		return fmt.Errorf("swav: normalise the prototypes: %w", err)
	}
	return nil
}

// Loss records the multi-crop forward pass and SwAV's loss. Crops of one
// resolution (consecutive views of one size) go through the backbone
// together, so their batch norms share statistics, as the official forward
// concatenates them; the features of all crops then pass the head together.
//
// The assignments need the scores on the host: Loss runs the stream once
// after the forward pass, computes the Sinkhorn-Knopp assignments there in
// float64 (the sums all-reduced over st.Comm) and records the loss as
// -sum(W * log_softmax(scores/T)), with W holding each assign crop's
// assignments (over -b(n_crops-1)n_assign) in the rows of every other crop.
// The reported term "swav" is the same loss computed on the host, averaged
// over the replicas: the global batch's value.
func (m *SwAV) Loss(st *Step) (*Loss, error) {
	ctx := st.Ctx
	if ctx == nil {
		ctx = context.Background()
	}
	tp, model := st.Tape, st.Model
	head := model.Heads[loader.HeadProjector]
	if head == nil || model.Prototypes == nil {
		return nil, fmt.Errorf("swav: the model lacks its projection head or prototypes")
	}
	if len(st.Views) != m.crops {
		return nil, fmt.Errorf("swav: %d views for crops %v", len(st.Views), m.o.Crops)
	}
	b := st.Views[0].Shape()[0]
	for v, x := range st.Views {
		if s := x.Shape(); len(s) != 4 || s[0] != b {
			return nil, fmt.Errorf("swav: view %d has shape %v; want [%d, C, H, W]", v, s, b)
		}
	}
	var coll layers.Collective
	world := 1
	if st.Comm != nil {
		coll, world = st.Comm, st.Comm.Size()
	}

	// The multi-resolution forward pass.
	var feats []*layers.Var
	for i := 0; i < len(st.Views); {
		j := i + 1
		for j < len(st.Views) && slices.Equal(st.Views[j].Shape()[1:], st.Views[i].Shape()[1:]) {
			j++
		}
		x := st.Views[i]
		if j > i+1 {
			x = tp.Concat(st.Views[i:j]...)
		}
		feats = append(feats, model.Backbone.Forward(tp, x))
		i = j
	}
	f := feats[0]
	if len(feats) > 1 {
		f = tp.Concat(feats...)
	}
	z := head.Forward(tp, f)
	zn := tp.L2Normalize(z)
	out := model.Prototypes.Forward(tp, zn)
	if err := tp.Err(); err != nil {
		return nil, fmt.Errorf("swav: forward: %w", err)
	}
	k, dim := out.Shape()[1], z.Shape()[1]

	// The queue, started (or taken from LoadState) once its epoch comes.
	if err := m.startQueue(st.Epoch, b, world, dim); err != nil {
		return nil, err
	}
	if st.Epoch != m.queueEpoch {
		m.useQueue, m.queueEpoch = false, st.Epoch
	}
	assign := m.o.CropsForAssign
	// The official check, per assign crop before its queue is updated:
	// the queue is used once its last row was written.
	use := make([]bool, len(assign))
	if m.queue != nil {
		for i := range assign {
			if !m.useQueue && slices.ContainsFunc(m.queue[i][(m.queueLen-1)*dim:], func(v float32) bool { return v != 0 }) {
				m.useQueue = true
			}
			use[i] = m.useQueue
		}
	}
	// The queue's scores are read on the host after the run below; they are
	// freed when Loss returns.
	queueScores := make([]*layers.Tensor, len(assign))
	defer func() {
		for _, qs := range queueScores {
			if qs != nil {
				qs.Release()
			}
		}
	}()
	s := tp.Stream()
	for i := range assign {
		if !use[i] {
			continue
		}
		q, err := layers.FromHost(ctx, tp.Device(), m.queue[i], m.queueLen, dim)
		if err != nil {
			return nil, fmt.Errorf("swav: upload the queue: %w", err)
		}
		s.AfterRun(q.Release)
		qs, err := layers.New(tp.Device(), m.queueLen, k)
		if err != nil {
			return nil, fmt.Errorf("swav: queue scores: %w", err)
		}
		queueScores[i] = qs
		if err := layers.Gemm(s, 1, q, false, model.Prototypes.Weight.Value, true, 0, qs); err != nil {
			return nil, fmt.Errorf("swav: queue scores: %w", err)
		}
	}
	if err := s.Run(ctx); err != nil {
		return nil, fmt.Errorf("swav: forward: %w", err)
	}
	scores32, err := out.Value.Download(ctx)
	if err != nil {
		return nil, fmt.Errorf("swav: download the scores: %w", err)
	}
	scores := make([]float64, len(scores32))
	for i, v := range scores32 {
		scores[i] = float64(v)
	}
	var emb []float32
	if m.queue != nil {
		if emb, err = zn.Value.Download(ctx); err != nil {
			return nil, fmt.Errorf("swav: download the embeddings: %w", err)
		}
	}

	// Assignments, then the swapped predictions' weights and the host loss.
	n := m.crops
	logp := make([]float64, len(scores))
	for r := 0; r < n*b; r++ {
		logSoftmax(logp[r*k:(r+1)*k], scores[r*k:(r+1)*k], 1/m.o.Temperature)
	}
	weights := make([]float32, n*b*k)
	scale := 1 / float64(b*(n-1)*len(assign))
	var hostLoss float64
	for i, c := range assign {
		crop := scores[c*b*k : (c+1)*b*k]
		rows := b
		if use[i] {
			qs, err := queueScores[i].Download(ctx)
			if err != nil {
				return nil, fmt.Errorf("swav: download the queue scores: %w", err)
			}
			all := make([]float64, 0, (m.queueLen+b)*k)
			for _, v := range qs {
				all = append(all, float64(v))
			}
			crop = append(all, crop...)
			rows += m.queueLen
		}
		q, err := Sinkhorn(ctx, coll, crop, rows, k, m.o.Epsilon, m.o.SinkhornIters)
		if errors.Is(err, errNonFinite) {
			// Diverged scores: the loss becomes NaN, for the trainer to
			// stop on as on any non-finite loss, before any update.
			q = make([]float64, rows*k)
			for j := range q {
				q[j] = math.NaN()
			}
		} else if err != nil {
			return nil, fmt.Errorf("swav: crop %d: %w", c, err)
		}
		q = q[(rows-b)*k:]
		if m.queue != nil {
			// The official shift: the oldest b rows drop out, this batch's
			// embeddings of crop c come first.
			qi := m.queue[i]
			copy(qi[b*dim:], qi[:(m.queueLen-b)*dim])
			copy(qi[:b*dim], emb[c*b*dim:(c+1)*b*dim])
		}
		var sub float64
		for v := 0; v < n; v++ {
			if v == c {
				continue
			}
			lp := logp[v*b*k : (v+1)*b*k]
			w := weights[v*b*k : (v+1)*b*k]
			for j, qv := range q {
				sub -= qv * lp[j]
				w[j] -= float32(qv * scale)
			}
		}
		hostLoss += sub / float64(b) / float64(n-1)
	}
	hostLoss /= float64(len(assign))
	global := []float64{hostLoss / float64(world)}
	if coll != nil && world > 1 {
		if err := coll.AllReduce(ctx, global); err != nil {
			return nil, fmt.Errorf("swav: loss: %w", err)
		}
	}

	w, err := layers.FromHost(ctx, tp.Device(), weights, n*b, k)
	if err != nil {
		return nil, fmt.Errorf("swav: upload the assignments: %w", err)
	}
	s.AfterRun(w.Release)
	term, err := layers.FromHost(ctx, tp.Device(), []float32{float32(global[0])}, 1)
	if err != nil {
		return nil, fmt.Errorf("swav: upload the loss: %w", err)
	}
	s.AfterRun(term.Release)
	// The weights and the term are copied into tape-owned values: the
	// uploads are freed after the stream's next run (a regularizer may run
	// it before the backward pass reads the weights), the copies live as
	// long as the tape needs them, like every op's output.
	wv := tp.Scale(layers.Constant(w), 1)
	total := tp.Sum(tp.Mul(wv, tp.LogSoftmax(tp.Scale(out, float32(1/m.o.Temperature)))))
	reported := tp.Scale(layers.Constant(term), 1)
	// Every crop's projection: E2MC, VCReg and AUH take crops 0 and 1
	// (the first two), MMCR the centroid of all of them, as the E2MC
	// authors' SwAV baselines do.
	sizes := make([]int, n)
	for i := range sizes {
		sizes[i] = b
	}
	embs := tp.Split(z, sizes...)
	if err := tp.Err(); err != nil {
		return nil, fmt.Errorf("swav: loss: %w", err)
	}
	return &Loss{Total: total, Terms: map[string]*layers.Var{"swav": reported}, Embeddings: embs}, nil
}

// logSoftmax writes log(softmax(alpha*x)) into dst.
func logSoftmax(dst, x []float64, alpha float64) {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = max(mx, alpha*v)
	}
	var s float64
	for _, v := range x {
		s += math.Exp(alpha*v - mx)
	}
	ls := math.Log(s) + mx
	for j, v := range x {
		dst[j] = alpha*v - ls
	}
}

// startQueue makes the replica's queue once epoch reaches QueueStartEpoch,
// or takes the one LoadState brought, checked against the sizes the batch
// gives: length QueueLength cut to a multiple of the global batch b*world,
// divided by world.
func (m *SwAV) startQueue(epoch, b, world, dim int) error {
	length := m.o.QueueLength
	length -= length % (b * world)
	length /= world
	if l := m.loaded; l != nil {
		m.loaded = nil
		if l.length != length || l.dim != dim || len(l.queue) != len(m.o.CropsForAssign) {
			return fmt.Errorf("swav: the restored queue is %d x %d x %d; this run's is %d x %d x %d",
				len(l.queue), l.length, l.dim, len(m.o.CropsForAssign), length, dim)
		}
		m.queue, m.queueLen, m.dim, m.useQueue, m.queueEpoch = l.queue, l.length, l.dim, l.useQueue, l.queueEpoch
		return nil
	}
	if m.queue != nil {
		if m.queueLen != length || m.dim != dim {
			return fmt.Errorf("swav: the queue is %d x %d per crop; this batch needs %d x %d", m.queueLen, m.dim, length, dim)
		}
		return nil
	}
	if length <= 0 || m.o.QueueStartEpoch < 0 || epoch < m.o.QueueStartEpoch {
		return nil
	}
	m.queue = make([][]float32, len(m.o.CropsForAssign))
	for i := range m.queue {
		m.queue[i] = make([]float32, length*dim)
	}
	m.queueLen, m.dim = length, dim
	return nil
}

// ParamGroups returns one group of every parameter with weight decay wd, as
// the official code gives model.parameters() to SGD: backbone, projection
// head, prototypes. SwAV has no fixed-LR parameters; predLR is ignored.
func (m *SwAV) ParamGroups(model *Model, wd, predLR float64) []layers.Group {
	ps := layers.Parameters(model.Backbone)
	if h := model.Heads[loader.HeadProjector]; h != nil {
		ps = append(ps, layers.Parameters(h)...)
	}
	if model.Prototypes != nil {
		ps = append(ps, model.Prototypes.Weight)
	}
	return []layers.Group{{Params: ps, WeightDecay: wd}}
}

// NewOptimizer returns SGD with momentum 0.9 wrapped in apex's LARC
// (trust coefficient 0.001, clip False, eps 1e-8).
func (m *SwAV) NewOptimizer(groups []layers.Group) (*layers.Optimizer, error) {
	o, err := layers.NewLARC(groups, 0.9, 0.001, 1e-8)
	if err != nil {
		return nil, fmt.Errorf("swav: %w", err)
	}
	return o, nil
}

// BeforeUpdate drops the prototypes' gradient during the first
// FreezePrototypesIters iterations (the official p.grad = None), so that
// the optimizer leaves them, their momentum and their weight decay alone.
func (m *SwAV) BeforeUpdate(st *Step) error {
	p := st.Model.Prototypes
	if p == nil || m.o.FreezePrototypesIters < 0 || st.Iteration >= m.o.FreezePrototypesIters {
		return nil
	}
	if g := p.Weight.Grad; g != nil {
		p.Weight.Grad = nil
		// Recorded backward work may still write it: free it after the run.
		st.Tape.Stream().AfterRun(g.Release)
	}
	return nil
}

// State returns the replica's queue ("queue", [assign crops, length, dim]),
// whether it is in use ("queue_in_use", 0 or 1) and the epoch that flag
// belongs to ("queue_epoch"); nil before the queue starts.
func (m *SwAV) State(ctx context.Context) (map[string]layers.HostTensor, error) {
	queue, length, dim, use, epoch := m.queue, m.queueLen, m.dim, m.useQueue, m.queueEpoch
	if l := m.loaded; l != nil {
		queue, length, dim, use, epoch = l.queue, l.length, l.dim, l.useQueue, l.queueEpoch
	}
	if queue == nil {
		return nil, nil
	}
	data := make([]float32, 0, len(queue)*length*dim)
	for _, q := range queue {
		data = append(data, q...)
	}
	flag := float32(0)
	if use {
		flag = 1
	}
	return map[string]layers.HostTensor{
		"queue":        {Shape: []int{len(queue), length, dim}, Data: data},
		"queue_in_use": {Shape: []int{1}, Data: []float32{flag}},
		"queue_epoch":  {Shape: []int{1}, Data: []float32{float32(epoch)}},
	}, nil
}

// LoadState restores a queue saved by State; it is checked against the run's
// sizes at the next step. An empty st leaves the queue to start afresh.
func (m *SwAV) LoadState(ctx context.Context, st map[string]layers.HostTensor) error {
	if len(st) == 0 {
		m.loaded = nil
		return nil
	}
	q, ok := st["queue"]
	if !ok || len(q.Shape) != 3 || q.Shape[0]*q.Shape[1]*q.Shape[2] != len(q.Data) {
		return fmt.Errorf("swav: state without a [crops, length, dim] queue")
	}
	for name := range st {
		if name != "queue" && name != "queue_in_use" && name != "queue_epoch" {
			return fmt.Errorf("swav: unknown state %q", name)
		}
	}
	l := &swavQueueState{length: q.Shape[1], dim: q.Shape[2], queueEpoch: -1}
	if len(q.Shape) != 3 || q.Shape[0] != len(m.o.CropsForAssign) {
		return fmt.Errorf("swav: a queue of %v for %d crops for assignment", q.Shape, len(m.o.CropsForAssign))
	}
	per := q.Shape[1] * q.Shape[2]
	for i := 0; i < q.Shape[0]; i++ {
		l.queue = append(l.queue, slices.Clone(q.Data[i*per:(i+1)*per]))
	}
	if f, ok := st["queue_in_use"]; ok && len(f.Data) == 1 {
		l.useQueue = f.Data[0] != 0
	}
	if e, ok := st["queue_epoch"]; ok && len(e.Data) == 1 {
		l.queueEpoch = int(e.Data[0])
	}
	m.loaded = l
	return nil
}

// Release frees nothing on the device: the queue lives on the host.
func (m *SwAV) Release() {}
