package loader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
)

// makeTree creates files (empty), folders (names ending in "/") and
// symbolic links ("name -> target") under root.
func makeTree(t *testing.T, root string, entries []string) {
	t.Helper()
	for _, e := range entries {
		var err error
		switch name, target, isLink := strings.Cut(e, " -> "); {
		case isLink:
			p := filepath.Join(root, name)
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = os.Symlink(target, p)
			}
		case strings.HasSuffix(e, "/"):
			err = os.MkdirAll(filepath.Join(root, e), 0o755)
		default:
			p := filepath.Join(root, e)
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = os.WriteFile(p, nil, 0o644)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// folderTree is a layout with the orderings torchvision's ImageFolder
// defines: class names by code point ("A" < "a"), nested folders by sorted
// path ("sub-x" before "sub/deeper"), numeric-looking names as strings,
// extensions in any case, hidden files, non-image files, folders and files
// reached through links, a broken link, and a file at the top that is no
// class.
func folderTree() []string {
	return []string{
		"root/b/x.JPG", "root/b/y.png", "root/b/readme.txt", "root/b/.hidden.jpg", "root/b/a b.webp",
		"root/b/sub/z.jpeg", "root/b/sub-x/w.png", "root/b/sub/deeper/v.PNG", "root/b/sub/deeper/u.Tiff",
		"root/a/1.png", "root/a/10.png", "root/a/2.png", "root/a/Z.png", "root/a/_.bmp", "root/a/n.tiff",
		"root/a/empty/", "root/a/notes.jpg.txt",
		"root/A/q.ppm",
		"root/c d/e.pgm", "root/c d/link.jpg -> ../b/x.JPG", "root/c d/broken.jpg -> nowhere.jpg",
		"root/c d/dirlink -> ../../other",
		"other/k.jpg", "other/deep/m.png",
		"root/linked -> ../other",
		"root/stray.jpg",
	}
}

// TestImageFolderMatchesTorchvision lists folderTree with OpenImageFolder and
// with torchvision.datasets.ImageFolder and compares classes, paths and
// labels in order.
func TestImageFolderMatchesTorchvision(t *testing.T) {
	tree := folderTree()
	base := t.TempDir()
	makeTree(t, base, tree)
	root := filepath.Join(base, "root")

	script, err := os.ReadFile("testdata/torch_preprocess.py")
	if err != nil {
		t.Fatal(err)
	}
	dir := oracle.Cached(t, []string{"torch", "torchvision", "numpy"}, func(py, dir string) {
		oracle.RunFile(t, py, "testdata/torch_preprocess.py", "imagefolder", dir, root)
	}, script, []byte("imagefolder"), []byte(strings.Join(tree, "\n")))
	var want struct {
		Classes []string
		Samples [][2]any
	}
	oracle.ReadJSON(t, filepath.Join(dir, "folder.json"), &want)

	f, err := OpenImageFolder(root)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.Classes(), want.Classes) {
		t.Errorf("classes %q, torchvision %q", f.Classes(), want.Classes)
	}
	var got, wantS []string
	for _, s := range f.Samples {
		rel, err := filepath.Rel(root, s.Path)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s:%d", rel, s.Label))
	}
	for _, s := range want.Samples {
		wantS = append(wantS, fmt.Sprintf("%s:%v", s[0], s[1]))
	}
	if !reflect.DeepEqual(got, wantS) {
		t.Errorf("samples\n%s\ntorchvision\n%s", strings.Join(got, "\n"), strings.Join(wantS, "\n"))
	}
	if len(got) < 15 {
		t.Fatalf("only %d samples: the tree lost its images", len(got))
	}
	if f.Len() != len(f.Samples) || f.Label(0) != f.Samples[0].Label || f.Name(3) != f.Samples[3].Path {
		t.Error("Len, Label or Name disagree with Samples")
	}
}

// TestImageFolderLinkLoop checks that a link back to an enclosing folder is
// not followed forever.
func TestImageFolderLinkLoop(t *testing.T) {
	base := t.TempDir()
	makeTree(t, base, []string{"c/a.png", "c/sub/b.png", "c/sub/up -> ..", "c/self -> ."})
	f, err := OpenImageFolder(base)
	if err != nil {
		t.Fatal(err)
	}
	var rel []string
	for _, s := range f.Samples {
		r, _ := filepath.Rel(base, s.Path)
		rel = append(rel, r)
	}
	if want := []string{"c/a.png", "c/sub/b.png"}; !reflect.DeepEqual(rel, want) {
		t.Fatalf("samples %q, want %q", rel, want)
	}
}

// TestImageFolderErrors checks the errors for unusable roots.
func TestImageFolderErrors(t *testing.T) {
	base := t.TempDir()
	makeTree(t, base, []string{
		"file.png",
		"flat/a.png", "flat/b.jpg",
		"noimg/cat/a.png", "noimg/dog/readme.txt", "noimg/eel/",
	})
	tests := []struct{ root, want string }{
		{filepath.Join(base, "missing"), "no such directory"},
		{filepath.Join(base, "file.png"), "not a directory"},
		{filepath.Join(base, "flat"), "no class folders"},
		{filepath.Join(base, "noimg"), "no images in class folder(s) dog, eel"},
	}
	for _, tt := range tests {
		_, err := OpenImageFolder(tt.root)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.root) {
			t.Errorf("%s: error %v, want the root and %q", tt.root, err, tt.want)
		}
	}
}

