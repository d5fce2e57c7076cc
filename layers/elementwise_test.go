package layers

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// elementShapes are the shapes of the elementwise tests: one element, primes,
// a matrix whose rows do not divide a segment, and a size that spans many
// workgroups and (on the split device) many buffer segments.
var elementShapes = [][]int{{1}, {7}, {13}, {257}, {3001}, {37, 101}, {100003}}

func elemCount(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// elementTol is the relative tolerance of float32 elementwise arithmetic
// against the float64 reference: a few roundings of 6e-8.
const elementTol = 1e-6

func TestBinary(t *testing.T) {
	const alpha = -1.75
	cases := []struct {
		name string
		run  func(s *vk.Stream, dst, a, b *Tensor) error
		ref  func(a, b float64) float64
	}{
		{"add", Add, func(a, b float64) float64 { return a + b }},
		{"sub", Sub, func(a, b float64) float64 { return a - b }},
		{"mul", Mul, func(a, b float64) float64 { return a * b }},
		{"scale", func(s *vk.Stream, dst, a, _ *Tensor) error { return Scale(s, dst, a, alpha) },
			func(a, _ float64) float64 { return alpha * a }},
	}
	for _, dev := range testDevices(t) {
		for _, c := range cases {
			for _, shape := range elementShapes {
				t.Run(fmt.Sprintf("%s/%s/%v", dev.name, c.name, shape), func(t *testing.T) {
					n := elemCount(shape)
					ha, hb := randn(uint64(n), n), randn(uint64(n)+1, n)
					want := make([]float64, n)
					for i := range want {
						want[i] = c.ref(float64(ha[i]), float64(hb[i]))
					}
					a, b := upload(t, dev.dev, ha, shape...), upload(t, dev.dev, hb, shape...)
					y := empty(t, dev.dev, shape...)
					s := stream(t, dev.dev)
					if err := c.run(s, y, a, b); err != nil {
						t.Fatal(err)
					}
					assertClose(t, c.name, run(t, s, y), want, elementTol)
				})
			}
		}
	}
}

// TestBinaryTwoOutputs checks binReluGrad2, the ReLU gradient written to
// two outputs (AddRelu's backward), on every elementwise shape (crossing
// segments on the split device), with the second output on and off the
// vec4 grid.
func TestBinaryTwoOutputs(t *testing.T) {
	for _, dev := range testDevices(t) {
		for _, shape := range elementShapes {
			for _, shift := range []int{0, 1} {
				t.Run(fmt.Sprintf("%s/%v/shift%d", dev.name, shape, shift), func(t *testing.T) {
					n := elemCount(shape)
					hg, hm := randn(uint64(n)+5, n), randn(uint64(n)+6, n)
					want := make([]float64, n)
					for i := range want {
						if hm[i] > 0 {
							want[i] = float64(hg[i])
						}
					}
					g, m := upload(t, dev.dev, hg, n), upload(t, dev.dev, hm, n)
					y := empty(t, dev.dev, n)
					zAll := empty(t, dev.dev, n+shift)
					z := zAll.Narrow(0, shift, n)
					s := stream(t, dev.dev)
					if err := binaryOpInto(s, binReluGrad2, y, z, g, m, 0); err != nil {
						t.Fatal(err)
					}
					assertClose(t, "y", run(t, s, y), want, 0)
					got, err := zAll.Download(context.Background())
					if err != nil {
						t.Fatal(err)
					}
					assertClose(t, "z", got[shift:], want, 0)
				})
			}
		}
	}
}

// TestBinaryInPlace writes the result over an input: dst = a, dst = b, and
// Axpy, which always updates y in place.
func TestBinaryInPlace(t *testing.T) {
	const alpha = 0.375
	for _, dev := range testDevices(t) {
		for _, n := range []int{1, 257, 100003} {
			t.Run(fmt.Sprintf("%s/%d", dev.name, n), func(t *testing.T) {
				ha, hb := randn(uint64(n)+7, n), randn(uint64(n)+8, n)
				a, b := upload(t, dev.dev, ha, n), upload(t, dev.dev, hb, n)
				s := stream(t, dev.dev)
				// a = a - b; b = a * b (with the new a); a += alpha * b; b = alpha * b.
				steps := []func() error{
					func() error { return Sub(s, a, a, b) },
					func() error { return Mul(s, b, a, b) },
					func() error { return Axpy(s, a, alpha, b) },
					func() error { return Scale(s, b, b, alpha) },
				}
				for _, step := range steps {
					if err := step(); err != nil {
						t.Fatal(err)
					}
				}
				wa, wb := make([]float64, n), make([]float64, n)
				for i := range wa {
					x, y := float64(ha[i]), float64(hb[i])
					x -= y
					y *= x
					x += alpha * y
					y *= alpha
					wa[i], wb[i] = x, y
				}
				assertClose(t, "a", run(t, s, a), wa, elementTol)
				gb, err := b.Download(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				assertClose(t, "b", gb, wb, elementTol)
			})
		}
	}
}

func TestAxpy(t *testing.T) {
	const alpha = 2.5
	for _, dev := range testDevices(t) {
		for _, shape := range elementShapes {
			t.Run(fmt.Sprintf("%s/%v", dev.name, shape), func(t *testing.T) {
				n := elemCount(shape)
				hy, hx := randn(uint64(n)+3, n), randn(uint64(n)+4, n)
				y, x := upload(t, dev.dev, hy, shape...), upload(t, dev.dev, hx, shape...)
				s := stream(t, dev.dev)
				if err := Axpy(s, y, alpha, x); err != nil {
					t.Fatal(err)
				}
				want := make([]float64, n)
				for i := range want {
					want[i] = float64(hy[i]) + alpha*float64(hx[i])
				}
				assertClose(t, "axpy", run(t, s, y), want, elementTol)
			})
		}
	}
}

func TestBinaryErrors(t *testing.T) {
	dev := vktest.Device(t)
	s := stream(t, dev)
	a := upload(t, dev, randn(1, 6), 2, 3)
	b := upload(t, dev, randn(2, 6), 3, 2)
	c := upload(t, dev, randn(3, 6), 6)
	y := empty(t, dev, 2, 3)
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"shape", Add(s, y, a, b), "shapes"},
		{"same size, other shape", Mul(s, y, a, c), "shapes"},
		{"scale shape", Scale(s, b, a, 2), "shapes"},
		{"axpy shape", Axpy(s, a, 1, b), "shapes"},
		{"strided input", Sub(s, y, a, b.Transpose(0, 1)), "strided"},
		{"strided output", Add(s, b.Transpose(0, 1), a, a), "strided"},
	}
	for _, c := range cases {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: got error %v, want one mentioning %q", c.name, c.err, c.want)
		}
	}
	if d, _ := s.Stats(); d != 0 {
		t.Errorf("failed ops recorded %d dispatches", d)
	}
}

