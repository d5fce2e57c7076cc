package layers

import (
	"fmt"
	"math"
	"os"
	"strings"
	"testing"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"

	"github.com/e2mcvk/e2mcvk/vk"
)

// gemmCase is one GEMM of the tests: op(A) is m x k, op(B) is k x n; batch
// > 0 makes C 3-D with that many batches, and a3 / b3 make A / B 3-D too
// (otherwise they are shared by every batch).
type gemmCase struct {
	m, n, k        int
	transA, transB bool
	batch          int
	a3, b3         bool
	alpha, beta    float32
	wholeOnly      bool // too big for the split device's 12 KiB segments in a quick test
}

func (c gemmCase) String() string {
	s := fmt.Sprintf("%dx%dx%d", c.m, c.n, c.k)
	if c.transA {
		s += "/tA"
	}
	if c.transB {
		s += "/tB"
	}
	if c.batch > 0 {
		s += fmt.Sprintf("/batch%d", c.batch)
		if c.a3 {
			s += "A"
		}
		if c.b3 {
			s += "B"
		}
	}
	return s + fmt.Sprintf("/alpha%g/beta%g", c.alpha, c.beta)
}

// shapes returns the tensor shapes of A, B and C.
func (c gemmCase) shapes() (sa, sb, sc []int) {
	sa = []int{c.m, c.k}
	if c.transA {
		sa = []int{c.k, c.m}
	}
	sb = []int{c.k, c.n}
	if c.transB {
		sb = []int{c.n, c.k}
	}
	sc = []int{c.m, c.n}
	if c.batch > 0 {
		sc = append([]int{c.batch}, sc...)
		if c.a3 {
			sa = append([]int{c.batch}, sa...)
		}
		if c.b3 {
			sb = append([]int{c.batch}, sb...)
		}
	}
	return sa, sb, sc
}

func numel(shape []int) int {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return n
}

// gemmReference computes alpha*op(A)*op(B) + beta*C in float64 with gonum;
// beta == 0 ignores C (which may hold NaN).
func gemmReference(c gemmCase, ha, hb, hc []float32) []float64 {
	sa, sb, _ := c.shapes()
	batches := max(c.batch, 1)
	ra, ca := sa[len(sa)-2], sa[len(sa)-1]
	rb, cb := sb[len(sb)-2], sb[len(sb)-1]
	out := make([]float64, batches*c.m*c.n)
	// matrix widens batch z of a host operand (batch 0 when it is shared).
	matrix := func(h []float32, rows, cols int, batched bool, z int) blas64.General {
		m := blas64.General{Rows: rows, Cols: cols, Stride: cols, Data: make([]float64, rows*cols)}
		first := 0
		if batched && c.batch > 0 {
			first = z * rows * cols
		}
		for i := range m.Data {
			m.Data[i] = float64(h[first+i])
		}
		return m
	}
	for z := 0; z < batches; z++ {
		a := matrix(ha, ra, ca, c.a3, z)
		b := matrix(hb, rb, cb, c.b3, z)
		dst := blas64.General{Rows: c.m, Cols: c.n, Stride: c.n, Data: out[z*c.m*c.n : (z+1)*c.m*c.n]}
		if c.beta != 0 {
			for i := range dst.Data {
				dst.Data[i] = float64(hc[z*c.m*c.n+i])
			}
		}
		ta, tb := blas.NoTrans, blas.NoTrans
		if c.transA {
			ta = blas.Trans
		}
		if c.transB {
			tb = blas.Trans
		}
		blas64.Gemm(ta, tb, float64(c.alpha), a, b, float64(c.beta), dst)
	}
	return out
}

// runGemmCase uploads random operands (C all NaN when beta is 0), runs gemm
// through record (a nil kernel chooses as Gemm does) and compares with the
// float64 reference.
func runGemmCase(t *testing.T, d *vk.Device, c gemmCase, kern *gemmKernel) {
	t.Helper()
	runGemmWith(t, d, c, func(s *vk.Stream, a, b, out *Tensor) error {
		if kern == nil {
			return Gemm(s, c.alpha, a, c.transA, b, c.transB, c.beta, out)
		}
		p, err := newGemmProblem(a, c.transA, b, c.transB, out)
		if err != nil {
			return err
		}
		return p.record(s, *kern, c.alpha, c.beta)
	})
}

// runGemmWith runs one GEMM case by record on random operands (C all NaN
// when beta is 0) and compares with the float64 reference.
func runGemmWith(t *testing.T, d *vk.Device, c gemmCase, record func(s *vk.Stream, a, b, out *Tensor) error) {
	t.Helper()
	sa, sb, sc := c.shapes()
	seed := uint64(c.m*1000003 + c.n*1009 + c.k)
	ha, hb, hc := randn(seed, numel(sa)), randn(seed+1, numel(sb)), randn(seed+2, numel(sc))
	if c.beta == 0 {
		for i := range hc {
			hc[i] = float32(math.NaN())
		}
	}
	a, b, out := upload(t, d, ha, sa...), upload(t, d, hb, sb...), upload(t, d, hc, sc...)
	s := stream(t, d)
	if err := record(s, a, b, out); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "gemm", run(t, s, out), gemmReference(c, ha, hb, hc), 1e-5)
}

