package eval

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// TestFinetuneLearns fine-tunes a narrow random ResNet-18 on a small set of
// four classes that colour and layout tell apart: the training loss must
// fall from about ln 4 by more than half, and the held-out top-1 must come
// well above chance (25%).
func TestFinetuneLearns(t *testing.T) {
	if testing.Short() {
		t.Skip("trains a network for a few seconds")
	}
	ctx := context.Background()
	dev := vktest.Device(t)
	parts := smallParts(t, 4, 5)
	rng := rand.New(rand.NewPCG(4, 4))
	train := newMemDataset(rng, 48, 4, 14)
	val := newMemDataset(rng, 24, 4, 14)
	cfg := DefaultFinetuneConfig()
	cfg.Epochs, cfg.Milestones, cfg.BatchSize = 8, []int{6, 7}, 16
	cfg.TrunkLR, cfg.HeadLR = 0.02, 0.1
	cfg.Augment = loader.ViewAugment{Size: 12, Scale: [2]float64{0.5, 1}, FlipP: 0.5}
	cfg.Preprocess = loader.Preprocess{Crop: 12}
	var losses []float64
	top1, top5, err := Finetune(ctx, dev, parts, train, val, cfg, nil, func(epoch, done int, loss float64, end bool) {
		if end {
			losses = append(losses, loss)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("losses %.3f; top1 %.1f top5 %.1f", losses, top1, top5)
	if len(losses) != cfg.Epochs {
		t.Fatalf("%d epoch reports, want %d", len(losses), cfg.Epochs)
	}
	if !finite(losses) || losses[len(losses)-1] > losses[0]/2 {
		t.Errorf("training loss went from %.3f to %.3f", losses[0], losses[len(losses)-1])
	}
	if top1 < 60 {
		t.Errorf("held-out top1 %.1f%%, want well above chance (25%%)", top1)
	}
	if top5 != 100 {
		t.Errorf("top5 %.1f with 4 classes, want 100", top5)
	}
}

// TestFinetuneStepRates checks where the two learning rates go: after one
// step in epoch 1 (past the milestone at 1, gamma 0.1) every trunk
// parameter moved by -0.1*TrunkLR times its gradient and every head
// parameter by -0.1*HeadLR times its gradient (SGD's first step, no weight
// decay), each value to the rounding of the float32 update p - lr*g: half
// an ulp of the new value plus a few ulps of the step.
func TestFinetuneStepRates(t *testing.T) {
	ctx := context.Background()
	dev := vktest.Device(t)
	parts := smallParts(t, 4, 6)
	cfg := DefaultFinetuneConfig()
	cfg.TrunkLR, cfg.HeadLR, cfg.Milestones, cfg.Gamma = 0.05, 0.7, []int{1}, 0.1
	ft, err := newFinetuner(ctx, dev, parts, 5, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ft.release()
	ft.net.Training = true
	download := func(vs []*layers.Var, grad bool) [][]float32 {
		var out [][]float32
		for _, v := range vs {
			x := v.Value
			if grad {
				x = v.Grad
			}
			if x == nil {
				t.Fatalf("a parameter of shape %v has no gradient", v.Value.Shape())
			}
			d, err := x.Download(ctx)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, d)
		}
		return out
	}
	trunk, head := layers.Parameters(ft.net), layers.Parameters(ft.head)
	all := append(append([]*layers.Var{}, trunk...), head...)
	before := download(all, false)
	rng := rand.New(rand.NewPCG(7, 7))
	const n, size = 6, 12
	data := make([]float32, n*3*size*size)
	for i := range data {
		data[i] = float32(rng.NormFloat64())
	}
	loss, err := ft.step(ctx, data, []int{0, 4, 2, 1, 3, 4}, size, 1)
	if err != nil {
		t.Fatal(err)
	}
	grads := download(all, true)
	after := download(all, false)
	ft.zeroGrad()
	for k := range all {
		lr := 0.1 * cfg.TrunkLR
		if k >= len(trunk) {
			lr = 0.1 * cfg.HeadLR
		}
		var norm float64
		bad := 0
		for i := range before[k] {
			step := -lr * float64(grads[k][i])
			moved := float64(after[k][i]) - float64(before[k][i])
			bound := math.Abs(float64(after[k][i]))*0x1p-24 + math.Abs(step)*0x1p-21 + 1e-30
			if math.Abs(moved-step) > bound {
				bad++
			}
			norm += step * step
		}
		if norm == 0 {
			t.Fatalf("parameter %d of shape %v has a zero gradient", k, all[k].Value.Shape())
		}
		if bad > 0 {
			t.Errorf("parameter %d (%v, lr %g): %d of %d values did not move by -lr*grad", k, all[k].Value.Shape(), lr, bad, len(before[k]))
		}
	}
	if !(loss > 0) || math.IsInf(loss, 0) {
		t.Errorf("loss %v", loss)
	}
}
