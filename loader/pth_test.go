package loader

import (
	"archive/zip"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/layers"
)

// The fixtures of testdata/pth/ are written by testdata/torch_pth.py
// (torch.save of PyTorch 1.13); manifest.json says what each must load as.

// pthManifest is testdata/pth/manifest.json.
type pthManifest struct {
	Files    map[string]map[string]any `json:"files"`
	ResNet18 [][]any                   `json:"resnet18"`
}

func readPthManifest(t *testing.T) pthManifest {
	t.Helper()
	raw, err := os.ReadFile("testdata/pth/manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	var m pthManifest
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// pthCheckTree compares a loaded value with the manifest's tree and returns
// how many tensor values it compared.
func pthCheckTree(t *testing.T, got any, want map[string]any, where string) int {
	t.Helper()
	if where == "" {
		where = "root"
	}
	n := 0
	switch {
	case want["dict"] != nil:
		d, ok := got.(*Dict)
		if !ok {
			t.Errorf("%s: got %T, want a dict", where, got)
			return 0
		}
		items := want["dict"].([]any)
		if len(d.Keys) != len(items) {
			t.Errorf("%s: %d keys %q, want %d", where, len(d.Keys), d.Keys, len(items))
			return 0
		}
		for i, it := range items {
			pair := it.([]any)
			key := pair[0].(string)
			if d.Keys[i] != key {
				t.Errorf("%s: key %d is %q, want %q", where, i, d.Keys[i], key)
				continue
			}
			n += pthCheckTree(t, d.Values[key], pair[1].(map[string]any), where+"."+key)
		}
	case want["list"] != nil:
		l, ok := got.([]any)
		items := want["list"].([]any)
		if !ok || len(l) != len(items) {
			t.Errorf("%s: got %#v, want a list of %d", where, got, len(items))
			return 0
		}
		for i, it := range items {
			n += pthCheckTree(t, l[i], it.(map[string]any), where+"["+strconv.Itoa(i)+"]")
		}
	case want["tensor"] != nil:
		w := want["tensor"].(map[string]any)
		h, ok := got.(layers.HostTensor)
		if !ok {
			t.Errorf("%s: got %T, want a tensor", where, got)
			return 0
		}
		shape := pthInts(w["shape"].([]any))
		if h.Shape == nil || !slices.Equal(h.Shape, shape) {
			t.Errorf("%s: shape %#v, want %v", where, h.Shape, shape)
			return 0
		}
		var vals []float32
		if bits, ok := w["bits"].([]any); ok {
			if h.Int64 {
				t.Errorf("%s: a float tensor loaded as integer", where)
			}
			for _, b := range pthInts(bits) {
				vals = append(vals, math.Float32frombits(uint32(b)))
			}
		} else {
			if !h.Int64 {
				t.Errorf("%s: an integer tensor loaded without Int64", where)
			}
			for _, v := range pthInts64(w["ints"].([]any)) {
				vals = append(vals, float32(v))
			}
		}
		if len(h.Data) != len(vals) {
			t.Errorf("%s: %d values, want %d", where, len(h.Data), len(vals))
			return 0
		}
		for i := range vals {
			if math.Float32bits(h.Data[i]) != math.Float32bits(vals[i]) {
				t.Errorf("%s[%d] = %v, want %v (bits %#x, want %#x)", where, i, h.Data[i], vals[i],
					math.Float32bits(h.Data[i]), math.Float32bits(vals[i]))
				return 0
			}
		}
		n += len(vals)
	case want["str"] != nil:
		if got != want["str"].(string) {
			t.Errorf("%s: got %#v, want string %q", where, got, want["str"])
		}
	case want["bytes"] != nil:
		w, err := hex.DecodeString(want["bytes"].(string))
		if err != nil || got != string(w) {
			t.Errorf("%s: got %#v, want bytes %q as a string", where, got, w)
		}
	case want["int"] != nil:
		w, _ := want["int"].(json.Number).Int64()
		if got != w {
			t.Errorf("%s: got %#v, want int64 %d", where, got, w)
		}
	case want["float"] != nil:
		w, _ := want["float"].(json.Number).Float64()
		if got != w {
			t.Errorf("%s: got %#v, want float64 %v", where, got, w)
		}
	case want["bool"] != nil:
		if got != want["bool"].(bool) {
			t.Errorf("%s: got %#v, want %v", where, got, want["bool"])
		}
	case want["none"] != nil:
		if got != nil {
			t.Errorf("%s: got %#v, want nil", where, got)
		}
	default:
		t.Fatalf("%s: bad manifest node %v", where, want)
	}
	return n
}

func pthInts(a []any) []int {
	out := make([]int, len(a))
	for i, v := range a {
		n, _ := v.(json.Number).Int64()
		out[i] = int(n)
	}
	return out
}

func pthInts64(a []any) []int64 {
	out := make([]int64, len(a))
	for i, v := range a {
		out[i], _ = v.(json.Number).Int64()
	}
	return out
}

// TestReadPthFixtures loads every fixture, in both formats, and compares
// every value with what PyTorch says it holds; hostile files must be
// refused naming the global, truncated ones must fail.
func TestReadPthFixtures(t *testing.T) {
	m := readPthManifest(t)
	if len(m.Files) < 9 {
		t.Fatalf("manifest lists %d files", len(m.Files))
	}
	for name, want := range m.Files {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata/pth", name)
			got, err := ReadPth(path)
			switch {
			case want["refused"] != nil:
				var refused *RefusedGlobalError
				if !errors.As(err, &refused) {
					t.Fatalf("got %v, want a refusal", err)
				}
				if full := refused.Module + "." + refused.Name; full != want["refused"] {
					t.Errorf("refused %s, want %s", full, want["refused"])
				}
				for _, s := range []string{path, want["refused"].(string), "only weights are loaded", "weights_only=True"} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not say %q", err, s)
					}
				}
			case want["error"] != nil:
				if err == nil {
					t.Fatal("loaded a truncated file")
				}
				if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "truncated") {
					t.Errorf("error %q does not name the file and say truncated", err)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if n := pthCheckTree(t, got, want, ""); n < 20 {
					t.Errorf("compared only %d tensor values", n)
				}
			}
		})
	}
}