// gemmCases crosses the awkward shapes with transposes, batching, alpha and
// beta; the tiles of gemm.comp on lavapipe are 24 rows by 128 columns.
func gemmCases() []gemmCase {
	var cs []gemmCase
	for _, s := range [][3]int{
		{1, 1, 1}, {7, 13, 5}, {33, 17, 65}, {25, 129, 9}, {24, 128, 4}, {2, 300, 31}, {127, 255, 129},
	} {
		for _, tr := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
			cs = append(cs, gemmCase{m: s[0], n: s[1], k: s[2], transA: tr[0], transB: tr[1], alpha: 1, beta: 0})
		}
	}
	cs = append(cs,
		gemmCase{m: 33, n: 17, k: 65, alpha: -0.75, beta: 1},
		gemmCase{m: 33, n: 17, k: 65, alpha: 0, beta: 0.5},
		gemmCase{m: 33, n: 17, k: 65, transB: true, alpha: 1.5, beta: 0.5},
		gemmCase{m: 127, n: 255, k: 129, transA: true, alpha: 0.25, beta: 0.5},
		// Batched: a 3-D operand per batch, the other 2-D and shared.
		gemmCase{m: 9, n: 21, k: 11, batch: 3, a3: true, alpha: 1, beta: 0},
		gemmCase{m: 9, n: 21, k: 11, batch: 3, b3: true, transB: true, alpha: 2, beta: 0.5},
		gemmCase{m: 19, n: 140, k: 6, batch: 4, a3: true, b3: true, transA: true, alpha: 1, beta: 1},
		gemmCase{m: 5, n: 3, k: 2, batch: 2, alpha: -1, beta: 0},
		// B read as vec4 along K (transposed, K a multiple of 4).
		gemmCase{m: 40, n: 70, k: 36, transB: true, alpha: 1, beta: 0.5},
		gemmCase{m: 31, n: 47, k: 20, transA: true, transB: true, batch: 2, b3: true, alpha: 1, beta: 0},
		// Long K (several dispatches' worth on lavapipe) and a ResNet-like shape.
		gemmCase{m: 4, n: 9, k: 4096, transA: true, alpha: 1, beta: 0, wholeOnly: true},
		gemmCase{m: 3, n: 5, k: 40000, alpha: 1, beta: 0, wholeOnly: true},
		gemmCase{m: 3136, n: 64, k: 576, alpha: 1, beta: 0, wholeOnly: true},
		gemmCase{m: 64, n: 3136, k: 147, transA: true, alpha: 1, beta: 0.5, wholeOnly: true},
	)
	return cs
}

func TestGemm(t *testing.T) {
	for _, dev := range testDevices(t) {
		for _, c := range gemmCases() {
			if c.wholeOnly && dev.name != "whole" {
				continue
			}
			t.Run(dev.name+"/"+c.String(), func(t *testing.T) { runGemmCase(t, dev.dev, c, nil) })
		}
	}
}

// TestGemmVariants runs the kernels the test device would not choose: the
// GPU kernel (gemm_tiled.comp), gemm.comp without the subgroup broadcast
// (CPU devices whose subgroups are not 8 wide), and gemm.comp with other
// steps of K per iteration (1, 3 and 4: the K extents below leave every
// remainder), so that all are checked where no such device is at hand.
func TestGemmVariants(t *testing.T) {
	for _, dev := range testDevices(t) {
		for _, k := range []gemmKernel{
			gpuGemmKernel(dev.dev.Info),
			{name: "gemm", spec: []uint32{8, 4, 2, 0, 0, 0, 1}, tileM: 4, tileN: 16, maxK: 8},
			{name: "gemm", spec: []uint32{8, 16, 4, 0, 0, 0, 4}, tileM: 16, tileN: 32, maxK: 16},
			{name: "gemm", spec: []uint32{8, 8, 4, 1, 0, 0, 3}, tileM: 8, tileN: 32},
		} {
			for _, c := range []gemmCase{
				{m: 1, n: 1, k: 1, alpha: 1},
				{m: 33, n: 17, k: 65, transA: true, alpha: -0.5, beta: 0.5},
				{m: 70, n: 65, k: 17, transB: true, alpha: 1},
				{m: 20, n: 36, k: 19, alpha: 1, beta: 0.5},
				{m: 20, n: 13, k: 24, transB: true, alpha: 1, beta: 0.5},
				{m: 9, n: 21, k: 33, batch: 3, a3: true, transA: true, transB: true, alpha: 1, beta: 1},
			} {
				t.Run(dev.name+"/"+k.name+"/"+c.String(), func(t *testing.T) { runGemmCase(t, dev.dev, c, &k) })
			}
		}
	}
}

