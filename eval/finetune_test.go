package eval

import (
	"context"
	"math/rand/v2"
	"testing"

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
	top1, top5, err := Finetune(ctx, dev, parts, train, val, cfg, func(epoch, done int, loss float64, end bool) {
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
