package layers

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// assertEach fails unless every element satisfies |got - want| <= abs + rel*|want|:
// the per-element bound that a norm-wise comparison cannot give for tails.
func assertEach(t *testing.T, label string, got []float32, want []float64, abs, rel float64) {
	t.Helper()
	bad := 0
	for i := range want {
		d := math.Abs(float64(got[i]) - want[i])
		if !(d <= abs+rel*math.Abs(want[i])) { // NaN fails too
			if bad < 5 {
				t.Errorf("%s: element %d: got %v, want %v (error %.3g > %.3g + %.3g*|want|)",
					label, i, got[i], want[i], d, abs, rel)
			}
			bad++
		}
	}
	if bad > 5 {
		t.Errorf("%s: %d elements out of tolerance", label, bad)
	}
}

// unaryInput returns n inputs for a function: randn scaled by scale and
// mapped by f (if not nil), with the values of extra in front.
func unaryInput(seed uint64, n int, scale float64, f func(float64) float64, extra []float32) []float32 {
	x := randn(seed, n)
	for i := range x {
		v := scale * float64(x[i])
		if f != nil {
			v = f(v)
		}
		x[i] = float32(v)
	}
	copy(x, extra)
	return x
}

// minNormal is the least normal float32: devices may flush smaller results to 0.
const minNormal = 0x1p-126

func TestUnary(t *testing.T) {
	cases := []struct {
		name  string
		run   func(s *vk.Stream, dst, x *Tensor) error
		ref   func(float64) float64
		input func(seed uint64, n int) []float32
		// Per element: |got-want| <= abs + rel*|want|; norm-wise elementTol.
		abs, rel float64
	}{
		{"relu", Relu, func(x float64) float64 { return math.Max(x, 0) },
			func(seed uint64, n int) []float32 { return unaryInput(seed, n, 1, nil, []float32{0.5}) },
			0, 0},
		// Large |x| checks the stable form: no overflow, and relative accuracy
		// of the tiny values of the lower tail.
		{"sigmoid", Sigmoid, func(x float64) float64 { return 1 / (1 + math.Exp(-x)) },
			func(seed uint64, n int) []float32 {
				return unaryInput(seed, n, 8, nil, []float32{-87, 30, -100, 100, -1000, 1000, -1e30, 1e30})
			},
			minNormal, 1e-6},
		{"exp", Exp, math.Exp,
			func(seed uint64, n int) []float32 { return unaryInput(seed, n, 3, nil, []float32{-87, 88}) },
			minNormal, 1e-6},
		// Positive inputs from 1e-30 to 1e30 and around 1, where ln passes
		// through zero: relative accuracy everywhere.
		{"log", Log, math.Log,
			func(seed uint64, n int) []float32 {
				return unaryInput(seed, n, 2, math.Exp, []float32{1e-30, 1e30, 1, 0.999, 1.001})
			},
			0, 1e-6},
		// The whole range of float32 inputs that give neither 0 nor 1 in the
		// lower tail (Phi(-13) = 6e-39), checked to 1e-6 absolute-equivalent,
		// and relative accuracy in the lower tail.
		{"normal cdf", NormalCDF, func(x float64) float64 { return 0.5 * math.Erfc(-x/math.Sqrt2) },
			func(seed uint64, n int) []float32 {
				extra := []float32{-13, -12, -10, -8, -6, -5, -3, -2, -1.5, -1.4142135, -1, -0.5, 0.25, 1, 1.4142135, 2, 3, 5, 8, 40}
				return unaryInput(seed, n, 4, nil, extra)
			},
			2e-7, 2e-6},
	}
	for _, dev := range testDevices(t) {
		for _, c := range cases {
			for _, shape := range elementShapes {
				t.Run(fmt.Sprintf("%s/%s/%v", dev.name, c.name, shape), func(t *testing.T) {
					n := elemCount(shape)
					hx := c.input(uint64(n)+11, n)
					want := make([]float64, n)
					for i, v := range hx {
						want[i] = c.ref(float64(v))
					}
					x := upload(t, dev.dev, hx, shape...)
					y := empty(t, dev.dev, shape...)
					s := stream(t, dev.dev)
					if err := c.run(s, y, x); err != nil {
						t.Fatal(err)
					}
					got := run(t, s, y)
					assertClose(t, c.name, got, want, elementTol)
					assertEach(t, c.name, got, want, c.abs, c.rel)
				})
			}
		}
	}
}

// unaryFn is the Go entry point of a unary.comp function without one.
func unaryFn(op int) func(s *vk.Stream, dst, x *Tensor) error {
	return func(s *vk.Stream, dst, x *Tensor) error { return unaryOp(s, op, dst, x) }
}

