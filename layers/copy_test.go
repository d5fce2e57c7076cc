package layers

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// gatherRef returns the elements of view v of host data (the buffer's
// contents) in row-major order, as Copy must produce them.
func gatherRef(data []float32, v *Tensor) []float64 {
	out := make([]float64, v.Len())
	idx := make([]int, len(v.shape))
	for i := range out {
		at := v.offset
		for d, k := range idx {
			at += k * v.strides[d]
		}
		out[i] = float64(data[at])
		for d := len(idx) - 1; d >= 0; d-- {
			if idx[d]++; idx[d] < v.shape[d] {
				break
			}
			idx[d] = 0
		}
	}
	return out
}

// permute returns a view of x with its dimensions in the order perm, built
// from Transposes.
func permute(x *Tensor, perm []int) *Tensor {
	v := x.view()
	cur := make([]int, len(perm)) // cur[i]: original dimension now at i
	for i := range cur {
		cur[i] = i
	}
	for i, want := range perm {
		j := i
		for cur[j] != want {
			j++
		}
		if j != i {
			v = v.Transpose(i, j)
			cur[i], cur[j] = cur[j], cur[i]
		}
	}
	return v
}

func TestCopy(t *testing.T) {
	cases := []struct {
		shape []int
		perm  []int // nil: copy the contiguous tensor itself
	}{
		{[]int{1}, nil}, {[]int{7}, nil}, {[]int{13}, nil}, {[]int{257}, nil},
		{[]int{3001}, nil}, {[]int{37, 101}, nil}, {[]int{100003}, nil},
		{[]int{7, 13}, []int{1, 0}},
		{[]int{4099, 3}, []int{1, 0}},
		{[]int{521, 97}, []int{1, 0}},
		{[]int{3, 1, 4099}, []int{2, 1, 0}},
		{[]int{7, 13, 5}, []int{0, 2, 1}},
		{[]int{7, 13, 5}, []int{1, 0, 2}},
		{[]int{7, 13, 5}, []int{1, 2, 0}},
		{[]int{7, 13, 5}, []int{2, 0, 1}},
		{[]int{7, 13, 5}, []int{2, 1, 0}},
		{[]int{5, 3, 1, 7, 2, 3}, []int{3, 0, 5, 1, 2, 4}}, // rank 6
		{[]int{2, 3, 2, 3, 2, 3}, []int{1, 0, 3, 2, 5, 4}}, // six dimensions that do not merge
		{[]int{16, 7, 131}, []int{2, 0, 1}},
	}
	for _, dev := range testDevices(t) {
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s/%v/%v", dev.name, c.shape, c.perm), func(t *testing.T) {
				n := elemCount(c.shape)
				hx := randn(uint64(n)+21, n)
				x := upload(t, dev.dev, hx, c.shape...)
				src := x
				if c.perm != nil {
					src = permute(x, c.perm)
				}
				y := empty(t, dev.dev, src.shape...)
				s := stream(t, dev.dev)
				if err := Copy(s, y, src); err != nil {
					t.Fatal(err)
				}
				// A copy is exact.
				assertClose(t, "copy", run(t, s, y), gatherRef(hx, src), 0)
			})
		}
	}
}

// TestCopyUnaligned copies a contiguous view that starts one element into its
// buffer: the scalar path of the contiguous copy.
func TestCopyUnaligned(t *testing.T) {
	for _, dev := range testDevices(t) {
		for _, n := range []int{8, 3001, 100003} {
			t.Run(fmt.Sprintf("%s/%d", dev.name, n), func(t *testing.T) {
				hx := randn(uint64(n)+5, n+1)
				x := upload(t, dev.dev, hx, n+1)
				src := x.view()
				src.offset, src.shape, src.strides = 1, []int{n}, []int{1}
				y := empty(t, dev.dev, n)
				s := stream(t, dev.dev)
				if err := Copy(s, y, src); err != nil {
					t.Fatal(err)
				}
				assertClose(t, "copy", run(t, s, y), gatherRef(hx, src), 0)
			})
		}
	}
}

func TestContiguousAndTranspose2D(t *testing.T) {
	for _, dev := range testDevices(t) {
		hx := randn(9, 257*13)
		x := upload(t, dev.dev, hx, 257, 13)
		s := stream(t, dev.dev)
		c, err := Contiguous(s, x.Transpose(0, 1))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
		if got := c.Shape(); !slices.Equal(got, []int{13, 257}) || !c.Contiguous() {
			t.Fatalf("Contiguous gave %v, contiguous %v", got, c.Contiguous())
		}
		back := empty(t, dev.dev, 257, 13)
		if err := Transpose2D(s, back, c); err != nil {
			t.Fatal(err)
		}
		if err := s.Run(t.Context()); err != nil {
			t.Fatal(err)
		}
		gc, err := c.Download(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		assertClose(t, dev.name+" contiguous", gc, gatherRef(hx, x.Transpose(0, 1)), 0)
		gb, err := back.Download(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		assertClose(t, dev.name+" transpose back", gb, gatherRef(hx, x), 0)
	}
}

func TestCopyErrors(t *testing.T) {
	dev := vktest.Device(t)
	s := stream(t, dev)
	x := upload(t, dev, randn(1, 6), 2, 3)
	seven := upload(t, dev, randn(2, 128), 2, 2, 2, 2, 2, 2, 2)
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"shape", Copy(s, empty(t, dev, 2, 3), x.Transpose(0, 1)), "shapes"},
		{"strided destination", Copy(s, empty(t, dev, 3, 2).Transpose(0, 1), x), "destination"},
		{"rank 7", Copy(s, empty(t, dev, 2, 2, 2, 2, 2, 2, 2), permute(seven, []int{6, 5, 4, 3, 2, 1, 0})), "dimensions"},
		{"transpose2d rank", Transpose2D(s, empty(t, dev, 2, 2, 2, 2, 2, 2, 2), seven), "2 dimensions"},
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
