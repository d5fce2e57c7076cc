package ssl

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// VICRegOptions are VICReg's settings; zero values mean the official ones.
type VICRegOptions struct {
	// MLP is the expander's widths after the backbone (main_vicreg.py's
	// --mlp, default "8192-8192-8192"); a checkpoint's projector overrides
	// it.
	MLP string
	// SimCoeff, StdCoeff and CovCoeff weigh the invariance, variance and
	// covariance terms (25, 25, 1).
	SimCoeff, StdCoeff, CovCoeff float64
}

// VICReg is the method of main_vicreg.py (Bardes, Ponce, LeCun): a ResNet
// backbone, an MLP expander ("projector"), and the loss
//
//	25 * mse(x, y) + 25 * (std_x + std_y) + 1 * (cov_x + cov_y)
//
// over the expander outputs x and y of the two views, its std and cov terms
// measured on the batch gathered over all replicas. It is trained with LARS
// (eta 0.001, momentum 0.9), biases and norms excluded from weight decay and
// trust ratio.
type VICReg struct {
	opts VICRegOptions
}

// The official constants of main_vicreg.py.
const (
	vicregMLP     = "8192-8192-8192"
	vicregStdEps  = 0.0001 // torch.sqrt(x.var(dim=0) + 0.0001)
	larsEta       = 0.001
	larsMomentum  = 0.9
	vicregSimCoef = 25
	vicregStdCoef = 25
	vicregCovCoef = 1
)

// NewVICReg returns the method with o's settings, the zero ones replaced by
// the official defaults.
func NewVICReg(o VICRegOptions) (*VICReg, error) {
	if o.MLP == "" {
		o.MLP = vicregMLP
	}
	if _, err := layers.ParseWidths(o.MLP); err != nil {
		return nil, fmt.Errorf("vicreg: %w", err)
	}
	if o.SimCoeff == 0 {
		o.SimCoeff = vicregSimCoef
	}
	if o.StdCoeff == 0 {
		o.StdCoeff = vicregStdCoef
	}
	if o.CovCoeff == 0 {
		o.CovCoeff = vicregCovCoef
	}
	return &VICReg{opts: o}, nil
}

// Name returns "vicreg".
func (v *VICReg) Name() string { return "vicreg" }

// Options returns the method's settings, defaults filled in.
func (v *VICReg) Options() VICRegOptions { return v.opts }

// NewModel builds the backbone and the expander on d. With parts, the
// backbone is loaded from it, and so is the expander when parts has a
// projector (its widths then come from the checkpoint, not from the
// options); otherwise the expander starts from PyTorch's default
// initialisation drawn from rng. A fresh backbone is torchvision's
// initialisation (layers.NewResNet) with zero_init_residual, as
// main_vicreg.py asks for.
func (v *VICReg) NewModel(ctx context.Context, d *vk.Device, cfg layers.ResNetConfig, parts *loader.Parts, rng *rand.Rand) (*Model, error) {
	if rng == nil {
		// The initial values are overwritten by the checkpoint's.
		rng = rand.New(rand.NewPCG(0, 0))
	}
	// main_vicreg.py builds its ResNet with zero_init_residual=True.
	bb, err := newBackbone(ctx, d, cfg, parts, rng, true)
	if err != nil {
		return nil, fmt.Errorf("vicreg: %w", err)
	}
	m := &Model{Backbone: bb, Heads: map[string]*layers.MLP{}}
	fail := func(err error) (*Model, error) {
		m.Release()
		return nil, fmt.Errorf("vicreg: %w", err)
	}
	proj, err := newHead(ctx, d, parts, loader.HeadProjector, bb.Features, layers.MLPConfig{Spec: v.opts.MLP, HiddenBias: true}, rng)
	if err != nil {
		return fail(err)
	}
	m.Heads[loader.HeadProjector] = proj
	return m, nil
}

// Prepare does nothing: VICReg changes no weights outside the optimizer.
func (v *VICReg) Prepare(*Step) error { return nil }

// Loss records main_vicreg.py's forward pass: each view through backbone
// and expander in its own pass (its own batch-norm statistics), the
// invariance term on this replica's rows, the variance and covariance terms
// on the rows gathered over the group.
func (v *VICReg) Loss(st *Step) (*Loss, error) {
	if len(st.Views) != 2 {
		return nil, fmt.Errorf("vicreg: %d views; want 2", len(st.Views))
	}
	proj := st.Model.Heads[loader.HeadProjector]
	if proj == nil {
		return nil, fmt.Errorf("vicreg: the model has no projector")
	}
	tp := st.Tape
	x := proj.Forward(tp, st.Model.Backbone.Forward(tp, st.Views[0]))
	y := proj.Forward(tp, st.Model.Backbone.Forward(tp, st.Views[1]))
	// The invariance term is this replica's own (main_vicreg.py takes it
	// before the gather): with equal shares of the batch, the global
	// batch's value is the mean over the replicas.
	repr := tp.MSE(x, y)
	std, cov := varCov(tp, tp.AllGather(x), tp.AllGather(y))
	total := tp.Add(tp.Add(tp.Scale(repr, float32(v.opts.SimCoeff)), tp.Scale(std, float32(v.opts.StdCoeff))),
		tp.Scale(cov, float32(v.opts.CovCoeff)))
	if err := tp.Err(); err != nil {
		return nil, fmt.Errorf("vicreg loss: %w", err)
	}
	return &Loss{
		Total:      total,
		Terms:      map[string]*layers.Var{"sim": repr, "std": std, "cov": cov},
		Embeddings: []*layers.Var{x, y},
	}, nil
}