// TestUnarySweep checks the functions on a dense grid of their useful range,
// element by element (whole device only: the grid is one small tensor).
func TestUnarySweep(t *testing.T) {
	dev := vktest.Device(t)
	cases := []struct {
		name     string
		run      func(s *vk.Stream, dst, x *Tensor) error
		ref      func(float64) float64
		lo, hi   float64
		abs, rel float64
	}{
		// Phi is below the least normal float for x < -13.2, 1 for x > 5.8.
		{"normal cdf", NormalCDF, func(x float64) float64 { return 0.5 * math.Erfc(-x/math.Sqrt2) }, -13.5, 9, 2e-7, 2e-6},
		{"sigmoid", Sigmoid, func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }, -90, 20, minNormal, 1e-6},
		{"exp", Exp, math.Exp, -90, 88.7, minNormal, 1e-6},
		{"log", Log, math.Log, 1e-3, 3, 0, 1e-6},
		// The rest of erf.glsl. erf: about 2 ulp of 1 absolute, relative
		// near 0; erfc: relative until it leaves the normal floats (x = 9.1).
		{"erf", unaryFn(unErf), math.Erf, -6, 6, 2e-7, 2e-7},
		{"erfc", unaryFn(unErfc), math.Erfc, -4, 10, minNormal, 1e-6},
		{"normal pdf", unaryFn(unNormalPDF), func(x float64) float64 { return math.Exp(-x*x/2) / math.Sqrt(2*math.Pi) }, -13.2, 13.2, minNormal, 1e-6},
	}
	const n = 200001
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hx := make([]float32, n)
			want := make([]float64, n)
			for i := range hx {
				hx[i] = float32(c.lo + (c.hi-c.lo)*float64(i)/(n-1))
				want[i] = c.ref(float64(hx[i]))
			}
			x := upload(t, dev, hx, n)
			y := empty(t, dev, n)
			s := stream(t, dev)
			if err := c.run(s, y, x); err != nil {
				t.Fatal(err)
			}
			assertEach(t, c.name, run(t, s, y), want, c.abs, c.rel)
		})
	}
}

// TestUnarySpecial checks infinities, NaN and the edges of the domains.
func TestUnarySpecial(t *testing.T) {
	dev := vktest.Device(t)
	inf, nan := float32(math.Inf(1)), float32(math.NaN())
	in := []float32{-inf, inf, nan, 0, -1}
	cases := []struct {
		name string
		run  func(s *vk.Stream, dst, x *Tensor) error
		want []float64
	}{
		{"relu", Relu, []float64{0, math.Inf(1), math.NaN(), 0, 0}},
		{"sigmoid", Sigmoid, []float64{0, 1, math.NaN(), 0.5, 1 / (1 + math.E)}},
		{"exp", Exp, []float64{0, math.Inf(1), math.NaN(), 1, 1 / math.E}},
		{"log", Log, []float64{math.NaN(), math.Inf(1), math.NaN(), math.Inf(-1), math.NaN()}},
		{"normal cdf", NormalCDF, []float64{0, 1, math.NaN(), 0.5, 0.15865525393145707}},
		{"erf", unaryFn(unErf), []float64{-1, 1, math.NaN(), 0, math.Erf(-1)}},
		{"erfc", unaryFn(unErfc), []float64{2, 0, math.NaN(), 1, math.Erfc(-1)}},
		{"normal pdf", unaryFn(unNormalPDF), []float64{0, 0, math.NaN(), 0.3989422804014327, 0.24197072451914337}},
	}
	x := upload(t, dev, in, len(in))
	for _, c := range cases {
		y := empty(t, dev, len(in))
		s := stream(t, dev)
		if err := c.run(s, y, x); err != nil {
			t.Fatal(err)
		}
		got := run(t, s, y)
		for i, w := range c.want {
			g := float64(got[i])
			ok := g == w || math.IsNaN(g) && math.IsNaN(w) || math.Abs(g-w) <= 1e-6*math.Abs(w)
			if !ok {
				t.Errorf("%s(%v) = %v, want %v", c.name, in[i], got[i], w)
			}
		}
	}
}

func TestUnaryErrors(t *testing.T) {
	dev := vktest.Device(t)
	s := stream(t, dev)
	a := upload(t, dev, randn(1, 6), 2, 3)
	b := empty(t, dev, 3, 2)
	for name, err := range map[string]error{
		"shape":   Exp(s, b, a),
		"strided": Sigmoid(s, a, b.Transpose(0, 1)),
	} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: got error %v", name, err)
		}
	}
}
