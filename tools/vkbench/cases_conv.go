package main

import (
	"context"
	"fmt"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
)

// convShapes are ResNet-50 layers at batch 8 and 224 px (the stem, the three
// convolutions of a bottleneck at 56x56, the stride-2 3x3 of the second
// stage, 3x3 layers of the later stages, the 1x1 reduction of the third
// stage and expansion of the last, the stride-2 1x1 projection of the last
// stage) and the 3x3 layer of ResNet-18 at 32 px, batch 64, written
// "NxCinxHxW-CoutxKHxKW-sSpP". torch_bench.py's CONV_SHAPES lists the same.
var convShapes = []string{
	"8x3x224x224-64x7x7-s2p3",
	"8x64x56x56-64x1x1-s1p0",
	"8x64x56x56-64x3x3-s1p1",
	"8x64x56x56-256x1x1-s1p0",
	"8x128x56x56-128x3x3-s2p1",
	"8x256x14x14-256x3x3-s1p1",
	"8x512x7x7-512x3x3-s1p1",
	"8x1024x14x14-256x1x1-s1p0",
	"8x512x7x7-2048x1x1-s1p0",
	"8x1024x14x14-2048x1x1-s2p0",
	"64x64x32x32-64x3x3-s1p1",
}

// convCases time layers.Conv2dForward (conv_fwd), Conv2dBackwardData
// (conv_bwd_data) and Conv2dBackwardWeight without bias (conv_bwd_weight) at
// convShapes; each counts 2*N*Cout*Ho*Wo*Cin*KH*KW flops.
func convCases() []benchCase {
	var cs []benchCase
	for _, sh := range convShapes {
		for _, op := range []string{"conv_fwd", "conv_bwd_data", "conv_bwd_weight"} {
			cs = append(cs, convCase(op, sh))
		}
	}
	return cs
}

// convShape is a parsed shape of convShapes.
type convShape struct {
	n, cin, h, w, cout, kh, kw, stride, pad int
}

func parseConvShape(s string) (convShape, error) {
	var c convShape
	if _, err := fmt.Sscanf(s, "%dx%dx%dx%d-%dx%dx%d-s%dp%d", &c.n, &c.cin, &c.h, &c.w, &c.cout, &c.kh, &c.kw, &c.stride, &c.pad); err != nil {
		return c, fmt.Errorf("conv shape %q: want NxCinxHxW-CoutxKHxKW-sSpP: %v", s, err)
	}
	return c, nil
}

func convCase(op, shape string) benchCase {
	c, err := parseConvShape(shape)
	if err != nil {
		panic(err) // convShapes is fixed: a bad entry is a programming error
	}
	p := layers.ConvParams{Stride: [2]int{c.stride, c.stride}, Padding: [2]int{c.pad, c.pad}}
	ho := layers.ConvOutputSize(c.h, c.kh, c.stride, c.pad, 1)
	wo := layers.ConvOutputSize(c.w, c.kw, c.stride, c.pad, 1)
	return benchCase{
		name:  op,
		shape: shape,
		flops: 2 * float64(c.n*c.cout*ho*wo) * float64(c.cin*c.kh*c.kw),
		prepare: func(ctx context.Context, d *vk.Device) (*workload, error) {
			var ts tensors
			x, err := ts.upload(ctx, d, 1, c.n, c.cin, c.h, c.w)
			if err != nil {
				return nil, err
			}
			w, err := ts.upload(ctx, d, 2, c.cout, c.cin, c.kh, c.kw)
			if err != nil {
				ts.release()
				return nil, err
			}
			g, err := ts.upload(ctx, d, 3, c.n, c.cout, ho, wo)
			if err != nil {
				ts.release()
				return nil, err
			}
			var record func(s *vk.Stream) error
			switch op {
			case "conv_fwd":
				y, err := ts.zeros(ctx, d, c.n, c.cout, ho, wo)
				if err != nil {
					ts.release()
					return nil, err
				}
				record = func(s *vk.Stream) error { return layers.Conv2dForward(s, y, x, w, nil, p) }
			case "conv_bwd_data":
				dx, err := ts.zeros(ctx, d, c.n, c.cin, c.h, c.w)
				if err != nil {
					ts.release()
					return nil, err
				}
				record = func(s *vk.Stream) error { return layers.Conv2dBackwardData(s, dx, g, w, p) }
			default:
				dw, err := ts.zeros(ctx, d, c.cout, c.cin, c.kh, c.kw)
				if err != nil {
					ts.release()
					return nil, err
				}
				record = func(s *vk.Stream) error { return layers.Conv2dBackwardWeight(s, dw, nil, x, g, p) }
			}
			return &workload{record: record, release: ts.release}, nil
		},
	}
}
