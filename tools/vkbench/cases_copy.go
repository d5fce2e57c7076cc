package main

import (
	"context"
	"fmt"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
)

// copyCases measure memory bandwidth with a 64 MiB contiguous copy.
func copyCases() []benchCase {
	return []benchCase{copyCase(4096, 4096)}
}

// copyCase times layers.Copy of a contiguous [rows, cols] float32 tensor; it
// moves 2*4*rows*cols bytes (every element read once and written once).
func copyCase(rows, cols int) benchCase {
	return benchCase{
		name:  "copy",
		shape: fmt.Sprintf("%dx%d", rows, cols),
		bytes: 2 * 4 * float64(rows) * float64(cols),
		prepare: func(ctx context.Context, d *vk.Device) (*workload, error) {
			var ts tensors
			src, err := ts.upload(ctx, d, 3, rows, cols)
			if err != nil {
				return nil, err
			}
			dst, err := ts.zeros(ctx, d, rows, cols)
			if err != nil {
				ts.release()
				return nil, err
			}
			return &workload{
				record:  func(s *vk.Stream) error { return layers.Copy(s, dst, src) },
				release: ts.release,
			}, nil
		},
	}
}
