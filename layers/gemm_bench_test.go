package layers

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
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
			x, y, z, s := upload(b, d, randn(1, m*k), m, k), upload(b, d, randn(2, k*n), k, n), empty(b, d, m, n), stream(b, d)
			step := func() time.Duration {
				if err := Gemm(s, 1, x, false, y, false, 0, z); err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				if err := s.Run(context.Background()); err != nil {
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

// BenchmarkGemmVariants compares gemm.comp tile configurations on the test
// device at M x N x K (GEMM_SHAPE, default 1024x1024x1024), timing them
// round-robin in one process, as a shared machine's noise demands, and
// reporting each one's median GFLOP/s and its pipeline build time. Variants
// come from GEMM_VARIANTS: "wg,tm,tn,bcast[,ksteps];..." (spec constants).
//
//	GEMM_VARIANTS='8,24,16,1;8,8,32,0' go test ./layers -run '^$' -bench GemmVariants
func BenchmarkGemmVariants(b *testing.B) {
	vs := os.Getenv("GEMM_VARIANTS")
	if vs == "" {
		b.Skip("GEMM_VARIANTS is not set")
	}
	m, n, k := 1024, 1024, 1024
	if s := os.Getenv("GEMM_SHAPE"); s != "" {
		if _, err := fmt.Sscanf(s, "%dx%dx%d", &m, &n, &k); err != nil {
			b.Fatalf("GEMM_SHAPE=%q: %v", s, err)
		}
	}
	rounds := 7
	if s := os.Getenv("GEMM_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	var kerns []gemmKernel
	for _, v := range strings.Split(vs, ";") {
		var f []uint32
		for _, x := range strings.Split(v, ",") {
			u, err := strconv.Atoi(strings.TrimSpace(x))
			if err != nil {
				b.Fatalf("GEMM_VARIANTS: %q: %v", v, err)
			}
			f = append(f, uint32(u))
		}
		spec := append(f[:4:4], 0, 0, gemmCPUKSteps)
		if len(f) > 4 {
			spec[6] = f[4] // steps of K per iteration
		}
		kerns = append(kerns, gemmKernel{name: "gemm", spec: spec, tileM: int(f[1]), tileN: int(f[0] * f[2]), maxK: gemmCPUMaxK})
	}
	d := vktest.Device(b)
	x, y, z, s := upload(b, d, randn(1, m*k), m, k), upload(b, d, randn(2, k*n), k, n), empty(b, d, m, n), stream(b, d)
	p, err := newGemmProblem(x, false, y, false, z)
	if err != nil {
		b.Fatal(err)
	}
	step := func(kern gemmKernel) time.Duration {
		t0 := time.Now()
		if err := p.record(s, kern, 1, 0); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := s.Run(context.Background()); err != nil {
			b.Fatal(err)
		}
		if kern.name == "" {
			return t1.Sub(t0)
		}
		return time.Since(t1)
	}
	for _, kern := range kerns {
		b.Logf("%v: pipeline and first run %v", kern.spec, step(kern)) // builds the pipeline
	}
	rates := make([][]float64, len(kerns))
	for r := 0; r < rounds; r++ {
		for i, kern := range kerns {
			rates[i] = append(rates[i], 2*float64(m)*float64(n)*float64(k)/step(kern).Seconds()/1e9)
		}
	}
	for i, kern := range kerns {
		sort.Float64s(rates[i])
		b.Logf("%v: median %.1f GFLOP/s (min %.1f, max %.1f)", kern.spec, rates[i][len(rates[i])/2], rates[i][0], rates[i][len(rates[i])-1])
	}
}
