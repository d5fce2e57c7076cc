package layers

import (
	"context"
	"fmt"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
)

// TestConv2dWeightGradLongSums checks the weight gradient where its sums run
// over tens of thousands of pixels and cancel, as they do in a network: the
// input is a ReLU's (non-negative, with a mean) and the output gradient is a
// training batch norm's (zero mean per channel), so the gradient is a small
// difference of large sums. The kernels of this device and the GPU kernels
// must both stay within 1e-4 of float64.
func TestConv2dWeightGradLongSums(t *testing.T) {
	gpu := vk.DeviceInfo{Type: "discrete-gpu", MaxWorkgroupSize: 1024, MaxSharedMemory: 48 << 10, SubgroupSize: 32}
	d := testDevices(t)[0].dev
	one := ConvParams{Stride: [2]int{1, 1}, Padding: [2]int{1, 1}, Dilation: [2]int{1, 1}}
	cases := []convCase{
		{n: 64, cin: 8, h: 28, w: 28, cout: 8, kh: 3, kw: 3, p: one},
		{n: 16, cin: 3, h: 28, w: 28, cout: 16, kh: 3, kw: 3, p: one},
		{n: 8, cin: 16, h: 56, w: 56, cout: 16, kh: 3, kw: 3, p: one},
	}
	for _, c := range cases {
		for _, kind := range []struct {
			name string
			info vk.DeviceInfo
		}{{"device", d.Info}, {"gpu", gpu}} {
			t.Run(fmt.Sprintf("%s/%s", kind.name, c.String()), func(t *testing.T) {
				g := c.geom(t)
				hx := randn(11, g.n*g.cin*g.h*g.w)
				for i, v := range hx {
					hx[i] = max(v, 0) + 0.5
				}
				ohw := g.ho * g.wo
				hg := randn(12, g.n*g.cout*ohw)
				for co := range g.cout {
					var mean float64
					for n := range g.n {
						for _, v := range hg[(n*g.cout+co)*ohw : (n*g.cout+co+1)*ohw] {
							mean += float64(v)
						}
					}
					mean /= float64(g.n * ohw)
					for n := range g.n {
						for i := (n*g.cout + co) * ohw; i < (n*g.cout+co+1)*ohw; i++ {
							hg[i] -= float32(mean)
						}
					}
				}
				x, gy := upload(t, d, hx, g.xShape()...), upload(t, d, hg, g.yShape()...)
				dw := empty(t, d, g.wShape()...)
				s := stream(t, d)
				cfg := convConfigFor(kind.info)
				cfg.tmp = streamScratch(s)
				if err := conv2dBackwardWeight(s, dw, nil, x, gy, c.p, cfg); err != nil {
					t.Fatal(err)
				}
				if err := s.Run(context.Background()); err != nil {
					t.Fatal(err)
				}
				got, err := dw.Download(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				want, _ := convWeightReference(g, convWiden(hx), convWiden(hg))
				assertClose(t, "weight gradient", got, want, 1e-4)
			})
		}
	}
}