// TestElementwiseOffsets runs the elementwise kernels on rows of a matrix
// (Narrow views) whose offsets are and are not multiples of 4, and whose
// lengths leave every remainder: the kernels take elements in fours through
// vec4 views only where every operand lines up, one at a time elsewhere
// and at a ragged end.
func TestElementwiseOffsets(t *testing.T) {
	const cols = 13
	for _, dev := range testDevices(t) {
		for _, r := range []struct{ start, rows int }{{0, 1}, {0, 4}, {1, 3}, {4, 4}, {3, 5}, {2, 2}} {
			t.Run(fmt.Sprintf("%s/rows%d-%d", dev.name, r.start, r.start+r.rows), func(t *testing.T) {
				const total = 9
				ha, hb := randn(11, total*cols), randn(12, total*cols)
				a, b := upload(t, dev.dev, ha, total, cols), upload(t, dev.dev, hb, total, cols)
				// The output's rows start one row later than the inputs':
				// mixed alignment whenever cols is odd.
				y := empty(t, dev.dev, total+1, cols)
				av, bv, yv := a.Narrow(0, r.start, r.rows), b.Narrow(0, r.start, r.rows), y.Narrow(0, r.start+1, r.rows)
				s := stream(t, dev.dev)
				n := r.rows * cols
				lo := r.start * cols
				sum, relu := make([]float64, n), make([]float64, n)
				for i := range n {
					sum[i] = float64(ha[lo+i]) + float64(hb[lo+i])
					relu[i] = max(float64(ha[lo+i]), 0)
				}
				if err := Add(s, yv, av, bv); err != nil {
					t.Fatal(err)
				}
				got := run(t, s, y)[(r.start+1)*cols:][:n]
				assertClose(t, "add", got, sum, elementTol)
				// Aligned input and output (same rows).
				if err := Relu(s, av, av); err != nil {
					t.Fatal(err)
				}
				got = run(t, s, a)[lo:][:n]
				assertClose(t, "relu", got, relu, 0)
			})
		}
	}
}