// TestReadPthViews checks the views of the state-dict fixture directly:
// the transposed and sliced tensors must be materialised row-major, and the
// two tensors sharing a storage must hold its two parts.
func TestReadPthViews(t *testing.T) {
	for _, name := range []string{"state_dict_zip.pth", "state_dict_legacy.pth"} {
		v, err := ReadPth(filepath.Join("testdata/pth", name))
		if err != nil {
			t.Fatal(err)
		}
		d := v.(*Dict)
		tr := d.Values["transposed"].(layers.HostTensor)
		if !slices.Equal(tr.Shape, []int{5, 3}) || tr.Data[1] == tr.Data[3] {
			t.Errorf("%s: transposed %v %v", name, tr.Shape, tr.Data)
		}
		sc := d.Values["scalar"].(layers.HostTensor)
		if sc.Shape == nil || len(sc.Shape) != 0 || len(sc.Data) != 1 || sc.Data[0] == 0 {
			t.Errorf("%s: 0-d tensor %#v", name, sc)
		}
		a, b := d.Values["shared_a"].(layers.HostTensor), d.Values["shared_b"].(layers.HostTensor)
		if len(a.Data) != 4 || len(b.Data) != 6 || a.Data[3] == b.Data[0] {
			t.Errorf("%s: shared storage views %v %v", name, a.Data, b.Data)
		}
		nb := d.Values["num_batches_tracked"].(layers.HostTensor)
		if !nb.Int64 || nb.Data[0] != 123457 {
			t.Errorf("%s: num_batches_tracked %#v", name, nb)
		}
	}
}

