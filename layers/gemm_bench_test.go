package layers

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// BenchmarkGemm times C = A*B on the test device for the shapes of the GEMM
// issue (M x N x K) and reports GFLOP/s by the wall clock around each
// submission (one GEMM per submission, so it includes the submit and wait).
//
//	go test ./layers -run '^$' -bench Gemm -benchtime 5x
func BenchmarkGemm(b *testing.B) {
	d := vktest.Device(b)
	for _, sh := range [][3]int{{256, 256, 256}, {1024, 1024, 1024}, {2048, 2048, 2048}, {3136, 256, 64}} {
		m, n, k := sh[0], sh[1], sh[2]
		b.Run(fmt.Sprintf("%dx%dx%d", m, n, k), func(b *testing.B) {
			ctx := context.Background()
			x, err := FromHost(ctx, d, randn(1, m*k), m, k)
			if err != nil {
				b.Fatal(err)
			}
			defer x.Release()
			y, err := FromHost(ctx, d, randn(2, k*n), k, n)
			if err != nil {
				b.Fatal(err)
			}
			defer y.Release()
			z, err := New(d, m, n)
			if err != nil {
				b.Fatal(err)
			}
			defer z.Release()
			s, err := d.NewStream()
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			step := func() time.Duration {
				if err := Gemm(s, 1, x, false, y, false, 0, z); err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				if err := s.Run(ctx); err != nil {
					b.Fatal(err)
				}
				return time.Since(t0)
			}
			step() // build the pipeline outside the timing
			b.ResetTimer()
			var total time.Duration
			for i := 0; i < b.N; i++ {
				total += step()
			}
			b.ReportMetric(2*float64(m)*float64(n)*float64(k)*float64(b.N)/total.Seconds()/1e9, "GFLOP/s")
		})
	}
}
