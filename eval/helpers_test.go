package eval

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
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

// memDataset is a labelled set of small in-memory images: class c's images
// are noisy with channel c%3 brighter and a bright square in a corner that
// depends on c, so that a small network can tell the classes apart.
type memDataset struct {
	imgs    []image.Image
	labels  []int
	classes []string
}

func newMemDataset(rng *rand.Rand, n, classes, size int) *memDataset {
	ds := &memDataset{}
	for c := range classes {
		ds.classes = append(ds.classes, fmt.Sprintf("class%d", c))
	}
	for i := range n {
		c := i % classes
		img := image.NewRGBA(image.Rect(0, 0, size, size))
		for y := range size {
			for x := range size {
				px := [3]float64{}
				for k := range px {
					px[k] = 90 + 40*rng.NormFloat64()
				}
				px[c%3] += 70
				if (x < size/2) == (c%2 == 0) && (y < size/2) == (c/2%2 == 0) {
					px[(c+1)%3] += 60
				}
				img.Set(x, y, color.RGBA{clamp8(px[0]), clamp8(px[1]), clamp8(px[2]), 255})
			}
		}
		ds.imgs = append(ds.imgs, img)
		ds.labels = append(ds.labels, c)
	}
	return ds
}

func clamp8(v float64) uint8 { return uint8(max(0, min(255, math.Round(v)))) }

func (d *memDataset) Len() int                         { return len(d.imgs) }
func (d *memDataset) Label(i int) int                  { return d.labels[i] }
func (d *memDataset) Classes() []string                { return d.classes }
func (d *memDataset) Image(i int) (image.Image, error) { return d.imgs[i], nil }
func (d *memDataset) Name(i int) string                { return fmt.Sprintf("mem/%d.png", i) }

// smallParts is a narrow random ResNet-18 (small stem) taken apart as a
// checkpoint would be.
func smallParts(t *testing.T, width int, seed uint64) *loader.Parts {
	t.Helper()
	ctx := context.Background()
	r, err := layers.NewResNet(ctx, vktest.Device(t), layers.ResNetConfig{Depth: 18, Width: width, SmallStem: true, InChannels: 3}, rand.New(rand.NewPCG(seed, 1)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	parts, err := loader.ModelParts(ctx, r, nil)
	if err != nil {
		t.Fatal(err)
	}
	return parts
}
