package loader

import (
	"context"
	"fmt"
	"image"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// cifarPixel is the test batches' value of channel ch at (x, y) of the
// image with global index n.
func cifarPixel(n, ch, x, y int) uint8 { return uint8(7*n + 85*ch + 3*x + 5*y) }

// writeCIFAR writes a CIFAR-10 binary directory whose batch files hold the
// given numbers of records (train files first, then test_batch.bin), with
// labels n % 10 for global record n, and returns it.
func writeCIFAR(t *testing.T, counts []int) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"batches.meta.txt": "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n",
	}
	names := []string{"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"}
	n := 0
	for f, count := range counts {
		var b []byte
		for range count {
			b = append(b, byte(n%10))
			for ch := range 3 {
				for y := range 32 {
					for x := range 32 {
						b = append(b, cifarPixel(n, ch, x, y))
					}
				}
			}
			n++
		}
		files[names[f]] = string(b)
	}
	writeDatasetFiles(t, dir, files)
	return dir
}

func TestOpenCIFAR10(t *testing.T) {
	counts := []int{2, 1, 2, 1, 2, 2}
	dir := writeCIFAR(t, counts)
	for _, tc := range []struct {
		split    string
		first, n int // global record number of image 0, count
		lastName string
	}{
		{"train", 0, 8, "data_batch_5.bin[1]"},
		{"test", 8, 2, "test_batch.bin[1]"},
	} {
		ds, err := ParseCIFARSpec("cifar10:" + dir + ":" + tc.split)
		if err != nil {
			t.Fatal(err)
		}
		if ds.Len() != tc.n {
			t.Fatalf("%s: %d images, want %d", tc.split, ds.Len(), tc.n)
		}
		if len(ds.Classes()) != 10 || ds.Classes()[9] != "truck" {
			t.Errorf("classes %v", ds.Classes())
		}
		if got, want := ds.Name(tc.n-1), filepath.Join(dir, tc.lastName); got != want {
			t.Errorf("name %q, want %q", got, want)
		}
		for i := range ds.Len() {
			g := tc.first + i
			if ds.Label(i) != g%10 {
				t.Errorf("%s label %d = %d, want %d", tc.split, i, ds.Label(i), g%10)
			}
			img, err := ds.Image(i)
			if err != nil {
				t.Fatal(err)
			}
			if img.Bounds() != image.Rect(0, 0, 32, 32) {
				t.Fatalf("bounds %v", img.Bounds())
			}
			rgb := ToRGB(img)
			for _, p := range [][2]int{{0, 0}, {31, 0}, {0, 31}, {17, 9}, {31, 31}} {
				x, y := p[0], p[1]
				got := rgb.Pix[3*(y*32+x) : 3*(y*32+x)+3]
				want := []uint8{cifarPixel(g, 0, x, y), cifarPixel(g, 1, x, y), cifarPixel(g, 2, x, y)}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s image %d at (%d,%d): %v, want %v", tc.split, i, x, y, got, want)
				}
			}
			if r, _, _, a := img.At(31, 31).RGBA(); r>>8 != uint32(cifarPixel(g, 0, 31, 31)) || a != 0xffff {
				t.Errorf("At(31,31): r %d a %d", r>>8, a)
			}
		}
		if _, err := ds.Image(tc.n); err == nil {
			t.Errorf("%s: image %d of %d: no error", tc.split, tc.n, tc.n)
		}
	}
}

func TestOpenCIFAR10Errors(t *testing.T) {
	good := []int{1, 1, 1, 1, 1, 1}
	for _, tc := range []struct {
		name   string
		change func(dir string) error
		split  string
		want   string
	}{
		{"split", nil, "val", `unknown split "val"`},
		{"no meta", func(d string) error { return os.Remove(filepath.Join(d, "batches.meta.txt")) }, "test", "batches.meta.txt not found"},
		{"empty meta", func(d string) error {
			return os.WriteFile(filepath.Join(d, "batches.meta.txt"), []byte("\n \n"), 0o644)
		}, "test", "0 class names"},
		{"no batch", func(d string) error { return os.Remove(filepath.Join(d, "data_batch_3.bin")) }, "train", "data_batch_3.bin not found"},
		{"truncated", func(d string) error { return os.Truncate(filepath.Join(d, "data_batch_2.bin"), 3000) }, "train", "data_batch_2.bin: 3000 bytes is not a whole number"},
		{"empty batch", func(d string) error { return os.Truncate(filepath.Join(d, "test_batch.bin"), 0) }, "test", "test_batch.bin: 0 bytes"},
		{"label", func(d string) error {
			return os.WriteFile(filepath.Join(d, "batches.meta.txt"), []byte("a\nb\nc\n"), 0o644)
		}, "train", "data_batch_4.bin: record 0 has label 3, but"},
		{"directory", func(d string) error {
			p := filepath.Join(d, "test_batch.bin")
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Mkdir(p, 0o755)
		}, "test", "test_batch.bin: not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeCIFAR(t, good)
			if tc.change != nil {
				if err := tc.change(dir); err != nil {
					t.Fatal(err)
				}
			}
			_, err := OpenCIFAR10(dir, tc.split)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	for _, spec := range []string{"cifar10:", "cifar10::test", "cifar10:dir", "cifar:dir:test", fmt.Sprintf("cifar10:%s:test", t.TempDir())} {
		if _, err := ParseCIFARSpec(spec); err == nil {
			t.Errorf("ParseCIFARSpec(%q): no error", spec)
		}
	}
}

// TestCIFARLoadBatch loads a balanced selection of CIFAR-10 through
// LoadBatch, as embedding it would, and checks each image's tensor.
func TestCIFARLoadBatch(t *testing.T) {
	c, err := OpenCIFAR10(writeCIFAR(t, []int{4, 4, 4, 4, 4, 1}), "train")
	if err != nil {
		t.Fatal(err)
	}
	idx, err := BalancedSubset(c, 0.5, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(idx) != 10 { // 2 of each class, one chosen
		t.Fatalf("chose %d of 20: %v", len(idx), idx)
	}
	sel := Select(c, idx)
	all := make([]int, sel.Len())
	for i := range all {
		all[i] = i
	}
	got, h, w, err := LoadBatch(context.Background(), sel, all, Preprocess{}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if h != 32 || w != 32 {
		t.Fatalf("batch of %dx%d", h, w)
	}
	for k, i := range idx {
		img, err := c.Image(i)
		if err != nil {
			t.Fatal(err)
		}
		want, _, _, err := Preprocess{}.Apply(img)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got[k*3*32*32:(k+1)*3*32*32], want) {
			t.Errorf("batch image %d is not CIFAR image %d", k, i)
		}
	}
}