// varCov records VICReg's variance and covariance terms of two views'
// embeddings x and y ([N, D] each, N the global batch):
//
//	std = mean(relu(1 - sqrt(var(x) + 1e-4)))/2 + the same for y
//	cov = sum(offdiag(x^T x / (N-1))^2)/D + the same for y
//
// with x and y centred per column. VICReg and the VCReg regulariser share
// it.
func varCov(tp *layers.Tape, x, y *layers.Var) (std, cov *layers.Var) {
	sx, cx := varCovView(tp, x)
	sy, cy := varCovView(tp, y)
	return tp.Scale(tp.Add(sx, sy), 0.5), tp.Add(cx, cy)
}

// varCovView records mean(relu(1 - std)) and sum(offdiag(C)^2)/D for one
// view z [N, D].
func varCovView(tp *layers.Tape, z *layers.Var) (std, cov *layers.Var) {
	if z == nil || len(z.Shape()) != 2 {
		tp.Fail("vicreg variance-covariance", fmt.Errorf("embeddings %v: want [N, D]", shapeOf(z)))
		return nil, nil
	}
	n, d := z.Shape()[0], z.Shape()[1]
	if n < 2 {
		tp.Fail("vicreg variance-covariance", fmt.Errorf("a batch of %d rows: the variance needs 2 or more", n))
		return nil, nil
	}
	zc := tp.CenterColumns(z)
	std = tp.Mean(tp.Relu(tp.Affine(tp.ColumnStd(zc, vicregStdEps), -1, 1)))
	// The off-diagonal squares are all squares of C = zc^T zc/(N-1) less
	// the diagonal's (the columns' variances): no D x D mask. And ||C||^2 =
	// ||zc zc^T||^2/(N-1)^2, so with fewer rows than columns (VICReg's 512
	// x 8192) the N x N Gram matrix gives it at N/D of the cost and memory.
	// C's rank is then below N, so its off-diagonal part is typically the
	// larger and the subtraction loses little (the tests hold both paths to
	// 1e-5 of a float64 reference).
	var all *layers.Var
	if n < d {
		k := tp.MatMul(zc, zc, false, true)
		all = tp.Scale(tp.Sum(tp.Mul(k, k)), 1/float32((n-1)*(n-1)))
	} else {
		c := tp.Scale(tp.MatMul(zc, zc, true, false), 1/float32(n-1))
		all = tp.Sum(tp.Mul(c, c))
	}
	diag := tp.Scale(tp.SumColumns(tp.Mul(zc, zc)), 1/float32(n-1))
	off := tp.Sub(all, tp.Sum(tp.Mul(diag, diag)))
	return std, tp.Scale(off, 1/float32(d))
}

// shapeOf is v's shape, or nil for a nil Var (an op that failed).
func shapeOf(v *layers.Var) []int {
	if v == nil {
		return nil
	}
	return v.Shape()
}

// ParamGroups returns one group of every parameter, backbone first, as
// main_vicreg.py hands model.parameters() to LARS: the optimizer leaves
// parameters of one dimension (biases, batch-norm weights) out of weight
// decay and the trust ratio itself (exclude_bias_and_norm).
func (v *VICReg) ParamGroups(m *Model, wd, _ float64) []layers.Group {
	ps := layers.Parameters(m.Backbone)
	if h := m.Heads[loader.HeadProjector]; h != nil {
		ps = append(ps, layers.Parameters(h)...)
	}
	return []layers.Group{{Params: ps, WeightDecay: wd}}
}

// NewOptimizer returns main_vicreg.py's LARS (eta 0.001, momentum 0.9).
func (v *VICReg) NewOptimizer(groups []layers.Group) (*layers.Optimizer, error) {
	o, err := layers.NewLARS(groups, larsMomentum, larsEta)
	if err != nil {
		return nil, fmt.Errorf("vicreg optimizer: %w", err)
	}
	return o, nil
}

// BeforeUpdate does nothing.
func (v *VICReg) BeforeUpdate(*Step) error { return nil }

// State returns nil: VICReg has no run state of its own.
func (v *VICReg) State(context.Context) (map[string]layers.HostTensor, error) { return nil, nil }

// LoadState accepts only an empty state.
func (v *VICReg) LoadState(_ context.Context, st map[string]layers.HostTensor) error {
	if len(st) != 0 {
		return fmt.Errorf("vicreg has no method state; got %d tensors", len(st))
	}
	return nil
}

// Release does nothing: the method holds no device memory.
func (v *VICReg) Release() {}
