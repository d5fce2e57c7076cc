package loader

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"image"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
)

// fashionMNISTOrSkip skips the test when Debian's dataset-fashion-mnist is
// not installed (and fails under CI, where tools/setup.sh installs it).
func fashionMNISTOrSkip(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(FashionMNISTDir, "t10k-labels-idx1-ubyte.gz")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("dataset-fashion-mnist missing in CI: %v", err)
		}
		t.Skipf("dataset-fashion-mnist not installed: %v", err)
	}
}

// TestFashionMNISTMatchesNumpy reads both splits and compares counts, the
// first labels, the first image and digests of all images and labels with
// what Python's gzip and numpy read from the same files.
func TestFashionMNISTMatchesNumpy(t *testing.T) {
	fashionMNISTOrSkip(t)
	script, err := os.ReadFile("testdata/torch_preprocess.py")
	if err != nil {
		t.Fatal(err)
	}
	parts := [][]byte{script, []byte("fashion-mnist")}
	for _, f := range []string{"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"} {
		st, err := os.Stat(filepath.Join(FashionMNISTDir, f))
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, []byte(fmt.Sprintf("%s %d %d", f, st.Size(), st.ModTime().UnixNano())))
	}
	dir := oracle.Cached(t, []string{"numpy"}, func(py, dir string) {
		oracle.RunFile(t, py, "testdata/torch_preprocess.py", "fashion-mnist", dir, FashionMNISTDir)
	}, parts...)
	var want map[string]struct {
		Count            int
		Shape            []int
		FirstLabels      []int  `json:"first_labels"`
		FirstImageSHA256 string `json:"first_image_sha256"`
		FirstImageSum    int    `json:"first_image_sum"`
		ImagesSHA256     string `json:"images_sha256"`
		LabelsSHA256     string `json:"labels_sha256"`
	}
	oracle.ReadJSON(t, filepath.Join(dir, "fmnist.json"), &want)
	for split, count := range map[string]int{"train": 60000, "test": 10000} {
		t.Run(split, func(t *testing.T) {
			w := want[split]
			if w.Count != count {
				t.Fatalf("numpy read %d images, the data set has %d", w.Count, count)
			}
			ds, err := ParseDataSpec("fashion-mnist:" + split)
			if err != nil {
				t.Fatal(err)
			}
			m := ds.(*FashionMNIST)
			if m.Len() != count {
				t.Fatalf("%d images, want %d", m.Len(), count)
			}
			for i, l := range w.FirstLabels {
				if m.Label(i) != l {
					t.Errorf("label %d = %d, numpy %d", i, m.Label(i), l)
				}
			}
			img, err := m.Image(0)
			if err != nil {
				t.Fatal(err)
			}
			g, ok := img.(*image.Gray)
			if !ok || g.Rect != image.Rect(0, 0, 28, 28) {
				t.Fatalf("image 0 is %T %v, want a 28x28 *image.Gray", img, img.Bounds())
			}
			sum := 0
			for _, v := range g.Pix {
				sum += int(v)
			}
			first := sha256.Sum256(g.Pix)
			if hex.EncodeToString(first[:]) != w.FirstImageSHA256 || sum != w.FirstImageSum {
				t.Errorf("image 0: sum %d, numpy %d; digests differ: %v", sum, w.FirstImageSum, hex.EncodeToString(first[:]) != w.FirstImageSHA256)
			}
			all := sha256.Sum256(m.images)
			labels := sha256.Sum256(m.labels)
			if hex.EncodeToString(all[:]) != w.ImagesSHA256 || hex.EncodeToString(labels[:]) != w.LabelsSHA256 {
				t.Error("the digests of all images and labels differ from numpy's")
			}
			if len(ds.Classes()) != 10 || ds.Classes()[0] != "T-shirt/top" || ds.Classes()[9] != "Ankle boot" {
				t.Errorf("classes %q", ds.Classes())
			}
			if ds.Name(7) != "fashion-mnist:"+split+"[7]" {
				t.Errorf("name %q", ds.Name(7))
			}
			// Image returns a copy.
			g.Pix[0] ^= 0xff
			again, _ := m.Image(0)
			if again.(*image.Gray).Pix[0] == g.Pix[0] {
				t.Error("Image shares its pixels with the data set")
			}
		})
	}
}