// TestParseDataSpec checks the spec forms other than Fashion-MNIST's (see
// TestFashionMNISTMatchesNumpy).
func TestParseDataSpec(t *testing.T) {
	base := t.TempDir()
	makeTree(t, base, []string{"cat/a.png", "dog/b.png", "dog/c.png"})
	ds, err := ParseDataSpec(base)
	if err != nil {
		t.Fatal(err)
	}
	if ds.Len() != 3 || !reflect.DeepEqual(ds.Classes(), []string{"cat", "dog"}) || ds.Label(2) != 1 {
		t.Fatalf("got %d images, classes %q", ds.Len(), ds.Classes())
	}
	for _, tt := range []struct{ spec, want string }{
		{"", "no data set given"},
		{"fashion-mnist:validation", `unknown split "validation"`},
		{filepath.Join(base, "nope"), "no such directory"},
	} {
		if _, err := ParseDataSpec(tt.spec); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want %q", tt.spec, err, tt.want)
		}
	}
}

// memDataset is a Dataset of images held in memory; fail[i] makes image i
// fail to load.
type memDataset struct {
	imgs []image.Image
	fail map[int]bool
}

func (d *memDataset) Len() int          { return len(d.imgs) }
func (d *memDataset) Label(i int) int   { return i % 3 }
func (d *memDataset) Classes() []string { return []string{"x", "y", "z"} }
func (d *memDataset) Name(i int) string { return fmt.Sprintf("mem[%d]", i) }
func (d *memDataset) Image(i int) (image.Image, error) {
	if d.fail[i] {
		return nil, errors.New("cannot load")
	}
	return d.imgs[i], nil
}

// pattern returns a w x h RGB image with varied, seed-dependent content.
func pattern(w, h, seed int) image.Image {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.SetNRGBA(x, y, color.NRGBA{uint8(7*x + 3*seed), uint8(11*y + x*y), uint8(5*seed + 13*x + 17*y), 255})
		}
	}
	return img
}

