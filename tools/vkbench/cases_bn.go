package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
)

// bnShapes are batch-norm inputs of ResNet-50 at batch 8 (after a 56x56
// bottleneck's last convolution and at the last stage), of ResNet-18 at
// 32 px and batch 64, and of VICReg's projector (BatchNorm1d).
var bnShapes = [][]int{{8, 256, 56, 56}, {8, 2048, 7, 7}, {64, 64, 32, 32}, {512, 8192}}

// bnCases time a training-mode batch norm (batch statistics, running
// statistics update, affine): bn_fwd the forward alone, bn_train forward
// and backward (dx, dweight, dbias). GB/s counts one read of x and one write
// of y per forward, plus one read of x and dy and one write of dx per
// backward: the least traffic either can have.
func bnCases() []benchCase {
	var cs []benchCase
	for _, shape := range bnShapes {
		cs = append(cs, bnCase(shape, false), bnCase(shape, true))
	}
	return cs
}

func bnCase(shape []int, backward bool) benchCase {
	n := 1
	for _, s := range shape {
		n *= s
	}
	name, bytes := "bn_fwd", 8*float64(n)
	if backward {
		name, bytes = "bn_train", 20*float64(n)
	}
	dims := make([]string, len(shape))
	for i, s := range shape {
		dims[i] = fmt.Sprint(s)
	}
	return benchCase{
		name:  name,
		shape: strings.Join(dims, "x"),
		bytes: bytes,
		prepare: func(ctx context.Context, d *vk.Device) (*workload, error) {
			var ts tensors
			x, err := ts.upload(ctx, d, 1, shape...)
			if err != nil {
				return nil, err
			}
			dy, err := ts.upload(ctx, d, 2, shape...)
			if err != nil {
				ts.release()
				return nil, err
			}
			bn, err := layers.NewBatchNorm(ctx, d, shape[1], true)
			if err != nil {
				ts.release()
				return nil, err
			}
			params := []*layers.Var{bn.Weight, bn.Bias}
			return &workload{
				record: func(s *vk.Stream) error {
					for _, p := range params {
						p.ZeroGrad()
					}
					tp := layers.NewTape(s)
					in := layers.Constant(x)
					if backward {
						in = layers.Param(x)
					}
					y := bn.Forward(tp, in, true)
					var err error
					if backward {
						err = tp.BackwardWith(y, dy)
					}
					tp.Release()
					if err == nil {
						err = tp.Err()
					}
					if in.Grad != nil {
						s.AfterRun(in.Grad.Release)
					}
					return err
				},
				release: func() {
					for _, p := range params {
						p.ZeroGrad()
					}
					bn.Release()
					ts.release()
				},
			}, nil
		},
	}
}
