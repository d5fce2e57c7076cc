package ssl

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// SimSiamOptions sizes SimSiam's heads where a checkpoint does not have
// them. Zero values mean the official sizes.
type SimSiamOptions struct {
	// Dim is the projector's output width, the embedding z (2048).
	Dim int
	// PredDim is the predictor's hidden width (512).
	PredDim int
}

// SimSiam is the method of Chen and He's simsiam/builder.py and
// main_simsiam.py. The encoder is the ResNet with its fc replaced by the
// projector: Linear(F, F, no bias), BN, ReLU, Linear(F, F, no bias), BN,
// ReLU, Linear(F, dim), BN(dim, affine=False), F the backbone's feature
// width; the predictor is Linear(dim, pred_dim, no bias), BN, ReLU,
// Linear(pred_dim, dim). Each view has its own forward pass (its own
// batch-norm statistics), and the loss is
//
//	-(cos(p1, sg(z2)).mean() + cos(p2, sg(z1)).mean()) / 2
//
// with p = predictor(z), z = projector(backbone(x)), sg the stop-gradient.
// The optimizer is SGD with momentum 0.9 and the predictor keeps a fixed
// learning rate (fix_pred_lr).
type SimSiam struct {
	dim, predDim int
}

// NewSimSiam returns SimSiam with the given head sizes.
func NewSimSiam(o SimSiamOptions) (*SimSiam, error) {
	if o.Dim < 0 || o.PredDim < 0 {
		return nil, fmt.Errorf("simsiam: head sizes dim %d, pred_dim %d must not be negative", o.Dim, o.PredDim)
	}
	if o.Dim == 0 {
		o.Dim = 2048
	}
	if o.PredDim == 0 {
		o.PredDim = 512
	}
	return &SimSiam{dim: o.Dim, predDim: o.PredDim}, nil
}

// Name returns "simsiam".
func (*SimSiam) Name() string { return "simsiam" }

// NewModel builds the backbone and the two heads on d. Heads that parts
// holds are loaded from it with the configuration their tensors give (the
// options' sizes then do not apply); the others are made fresh with
// PyTorch's default initialisation drawn from rng (a fixed stream when rng
// is nil). A backbone made fresh gets SimSiam's zero_init_residual (the
// last batch norm of each residual block starts at weight 0).
func (m *SimSiam) NewModel(ctx context.Context, d *vk.Device, cfg layers.ResNetConfig, parts *loader.Parts, rng *rand.Rand) (*Model, error) {
	if rng == nil {
		// A fixed stream: the values drawn are overwritten where parts
		// has them.
		rng = rand.New(rand.NewPCG(0, 0))
	}
	bb, err := newBackbone(ctx, d, cfg, parts, rng, true)
	if err != nil {
		return nil, fmt.Errorf("simsiam: %w", err)
	}
	model := &Model{Backbone: bb, Heads: map[string]*layers.MLP{}}
	fail := func(err error) (*Model, error) {
		model.Release()
		return nil, fmt.Errorf("simsiam: %w", err)
	}
	proj, err := newHead(ctx, d, parts, loader.HeadProjector, bb.Features, layers.MLPConfig{
		Spec:     fmt.Sprintf("%d-%d-%d", bb.Features, bb.Features, m.dim),
		LastBias: true, LastBN: true,
	}, rng)
	if err != nil {
		return fail(err)
	}
	model.Heads[loader.HeadProjector] = proj
	// builder.py's "hack: not use bias as it is followed by BN":
	// encoder.fc[6].bias.requires_grad = False. The bias stays in the
	// state (and in encoder.parameters(), which SGD skips for want of a
	// gradient); it moves only the running mean of the BN after it.
	if c := proj.Config; c.LastBias && c.LastBN {
		proj.Linears[len(proj.Linears)-1].Bias.SetRequiresGrad(false)
	}
	dim := proj.Linears[len(proj.Linears)-1].Weight.Value.Dim(0)
	pred, err := newHead(ctx, d, parts, loader.HeadPredictor, dim, layers.MLPConfig{
		Spec:     fmt.Sprintf("%d-%d", m.predDim, dim),
		LastBias: true,
	}, rng)
	if err != nil {
		return fail(err)
	}
	model.Heads[loader.HeadPredictor] = pred
	if out := pred.Linears[len(pred.Linears)-1].Weight.Value.Dim(0); out != dim {
		return fail(fmt.Errorf("the predictor gives %d values for a projection of %d", out, dim))
	}
	return model, nil
}

