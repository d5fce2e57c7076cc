package layers

import (
	"fmt"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// narrowRef slices a row-major array of shape along dim, in float64.
func narrowRef(x []float32, shape []int, dim, start, length int) []float64 {
	outer, inner := 1, 1
	for _, d := range shape[:dim] {
		outer *= d
	}
	for _, d := range shape[dim+1:] {
		inner *= d
	}
	var out []float64
	for o := 0; o < outer; o++ {
		for k := start; k < start+length; k++ {
			for i := 0; i < inner; i++ {
				out = append(out, float64(x[(o*shape[dim]+k)*inner+i]))
			}
		}
	}
	return out
}

// TestNarrow copies views out (Copy reads strided views) and compares them
// with slicing on the host, also across buffer segments; a narrow along the
// first dimension must stay contiguous.
func TestNarrow(t *testing.T) {
	cases := []struct {
		shape              []int
		dim, start, length int
	}{
		{[]int{1}, 0, 0, 1},
		{[]int{7, 13}, 0, 2, 3},
		{[]int{7, 13}, 1, 5, 8},
		{[]int{7, 13}, -1, 12, 1},
		{[]int{5, 7, 3}, 1, 1, 5},
		{[]int{5, 7, 3}, 2, 2, 1},
		{[]int{2, 3, 5, 7}, 3, 0, 6},
		{[]int{41, 97}, 0, 19, 22}, // rows from several 12 KiB segments
		{[]int{41, 97}, 1, 50, 47},
	}
	for _, dev := range testDevices(t) {
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s/%v/%d:%d+%d", dev.name, c.shape, c.dim, c.start, c.length), func(t *testing.T) {
				n := elemCount(c.shape)
				hx := randn(uint64(n+c.start), n)
				x := upload(t, dev.dev, hx, c.shape...)
				v := x.Narrow(c.dim, c.start, c.length)
				dim := c.dim
				if dim < 0 {
					dim += len(c.shape)
				}
				want := narrowRef(hx, c.shape, dim, c.start, c.length)
				if dim == 0 && !v.Contiguous() {
					t.Error("a narrow of the first dimension is not contiguous")
				}
				y := empty(t, dev.dev, v.Shape()...)
				s := stream(t, dev.dev)
				if err := Copy(s, y, v); err != nil {
					t.Fatal(err)
				}
				assertClose(t, "narrow", run(t, s, y), want, 0)
			})
		}
	}
}

// TestNarrowOfNarrow narrows a view again: the offsets add up.
func TestNarrowOfNarrow(t *testing.T) {
	d := vktest.Device(t)
	shape := []int{6, 9, 4}
	hx := randn(11, elemCount(shape))
	x := upload(t, d, hx, shape...)
	v := x.Narrow(0, 1, 4).Narrow(1, 3, 5).Narrow(0, 2, 2)
	var want []float64
	for i := 3; i < 5; i++ {
		for j := 3; j < 8; j++ {
			for k := 0; k < 4; k++ {
				want = append(want, float64(hx[(i*9+j)*4+k]))
			}
		}
	}
	y := empty(t, d, v.Shape()...)
	s := stream(t, d)
	if err := Copy(s, y, v); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "narrow of narrow", run(t, s, y), want, 0)
}

func TestNarrowPanics(t *testing.T) {
	d := vktest.Device(t)
	x := upload(t, d, randn(1, 12), 3, 4)
	for _, c := range [][3]int{{2, 0, 1}, {-3, 0, 1}, {0, -1, 1}, {0, 2, 2}, {1, 0, 0}, {1, 4, 1}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("narrow(%d, %d, %d) of [3 4] did not panic", c[0], c[1], c[2])
				}
			}()
			x.Narrow(c[0], c[1], c[2])
		}()
	}
}