// TestLoadBatchMatchesApply loads batches of the committed test images (of
// many sizes, through an ImageFolder) with several worker counts and
// compares every image with Preprocess.Apply.
func TestLoadBatchMatchesApply(t *testing.T) {
	base := t.TempDir()
	for i, name := range testImageNames(t) {
		data, err := os.ReadFile(filepath.Join(testImages, name))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(base, fmt.Sprintf("class%d", i%3), name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := OpenImageFolder(base)
	if err != nil {
		t.Fatal(err)
	}
	p := Preprocess{Resize: 20, Crop: 16}
	var idx []int
	for i := f.Len() - 1; i >= 0; i-- {
		idx = append(idx, i)
	}
	idx = append(idx, 0, 0) // repeats are allowed
	for _, workers := range []int{1, 3, 0} {
		t.Run(fmt.Sprintf("workers%d", workers), func(t *testing.T) {
			got, h, w, err := LoadBatch(context.Background(), f, idx, p, workers)
			if err != nil {
				t.Fatal(err)
			}
			if h != 16 || w != 16 || len(got) != len(idx)*3*16*16 {
				t.Fatalf("%d values of 3x%dx%d", len(got), h, w)
			}
			for pos, i := range idx {
				img, err := f.Image(i)
				if err != nil {
					t.Fatal(err)
				}
				want, _, _, err := p.Apply(img)
				if err != nil {
					t.Fatal(err)
				}
				part := got[pos*3*h*w : (pos+1)*3*h*w]
				for k := range want {
					if math.Float32bits(part[k]) != math.Float32bits(want[k]) {
						t.Fatalf("image %d (%s) value %d: %v, Apply %v", pos, f.Name(i), k, part[k], want[k])
					}
				}
			}
		})
	}
}

// TestLoadBatchErrors checks that the error of the earliest failing image
// in the batch is the one reported, whatever the number of workers.
func TestLoadBatchErrors(t *testing.T) {
	sizes := [][2]int{{10, 8}, {10, 8}, {10, 8}, {12, 8}, {10, 8}, {9, 9}, {10, 8}, {10, 8}}
	ds := &memDataset{fail: map[int]bool{}}
	for i, s := range sizes {
		ds.imgs = append(ds.imgs, pattern(s[0], s[1], i))
	}
	all := []int{0, 1, 2, 3, 4, 5, 6, 7}
	failing := &memDataset{imgs: ds.imgs, fail: map[int]bool{6: true, 2: true}}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ds   Dataset
		idx  []int
		p    Preprocess
		ctx  context.Context
		want string
	}{
		{"sizes", ds, all, Preprocess{}, nil, "images differ in size: mem[0] gives 3x8x10, mem[3] gives 3x8x12 (use --resize and --crop"},
		{"sizes-later", ds, []int{4, 5, 3}, Preprocess{}, nil, "mem[4] gives 3x8x10, mem[5] gives 3x9x9"},
		{"load", failing, all, Preprocess{Crop: 8}, nil, "mem[2]: cannot load"},
		{"first-load", failing, []int{2, 0}, Preprocess{}, nil, "mem[2]: cannot load"},
		{"crop", ds, all, Preprocess{Crop: 9}, nil, "mem[0]: image of 10x8 is smaller than the 9x9 crop"},
		{"range", ds, []int{0, 8}, Preprocess{}, nil, "image 8 out of range"},
		{"negative", ds, []int{-1}, Preprocess{}, nil, "image -1 out of range"},
		{"empty", ds, nil, Preprocess{}, nil, "no images"},
		{"cancelled", ds, all, Preprocess{Crop: 8}, cancelled, context.Canceled.Error()},
	}
	for _, tt := range tests {
		for _, workers := range []int{1, 4} {
			t.Run(fmt.Sprintf("%s/workers%d", tt.name, workers), func(t *testing.T) {
				ctx := tt.ctx
				if ctx == nil {
					ctx = context.Background()
				}
				_, _, _, err := LoadBatch(ctx, tt.ds, tt.idx, tt.p, workers)
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("error %v, want %q", err, tt.want)
				}
			})
		}
	}
	// Equal sizes without a crop: the images' own size.
	got, h, w, err := LoadBatch(context.Background(), ds, []int{0, 1, 2, 4}, Preprocess{}, 2)
	if err != nil || h != 8 || w != 10 || len(got) != 4*3*8*10 {
		t.Fatalf("equal sizes: %d values of 3x%dx%d, %v", len(got), h, w, err)
	}
}

// TestParseDataSpecRoutes checks that each spec form reaches its reader
// (seen through the reader's own error for a missing path).
func TestParseDataSpecRoutes(t *testing.T) {
	dir := t.TempDir()
	// One class with one image, so that the subset form gets past the folder.
	os.MkdirAll(filepath.Join(dir, "n01"), 0o755)
	var buf bytes.Buffer
	png.Encode(&buf, image.NewGray(image.Rect(0, 0, 2, 2)))
	os.WriteFile(filepath.Join(dir, "n01", "n01_1.png"), buf.Bytes(), 0o644)
	for spec, want := range map[string]string{
		"cifar10:" + dir + "/none:train":     "batches.meta.txt",
		dir + "@" + dir + "/1percent.txt":    "1percent.txt",
		"fashion-mnist:validation":           "validation",
		filepath.Join(dir, "no-such-folder"): "no-such-folder",
	} {
		_, err := ParseDataSpec(spec)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseDataSpec(%q): %v, want an error naming %q", spec, err, want)
		}
	}
}