// Prepare does nothing: SimSiam changes nothing between steps.
func (*SimSiam) Prepare(*Step) error { return nil }

// Loss records the two views' forward passes, each on its own (its own
// batch-norm statistics, and one update of the running statistics per
// pass), and the symmetric negative cosine with stop-gradient on the
// replica's samples. The official code averages over the local batch and
// DistributedDataParallel averages the gradients, so Total is the local
// mean. The term "simsiam" is the global batch's value: on several
// replicas the per-sample cosines are gathered for it (without gradient).
// The embeddings are z1 and z2 with their gradients (DESIGN.md section
// 2.5: the E2MC criterion acts on z, the stop-gradient is the loss's own).
func (*SimSiam) Loss(st *Step) (*Loss, error) {
	if len(st.Views) != 2 {
		return nil, fmt.Errorf("simsiam: %d views; want 2", len(st.Views))
	}
	proj, pred := st.Model.Heads[loader.HeadProjector], st.Model.Heads[loader.HeadPredictor]
	if proj == nil || pred == nil {
		return nil, fmt.Errorf("simsiam: the model lacks its projector or predictor")
	}
	tp := st.Tape
	bb := st.Model.Backbone
	z1 := proj.Forward(tp, bb.Forward(tp, st.Views[0]))
	z2 := proj.Forward(tp, bb.Forward(tp, st.Views[1]))
	p1 := pred.Forward(tp, z1)
	p2 := pred.Forward(tp, z2)
	cos1 := tp.CosineSimilarity(p1, tp.Detach(z2))
	cos2 := tp.CosineSimilarity(p2, tp.Detach(z1))
	loss := tp.Scale(tp.Add(tp.Mean(cos1), tp.Mean(cos2)), -0.5)
	term := loss
	if c := tp.Collective(); c != nil && c.Size() > 1 {
		// -(sum cos1 + sum cos2) / 2B over the gathered batch is
		// -(mean cos1 + mean cos2) / 2 of the global batch.
		term = tp.Scale(tp.Mean(tp.AllGather(tp.Concat(tp.Detach(cos1), tp.Detach(cos2)))), -1)
	}
	if err := tp.Err(); err != nil {
		return nil, fmt.Errorf("simsiam: %w", err)
	}
	return &Loss{
		Total:      loss,
		Terms:      map[string]*layers.Var{"simsiam": term},
		Embeddings: []*layers.Var{z1, z2},
	}, nil
}

// ParamGroups returns main_simsiam.py's two groups: the encoder (backbone
// and projector, in encoder.parameters() order, the projector's frozen
// bias included as PyTorch includes it) and the predictor with the fixed
// learning rate predLR (fix_pred_lr; 0 lets it follow the schedule). Both
// take weight decay wd on every parameter.
func (*SimSiam) ParamGroups(m *Model, wd, predLR float64) []layers.Group {
	enc := layers.Parameters(m.Backbone)
	if h := m.Heads[loader.HeadProjector]; h != nil {
		enc = append(enc, layers.Parameters(h)...)
	}
	groups := []layers.Group{{Params: enc, WeightDecay: wd}}
	if h := m.Heads[loader.HeadPredictor]; h != nil {
		groups = append(groups, layers.Group{Params: layers.Parameters(h), WeightDecay: wd, FixedLR: predLR})
	}
	return groups
}

// NewOptimizer returns SGD with momentum 0.9 over groups.
func (*SimSiam) NewOptimizer(groups []layers.Group) (*layers.Optimizer, error) {
	o, err := layers.NewSGD(groups, 0.9)
	if err != nil {
		return nil, fmt.Errorf("simsiam: %w", err)
	}
	return o, nil
}

// BeforeUpdate does nothing: every gradient is used as it is.
func (*SimSiam) BeforeUpdate(*Step) error { return nil }

// State returns nil: SimSiam keeps no run state besides the model and the
// optimizer.
func (*SimSiam) State(context.Context) (map[string]layers.HostTensor, error) { return nil, nil }

// LoadState accepts only an empty state.
func (*SimSiam) LoadState(_ context.Context, st map[string]layers.HostTensor) error {
	if len(st) != 0 {
		return fmt.Errorf("simsiam: the method has no state, got %d tensors", len(st))
	}
	return nil
}

// Release does nothing: the method holds no device memory of its own.
func (*SimSiam) Release() {}

var _ Method = (*SimSiam)(nil)
