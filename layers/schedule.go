package layers

import "math"

// Schedule gives the learning rate of each step (or epoch, for schedules
// that change per epoch) of a run, counted from 0.
type Schedule interface {
	LR(step int) float64
}

// ConstantLR is the same learning rate at every step (E2MC's continued
// VICReg training).
type ConstantLR float64

// LR returns the constant.
func (c ConstantLR) LR(int) float64 { return float64(c) }

// WarmupCosine rises linearly from Start to Base over the first Warmup
// steps, then follows a half cosine from Base down to Final, which it reaches
// at step Total and keeps after (the authors' code never steps past Total).
// Negative steps count as step 0.
//
// With w = Warmup and T = Total, step t gives
//
//	t < w:        Start + (Base - Start) * t / w
//	w <= t < T:   Final + (Base - Final) * (1 + cos(pi * (t - w) / (T - w))) / 2
//	t >= T:       Final
//
// VICReg's adjust_learning_rate is Start 0 and Final Base*0.001 (per
// iteration); SimSiam's per-epoch cosine is Warmup 0 and Final 0 (per epoch);
// SwAV's schedule (start_warmup, final_lr) builds its warmup with
// np.linspace(Start, Base, w), which reaches Base one step earlier: set
// Linspace for it, and the warmup divides by w - 1 instead of w.
type WarmupCosine struct {
	Base, Start, Final float64
	Warmup, Total      int
	// Linspace makes the warmup np.linspace(Start, Base, Warmup): Start at
	// step 0, Base at step Warmup-1 (SwAV).
	Linspace bool
}

// LR returns the learning rate of step t.
func (w WarmupCosine) LR(t int) float64 {
	t = max(t, 0)
	switch {
	case t >= w.Total:
		return w.Final
	case t < w.Warmup:
		div := float64(w.Warmup)
		if w.Linspace {
			if w.Warmup == 1 {
				return w.Start
			}
			div--
		}
		return w.Start + (w.Base-w.Start)*float64(t)/div
	}
	q := 0.5 * (1 + math.Cos(math.Pi*float64(t-w.Warmup)/float64(w.Total-w.Warmup)))
	return w.Final + (w.Base-w.Final)*q
}

// MultiStep is torch.optim.lr_scheduler.MultiStepLR: Base multiplied by
// Gamma once for every milestone at or before the step (the step decays of
// semi-supervised fine-tuning and the iNat18 probe). Milestones need not be
// sorted.
type MultiStep struct {
	Base, Gamma float64
	Milestones  []int
}

// LR returns the learning rate of step t.
func (m MultiStep) LR(t int) float64 {
	lr := m.Base
	for _, at := range m.Milestones {
		if t >= at {
			lr *= m.Gamma
		}
	}
	return lr
}
