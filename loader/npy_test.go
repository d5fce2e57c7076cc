package loader

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
)

func TestNpyRoundTrip(t *testing.T) {
	for _, shape := range [][]int{{1}, {7}, {3, 5}, {2, 3, 4}, {1, 1, 1, 1}} {
		n := 1
		for _, s := range shape {
			n *= s
		}
		data := make([]float32, n)
		for i := range data {
			data[i] = float32(math.Sin(float64(i)+0.5)) * 3
		}
		var buf bytes.Buffer
		if err := EncodeNpy(&buf, shape, data); err != nil {
			t.Fatal(err)
		}
		if hdr := buf.Len() - 4*n; hdr%64 != 0 {
			t.Errorf("shape %v: header of %d bytes is not 64-aligned", shape, hdr)
		}
		a, err := DecodeNpy(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if a.DType != "<f4" || len(a.Shape) != len(shape) {
			t.Fatalf("shape %v: decoded %v %s", shape, a.Shape, a.DType)
		}
		for i, v := range a.Float32() {
			if v != data[i] {
				t.Fatalf("shape %v: element %d = %v, want %v", shape, i, v, data[i])
			}
		}
	}
}

// TestNpyNumpy checks that numpy reads what we write and that we read what
// numpy writes, in float32 and float64 and in header versions 1 and 2.
func TestNpyNumpy(t *testing.T) {
	py := oracle.Python(t, "numpy")
	dir := t.TempDir()
	ours := filepath.Join(dir, "ours.npy")
	data := []float32{1.5, -2.25, 3e-8, 4e7, 0.1, -0.3}
	if err := WriteNpy(ours, []int{2, 3}, data); err != nil {
		t.Fatal(err)
	}
	out := oracle.Run(t, py, `
import sys, numpy as np
a = np.load(sys.argv[1])
assert a.dtype == np.float32 and a.shape == (2, 3), (a.dtype, a.shape)
print(" ".join(repr(float(v)) for v in a.ravel()))
`, ours)
	for i, f := range strings.Fields(string(out)) {
		v, _ := strconv.ParseFloat(f, 64)
		if float32(v) != data[i] {
			t.Errorf("numpy read element %d as %v, want %v", i, v, data[i])
		}
	}

	oracle.Run(t, py, `
import sys, numpy as np
from numpy.lib import format
d = sys.argv[1]
a = (np.arange(2*3*5, dtype=np.float64).reshape(2, 3, 5) - 7) / 3
np.save(d + "/f8.npy", a)
np.save(d + "/f4.npy", a.astype(np.float32))
with open(d + "/v2.npy", "wb") as f:
    format.write_array(f, a.astype(np.float32), version=(2, 0))
np.save(d + "/fortran.npy", np.asfortranarray(a))
np.save(d + "/int.npy", np.arange(4, dtype=np.int32))
np.save(d + "/i8.npy", np.array([3, -1, 1 << 40], dtype=np.int64))
`, dir)
	if a, err := ReadNpy(filepath.Join(dir, "i8.npy")); err != nil || a.DType != "<i8" || fmt.Sprint(a.Data) != fmt.Sprint([]float64{3, -1, 1 << 40}) {
		t.Errorf("int64 array: %v, %v", a, err)
	}
	labels := filepath.Join(dir, "labels.npy")
	if err := WriteNpyInt64(labels, []int{3}, []int64{0, 9, 1 << 40}); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(oracle.Run(t, py, `
import sys, numpy as np
a = np.load(sys.argv[1])
print(a.dtype, a.tolist())
`, labels))); got != "int64 [0, 9, 1099511627776]" {
		t.Errorf("numpy read our int64 labels as %s", got)
	}
	for _, name := range []string{"f8", "f4", "v2"} {
		a, err := ReadNpy(filepath.Join(dir, name+".npy"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(a.Shape) != 3 || a.Shape[0] != 2 || a.Shape[1] != 3 || a.Shape[2] != 5 {
			t.Fatalf("%s: shape %v", name, a.Shape)
		}
		for i, v := range a.Data {
			want := (float64(i) - 7) / 3
			if name != "f8" {
				want = float64(float32(want))
			}
			if v != want {
				t.Fatalf("%s: element %d = %v, want %v", name, i, v, want)
			}
		}
	}
	for name, msg := range map[string]string{"fortran": "Fortran order", "int": "not supported"} {
		if _, err := ReadNpy(filepath.Join(dir, name+".npy")); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: got %v, want an error about %q", name, err, msg)
		}
	}
}

func TestNpyBadInput(t *testing.T) {
	dir := t.TempDir()
	var good bytes.Buffer
	EncodeNpy(&good, []int{4, 4}, make([]float32, 16))
	cases := map[string][]byte{
		"empty":     {},
		"text":      []byte("hello, this is not numpy"),
		"truncated": good.Bytes()[:good.Len()-5],
		"header":    good.Bytes()[:20],
	}
	for name, b := range cases {
		p := filepath.Join(dir, name+".npy")
		os.WriteFile(p, b, 0o644)
		if _, err := ReadNpy(p); err == nil {
			t.Errorf("%s: no error", name)
		} else if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
	}
	if _, err := ReadNpy(filepath.Join(dir, "missing.npy")); err == nil {
		t.Error("missing file: no error")
	}
}
