package layers

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// Tolerances of pooling against float64: max pooling moves values (exact
// forward, gradients sums of a few of them); average pooling sums a window
// in float32.
const (
	poolFwdTol  = 1e-6
	poolGradTol = 1e-5
)

// poolRef pools x [n, c, h, w] in float64 as torch's max_pool2d (op
// poolMax: the first maximum of each window, padding -inf) or avg_pool2d
// (count_include_pad).
func poolRef(op int, x []float64, shape []int, p PoolParams) []float64 {
	g, err := p.geometry(shape)
	if err != nil {
		panic(err)
	}
	return poolRefGeom(op, x, g)
}

func poolRefGeom(op int, x []float64, g poolGeom) []float64 {
	out := make([]float64, g.planes*g.ho*g.wo)
	for q := 0; q < g.planes; q++ {
		for oh := 0; oh < g.ho; oh++ {
			for ow := 0; ow < g.wo; ow++ {
				m, sum := math.Inf(-1), 0.0
				for h := oh*g.sh - g.ph; h < oh*g.sh-g.ph+g.kh; h++ {
					for w := ow*g.sw - g.pw; w < ow*g.sw-g.pw+g.kw; w++ {
						if h < 0 || h >= g.h || w < 0 || w >= g.w {
							continue
						}
						v := x[(q*g.h+h)*g.w+w]
						sum += v
						m = math.Max(m, v)
					}
				}
				if op == poolMax {
					out[(q*g.ho+oh)*g.wo+ow] = m
				} else {
					out[(q*g.ho+oh)*g.wo+ow] = sum / float64(g.kh*g.kw)
				}
			}
		}
	}
	return out
}

func mustGeom(shape []int, p PoolParams) poolGeom {
	g, err := p.geometry(shape)
	if err != nil {
		panic(err)
	}
	return g
}

// distinctInit fills x with a random permutation of evenly spaced values in
// [-2, 2), rounded to float32: no two values of a window tie, and they lie
// further apart than the finite-difference steps, so every argmax is stable.
func distinctInit(_ int, x []float64) {
	rng := rand.New(rand.NewPCG(11, 12))
	for j, k := range rng.Perm(len(x)) {
		x[j] = float64(float32(4*(float64(k)/float64(len(x))-0.5) + 1e-3))
	}
}

func poolCases() []struct {
	shape []int
	p     PoolParams
} {
	return []struct {
		shape []int
		p     PoolParams
	}{
		{[]int{2, 3, 13, 17}, PoolParams{Kernel: [2]int{3, 3}, Stride: [2]int{2, 2}, Padding: [2]int{1, 1}}}, // ResNet's stem
		{[]int{1, 1, 7, 7}, PoolParams{Kernel: [2]int{3, 3}, Stride: [2]int{2, 2}, Padding: [2]int{1, 1}}},
		{[]int{2, 2, 11, 13}, PoolParams{Kernel: [2]int{2, 3}, Stride: [2]int{1, 2}, Padding: [2]int{1, 0}}},
		{[]int{3, 2, 9, 9}, PoolParams{Kernel: [2]int{2, 2}}}, // stride = kernel; the last row and column unused
		{[]int{1, 3, 5, 7}, PoolParams{Kernel: [2]int{5, 3}, Stride: [2]int{3, 1}, Padding: [2]int{2, 1}}},
		{[]int{2, 1, 11, 7}, PoolParams{Kernel: [2]int{1, 1}, Stride: [2]int{3, 2}}},                         // windows miss rows
		{[]int{2, 3, 23, 23}, PoolParams{Kernel: [2]int{3, 3}, Stride: [2]int{2, 2}, Padding: [2]int{1, 1}}}, // windows cross segments
		{[]int{1, 1, 55, 57}, PoolParams{Kernel: [2]int{2, 2}, Stride: [2]int{1, 1}, Padding: [2]int{1, 1}}}, // outputs too
	}
}

func TestMaxPoolGrad(t *testing.T) {
	for _, tc := range poolCases() {
		shape, p := tc.shape, tc.p
		checkGrad(t, gradCase{
			name:   fmt.Sprintf("%v/%v", shape, p),
			inputs: [][]int{shape},
			init:   distinctInit,
			op:     func(tp *Tape, in []*Var) *Var { return tp.MaxPool2d(in[0], p) },
			ref:    func(in [][]float64) []float64 { return poolRefGeom(poolMax, in[0], mustGeom(shape, p)) },
			fwdTol: poolFwdTol, gradTol: poolGradTol,
		})
	}
}

