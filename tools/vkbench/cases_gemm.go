package main

import (
	"context"
	"fmt"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
)

// gemmCases are square GEMMs, the shape of a ResNet-50 1x1 convolution at
// 56x56 (3136 pixels, 64 to 256 channels) and a skinny one: a batch of 8
// rows through an 8192-wide linear layer (VICReg's expander at batch 8),
// which fills an eighth of a 64-row tile.
func gemmCases() []benchCase {
	return []benchCase{
		gemmCase(256, 256, 256),
		gemmCase(1024, 1024, 1024),
		gemmCase(2048, 2048, 2048),
		gemmCase(3136, 256, 64),
		gemmCase(8, 8192, 8192),
	}
}

// gemmCase times layers.Gemm computing C = A*B with A [m, k], B [k, n] and
// C [m, n]; its shape is "MxNxK" and it counts 2*m*n*k flops.
func gemmCase(m, n, k int) benchCase {
	return benchCase{
		name:  "gemm",
		shape: fmt.Sprintf("%dx%dx%d", m, n, k),
		flops: 2 * float64(m) * float64(n) * float64(k),
		prepare: func(ctx context.Context, d *vk.Device) (*workload, error) {
			var ts tensors
			a, err := ts.upload(ctx, d, 1, m, k)
			if err != nil {
				return nil, err
			}
			b, err := ts.upload(ctx, d, 2, k, n)
			if err != nil {
				ts.release()
				return nil, err
			}
			c, err := ts.zeros(ctx, d, m, n)
			if err != nil {
				ts.release()
				return nil, err
			}
			return &workload{
				record:  func(s *vk.Stream) error { return layers.Gemm(s, 1, a, false, b, false, 0, c) },
				release: ts.release,
			}, nil
		},
	}
}
