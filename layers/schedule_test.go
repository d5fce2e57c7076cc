package layers

import (
	"fmt"
	"math"
	"testing"
)

// scheduleTol is the relative tolerance of the schedules against the
// authors' formulas, which round differently in the last bits.
const scheduleTol = 1e-12

func checkSchedule(t *testing.T, name string, s Schedule, steps []int, want func(step int) float64) {
	t.Helper()
	for _, k := range steps {
		got, w := s.LR(k), want(k)
		if math.Abs(got-w) > scheduleTol*math.Abs(w) || (w == 0 && got != 0) {
			t.Errorf("%s: step %d: lr %v, want %v", name, k, got, w)
		}
	}
}

// stepRange returns the integers lo, lo+1, ..., hi-1.
func stepRange(lo, hi int) []int {
	var out []int
	for k := lo; k < hi; k++ {
		out = append(out, k)
	}
	return out
}

// TestWarmupCosineVICReg compares with VICReg's adjust_learning_rate
// (main_vicreg.py), per iteration over 100 epochs of 7 iterations with 10
// warmup epochs, and checks that the schedule stays at its end past Total.
func TestWarmupCosineVICReg(t *testing.T) {
	const iters, epochs = 7, 100
	base := 0.2 * 512 / 256
	vicreg := func(step int) float64 {
		maxSteps := epochs * iters
		warmupSteps := 10 * iters
		if step < warmupSteps {
			return base * float64(step) / float64(warmupSteps)
		}
		step -= warmupSteps
		maxSteps -= warmupSteps
		q := 0.5 * (1 + math.Cos(math.Pi*float64(step)/float64(maxSteps)))
		end := base * 0.001
		return base*q + end*(1-q)
	}
	s := WarmupCosine{Base: base, Start: 0, Final: base * 0.001, Warmup: 10 * iters, Total: epochs * iters}
	checkSchedule(t, "vicreg", s, stepRange(0, epochs*iters+1), vicreg)
	checkSchedule(t, "vicreg past the end", s, []int{epochs*iters + 1, epochs*iters + 100, 1 << 30},
		func(int) float64 { return base * 0.001 })
	checkSchedule(t, "vicreg before the start", s, []int{-1, -50}, func(int) float64 { return 0 })
	if s.LR(1) <= 0 || s.LR(10*iters) != base {
		t.Errorf("warmup: lr(1) = %v, lr(%d) = %v, want > 0 and %v", s.LR(1), 10*iters, s.LR(10*iters), base)
	}
}

// TestWarmupCosineSwAV compares with SwAV's lr_schedule array (main_swav.py:
// np.linspace warmup from start_warmup, then the cosine to final_lr), over
// its whole length, with and without warmup.
func TestWarmupCosineSwAV(t *testing.T) {
	const iters, epochs = 5, 13
	for _, warmupEpochs := range []int{0, 1, 3} {
		base, start, final := 4.8, 0.3, 0.0048
		var schedule []float64
		w := iters * warmupEpochs
		for i := 0; i < w; i++ { // np.linspace(start, base, w)
			if w == 1 {
				schedule = append(schedule, start)
				continue
			}
			schedule = append(schedule, start+float64(i)*(base-start)/float64(w-1))
		}
		cosine := iters * (epochs - warmupEpochs)
		for i := 0; i < cosine; i++ {
			schedule = append(schedule, final+0.5*(base-final)*(1+math.Cos(math.Pi*float64(i)/float64(cosine))))
		}
		s := WarmupCosine{Base: base, Start: start, Final: final, Warmup: w, Total: iters * epochs, Linspace: true}
		name := fmt.Sprintf("swav, %d warmup epochs", warmupEpochs)
		checkSchedule(t, name, s, stepRange(0, len(schedule)), func(k int) float64 { return schedule[k] })
		checkSchedule(t, name+", past the end", s, []int{len(schedule), len(schedule) + 3}, func(int) float64 { return final })
	}
	one := WarmupCosine{Base: 2, Start: 0.5, Final: 0.1, Warmup: 1, Total: 4, Linspace: true}
	checkSchedule(t, "one warmup step", one, []int{0}, func(int) float64 { return 0.5 })
}

// TestWarmupCosineSimSiam compares with SimSiam's per-epoch
// adjust_learning_rate (main_simsiam.py).
func TestWarmupCosineSimSiam(t *testing.T) {
	const epochs = 100
	initLR := 0.05 * 512 / 256
	s := WarmupCosine{Base: initLR, Total: epochs}
	checkSchedule(t, "simsiam", s, stepRange(0, epochs), func(epoch int) float64 {
		return initLR * 0.5 * (1 + math.Cos(math.Pi*float64(epoch)/epochs))
	})
	checkSchedule(t, "simsiam past the end", s, []int{epochs, epochs + 1}, func(int) float64 { return 0 })
}

// TestWarmupCosineStart checks a warmup that starts above zero, at its
// boundaries.
func TestWarmupCosineStart(t *testing.T) {
	s := WarmupCosine{Base: 1.5, Start: 0.25, Final: 0.05, Warmup: 8, Total: 29}
	checkSchedule(t, "warmup from 0.25", s, stepRange(-2, 32), func(k int) float64 {
		switch {
		case k <= 0:
			return 0.25
		case k < 8:
			return 0.25 + (1.5-0.25)*float64(k)/8
		case k < 29:
			return 0.05 + (1.5-0.05)*0.5*(1+math.Cos(math.Pi*float64(k-8)/21))
		}
		return 0.05
	})
}

func TestConstantLR(t *testing.T) {
	checkSchedule(t, "constant", ConstantLR(0.3), []int{0, 1, 1000, -1}, func(int) float64 { return 0.3 })
}

// TestMultiStep compares with MultiStepLR's closed form, base * gamma **
// bisect_right(milestones, epoch), at the milestones and between them.
func TestMultiStep(t *testing.T) {
	s := MultiStep{Base: 0.2, Gamma: 0.1, Milestones: []int{16, 12}}
	checkSchedule(t, "multistep", s, stepRange(0, 25), func(k int) float64 {
		passed := 0
		for _, m := range []int{12, 16} {
			if m <= k {
				passed++
			}
		}
		return 0.2 * math.Pow(0.1, float64(passed))
	})
}