func TestAvgPoolGrad(t *testing.T) {
	cases := append(poolCases(),
		struct {
			shape []int
			p     PoolParams
		}{[]int{2, 3, 11, 9}, PoolParams{Kernel: [2]int{6, 6}, Stride: [2]int{1, 1}}}, // the VOC07 feature pooling
		struct {
			shape []int
			p     PoolParams
		}{[]int{2, 5, 13, 17}, PoolParams{Kernel: [2]int{2, 2}, Stride: [2]int{2, 2}}})
	for _, tc := range cases {
		shape, p := tc.shape, tc.p
		checkGrad(t, gradCase{
			name:   fmt.Sprintf("%v/%v", shape, p),
			inputs: [][]int{shape},
			op:     func(tp *Tape, in []*Var) *Var { return tp.AvgPool2d(in[0], p) },
			ref:    func(in [][]float64) []float64 { return poolRefGeom(poolAvg, in[0], mustGeom(shape, p)) },
			fwdTol: poolFwdTol, gradTol: poolGradTol,
		})
	}
}

func TestGlobalAvgPoolGrad(t *testing.T) {
	for _, shape := range [][]int{{2, 3, 7, 7}, {1, 1, 1, 1}, {3, 1, 5, 1}, {2, 5, 17, 19}} {
		checkGrad(t, gradCase{
			name:   fmt.Sprint(shape),
			inputs: [][]int{shape},
			op:     func(tp *Tape, in []*Var) *Var { return tp.GlobalAvgPool(in[0]) },
			ref: func(in [][]float64) []float64 {
				p := PoolParams{Kernel: [2]int{shape[2], shape[3]}}
				return poolRef(poolAvg, in[0], shape, p)
			},
			fwdTol: poolFwdTol, gradTol: poolGradTol,
		})
	}
}

// TestMaxPoolNaN checks that a NaN in a window wins, as in PyTorch.
func TestMaxPoolNaN(t *testing.T) {
	d := vktest.Device(t)
	shape := []int{1, 1, 4, 4}
	host := randn(3, 16)
	host[5] = float32(math.NaN()) // row 1, column 1: in the windows of outputs (0, 0) only
	x, y := upload(t, d, host, shape...), empty(t, d, 1, 1, 2, 2)
	s := stream(t, d)
	if err := MaxPool2d(s, y, x, PoolParams{Kernel: [2]int{2, 2}}); err != nil {
		t.Fatal(err)
	}
	got := run(t, s, y)
	want := poolRef(poolMax, bnWiden(host), shape, PoolParams{Kernel: [2]int{2, 2}})
	if !math.IsNaN(float64(got[0])) {
		t.Errorf("output 0 = %v, want NaN", got[0])
	}
	assertClose(t, "outputs without a NaN", got[1:], want[1:], 0)
}

func TestPoolErrors(t *testing.T) {
	d := vktest.Device(t)
	k3 := [2]int{3, 3}
	for _, tc := range []struct {
		shape []int
		p     PoolParams
		want  string
	}{
		{[]int{2, 7, 7}, PoolParams{Kernel: k3}, "want [N, C, H, W]"},
		{[]int{1, 1, 7, 7}, PoolParams{Kernel: [2]int{0, 3}}, "must be positive"},
		{[]int{1, 1, 7, 7}, PoolParams{Kernel: k3, Stride: [2]int{-1, 1}}, "must not be negative"},
		{[]int{1, 1, 7, 7}, PoolParams{Kernel: k3, Padding: [2]int{2, 1}}, "half the kernel"},
		{[]int{1, 1, 2, 7}, PoolParams{Kernel: k3}, "smaller than the kernel"},
	} {
		n := 1
		for _, v := range tc.shape {
			n *= v
		}
		tp := NewTape(stream(t, d))
		if y := tp.MaxPool2d(Constant(upload(t, d, randn(1, n), tc.shape...)), tc.p); y != nil {
			t.Errorf("%v %v: no error", tc.shape, tc.p)
		} else if err := tp.Err(); !strings.Contains(fmt.Sprint(err), tc.want) {
			t.Errorf("%v %v: error %v, want one with %q", tc.shape, tc.p, err, tc.want)
		}
		tp.Release()
	}
	x, y := empty(t, d, 1, 2, 8, 8), empty(t, d, 1, 2, 3, 3)
	if err := AvgPool2d(stream(t, d), y, x, PoolParams{Kernel: [2]int{2, 2}}); err == nil || !strings.Contains(err.Error(), "want [1 2 4 4]") {
		t.Errorf("wrong output shape: error %v", err)
	}
	tp := NewTape(stream(t, d))
	if y := tp.GlobalAvgPool(Constant(empty(t, d, 2, 8))); y != nil || !strings.Contains(fmt.Sprint(tp.Err()), "want [N, C, H, W]") {
		t.Errorf("global pool of [2 8]: error %v", tp.Err())
	}
	tp.Release()
}
