package layers

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// reduceRef reduces x of shape over axis in float64: the sums, and the sums
// of squares about each slice's mean.
func reduceRef(x []float32, shape []int, axis int) (sum, ssd []float64, n int) {
	outer, inner := 1, 1
	n = shape[axis]
	for _, d := range shape[:axis] {
		outer *= d
	}
	for _, d := range shape[axis+1:] {
		inner *= d
	}
	sum, ssd = make([]float64, outer*inner), make([]float64, outer*inner)
	for o := 0; o < outer; o++ {
		for i := 0; i < inner; i++ {
			var s float64
			for k := 0; k < n; k++ {
				s += float64(x[(o*n+k)*inner+i])
			}
			mean := s / float64(n)
			var q float64
			for k := 0; k < n; k++ {
				d := float64(x[(o*n+k)*inner+i]) - mean
				q += d * d
			}
			sum[o*inner+i], ssd[o*inner+i] = s, q
		}
	}
	return sum, ssd, n
}

// Tolerances (relative, norm-wise) of the reductions against float64.
const (
	sumTol = 1e-6
	varTol = 1e-5
)

// reduceCases are the reductions under test. The inputs of var sit on an
// offset of 1000 (20 times their spread would do): E[x^2] - E[x]^2 would lose
// every digit there, the two-pass kernel must not.
var reduceCases = []struct {
	name   string
	offset float32
	run    func(s *vk.Stream, dst, x *Tensor, axis int) error
	want   func(sum, ssd []float64, n int) []float64
	tol    float64
}{
	{"sum", 0.5, Sum, func(sum, _ []float64, _ int) []float64 { return sum }, sumTol},
	{"mean", 0.5, Mean, func(sum, _ []float64, n int) []float64 { return scaled(sum, 1/float64(n)) }, sumTol},
	{"var", 1000, func(s *vk.Stream, dst, x *Tensor, axis int) error { return Variance(s, dst, x, axis, 0) },
		func(_, ssd []float64, n int) []float64 { return scaled(ssd, 1/float64(n)) }, varTol},
	{"var1", 1000, func(s *vk.Stream, dst, x *Tensor, axis int) error { return Variance(s, dst, x, axis, 1) },
		func(_, ssd []float64, n int) []float64 { return scaled(ssd, 1/float64(n-1)) }, varTol},
}

func scaled(v []float64, f float64) []float64 {
	out := make([]float64, len(v))
	for i := range v {
		out[i] = f * v[i]
	}
	return out
}

func TestReduce(t *testing.T) {
	shapes := [][]int{
		{7, 13, 5}, {3, 1, 4099}, {4099, 3}, {100003}, {3, 100003},
		{5, 1000, 3},  // slices of axis 1 cross segments of the split device
		{3, 2500},     // rows fill the split device's segments exactly
		{64, 7, 1031}, // many outputs along inner, short slices
		{40, 700, 2},  // slices of axis 1 cross the split device's segments
		{9, 2900},     // one row per segment of the split device
	}
	for _, dev := range testDevices(t) {
		segElems := int(dev.dev.SegmentLimit() / 4)
		for _, shape := range shapes {
			n := elemCount(shape)
			for axis := range shape {
				for _, c := range reduceCases {
					if c.name == "var1" && shape[axis] == 1 {
						continue // n - 1 = 0
					}
					t.Run(fmt.Sprintf("%s/%v/%d/%s", dev.name, shape, axis, c.name), func(t *testing.T) {
						hx := randn(uint64(n+axis), n)
						for i := range hx {
							hx[i] += c.offset
						}
						sum, ssd, m := reduceRef(hx, shape, axis)
						out := append(append([]int(nil), shape[:axis]...), shape[axis+1:]...)
						x := upload(t, dev.dev, hx, shape...)
						y := empty(t, dev.dev, out...)
						s := stream(t, dev.dev)
						err := c.run(s, y, x, axis)
						inner := n / elemCount(shape[:axis+1])
						switch span := (shape[axis]-1)*inner + 1; {
						case err == nil:
						case span > (maxWindow-1)*segElems/2 && strings.Contains(err.Error(), "spans"):
							// Documented: a slice beyond six segments is refused.
							t.Logf("refused as documented: %v", err)
							return
						default:
							t.Fatalf("slice of %d elements, segments of %d: %v", span, segElems, err)
						}
						if shape[axis] == 1 && c.name == "var" {
							// Zero variance: check it is exactly that, not via assertClose.
							for i, v := range run(t, s, y) {
								if v != 0 {
									t.Fatalf("element %d: variance of one value is %v", i, v)
								}
							}
							return
						}
						assertClose(t, c.name, run(t, s, y), c.want(sum, ssd, m), c.tol)
					})
				}
			}
		}
	}
}

