package main

import (
	"context"
	"fmt"

	"github.com/e2mcvk/e2mcvk/e2mc"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
)

// e2mcCases time the criterion on one view at the shapes of VICReg
// (512 x 8192), SwAV (256 x 128) and a large batch (4096 x 2048): forward
// alone, whose column pass is the sort + log-spacings ("e2mc_sort"), and
// forward + backward ("e2mc_total") with its column pass ("e2mc_entropy":
// sort, entropy and its gradient) and covariance part ("e2mc_cov": Gram or
// covariance GEMMs, loss and gradient).
func e2mcCases() []benchCase {
	var cs []benchCase
	for _, sh := range [][2]int{{512, 8192}, {256, 128}, {4096, 2048}} {
		cs = append(cs, e2mcCase(sh[0], sh[1], false), e2mcCase(sh[0], sh[1], true))
	}
	return cs
}

// e2mcCase times e2mc.Criterion.Record on an n x d batch with VICReg's bound;
// shape "NxD". Its GB/s (and its parts') count the embeddings once, 4*N*D
// bytes: a rate of embeddings processed, comparable across implementations.
func e2mcCase(n, d int, backward bool) benchCase {
	c := benchCase{name: "e2mc_fwd", shape: fmt.Sprintf("%dx%d", n, d), bytes: 4 * float64(n) * float64(d),
		parts: []part{{"e2mc_sort", []string{"e2mc_columns"}}}}
	if backward {
		c.name = "e2mc_total"
		c.parts = []part{
			{"e2mc_entropy", []string{"e2mc_columns"}},
			{"e2mc_cov", []string{"e2mc_covariance", "e2mc_gradient"}},
		}
	}
	c.prepare = func(ctx context.Context, dev *vk.Device) (*workload, error) {
		var ts tensors
		z, err := ts.upload(ctx, dev, 3, n, d)
		if err != nil {
			return nil, err
		}
		var grad *layers.Tensor
		if backward {
			if grad, err = ts.zeros(ctx, dev, n, d); err != nil {
				ts.release()
				return nil, err
			}
		}
		crit := &e2mc.Criterion{Params: e2mc.Params{Bound: e2mc.BoundSigmoid, Eps: e2mc.DefaultEps}}
		return &workload{
			record: func(s *vk.Stream) error {
				r, err := crit.Record(s, z, grad, 5, 1)
				if err != nil {
					return err
				}
				s.AfterRun(r.Release)
				return nil
			},
			release: ts.release,
		}, nil
	}
	return c
}
