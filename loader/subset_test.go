package loader

import (
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeDatasetFiles writes each file of files (path relative to root ->
// contents) under root, creating folders as needed.
func writeDatasetFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// pngBytes encodes a w x h RGB image whose pixel (x, y) is (seed+x, seed+y,
// seed+x+y).
func pngBytes(t *testing.T, w, h int, seed uint8) string {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetNRGBA(x, y, color.NRGBA{seed + uint8(x), seed + uint8(y), seed + uint8(x+y), 255})
		}
	}
	var b strings.Builder
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// subsetFolder makes a three-class ImageNet-like training folder and returns
// its root.
func subsetFolder(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "train")
	files := map[string]string{}
	for _, n := range []string{
		"n01_1.png", "n01_2.png", "n01_10.png",
		"n02_5.png", "n02_7.png",
		"n03_1.png",
	} {
		class, _, _ := strings.Cut(n, "_")
		files[class+"/"+n] = pngBytes(t, 2, 2, uint8(len(files)*10+1))
	}
	files["n02/deep/n02_9.png"] = pngBytes(t, 2, 2, 99)
	writeDatasetFiles(t, root, files)
	return root
}

func TestOpenSubset(t *testing.T) {
	root := subsetFolder(t)
	folder, err := OpenImageFolder(root)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	list := filepath.Join(dir, "1percent.txt")
	// Out of order, with blank lines and a Windows line ending.
	writeDatasetFiles(t, dir, map[string]string{"1percent.txt": "n02_7.png\r\n\nn01_2.png\nn01_10.png\n"})
	s, err := OpenSubset(folder, list)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	var labels []int
	for i := range s.Len() {
		names = append(names, filepath.Base(s.Name(i)))
		labels = append(labels, s.Label(i))
	}
	// The folder's order: class, then file name as a string ("10" < "2").
	if want := []string{"n01_10.png", "n01_2.png", "n02_7.png"}; !reflect.DeepEqual(names, want) {
		t.Errorf("names %v, want %v", names, want)
	}
	if want := []int{0, 0, 1}; !reflect.DeepEqual(labels, want) {
		t.Errorf("labels %v, want %v", labels, want)
	}
	if !reflect.DeepEqual(s.Classes(), []string{"n01", "n02", "n03"}) {
		t.Errorf("classes %v", s.Classes())
	}
	img, err := s.Image(2)
	if err != nil {
		t.Fatal(err)
	}
	want, err := folder.Image(s.Index[2])
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ToRGB(img), ToRGB(want)) {
		t.Error("subset image 2 differs from the folder's image")
	}
	if _, err := s.Image(3); err == nil {
		t.Error("image 3 of 3: no error")
	}

	// The spec form gives the same subset.
	ds, err := ParseSubsetSpec(root + "@" + list)
	if err != nil {
		t.Fatal(err)
	}
	if got := ds.(*Subset); !reflect.DeepEqual(got.Index, s.Index) {
		t.Errorf("spec subset %v, want %v", got.Index, s.Index)
	}
}

func TestOpenSubsetErrors(t *testing.T) {
	root := subsetFolder(t)
	folder, err := OpenImageFolder(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, list string
		want       []string
	}{
		{"empty", "\n\n", []string{"lists no files"}},
		{"no prefix", "n01.png\n", []string{"line 1", "no class prefix"}},
		{"no class folder", "n01_1.png\nn09_1.png\n", []string{"line 2", `class "n09"`}},
		{"path", "n01_/../n02_5.png\n", []string{"not a plain file name"}},
		{"missing", "n01_1.png\nn01_3.png\nn01_4.png\nn02_1.png\nn03_2.png\n",
			[]string{"4 listed file(s) not in", "n01_3.png, n01_4.png, n02_1.png and 1 more"}},
		// A file below a sub-folder is no ImageNet training file.
		{"nested", "n02_9.png\n", []string{"n02_9.png"}},
		{"repeated", "n01_1.png\nn03_1.png\nn01_1.png\n", []string{"line 3", "repeats line 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeDatasetFiles(t, dir, map[string]string{"l.txt": tc.list})
			list := filepath.Join(dir, "l.txt")
			_, err := OpenSubset(folder, list)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range append(tc.want, list) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := OpenSubset(folder, filepath.Join(root, "none.txt")); err == nil || !strings.Contains(err.Error(), "none.txt: no such file") {
		t.Errorf("missing list: %v", err)
	}
	for _, spec := range []string{root, "@x.txt", root + "@", filepath.Join(root, "nope") + "@x.txt"} {
		if _, err := ParseSubsetSpec(spec); err == nil {
			t.Errorf("ParseSubsetSpec(%q): no error", spec)
		}
	}
}