// TestReduceKeepDim writes the result into the shape with the axis kept as 1.
func TestReduceKeepDim(t *testing.T) {
	for _, dev := range testDevices(t) {
		hx := randn(5, 7*13*5)
		x := upload(t, dev.dev, hx, 7, 13, 5)
		y := empty(t, dev.dev, 7, 1, 5)
		s := stream(t, dev.dev)
		if err := Mean(s, y, x, -2); err != nil {
			t.Fatal(err)
		}
		sum, _, n := reduceRef(hx, []int{7, 13, 5}, 1)
		assertClose(t, dev.name, run(t, s, y), scaled(sum, 1/float64(n)), sumTol)
	}
}

// TestSumAccuracy sums values whose float32 running sum would lose them: a
// plain loop gives 16777216 for 2^24 + n ones.
func TestSumAccuracy(t *testing.T) {
	dev := vktest.Device(t)
	const n = 1 << 20
	hx := make([]float32, n)
	for i := range hx {
		hx[i] = 1
	}
	hx[0] = 1 << 24
	x := upload(t, dev, hx, 1, n)
	y := empty(t, dev, 1)
	s := stream(t, dev)
	if err := Sum(s, y, x, 1); err != nil {
		t.Fatal(err)
	}
	// The exact sum 2^24 + 2^20 - 1 rounds to 17825792 in float32.
	if got := run(t, s, y)[0]; got != 17825792 {
		t.Errorf("sum = %v, want 17825792", got)
	}
}

// TestVarDegenerate follows torch.var where n - correction <= 0: NaN for a
// constant slice (0/0), +Inf otherwise.
func TestVarDegenerate(t *testing.T) {
	dev := vktest.Device(t)
	s := stream(t, dev)
	one := upload(t, dev, []float32{1, 2, 3}, 3, 1)
	two := upload(t, dev, []float32{1, 2, 3, 5, 4, 4}, 3, 2)
	a, b := empty(t, dev, 3), empty(t, dev, 3)
	if err := Variance(s, a, one, 1, 1); err != nil {
		t.Fatal(err)
	}
	if err := Variance(s, b, two, 1, 2); err != nil {
		t.Fatal(err)
	}
	for i, v := range run(t, s, a) {
		if !math.IsNaN(float64(v)) {
			t.Errorf("var of one value, correction 1: element %d is %v, want NaN", i, v)
		}
	}
	gb, err := b.Download(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range gb {
		if want := [3]float64{math.Inf(1), math.Inf(1), math.NaN()}[i]; !(float64(v) == want || math.IsNaN(want) && math.IsNaN(float64(v))) {
			t.Errorf("var of two values, correction 2: element %d is %v, want %v", i, v, want)
		}
	}
}

func TestReduceErrors(t *testing.T) {
	dev := vktest.Device(t)
	s := stream(t, dev)
	x := upload(t, dev, randn(1, 24), 2, 3, 4)
	y := empty(t, dev, 2, 4)
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"axis", Sum(s, y, x, 3), "axis"},
		{"negative axis", Sum(s, y, x, -4), "axis"},
		{"result shape", Mean(s, y, x, 2), "shape"},
		{"strided", Sum(s, empty(t, dev, 3, 4), x.Transpose(0, 1), 1), "strided"},
		{"correction", Variance(s, y, x, 1, -1), "correction"},
	}
	for _, c := range cases {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: got error %v, want one mentioning %q", c.name, c.err, c.want)
		}
	}
	// A slice longer than six segments of the split device.
	split := testDevices(t)[1].dev
	big := upload(t, split, randn(2, 30000), 30000)
	err := Sum(stream(t, split), empty(t, split, 1), big, 0)
	if err == nil || !strings.Contains(err.Error(), "spans 117.2 KiB") {
		t.Errorf("slice over 3 segments: got error %v", err)
	}
	if d, _ := s.Stats(); d != 0 {
		t.Errorf("failed ops recorded %d dispatches", d)
	}
}
