package eval

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// TestExtractorPooling checks the res5 walk and the pooling of the
// extractor against float64 references computed from its own res5 map
// (Pool 1 is the map itself, flattened): Pool 0 (layers.ResNet's forward,
// global average pooling) equals the map's channel means, and AvgPool(k, 1)
// equals the k x k window means; both to a relative 1e-5.
func TestExtractorPooling(t *testing.T) {
	ctx := context.Background()
	dev := vktest.Device(t)
	parts := smallParts(t, 4, 3)
	ds := newMemDataset(rand.New(rand.NewPCG(1, 1)), 5, 3, 28) // res5 map: 4 x 4 (28 px, stride 8)
	pre := loader.Preprocess{}
	feats := map[int]*Features{}
	for _, pool := range []int{0, 1, 3} {
		ex, err := NewExtractor(ctx, dev, parts, pool)
		if err != nil {
			t.Fatal(err)
		}
		f, err := ex.Dataset(ctx, ds, pre, 2, nil, nil)
		ex.Release()
		if err != nil {
			t.Fatal(err)
		}
		if allZero(f.X) {
			t.Fatalf("pool %d: all-zero features", pool)
		}
		feats[pool] = f
	}
	c := feats[0].D
	m := feats[1]
	side := int(math.Round(math.Sqrt(float64(m.D / c))))
	if c*side*side != m.D {
		t.Fatalf("map of %d values is not %d channels of a square", m.D, c)
	}
	const k = 3
	out := side - k + 1
	if feats[3].D != c*out*out {
		t.Fatalf("pool 3: %d features, want %d", feats[3].D, c*out*out)
	}
	check := func(name string, got []float32, want []float64) {
		t.Helper()
		var diff, norm float64
		for i, w := range want {
			diff += (float64(got[i]) - w) * (float64(got[i]) - w)
			norm += w * w
		}
		if rel := math.Sqrt(diff / norm); !(rel <= 1e-5) {
			t.Errorf("%s: relative error %.3g", name, rel)
		}
	}
	for i := range ds.Len() {
		mp := m.Row(i)
		global := make([]float64, c)
		pooled := make([]float64, c*out*out)
		for ch := range c {
			for y := range side {
				for x := range side {
					global[ch] += float64(mp[(ch*side+y)*side+x]) / float64(side*side)
				}
			}
			for oy := range out {
				for ox := range out {
					var s float64
					for y := oy; y < oy+k; y++ {
						for x := ox; x < ox+k; x++ {
							s += float64(mp[(ch*side+y)*side+x])
						}
					}
					pooled[(ch*out+oy)*out+ox] = s / (k * k)
				}
			}
		}
		check("global pooling", feats[0].Row(i), global)
		check("AvgPool(3, 1)", feats[3].Row(i), pooled)
	}
}

// TestFeatureCache checks that Cached computes once, reads back the same
// features, and that the key changes with the preprocessing, the pooling,
// the checkpoint and the data.
func TestFeatureCache(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(2, 2))
	ds := newMemDataset(rng, 6, 3, 8)
	f := syntheticFeatures(rng, classMeans(rng, 3, 5, 1), 6)
	key := FeatureKey("abc", "resnet18", "mem", ds, loader.Preprocess{Resize: 8, Crop: 8}, 0)
	calls := 0
	compute := func() (*Features, error) { calls++; return f, nil }
	for round := range 2 {
		got, hit, err := Cached(dir, key, 3, nil, compute)
		if err != nil {
			t.Fatal(err)
		}
		if hit != (round == 1) || calls != 1 {
			t.Fatalf("round %d: hit %v after %d computations", round, hit, calls)
		}
		if got.N != f.N || got.D != f.D || got.Classes != 3 {
			t.Fatalf("round %d: %d x %d of %d classes", round, got.N, got.D, got.Classes)
		}
		for i := range f.X {
			if got.X[i] != f.X[i] {
				t.Fatalf("round %d: value %d is %v, want %v", round, i, got.X[i], f.X[i])
			}
		}
		for i := range f.Labels {
			if got.Labels[i] != f.Labels[i] {
				t.Fatalf("round %d: label %d is %d, want %d", round, i, got.Labels[i], f.Labels[i])
			}
		}
	}
	// The cache's float32 reader against loader's reader (through float64).
	x, n, d, err := readNpyMatrix32(filepath.Join(dir, key+".npy"))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := loader.ReadNpy(filepath.Join(dir, key+".npy"))
	if err != nil {
		t.Fatal(err)
	}
	if n != ref.Shape[0] || d != ref.Shape[1] || len(x) != len(ref.Data) {
		t.Fatalf("readNpyMatrix32: %d x %d, loader.ReadNpy: %v", n, d, ref.Shape)
	}
	for i, v := range ref.Data {
		if float64(x[i]) != v {
			t.Fatalf("value %d: %v, loader.ReadNpy %v", i, x[i], v)
		}
	}
	if _, _, _, err := readNpyMatrix32(filepath.Join(dir, key+"-labels.npy")); err == nil {
		t.Error("readNpyMatrix32 read an int64 vector")
	}
	for name, other := range map[string]string{
		"preprocess": FeatureKey("abc", "resnet18", "mem", ds, loader.Preprocess{Resize: 8}, 0),
		"pool":       FeatureKey("abc", "resnet18", "mem", ds, loader.Preprocess{Resize: 8, Crop: 8}, 6),
		"checkpoint": FeatureKey("abd", "resnet18", "mem", ds, loader.Preprocess{Resize: 8, Crop: 8}, 0),
		"data":       FeatureKey("abc", "resnet18", "mem", loader.Select(ds, []int{0, 1, 2}), loader.Preprocess{Resize: 8, Crop: 8}, 0),
	} {
		if other == key {
			t.Errorf("the key does not change with the %s", name)
		}
	}
}
