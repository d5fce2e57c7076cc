package loader

import (
	"fmt"
	"image"
	"math"
	"math/rand/v2"
	"sort"
)

// BalancedSubset chooses, for the low-label protocols, round(fraction * n)
// samples of each class of n samples (at least one of each class that has
// samples; halves round away from zero), at random but reproducibly: the
// choice of a class depends only on seed, the class index and that class's
// samples, drawn with a PCG generator seeded (seed, class), so the same seed
// gives the same indices on every machine and Go version. It returns the
// chosen indices of ds in increasing order. fraction must lie in (0, 1];
// every label must index ds.Classes().
func BalancedSubset(ds Dataset, fraction float64, seed uint64) ([]int, error) {
	if !(fraction > 0 && fraction <= 1) { // also refuses NaN
		return nil, fmt.Errorf("balanced subset: fraction %v is not in (0, 1]", fraction)
	}
	nc := len(ds.Classes())
	byClass := make([][]int, nc)
	for i := range ds.Len() {
		l := ds.Label(i)
		if l < 0 || l >= nc {
			return nil, fmt.Errorf("balanced subset: %s has label %d, not one of the %d classes", ds.Name(i), l, nc)
		}
		byClass[l] = append(byClass[l], i)
	}
	var out []int
	for c, members := range byClass {
		if len(members) == 0 {
			continue
		}
		k := max(1, int(math.Round(fraction*float64(len(members)))))
		r := rand.New(rand.NewPCG(seed, uint64(c)))
		// A partial Fisher-Yates shuffle: the first k are a uniform choice.
		for j := range k {
			s := j + r.IntN(len(members)-j)
			members[j], members[s] = members[s], members[j]
		}
		out = append(out, members[:k]...)
	}
	sort.Ints(out)
	return out, nil
}

// selection is a view of a Dataset restricted to some of its images.
type selection struct {
	ds  Dataset
	idx []int
}

// Select returns the view of ds that holds its images idx, in that order,
// with ds's labels and classes. Indices must lie in [0, ds.Len()), as those
// BalancedSubset returns do; Image reports an error for one that does not.
// Select copies idx.
func Select(ds Dataset, idx []int) Dataset {
	return &selection{ds: ds, idx: append([]int(nil), idx...)}
}

// Len returns the number of selected images.
func (s *selection) Len() int { return len(s.idx) }

// Label returns the class index of selected image i.
func (s *selection) Label(i int) int { return s.ds.Label(s.idx[i]) }

// Classes returns the underlying data set's class names.
func (s *selection) Classes() []string { return s.ds.Classes() }

// Name returns the underlying data set's name for selected image i.
func (s *selection) Name(i int) string { return s.ds.Name(s.idx[i]) }

// Image decodes selected image i.
func (s *selection) Image(i int) (image.Image, error) {
	if i < 0 || i >= len(s.idx) {
		return nil, fmt.Errorf("selection: image %d out of range (%d images)", i, len(s.idx))
	}
	if j := s.idx[i]; j < 0 || j >= s.ds.Len() {
		return nil, fmt.Errorf("selection: image %d is image %d of a data set of %d", i, j, s.ds.Len())
	}
	return s.ds.Image(s.idx[i])
}
