package layers

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// convBenchShapes are ResNet layers at batch 8 (ResNet-50 at 224 px) and the
// 3x3 layer of ResNet-18 at 32 px, batch 64, as "NxCxHxW-OxKHxKW-sSpP".
var convBenchShapes = []string{
	"8x64x56x56-64x3x3-s1p1",
	"8x128x56x56-128x3x3-s2p1",
	"8x256x56x56-64x1x1-s1p0",
	"8x3x224x224-64x7x7-s2p3",
	"64x64x32x32-64x3x3-s1p1",
}

// parseConvShape reads a shape of convBenchShapes.
func parseConvShape(s string) (convCase, error) {
	var c convCase
	var st, pad int
	if _, err := fmt.Sscanf(s, "%dx%dx%dx%d-%dx%dx%d-s%dp%d", &c.n, &c.cin, &c.h, &c.w, &c.cout, &c.kh, &c.kw, &st, &pad); err != nil {
		return c, fmt.Errorf("conv shape %q: %v", s, err)
	}
	c.p = ConvParams{Stride: [2]int{st, st}, Padding: [2]int{pad, pad}}
	return c, nil
}

// BenchmarkConv2d times the forward pass and both backward passes at ResNet
// shapes (CONV_SHAPES: ";"-separated, default convBenchShapes) on the test
// device, each op in a submission of its own, round-robin (a shared
// machine's load varies), and logs the median GFLOP/s (2*N*Cout*Ho*Wo*Cin*KH*KW
// flops each) by the wall clock and by the process's CPU time divided by
// the number of CPUs: on a CPU device that runs every core, the latter is
// about what the kernels take on an otherwise idle machine, and it varies
// far less than the wall clock while other processes load the machine.
//
//	go test ./layers -run '^$' -bench Conv2d -benchtime 1x
func BenchmarkConv2d(b *testing.B) {
	shapes := convBenchShapes
	if s := os.Getenv("CONV_SHAPES"); s != "" {
		shapes = strings.Split(s, ";")
	}
	d := vktest.Device(b)
	for _, sh := range shapes {
		c, err := parseConvShape(sh)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(sh, func(b *testing.B) {
			g := c.geom(b)
			x, w := upload(b, d, randn(1, g.n*g.cin*g.h*g.w), g.xShape()...), upload(b, d, randn(2, g.cout*g.cin*g.kh*g.kw), g.wShape()...)
			gy := upload(b, d, randn(3, g.n*g.cout*g.ho*g.wo), g.yShape()...)
			y, dx, dw := empty(b, d, g.yShape()...), empty(b, d, g.xShape()...), empty(b, d, g.wShape()...)
			s := stream(b, d)
			ops := []struct {
				name string
				f    func() error
			}{
				{"fwd", func() error { return Conv2dForward(s, y, x, w, nil, c.p) }},
				{"bwd_data", func() error { return Conv2dBackwardData(s, dx, gy, w, c.p) }},
				{"bwd_weight", func() error { return Conv2dBackwardWeight(s, dw, nil, x, gy, c.p) }},
			}
			// time1 returns the wall and CPU seconds of one op.
			time1 := func(f func() error) [2]float64 {
				if err := f(); err != nil {
					b.Fatal(err)
				}
				c0, t0 := cpuSeconds(b), time.Now()
				if err := s.Run(context.Background()); err != nil {
					b.Fatal(err)
				}
				return [2]float64{time.Since(t0).Seconds(), (cpuSeconds(b) - c0) / float64(runtime.NumCPU())}
			}
			for _, op := range ops {
				time1(op.f) // builds the pipelines
			}
			rounds := max(b.N, 3)
			wall, cpu := make([][]float64, len(ops)), make([][]float64, len(ops))
			b.ResetTimer()
			for r := 0; r < rounds; r++ {
				for i, op := range ops {
					t := time1(op.f)
					wall[i], cpu[i] = append(wall[i], t[0]), append(cpu[i], t[1])
				}
			}
			flops := 2 * float64(g.n*g.cout*g.ho*g.wo) * float64(g.cin*g.kh*g.kw)
			for i, op := range ops {
				w, c := convMedian(wall[i]), convMedian(cpu[i])
				b.Logf("%-10s wall %8.2f ms %6.1f GFLOP/s   cpu/%d %8.2f ms %6.1f GFLOP/s",
					op.name, w*1e3, flops/w/1e9, runtime.NumCPU(), c*1e3, flops/c/1e9)
			}
		})
	}
}

// cpuSeconds is the user plus system CPU time the process has used.
func cpuSeconds(b *testing.B) float64 {
	var r syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &r); err != nil {
		b.Fatal(err)
	}
	return float64(r.Utime.Nano()+r.Stime.Nano()) / 1e9
}

func convMedian(xs []float64) float64 {
	sort.Float64s(xs)
	return xs[len(xs)/2]
}