// TestGemmSplit runs gemm_tiled with its sum split into as many slices as
// the K extent has divisors up to 16 (Gemm splits only where the output
// tiles cannot fill a GPU and slices have at least 128 terms): prime and
// composite K, transposes, shared and per-batch operands, alpha. A K
// without a divisor (1, a prime) must be left to record, as must operands
// or a temporary that cross buffer segments.
func TestGemmSplit(t *testing.T) {
	for _, dev := range testDevices(t) {
		k := gpuGemmKernel(dev.dev.Info)
		for _, c := range []gemmCase{
			{m: 1, n: 1, k: 1, alpha: 1},
			{m: 3, n: 5, k: 13, alpha: 1},
			{m: 8, n: 70, k: 96, transB: true, alpha: 1},
			{m: 33, n: 17, k: 60, transA: true, alpha: -0.5},
			{m: 9, n: 21, k: 36, batch: 3, a3: true, transA: true, transB: true, alpha: 1},
			{m: 5, n: 19, k: 30, batch: 2, b3: true, alpha: 2},
			{m: 4, n: 9, k: 4096, transA: true, alpha: 1, wholeOnly: true},
		} {
			if c.wholeOnly && dev.name != "whole" {
				continue
			}
			t.Run(dev.name+"/"+c.String(), func(t *testing.T) {
				runGemmWith(t, dev.dev, c, func(s *vk.Stream, a, b, out *Tensor) error {
					p, err := newGemmProblem(a, c.transA, b, c.transB, out)
					if err != nil {
						return err
					}
					done, err := p.recordSplit(s, k, c.alpha, c.beta, 1<<20, 1, 16)
					if err != nil {
						return err
					}
					// On the whole device everything fits one segment, so
					// only a K without a divisor is left unsplit. (On the
					// split device the temporary may not fit one.)
					if want := splitSlices(c.k, 1, 16, 1<<20, 1) > 1; dev.name == "whole" && done != want {
						t.Errorf("split: %v, want %v", done, want)
					}
					if !done {
						return p.record(s, k, c.alpha, c.beta)
					}
					return nil
				})
			})
		}
	}
}

// TestGemmKernelChoice checks that tile sizes follow the device and the shape.
func TestGemmKernelChoice(t *testing.T) {
	if v := os.Getenv(kernelsEnv); v != "" {
		t.Skipf("%s=%s: the kernels do not follow the device", kernelsEnv, v)
	}
	cpu := vk.DeviceInfo{Type: "cpu", SubgroupSize: 8}
	if k := chooseGemmKernel(cpu, 1000, 1000); k.name != "gemm" || k.tileM != 16 || k.tileN != 128 || k.spec[3] != 1 {
		t.Errorf("cpu, large: %+v", k)
	}
	if k := chooseGemmKernel(cpu, 1, 5); k.tileM != 8 || k.tileN != 8 {
		t.Errorf("cpu, 1x5: %+v", k)
	}
	if k := chooseGemmKernel(cpu, 9, 20); k.tileM != 16 || k.tileN != 32 {
		t.Errorf("cpu, 9x20: %+v", k)
	}
	wide := vk.DeviceInfo{Type: "cpu", SubgroupSize: 16}
	if k := chooseGemmKernel(wide, 3, 1000); k.spec[0] != 16 || k.spec[3] != 0 || k.tileM != 4 || k.tileN != 256 {
		t.Errorf("cpu with 16-wide subgroups: %+v", k)
	}
	gpu := vk.DeviceInfo{Type: "discrete", SubgroupSize: 32, MaxWorkgroupSize: 1024, MaxSharedMemory: 48 << 10}
	if k := chooseGemmKernel(gpu, 1000, 1000); k.name != "gemm_tiled" || k.spec[0] != 256 || k.tileM != 64 {
		t.Errorf("gpu: %+v", k)
	}
}

func TestGemmErrors(t *testing.T) {
	d := testDevices(t)[0].dev
	s := stream(t, d)
	x := func(shape ...int) *Tensor { return upload(t, d, randn(1, numel(shape)), shape...) }
	a, b, c := x(4, 3), x(3, 5), x(4, 5)
	strided := x(3, 4).Transpose(0, 1)
	for _, tc := range []struct {
		name    string
		a, b, c *Tensor
		tA, tB  bool
		want    string
	}{
		{"inner", a, x(4, 5), c, false, false, "inner dimensions differ"},
		{"output", a, b, x(5, 4), false, false, "C has shape"},
		{"transposed", a, b, c, true, false, "inner dimensions differ"},
		{"rank", x(12), b, c, false, false, "want [rows, cols]"},
		{"batches", x(2, 4, 3), b, x(3, 4, 5), false, false, "has 2 batches but C has 3"},
		{"3-D into 2-D", x(2, 4, 3), b, c, false, false, "has 2 batches but C has 1"},
		{"strided", strided, b, c, false, false, "strided view"},
		{"nil", nil, b, c, false, false, "A is nil"},
		{"aliased", a, x(3, 3), a, false, false, "C overlaps A"},
	} {
		err := Gemm(s, 1, tc.a, tc.tA, tc.b, tc.tB, 0, tc.c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
