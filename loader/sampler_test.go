package loader

import (
	"fmt"
	"image"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// labelSet is an in-memory Dataset of labels only; image i is a 1x1 grey
// image of value i.
type labelSet struct {
	labels  []int
	classes []string
}

func (l *labelSet) Len() int          { return len(l.labels) }
func (l *labelSet) Label(i int) int   { return l.labels[i] }
func (l *labelSet) Classes() []string { return l.classes }
func (l *labelSet) Name(i int) string { return fmt.Sprintf("mem[%d]", i) }
func (l *labelSet) Image(i int) (image.Image, error) {
	g := image.NewGray(image.Rect(0, 0, 1, 1))
	g.Pix[0] = uint8(i)
	return g, nil
}

// interleaved returns a labelSet with sizes[c] samples of class c, the
// classes dealt round-robin so that no class is contiguous.
func interleaved(sizes []int) *labelSet {
	l := &labelSet{}
	left := slices.Clone(sizes)
	for c := range sizes {
		l.classes = append(l.classes, fmt.Sprintf("c%d", c))
	}
	for more := true; more; {
		more = false
		for c := range left {
			if left[c] > 0 {
				l.labels = append(l.labels, c)
				left[c]--
				more = true
			}
		}
	}
	return l
}

func TestBalancedSubsetCounts(t *testing.T) {
	ds := interleaved([]int{10, 3, 0, 1, 25})
	for _, tc := range []struct {
		fraction float64
		want     []int // per class
	}{
		{0.1, []int{1, 1, 0, 1, 3}}, // 0.3 and 0.1 rise to 1; 2.5 rounds up
		{0.5, []int{5, 2, 0, 1, 13}},
		{0.99, []int{10, 3, 0, 1, 25}},
		{1, []int{10, 3, 0, 1, 25}},
	} {
		idx, err := BalancedSubset(ds, tc.fraction, 7)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.IsSorted(idx) {
			t.Errorf("fraction %v: indices not sorted: %v", tc.fraction, idx)
		}
		if len(slices.Compact(slices.Clone(idx))) != len(idx) {
			t.Errorf("fraction %v: repeated indices: %v", tc.fraction, idx)
		}
		got := make([]int, len(ds.classes))
		for _, i := range idx {
			got[ds.Label(i)]++
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("fraction %v: per-class counts %v, want %v", tc.fraction, got, tc.want)
		}
		if tc.fraction == 1 && len(idx) != ds.Len() {
			t.Errorf("fraction 1 chose %d of %d", len(idx), ds.Len())
		}
		// The view holds the chosen images with their labels.
		v := Select(ds, idx)
		if v.Len() != len(idx) || !reflect.DeepEqual(v.Classes(), ds.Classes()) {
			t.Fatalf("view: %d images, classes %v", v.Len(), v.Classes())
		}
		for k, i := range idx {
			img, err := v.Image(k)
			if err != nil {
				t.Fatal(err)
			}
			if v.Label(k) != ds.Label(i) || v.Name(k) != ds.Name(i) || img.(*image.Gray).Pix[0] != uint8(i) {
				t.Fatalf("view image %d is not image %d", k, i)
			}
		}
	}
}

func TestBalancedSubsetSeeds(t *testing.T) {
	ds := interleaved([]int{100, 57, 80})
	a, err := BalancedSubset(ds, 0.1, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := BalancedSubset(ds, 0.1, 1)
	c, _ := BalancedSubset(ds, 0.1, 2)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("seed 1 twice: %v and %v", a, b)
	}
	if reflect.DeepEqual(a, c) {
		t.Errorf("seeds 1 and 2 chose the same %v", a)
	}
	// A class's choice does not depend on the other classes.
	only0 := interleaved([]int{100})
	d, _ := BalancedSubset(only0, 0.1, 1)
	rank := map[int]int{} // index -> position among class 0's samples
	for i := range ds.Len() {
		if ds.Label(i) == 0 {
			rank[i] = len(rank)
		}
	}
	var a0 []int
	for _, i := range a {
		if ds.Label(i) == 0 {
			a0 = append(a0, rank[i])
		}
	}
	if !reflect.DeepEqual(a0, d) {
		t.Errorf("class 0 alone chose %v, with others %v", d, a0)
	}

	// Uniform over seeds: each of 10 samples is chosen 3 times in 10.
	ten := interleaved([]int{10})
	const seeds = 2000
	hits := make([]int, 10)
	for s := range uint64(seeds) {
		idx, _ := BalancedSubset(ten, 0.3, s)
		for _, i := range idx {
			hits[i]++
		}
	}
	mean, sd := seeds*0.3, math.Sqrt(seeds*0.3*0.7)
	for i, h := range hits {
		if math.Abs(float64(h)-mean) > 5*sd {
			t.Errorf("sample %d chosen %d times in %d seeds, expected about %.0f", i, h, seeds, mean)
		}
	}
}

func TestBalancedSubsetErrors(t *testing.T) {
	ds := interleaved([]int{4, 4})
	for _, f := range []float64{0, -0.1, 1.0001, math.NaN(), math.Inf(1)} {
		if _, err := BalancedSubset(ds, f, 0); err == nil || !strings.Contains(err.Error(), "fraction") {
			t.Errorf("fraction %v: %v", f, err)
		}
	}
	bad := &labelSet{labels: []int{0, 2, 1}, classes: []string{"a", "b"}}
	if _, err := BalancedSubset(bad, 0.5, 0); err == nil || !strings.Contains(err.Error(), "mem[1] has label 2") {
		t.Errorf("label out of range: %v", err)
	}
	v := Select(ds, []int{0, 9})
	if _, err := v.Image(1); err == nil {
		t.Error("selected index 9 of 8: no error")
	}
	if _, err := v.Image(2); err == nil {
		t.Error("image 2 of 2: no error")
	}
}
