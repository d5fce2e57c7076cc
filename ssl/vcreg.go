package ssl

import (
	"fmt"

	"github.com/e2mcvk/e2mcvk/layers"
)

// VCReg is the variance-covariance regulariser, a Table-2 baseline added to
// SwAV: VICReg's std and cov terms (varCov, the same code as VICReg's loss)
// on the embeddings of the first two views, gathered over the replicas,
// without the invariance term:
//
//	std * (mean(relu(1 - std_a)) + mean(relu(1 - std_b)))/2 + cov * (cov_a + cov_b)
type VCReg struct {
	std, cov float64
}

// The default weights are VICReg's (std 25, cov 1): the E2MC paper does not
// state the ones of its VCReg baseline.
const (
	vcregStdCoef = vicregStdCoef
	vcregCovCoef = vicregCovCoef
)

// NewVCReg returns the regulariser with weights std and cov; zero values
// mean VICReg's 25 and 1.
func NewVCReg(std, cov float64) *VCReg {
	if std == 0 {
		std = vcregStdCoef
	}
	if cov == 0 {
		cov = vcregCovCoef
	}
	return &VCReg{std: std, cov: cov}
}

// Name returns "vcreg".
func (r *VCReg) Name() string { return "vcreg" }

// Apply records the weighted std and cov terms of z[0] and z[1]. Its terms
// are "std_vcreg" and "cov_vcreg", unweighted as VICReg reports its own.
func (r *VCReg) Apply(st *Step, z []*layers.Var) (*Penalty, error) {
	if len(z) < 2 {
		return nil, fmt.Errorf("vcreg: %d views of embeddings; want 2", len(z))
	}
	tp := st.Tape
	std, cov := varCov(tp, tp.AllGather(z[0]), tp.AllGather(z[1]))
	add := tp.Add(tp.Scale(std, float32(r.std)), tp.Scale(cov, float32(r.cov)))
	if err := tp.Err(); err != nil {
		return nil, fmt.Errorf("vcreg: %w", err)
	}
	return &Penalty{
		Add:      add,
		ValueVar: add,
		Terms:    map[string]*layers.Var{"std_vcreg": std, "cov_vcreg": cov},
	}, nil
}

// Release does nothing: VCReg holds no device memory.
func (r *VCReg) Release() {}
