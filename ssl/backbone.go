package ssl

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// newBackbone builds a method's ResNet trunk on d: loaded from parts when
// it is not nil, else torchvision's initialisation drawn from rng (a fixed
// stream when rng is nil: the values are overwritten where parts has them)
// and, with zeroInit, torchvision's zero_init_residual, which VICReg's and
// SimSiam's scripts ask for and SwAV's does not.
func newBackbone(ctx context.Context, d *vk.Device, cfg layers.ResNetConfig, parts *loader.Parts, rng *rand.Rand, zeroInit bool) (*layers.ResNet, error) {
	if cfg.Classes != 0 {
		return nil, fmt.Errorf("backbone with %d classes: want none (no fc)", cfg.Classes)
	}
	if rng == nil {
		rng = rand.New(rand.NewPCG(0, 0))
	}
	bb, err := layers.NewResNet(ctx, d, cfg, rng)
	if err != nil {
		return nil, fmt.Errorf("backbone: %w", err)
	}
	switch {
	case parts != nil:
		err = loader.LoadBackbone(ctx, bb, parts)
	case zeroInit:
		err = zeroInitResidual(ctx, bb)
	}
	if err != nil {
		bb.Release()
		return nil, err
	}
	return bb, nil
}

// zeroInitResidual sets the weight of the last batch norm of every residual
// block to zero, as torchvision's zero_init_residual=True does, so that each
// block starts as the identity.
func zeroInitResidual(ctx context.Context, r *layers.ResNet) error {
	for _, stage := range r.Layers {
		for _, blk := range stage {
			w := blk.BNs[len(blk.BNs)-1].Weight
			if err := w.Value.Upload(ctx, make([]float32, w.Value.Len())); err != nil {
				return fmt.Errorf("zero_init_residual: %w", err)
			}
		}
	}
	return nil
}

// newHead builds a method's named head on d: loaded from parts when parts
// has it (its configuration then comes from the checkpoint's tensors, not
// from fresh), else made with config fresh and PyTorch's default
// initialisation drawn from rng; in is the width the head takes.
func newHead(ctx context.Context, d *vk.Device, parts *loader.Parts, name string, in int, fresh layers.MLPConfig, rng *rand.Rand) (*layers.MLP, error) {
	if parts == nil || parts.Heads[name] == nil {
		h, err := layers.NewMLP(ctx, d, in, fresh, rng)
		if err != nil {
			return nil, fmt.Errorf("fresh %s: %w", name, err)
		}
		return h, nil
	}
	c, got, err := loader.InferHeadConfig(parts, name)
	if err != nil {
		return nil, err
	}
	if got != in {
		return nil, fmt.Errorf("the checkpoint's %s takes %d inputs; the model gives it %d", name, got, in)
	}
	h, err := layers.NewMLP(ctx, d, in, c, rng)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := loader.LoadHead(ctx, h, parts, name); err != nil {
		h.Release()
		return nil, err
	}
	return h, nil
}
