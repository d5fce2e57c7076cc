package ssl

import (
	"errors"
	"fmt"

	"github.com/e2mcvk/e2mcvk/e2mc"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
)

// E2MC is the E2MC criterion (DESIGN.md section 2) as an add-on to a
// method's loss: on the embeddings of the first two views, gathered over
// the replicas,
//
//	cov * (cov_a + cov_b) - ent * (meanH_a + meanH_b) / 2
//
// computed by the e2mc package's kernels, which also give its gradient; the
// gradient enters the tape through Surrogate.
type E2MC struct {
	d    *vk.Device
	crit e2mc.Criterion
	// grads are the last step's criterion gradients, which that step's
	// backward pass reads. They are freed by the next Apply or by Release,
	// not when the stream next runs: a caller may run the stream between
	// Apply and Backward (to check the loss), before the backward pass has
	// even recorded its reads of them.
	grads []*layers.Tensor
}

// NewE2MC returns the criterion for method ("vicreg", "swav" or "simsiam")
// with coefficients ent and cov on device d. The method picks the bound and
// the eps inside the entropy's log as the authors' scripts do: VICReg the
// sigmoid and 1e-7, SwAV and SimSiam the normal CDF and float32's machine
// epsilon. The spacing window is round(sqrt(N)) of the global batch N.
func NewE2MC(d *vk.Device, method string, ent, cov float64) (*E2MC, error) {
	var p e2mc.Params
	switch method {
	case "vicreg":
		p = e2mc.Params{Bound: e2mc.BoundSigmoid, Eps: e2mc.DefaultEps}
	case "swav", "simsiam":
		p = e2mc.Params{Bound: e2mc.BoundNormal, Eps: e2mc.Float32Eps}
	default:
		return nil, fmt.Errorf("e2mc: unknown method %q (want vicreg, swav or simsiam)", method)
	}
	if d == nil {
		return nil, fmt.Errorf("e2mc: no device")
	}
	return &E2MC{d: d, crit: e2mc.Criterion{Params: p, Coefficients: e2mc.Coefficients{Ent: ent, Cov: cov}}}, nil
}

// Name returns "e2mc".
func (r *E2MC) Name() string { return "e2mc" }

// Params returns the bound and eps the criterion measures with (M is 0:
// the window follows the batch).
func (r *E2MC) Params() e2mc.Params { return r.crit.Params }

// Apply gathers z[0] and z[1] over the group, runs the criterion on them
// (this runs the step's stream recorded so far) and adds the surrogate of
// its gradient for each view. The penalty's Value is the criterion's loss;
// its host terms are "ent" and "entropy" (the mean entropy of the two views)
// and "cov_e2mc" (cov_a + cov_b). A NaN or infinite measurement is no error
// here: the values are reported as they are, for the trainer to stop on
// before any weight changes. Apply is called once per step, after the
// previous step's stream has run (it frees that step's buffers).
func (r *E2MC) Apply(st *Step, z []*layers.Var) (*Penalty, error) {
	if len(z) < 2 {
		return nil, fmt.Errorf("e2mc: %d views of embeddings; want 2", len(z))
	}
	// The previous step's stream has run: its gradients are free to go.
	r.Release()
	tp := st.Tape
	za, zb := tp.AllGather(z[0]), tp.AllGather(z[1])
	if err := tp.Err(); err != nil {
		return nil, fmt.Errorf("e2mc: %w", err)
	}
	shape := za.Shape()
	if len(shape) != 2 || len(zb.Shape()) != 2 || shape[0] != zb.Shape()[0] || shape[1] != zb.Shape()[1] {
		return nil, fmt.Errorf("e2mc: views of shapes %v and %v: want one [N, D]", shape, zb.Shape())
	}
	c := r.crit
	c.M = e2mc.Window(shape[0])
	// The gradients are the criterion's output; the surrogates read them
	// in the backward pass, so they live until the next step.
	ga, err := layers.New(r.d, shape...)
	if err != nil {
		return nil, fmt.Errorf("e2mc: %w", err)
	}
	gb, err := layers.New(r.d, shape...)
	if err != nil {
		ga.Release()
		return nil, fmt.Errorf("e2mc: %w", err)
	}
	l, err := c.Loss(st.Ctx, tp.Stream(), za.Value, zb.Value, ga, gb)
	var nonFinite *e2mc.NonFiniteError
	if err != nil && !errors.As(err, &nonFinite) {
		ga.Release()
		gb.Release()
		return nil, fmt.Errorf("e2mc: %w", err)
	}
	r.grads = []*layers.Tensor{ga, gb}
	add := tp.Add(Surrogate(tp, za, ga), Surrogate(tp, zb, gb))
	if err := tp.Err(); err != nil {
		return nil, fmt.Errorf("e2mc: %w", err)
	}
	ent := (l.A.MeanEntropy + l.B.MeanEntropy) / 2
	return &Penalty{
		Add:   add,
		Value: l.Total,
		HostTerms: map[string]float64{
			"ent":      ent,
			"entropy":  ent,
			"cov_e2mc": l.A.CovLoss + l.B.CovLoss,
		},
	}, nil
}

// Release frees the last step's gradient buffers; the stream that read
// them must have run.
func (r *E2MC) Release() {
	for _, g := range r.grads {
		g.Release()
	}
	r.grads = nil
}