// pthRezip copies the zip fixture src, letting edit rename, change or drop
// (empty name) each record.
func pthRezip(t *testing.T, src string, edit func(name string, data []byte) (string, []byte)) []byte {
	t.Helper()
	zr, err := zip.OpenReader(src)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		name, data := edit(f.Name, data)
		if name == "" {
			continue
		}
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestReadPthErrors checks that bad files give an error naming the file
// and saying what is wrong.
func TestReadPthErrors(t *testing.T) {
	dir := t.TempDir()
	legacy, err := os.ReadFile("testdata/pth/checkpoint_legacy.pth")
	if err != nil {
		t.Fatal(err)
	}
	zipped := "testdata/pth/state_dict_zip.pth"
	cases := []struct {
		name string
		data []byte // nil: the file does not exist
		want string
	}{
		{"missing.pth", nil, "no such file"},
		{"empty.pth", []byte{}, "empty"},
		{"text.pth", []byte("hello, world\n"), "not a PyTorch checkpoint"},
		{"plain_pickle.pth", []byte("\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s."), "magic number"},
		{"truncated_legacy.pth", legacy[:len(legacy)-3], "truncated"},
		{"truncated_legacy_header.pth", legacy[:40], "truncated"},
		{"truncated_zip.pth", pthMustRead(t, zipped)[:1000], "truncated or corrupt zip"},
		{"no_storage.pth", pthRezip(t, zipped, func(name string, data []byte) (string, []byte) {
			if strings.HasSuffix(name, "/data/0") {
				return "", nil
			}
			return name, data
		}), `storage "0" is missing`},
		{"short_storage.pth", pthRezip(t, zipped, func(name string, data []byte) (string, []byte) {
			if strings.HasSuffix(name, "/data/0") {
				return name, data[:len(data)-4]
			}
			return name, data
		}), "holds 44 bytes, 48 needed"},
		{"short_view.pth", pthRezip(t, zipped, func(name string, data []byte) (string, []byte) {
			if strings.HasSuffix(name, "/data.pkl") {
				// The first tensor's size (3, 4) becomes (3, 5): its view
				// reaches past its storage of 12 values.
				return name, bytes.Replace(data, []byte("K\x03K\x04\x86"), []byte("K\x03K\x05\x86"), 1)
			}
			return name, data
		}), "too few for a tensor"},
		{"no_data_pkl.pth", pthRezip(t, zipped, func(name string, data []byte) (string, []byte) {
			if strings.HasSuffix(name, "/data.pkl") {
				return "", nil
			}
			return name, data
		}), "has no state_dict_zip/data.pkl"},
		{"big_endian.pth", pthRezip(t, zipped, func(name string, data []byte) (string, []byte) {
			if strings.HasSuffix(name, "/version") {
				return strings.TrimSuffix(name, "version") + "byteorder", []byte("big")
			}
			return name, data
		}), "byte order"},
		{"torchscript.pth", pthRezip(t, zipped, func(name string, data []byte) (string, []byte) {
			if strings.HasSuffix(name, "/data.pkl") {
				return strings.TrimSuffix(name, "data.pkl") + "constants.pkl", data
			}
			return name, data
		}), "TorchScript"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name)
			if c.data != nil {
				if err := os.WriteFile(path, c.data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			v, err := ReadPth(path)
			if err == nil {
				t.Fatalf("loaded %T", v)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q: want the file name and %q", err, c.want)
			}
		})
	}
}

func pthMustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDecodePthCorrupt truncates valid checkpoints at every offset and
// flips every byte: each case must give an error or a value, never panic,
// and every truncation must give an error.
func TestDecodePthCorrupt(t *testing.T) {
	for _, name := range []string{"state_dict_zip.pth", "checkpoint_legacy.pth", "checkpoint_zip.pth"} {
		data := pthMustRead(t, filepath.Join("testdata/pth", name))
		for n := 0; n < len(data); n++ {
			if _, err := DecodePth(bytes.NewReader(data[:n]), int64(n), name); err == nil {
				t.Errorf("%s cut at %d of %d bytes loaded", name, n, len(data))
			}
		}
		var loaded, failed int
		buf := make([]byte, len(data))
		for i := range data {
			copy(buf, data)
			buf[i] ^= 0xff
			if _, err := DecodePth(bytes.NewReader(buf), int64(len(buf)), name); err != nil {
				failed++
			} else {
				loaded++
			}
		}
		// Flips in tensor values load (the legacy format has no checksum);
		// flips in the structure fail.
		if failed == 0 {
			t.Errorf("%s: no byte flip failed (%d loaded)", name, loaded)
		}
	}
}

// FuzzDecodePth checks that no input makes the decoder panic.
func FuzzDecodePth(f *testing.F) {
	for _, name := range []string{"state_dict_zip.pth", "state_dict_legacy.pth", "hostile_pickle.pkl", "checkpoint_legacy.pth"} {
		data, err := os.ReadFile(filepath.Join("testdata/pth", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		DecodePth(bytes.NewReader(data), int64(len(data)), "fuzz")
	})
}
