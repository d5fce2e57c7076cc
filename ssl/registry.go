package ssl

import (
	"fmt"

	"github.com/e2mcvk/e2mcvk/e2mc"
	"github.com/e2mcvk/e2mcvk/vk"
)

// The names NewMethod and Defaults know, and those NewRegularizer knows
// ("none" is no criterion), for error messages.
const (
	methodNames      = "vicreg, swav or simsiam"
	regularizerNames = "e2mc, vcreg, mmcr, auh or none"
)

// MethodOptions are a method's settings; zero values mean the official
// defaults. Each method reads only its own fields and ignores the rest.
type MethodOptions struct {
	// MLP is the projection head's widths after the backbone, dash-separated
	// (VICReg's expander "8192-8192-8192", SwAV's "2048-128"); a
	// checkpoint's head decides instead where it has one.
	MLP string
	// Dim and PredDim are SimSiam's projector output and predictor hidden
	// widths (2048 and 512).
	Dim, PredDim int
	// Prototypes is SwAV's number of prototypes (3000).
	Prototypes int

	// SimCoeff, StdCoeff and CovCoeff weigh VICReg's invariance, variance
	// and covariance terms (25, 25, 1).
	SimCoeff, StdCoeff, CovCoeff float64

	// Temperature (0.1) and Epsilon (0.05) are SwAV's softmax temperature
	// and Sinkhorn-Knopp regularisation; SinkhornIters its iterations (3).
	Temperature, Epsilon float64
	SinkhornIters        int
	// QueueLength is SwAV's global queue length (3584), QueueStartEpoch the
	// first epoch with a queue (15; -1 never) and FreezePrototypesIters the
	// first iterations without prototype updates (313; -1 none).
	QueueLength, QueueStartEpoch, FreezePrototypesIters int
	// Crops is SwAV's number of crops of each size in view order, {2, 6};
	// CropsForAssign the crops whose codes are predicted, {0, 1}.
	Crops, CropsForAssign []int
}

// NewMethod returns the method called name ("vicreg", "swav" or "simsiam")
// with the options o.
func NewMethod(name string, o MethodOptions) (Method, error) {
	switch name {
	case "vicreg":
		m, err := NewVICReg(VICRegOptions{MLP: o.MLP, SimCoeff: o.SimCoeff, StdCoeff: o.StdCoeff, CovCoeff: o.CovCoeff})
		if err != nil {
			return nil, err
		}
		return m, nil
	case "swav":
		m, err := NewSwAV(SwAVOptions{
			MLP:                   o.MLP,
			Prototypes:            o.Prototypes,
			Temperature:           o.Temperature,
			Epsilon:               o.Epsilon,
			SinkhornIters:         o.SinkhornIters,
			Crops:                 o.Crops,
			CropsForAssign:        o.CropsForAssign,
			QueueLength:           o.QueueLength,
			QueueStartEpoch:       o.QueueStartEpoch,
			FreezePrototypesIters: o.FreezePrototypesIters,
		})
		if err != nil {
			return nil, err
		}
		return m, nil
	case "simsiam":
		m, err := NewSimSiam(SimSiamOptions{Dim: o.Dim, PredDim: o.PredDim})
		if err != nil {
			return nil, err
		}
		return m, nil
	}
	return nil, fmt.Errorf("unknown method %q: want %s", name, methodNames)
}

// MethodDefaults are a method's official training settings for continued
// pre-training with E2MC.
type MethodDefaults struct {
	// LR is the base learning rate; with ScaleLR it is multiplied by the
	// global batch / 256 (see Scaled).
	LR      float64
	ScaleLR bool
	// WeightDecay is the optimizer's weight decay.
	WeightDecay float64
	// PredLR is SimSiam's fixed predictor learning rate, scaled like LR; 0
	// for the other methods.
	PredLR float64
	// Ent and Cov are E2MC's entropy and covariance coefficients.
	Ent, Cov float64
	// Bound and Eps are how E2MC bounds the embeddings and the eps inside
	// the entropy's log.
	Bound e2mc.Bound
	Eps   float64
}

// Scaled returns the learning rate and the predictor learning rate for a
// global batch of batch images: LR and PredLR times batch/256 where the
// method scales them, else as they are.
func (d MethodDefaults) Scaled(batch int) (lr, predLR float64) {
	if !d.ScaleLR {
		return d.LR, d.PredLR
	}
	f := float64(batch) / 256
	return d.LR * f, d.PredLR * f
}

// Defaults returns the official settings of method ("vicreg", "swav" or
// "simsiam").
func Defaults(method string) (MethodDefaults, error) {
	switch method {
	case "vicreg":
		// main_vicreg.py: lr = base_lr * batch_size / 256, base_lr 0.2,
		// wd 1e-6; the E2MC script passes eps 1e-7 and bounds by sigmoid.
		return MethodDefaults{LR: 0.2, ScaleLR: true, WeightDecay: 1e-6, Ent: 10, Cov: 1, Bound: e2mc.BoundSigmoid, Eps: e2mc.DefaultEps}, nil
	case "swav":
		// main_swav.py takes --base_lr as it is, without scaling: 0.6 is
		// the README's recipe for a global batch of 256 (4.8 for 4096), so
		// a user with another batch picks the LR, not a rule.
		return MethodDefaults{LR: 0.6, WeightDecay: 1e-6, Ent: 10, Cov: 1, Bound: e2mc.BoundNormal, Eps: e2mc.Float32Eps}, nil
	case "simsiam":
		// main_simsiam.py: init_lr = lr * batch_size / 256, lr 0.05, and
		// the fixed predictor LR (fix_pred_lr) is that init_lr.
		return MethodDefaults{LR: 0.05, ScaleLR: true, WeightDecay: 1e-4, PredLR: 0.05, Ent: 1, Cov: 25, Bound: e2mc.BoundNormal, Eps: e2mc.Float32Eps}, nil
	}
	return MethodDefaults{}, fmt.Errorf("unknown method %q: want %s", method, methodNames)
}

// NewRegularizer returns the add-on criterion called name for method on
// device d: "e2mc" with coefficients ent and cov (a negative one takes the
// method's default, Defaults), "vcreg", "mmcr" and "auh" with their default
// coefficients (ent and cov are not theirs and are ignored), and "none",
// which returns (nil, nil).
func NewRegularizer(name string, method string, d *vk.Device, ent, cov float64) (Regularizer, error) {
	switch name {
	case "none":
		return nil, nil
	case "e2mc":
		def, err := Defaults(method)
		if err != nil {
			return nil, fmt.Errorf("e2mc: %w", err)
		}
		if ent < 0 {
			ent = def.Ent
		}
		if cov < 0 {
			cov = def.Cov
		}
		r, err := NewE2MC(d, method, ent, cov)
		if err != nil {
			return nil, err
		}
		return r, nil
	case "vcreg":
		return NewVCReg(0, 0), nil
	case "mmcr":
		return NewMMCR(DefaultMMCRCoeff), nil
	case "auh":
		return NewAUH(DefaultAUHCoeff, DefaultAUHT), nil
	}
	return nil, fmt.Errorf("unknown regularizer %q: want %s", name, regularizerNames)
}
