package main

import (
	"context"
	"fmt"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
)

// fmaChains and fmaGroup mirror shaders/fma_peak.comp: vec4 chains per
// invocation and the workgroup size it is specialised to.
const (
	fmaChains = 8
	fmaGroup  = 256
)

// fmaCases is the peak-FMA microkernel: 2^20 invocations of 256 iterations,
// 32 FMAs each (about 17 GFLOP; a fraction of a second on lavapipe, well
// over a timer tick on a large GPU).
func fmaCases() []benchCase {
	return []benchCase{fmaCase(1<<20, 256)}
}

// fmaCase runs shaders/fma_peak.comp over invocations (a multiple of
// fmaGroup) for iters iterations. Its shape is
// invocations x iterations x FMAs-per-iteration; an FMA counts as 2 flops.
func fmaCase(invocations, iters int) benchCase {
	perIter := 4 * fmaChains
	return benchCase{
		name:  "fma",
		shape: fmt.Sprintf("%dx%dx%d", invocations, iters, perIter),
		flops: 2 * float64(invocations) * float64(iters) * float64(perIter),
		prepare: func(ctx context.Context, d *vk.Device) (*workload, error) {
			if invocations%fmaGroup != 0 {
				return nil, fmt.Errorf("fma: %d invocations: want a multiple of %d", invocations, fmaGroup)
			}
			out, err := layers.New(d, invocations)
			if err != nil {
				return nil, fmt.Errorf("fma output: %w", err)
			}
			arg, off, err := layers.Bind(out, true)
			if err != nil {
				out.Release()
				return nil, fmt.Errorf("fma: %w", err)
			}
			push := layers.Push{}.U32(uint32(invocations), off, uint32(iters)).F32(0.999, 1e-3)
			return &workload{
				record: func(s *vk.Stream) error {
					return layers.Launch(s, "fma_peak", []uint32{fmaGroup}, layers.Grid(invocations/fmaGroup), push, arg)
				},
				release: out.Release,
			}, nil
		},
	}
}
