package eval

import (
	"bytes"
	"context"
	"fmt"
	"image/jpeg"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// badFolder writes an ImageFolder of three classes under a fresh temporary
// directory: good PNG and JPEG images of 16 px (memDataset's pictures),
// plus a truncated JPEG in class 1 and a file of garbage named .png in
// class 2. It returns the folder and the paths of the two bad files.
func badFolder(t *testing.T, perClass int) (*loader.ImageFolder, []string) {
	t.Helper()
	root := t.TempDir()
	src := newMemDataset(rand.New(rand.NewPCG(7, 7)), 3*perClass, 3, 16)
	write := func(path string, data []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := range src.Len() {
		c := src.Label(i)
		var b bytes.Buffer
		name := fmt.Sprintf("c%d/img%02d", c, i)
		if i%2 == 0 {
			png.Encode(&b, src.imgs[i])
			name += ".png"
		} else {
			jpeg.Encode(&b, src.imgs[i], &jpeg.Options{Quality: 95})
			name += ".jpg"
		}
		write(filepath.Join(root, name), b.Bytes())
	}
	var full bytes.Buffer
	jpeg.Encode(&full, src.imgs[1], &jpeg.Options{Quality: 95})
	bad := []string{filepath.Join(root, "c1", "img05_truncated.jpg"), filepath.Join(root, "c2", "img06_garbage.png")}
	write(bad[0], full.Bytes()[:full.Len()/2])
	write(bad[1], []byte("this is not a PNG file, whatever its name says"))
	ds, err := loader.OpenImageFolder(root)
	if err != nil {
		t.Fatal(err)
	}
	return ds, bad
}

// indicesOf returns the indices of ds whose names are (or are not, with
// want false) in names.
func indicesOf(ds loader.Dataset, names []string, want bool) []int {
	var out []int
	for i := range ds.Len() {
		if slices.Contains(names, ds.Name(i)) == want {
			out = append(out, i)
		}
	}
	return out
}

// closeRows reports whether two rows agree to a relative 1e-5 (the same
// images through the same network, in batches of other sizes).
func closeRows(a, b []float32) bool {
	var diff, norm float64
	for i := range a {
		diff += float64(a[i]-b[i]) * float64(a[i]-b[i])
		norm += float64(b[i]) * float64(b[i])
	}
	return len(a) == len(b) && norm > 0 && math.Sqrt(diff/norm) <= 1e-5
}

// TestDatasetSkipsUnreadable extracts the features of a folder holding a
// truncated JPEG and a garbage .png, in batches of several sizes: exactly
// those two are skipped (logged once each with their paths), the rows are
// those of the good images alone, in data-set order, with their labels and
// indices; strict (or nil) Skips refuse with the path, and a folder of
// nothing readable is an error.
func TestDatasetSkipsUnreadable(t *testing.T) {
	ctx := context.Background()
	ex, err := NewExtractor(ctx, vktest.Device(t), smallParts(t, 8, 11), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Release()
	ds, bad := badFolder(t, 4)
	good := indicesOf(ds, bad, false)
	badIdx := indicesOf(ds, bad, true)
	pre := loader.Preprocess{}
	ref, err := ex.Dataset(ctx, loader.Select(ds, good), pre, 32, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if allZero(ref.X) {
		t.Fatal("all-zero reference features")
	}
	for _, batch := range []int{1, 3, 5, 32} {
		t.Run(fmt.Sprint("batch ", batch), func(t *testing.T) {
			var log bytes.Buffer
			skips := &Skips{Log: &log}
			f, err := ex.Dataset(ctx, ds, pre, batch, skips, nil)
			if err != nil {
				t.Fatal(err)
			}
			if f.N != len(good) || !slices.Equal(f.Index, good) || !slices.Equal(f.Indices(), good) {
				t.Fatalf("%d rows of images %v, want %v", f.N, f.Index, good)
			}
			if len(f.Skipped) != 2 || f.Skipped[0].Index != badIdx[0] || f.Skipped[1].Index != badIdx[1] || skips.Count() != 2 {
				t.Fatalf("skipped %+v (count %d), want images %v", f.Skipped, skips.Count(), badIdx)
			}
			for r, i := range good {
				if f.Labels[r] != ds.Label(i) || f.Labels[r] != ref.Labels[r] {
					t.Errorf("row %d: label %d, image %d has %d", r, f.Labels[r], i, ds.Label(i))
				}
				if !closeRows(f.Row(r), ref.Row(r)) {
					t.Errorf("row %d differs from the features of image %d alone", r, i)
				}
			}
			for _, p := range bad {
				if strings.Count(log.String(), p) != 1 {
					t.Errorf("log mentions %s %d times, want once:\n%s", p, strings.Count(log.String(), p), log.String())
				}
			}
		})
	}
	for name, skips := range map[string]*Skips{"strict": {Strict: true}, "nil": nil} {
		if _, err := ex.Dataset(ctx, ds, pre, 4, skips, nil); err == nil || !strings.Contains(err.Error(), bad[0]) {
			t.Errorf("%s: error %v, want one naming %s", name, err, bad[0])
		}
	}
	if _, err := ex.Dataset(ctx, loader.Select(ds, badIdx), pre, 4, &Skips{}, nil); err == nil || !strings.Contains(err.Error(), "nothing left") {
		t.Errorf("only unreadable images: error %v, want nothing left to evaluate", err)
	}
}

// TestSelectSkipped selects rows by data-set index from features that
// skipped images 2 and 5 of 8: rows come in the order asked with their
// labels and indices, a skipped image is dropped into Skipped (and
// Skips.Dropped logs it), an index the features never saw is an error, and
// so is a selection of skipped images only.
func TestSelectSkipped(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	full := syntheticFeatures(rng, classMeans(rng, 3, 4, 1), 8)
	kept := []int{0, 1, 3, 4, 6, 7}
	f, err := full.Select(kept)
	if err != nil {
		t.Fatal(err)
	}
	f.Skipped = []Skip{{Index: 2, Name: "two.jpg", Err: "two.jpg: truncated"}, {Index: 5, Name: "five.png", Err: "five.png: garbage"}}
	cases := []struct {
		name    string
		idx     []int
		rows    []int // indices into full, nil for an error
		dropped []int
	}{
		{"all", []int{0, 1, 2, 3, 4, 5, 6, 7}, []int{0, 1, 3, 4, 6, 7}, []int{2, 5}},
		{"subset", []int{7, 5, 3}, []int{7, 3}, []int{5}},
		{"repeat", []int{4, 4, 0}, []int{4, 4, 0}, nil},
		{"unknown", []int{1, 8}, nil, nil},
		{"negative", []int{-1}, nil, nil},
		{"only skipped", []int{2, 5}, nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := f.Select(c.idx)
			if c.rows == nil {
				if err == nil {
					t.Fatalf("selected %v, want an error", got.Index)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.N != len(c.rows) || !slices.Equal(got.Index, c.rows) {
				t.Fatalf("rows of images %v, want %v", got.Index, c.rows)
			}
			for r, i := range c.rows {
				if got.Labels[r] != full.Labels[i] || !slices.Equal(got.Row(r), full.Row(i)) {
					t.Errorf("row %d is not image %d", r, i)
				}
			}
			var dropped []int
			for _, s := range got.Skipped {
				dropped = append(dropped, s.Index)
			}
			if !slices.Equal(dropped, c.dropped) {
				t.Errorf("dropped %v, want %v", dropped, c.dropped)
			}
			var log bytes.Buffer
			skips := &Skips{Log: &log}
			if err := skips.Dropped("subset", got.Skipped); err != nil {
				t.Fatal(err)
			}
			if skips.Count() != len(c.dropped) || (len(c.dropped) > 0) != strings.Contains(log.String(), "subset: dropped") {
				t.Errorf("Dropped counted %d and logged %q", skips.Count(), log.String())
			}
			if len(c.dropped) > 0 {
				if err := (&Skips{Strict: true}).Dropped("subset", got.Skipped); err == nil {
					t.Error("strict Dropped: no error")
				}
			}
		})
	}
}

// TestCacheKeepsIndex stores features that skipped images and reads them
// back: the index, the labels and the skipped images survive, a
// non-strict hit logs the skips as the computation did, a strict run
// computes afresh, and an entry whose index and skipped images do not tile
// the data set is not read.
func TestCacheKeepsIndex(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(4, 4))
	full := syntheticFeatures(rng, classMeans(rng, 3, 5, 1), 7)
	f, err := full.Select([]int{0, 2, 3, 6})
	if err != nil {
		t.Fatal(err)
	}
	f.Skipped = []Skip{{1, "a/1.jpg", "decode a/1.jpg: unexpected EOF"}, {4, "a/4.png", "decode a/4.png: not a PNG"}, {5, "b/5.png", "b/5.png: empty 0x0 image"}}
	calls := 0
	compute := func() (*Features, error) { calls++; return f, nil }
	for round, c := range []struct {
		strict bool
		hit    bool
		calls  int
	}{{false, false, 1}, {false, true, 1}, {true, false, 2}, {false, true, 2}} {
		var log bytes.Buffer
		skips := &Skips{Strict: c.strict, Log: &log}
		got, hit, err := Cached(dir, "k", 3, skips, compute)
		if err != nil {
			t.Fatal(err)
		}
		if hit != c.hit || calls != c.calls {
			t.Fatalf("round %d: hit %v after %d computations, want %v after %d", round, hit, calls, c.hit, c.calls)
		}
		if !slices.Equal(got.Index, f.Index) || !slices.Equal(got.Labels, f.Labels) || !slices.Equal(got.X, f.X) || !slices.Equal(got.Skipped, f.Skipped) {
			t.Fatalf("round %d: read back index %v skipped %v, want %v %v", round, got.Index, got.Skipped, f.Index, f.Skipped)
		}
		if hit && (skips.Count() != 3 || strings.Count(log.String(), "skipped unreadable image") != 3) {
			t.Errorf("round %d: a hit counted %d skips and logged %q", round, skips.Count(), log.String())
		}
	}
	// Features that skipped nothing are stored with the identity index.
	plain := syntheticFeatures(rng, classMeans(rng, 3, 5, 1), 4)
	if _, _, err := Cached(dir, "p", 3, nil, func() (*Features, error) { return plain, nil }); err != nil {
		t.Fatal(err)
	}
	got, hit, err := Cached(dir, "p", 3, nil, func() (*Features, error) { return nil, fmt.Errorf("computed again") })
	if err != nil || !hit || !slices.Equal(got.Index, []int{0, 1, 2, 3}) || len(got.Skipped) != 0 {
		t.Fatalf("plain entry: hit %v, index %v, skipped %v, %v", hit, got.Index, got.Skipped, err)
	}
	// An entry whose skipped list leaves a hole is recomputed.
	os.WriteFile(filepath.Join(dir, "k-skipped.json"), []byte(`[{"index": 1, "name": "a/1.jpg", "error": "x"}]`), 0o644)
	if _, err := readFeatures(dir, "k", 3); err == nil {
		t.Error("read an entry whose rows and skipped images leave out images 4 and 5")
	}
	os.Remove(filepath.Join(dir, "k-index.npy"))
	if _, err := readFeatures(dir, "k", 3); err == nil {
		t.Error("read an entry without its index")
	}
}

// TestLoadAugmentedSkips checks that the augmented stream packs the
// readable images of a batch in order, each as it comes out alone, and
// reports the unreadable ones.
func TestLoadAugmentedSkips(t *testing.T) {
	ctx := context.Background()
	ds, bad := badFolder(t, 3)
	badIdx := indicesOf(ds, bad, true)
	aug := loader.ViewAugment{Size: 12, Scale: [2]float64{0.5, 1}, FlipP: 0.5}
	idx := rand.New(rand.NewPCG(5, 5)).Perm(ds.Len())
	data, kept, skipped, err := LoadAugmented(ctx, ds, idx, aug, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	var want []int
	for _, i := range idx {
		if !slices.Contains(badIdx, i) {
			want = append(want, i)
		}
	}
	if !slices.Equal(kept, want) || len(skipped) != 2 || len(data) != len(want)*3*12*12 {
		t.Fatalf("kept %v (%d values), skipped %+v; want %v", kept, len(data), skipped, want)
	}
	for _, s := range skipped {
		if !slices.Contains(bad, s.Name) || !strings.Contains(s.Err, s.Name) {
			t.Errorf("skip %+v: not a bad file, or its error does not name it", s)
		}
	}
	alone, _, _, err := LoadAugmented(ctx, ds, want, aug, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(data, alone) || allZero(data) {
		t.Error("the packed batch differs from the readable images loaded alone")
	}
}

// TestFinetuneSkips fine-tunes for one epoch on a folder with two bad
// images as both training and evaluation set: it runs, counts the two
// once, and a strict run names the first.
func TestFinetuneSkips(t *testing.T) {
	ctx := context.Background()
	dev := vktest.Device(t)
	parts := smallParts(t, 8, 12)
	ds, bad := badFolder(t, 3)
	cfg := DefaultFinetuneConfig()
	cfg.Epochs, cfg.Milestones, cfg.BatchSize = 1, nil, 4
	cfg.Augment = loader.ViewAugment{Size: 12, Scale: [2]float64{0.5, 1}, FlipP: 0.5}
	cfg.Preprocess = loader.Preprocess{Crop: 12}
	var log bytes.Buffer
	skips := &Skips{Log: &log}
	var loss float64
	top1, top5, err := Finetune(ctx, dev, parts, ds, ds, cfg, skips, func(_, _ int, l float64, end bool) {
		if end {
			loss = l
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if skips.Count() != 2 || !(loss > 0) || top1 < 0 || top5 != 100 {
		t.Errorf("skipped %d, loss %v, top1 %v, top5 %v", skips.Count(), loss, top1, top5)
	}
	for _, p := range bad {
		if strings.Count(log.String(), p) != 1 {
			t.Errorf("log mentions %s %d times, want once:\n%s", p, strings.Count(log.String(), p), log.String())
		}
	}
	_, _, err = Finetune(ctx, dev, parts, ds, ds, cfg, &Skips{Strict: true}, nil)
	if err == nil || !strings.Contains(err.Error(), "strict") || !slices.ContainsFunc(bad, func(p string) bool { return strings.Contains(err.Error(), p) }) {
		t.Errorf("strict: error %v, want one naming a bad file", err)
	}
}

// TestNewMultiLabel pairs features that skipped VOC images 1 and 4 of 6
// with their targets: each row gets its own image's.
func TestNewMultiLabel(t *testing.T) {
	root := t.TempDir()
	sets := filepath.Join(root, "ImageSets", "Main")
	os.MkdirAll(sets, 0o755)
	ids := []string{"000001", "000002", "000003", "000004", "000005", "000006"}
	os.WriteFile(filepath.Join(sets, "trainval.txt"), []byte(strings.Join(ids, "\n")+"\n"), 0o644)
	for c, class := range loader.VOCClasses() {
		var b strings.Builder
		for i, id := range ids {
			target := -1
			if (i+c)%3 == 0 {
				target = 1
			} else if (i+c)%5 == 0 {
				target = 0
			}
			fmt.Fprintf(&b, "%s %2d\n", id, target)
		}
		os.WriteFile(filepath.Join(sets, class+"_trainval.txt"), []byte(b.String()), 0o644)
	}
	voc, err := loader.OpenVOC07(root, "trainval")
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(6, 6))
	full := syntheticFeatures(rng, classMeans(rng, 1, 3, 1), 6)
	f, err := full.Select([]int{0, 2, 3, 5})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMultiLabel(f, voc)
	if err != nil {
		t.Fatal(err)
	}
	if m.N != 4 || m.D != 3 || len(m.Classes) != 20 {
		t.Fatalf("%d x %d, %d classes", m.N, m.D, len(m.Classes))
	}
	for r, i := range []int{0, 2, 3, 5} {
		if !slices.Equal(m.Targets[r], voc.Targets(i)) || slices.Equal(m.Targets[r], voc.Targets(r)) && r != i {
			t.Errorf("row %d: targets %v, want image %d's %v", r, m.Targets[r], i, voc.Targets(i))
		}
	}
	f.Index[3] = 6
	if _, err := NewMultiLabel(f, voc); err == nil {
		t.Error("a row of image 6 of a split of 6 was paired")
	}
}
