package eval

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/e2mcvk/e2mcvk/loader"
)

// syntheticFeatures makes n rows of d non-negative features (as a ReLU
// network's pooled features are) of classes classes: each class has a
// random mean per dimension, spread sep apart, and every value is
// relu(mean + N(0, 1)). means is shared between the training and test sets
// of one problem.
func syntheticFeatures(rng *rand.Rand, means [][]float64, n int) *Features {
	classes, d := len(means), len(means[0])
	f := &Features{N: n, D: d, Classes: classes, X: make([]float32, n*d), Labels: make([]int, n)}
	for i := range n {
		c := rng.IntN(classes)
		f.Labels[i] = c
		for j := range d {
			f.X[i*d+j] = float32(max(0, means[c][j]+rng.NormFloat64()))
		}
	}
	return f
}

func classMeans(rng *rand.Rand, classes, d int, sep float64) [][]float64 {
	m := make([][]float64, classes)
	for c := range m {
		m[c] = make([]float64, d)
		for j := range m[c] {
			m[c][j] = 0.3 + sep*rng.NormFloat64()
		}
	}
	return m
}

// writeFeaturesNpy writes f's rows and labels as name.npy and the labels as
// labelName.npy (int64) into dir.
func writeFeaturesNpy(t *testing.T, dir, name, labelName string, f *Features) {
	t.Helper()
	if err := loader.WriteNpy(filepath.Join(dir, name+".npy"), []int{f.N, f.D}, f.X); err != nil {
		t.Fatal(err)
	}
	l := make([]int64, f.N)
	for i, v := range f.Labels {
		l[i] = int64(v)
	}
	if err := loader.WriteNpyInt64(filepath.Join(dir, labelName+".npy"), []int{f.N}, l); err != nil {
		t.Fatal(err)
	}
}

// npyBytes is the bytes of f as .npy, part of an oracle's cache key.
func npyBytes(t *testing.T, f *Features) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "x.npy")
	writeFeaturesNpy(t, filepath.Dir(p), "x", "l", f)
	a, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(p), "l.npy"))
	if err != nil {
		t.Fatal(err)
	}
	return append(a, b...)
}

func allZero(x []float32) bool {
	for _, v := range x {
		if v != 0 {
			return false
		}
	}
	return true
}

func finite(x []float64) bool {
	for _, v := range x {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}
