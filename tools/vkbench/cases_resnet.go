package main

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
)

// resnetCases time a whole training step: forward in train mode,
// cross-entropy against 10 classes, backward, and an SGD step with momentum
// 0.9 and weight decay 1e-4 (torch_bench.py times the same with
// torchvision's model and torch.optim.SGD).
func resnetCases() []benchCase {
	return []benchCase{
		resnetStepCase(18, 64, 32),
		resnetStepCase(50, 8, 224),
	}
}

// resnetStepCase is the training step of torchvision's ResNet-depth on a
// batch of random batch x 3 x size x size images; its shape reads
// "r18-64x3x32x32".
func resnetStepCase(depth, batch, size int) benchCase {
	cfg := layers.ResNetConfig{Depth: depth, Classes: 10}
	fwd, _ := cfg.ForwardFlops(batch, size, size) // depths 18 and 50 at >= 32 px: no error
	return benchCase{
		name:  "resnet_step",
		shape: fmt.Sprintf("r%d-%dx3x%dx%d", depth, batch, size, size),
		// Forward, backward-data and backward-weight of the convolutions
		// and fc, as ResNetConfig.ForwardFlops counts them.
		flops: 3 * fwd,
		prepare: func(ctx context.Context, d *vk.Device) (*workload, error) {
			const classes = 10 // cfg.Classes
			rng := rand.New(rand.NewPCG(uint64(depth), 7))
			r, err := layers.NewResNet(ctx, d, cfg, rng)
			if err != nil {
				return nil, err
			}
			var ts tensors
			x, err := ts.upload(ctx, d, 1, batch, 3, size, size)
			if err != nil {
				r.Release()
				return nil, err
			}
			labels := make([]int, batch)
			for i := range labels {
				labels[i] = rng.IntN(classes)
			}
			params := layers.Parameters(r)
			opt, err := layers.NewSGD([]layers.Group{{Params: params, WeightDecay: 1e-4}}, 0.9)
			if err != nil {
				r.Release()
				ts.release()
				return nil, err
			}
			return &workload{
				record: func(s *vk.Stream) error {
					for _, p := range params {
						p.ZeroGrad()
					}
					tp := layers.NewTape(s)
					loss := tp.CrossEntropy(r.Forward(tp, layers.Constant(x)), labels)
					err := tp.Backward(loss)
					tp.Release()
					if err != nil {
						return err
					}
					return opt.Step(s, 0.01)
				},
				release: func() {
					opt.Release()
					for _, p := range params {
						p.ZeroGrad()
					}
					r.Release()
					ts.release()
				},
			}, nil
		},
	}
}