// idxGz builds a gzipped IDX file of unsigned bytes.
func idxGz(magic uint32, dims []uint32, data []byte, trailing []byte) []byte {
	var raw bytes.Buffer
	binary.Write(&raw, binary.BigEndian, magic)
	for _, d := range dims {
		binary.Write(&raw, binary.BigEndian, d)
	}
	raw.Write(data)
	raw.Write(trailing)
	var out bytes.Buffer
	z := gzip.NewWriter(&out)
	z.Write(raw.Bytes())
	z.Close()
	return out.Bytes()
}

// TestReadFashionMNISTErrors writes small, damaged data sets and checks
// that each is refused with an error saying why.
func TestReadFashionMNISTErrors(t *testing.T) {
	const n = 3
	pix := make([]byte, n*28*28)
	for i := range pix {
		pix[i] = byte(i * 7)
	}
	goodImages := idxGz(idxImagesMagic, []uint32{n, 28, 28}, pix, nil)
	goodLabels := idxGz(idxLabelsMagic, []uint32{n}, []byte{9, 0, 4}, nil)
	tests := []struct {
		name           string
		images, labels []byte // nil: file missing
		want           string
	}{
		{"good", goodImages, goodLabels, ""},
		{"missing", nil, goodLabels, "install dataset-fashion-mnist (tools/setup.sh)"},
		{"not-gzip", []byte("plain bytes"), goodLabels, "not a gzip file"},
		{"swapped", goodLabels, goodImages, "bad IDX magic number 0x00000801, want 0x00000803"},
		{"truncated", idxGz(idxImagesMagic, []uint32{n, 28, 28}, pix[:100], nil), goodLabels, "truncated IDX data: 100 of 2352 bytes"},
		{"trailing", goodImages, idxGz(idxLabelsMagic, []uint32{n}, []byte{9, 0, 4}, []byte{1}), "trailing data"},
		{"short-header", idxGz(idxImagesMagic, []uint32{n}, nil, nil), goodLabels, "truncated IDX header"},
		{"huge", idxGz(idxImagesMagic, []uint32{1 << 27, 28, 28}, pix, nil), goodLabels, "IDX array too large"},
		{"size", idxGz(idxImagesMagic, []uint32{n * 4, 14, 14}, pix, nil), goodLabels, "not 28x28"},
		{"count", goodImages, idxGz(idxLabelsMagic, []uint32{2}, []byte{1, 2}, nil), "3 images but 2 labels"},
		{"label", goodImages, idxGz(idxLabelsMagic, []uint32{n}, []byte{1, 10, 2}, nil), "label 10 of image 1"},
		{"gzip-damaged", goodImages[:len(goodImages)-6], goodLabels, "fashion-mnist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, data := range map[string][]byte{"t10k-images-idx3-ubyte.gz": tt.images, "t10k-labels-idx1-ubyte.gz": tt.labels} {
				if data != nil {
					if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			m, err := ReadFashionMNIST(dir, "test")
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if m.Len() != n || m.Label(0) != 9 || m.Label(2) != 4 {
					t.Fatalf("%d images, labels %d %d", m.Len(), m.Label(0), m.Label(2))
				}
				img, err := m.Image(1)
				if err != nil || !bytes.Equal(img.(*image.Gray).Pix, pix[784:2*784]) {
					t.Fatalf("image 1 differs from the file's bytes (%v)", err)
				}
				if _, err := m.Image(n); err == nil {
					t.Fatal("image past the end: no error")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
	if _, err := ReadFashionMNIST(t.TempDir(), "val"); err == nil || !strings.Contains(err.Error(), `unknown split "val"`) {
		t.Errorf("split val: error %v", err)
	}
}
