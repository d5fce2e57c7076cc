package loader

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/layers"
)

// pthRandTensor returns a tensor of shape with normal random values.
func pthRandTensor(rng *rand.Rand, shape ...int) layers.HostTensor {
	n := 1
	for _, s := range shape {
		n *= s
	}
	data := make([]float32, n)
	for i := range data {
		data[i] = float32(rng.NormFloat64())
	}
	return layers.HostTensor{Shape: append([]int{}, shape...), Data: data}
}

// pthStateDict is a small state dict with the kinds of entries a model's
// has: weights, a 0-d float, an integer counter, an empty tensor.
func pthStateDict(rng *rand.Rand) *Dict {
	d := NewDict()
	d.Set("conv1.weight", pthRandTensor(rng, 4, 3, 3, 3))
	d.Set("bn1.weight", pthRandTensor(rng, 4))
	d.Set("bn1.running_var", pthRandTensor(rng, 4))
	d.Set("bn1.num_batches_tracked", layers.HostTensor{Shape: []int{}, Data: []float32{1234567}, Int64: true})
	d.Set("fc.weight", pthRandTensor(rng, 10, 4))
	d.Set("fc.bias", pthRandTensor(rng, 10))
	d.Set("temperature", pthRandTensor(rng))
	d.Set("empty", layers.HostTensor{Shape: []int{0, 3}, Data: []float32{}})
	d.Set("steps", layers.HostTensor{Shape: []int{3}, Data: []float32{-5, 0, 1 << 30}, Int64: true})
	return d
}

// pthCheckpoint is a full training checkpoint: run metadata, the model's
// state dict and an optimizer's state keyed by parameter index.
func pthCheckpoint(rng *rand.Rand) *Dict {
	state := NewDict()
	for _, k := range []string{"0", "1", "5"} {
		s := NewDict()
		s.Set("momentum_buffer", pthRandTensor(rng, 2, 3))
		state.Set(k, s)
	}
	group := NewDict()
	group.Set("lr", 0.1)
	group.Set("momentum", 0.9)
	group.Set("weight_decay", 1e-6)
	group.Set("nesterov", false)
	group.Set("maximize", true)
	group.Set("foreach", nil)
	group.Set("params", []any{int64(0), int64(1), int64(5)})
	opt := NewDict()
	opt.Set("state", state)
	opt.Set("param_groups", []any{group})
	d := NewDict()
	d.Set("epoch", int64(3))
	d.Set("arch", "resnet50")
	d.Set("model", pthStateDict(rng))
	d.Set("optimizer", opt)
	d.Set("ints", []any{int64(-1), int64(255), int64(256), int64(65535), int64(65536), int64(-129),
		int64(math.MaxInt32), int64(math.MinInt32), int64(math.MaxInt32) + 1, int64(math.MinInt32) - 1,
		int64(1) << 40, int64(math.MaxInt64), int64(math.MinInt64), int64(-1) << 40})
	d.Set("floats", []any{-1.5e-7, 0.0, 1e300, 3.0})
	d.Set("name", "résumé ✓")
	d.Set("empty_list", []any{})
	d.Set("empty_dict", NewDict())
	d.Set("nested", []any{[]any{"a", nil, true}, NewDict()})
	return d
}

// pthSame compares a value read back with the one written (float32
// values by their bits).
func pthSame(t *testing.T, got, want any, where string) {
	t.Helper()
	switch w := want.(type) {
	case *Dict:
		g, ok := got.(*Dict)
		if !ok || strings.Join(g.Keys, ",") != strings.Join(w.Keys, ",") {
			t.Errorf("%s: got %#v, want keys %q", where, got, w.Keys)
			return
		}
		for _, k := range w.Keys {
			pthSame(t, g.Values[k], w.Values[k], where+"."+k)
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			t.Errorf("%s: got %#v, want %#v", where, got, w)
			return
		}
		for i := range w {
			pthSame(t, g[i], w[i], where+"[]")
		}
	case layers.HostTensor:
		g, ok := got.(layers.HostTensor)
		if !ok || g.Int64 != w.Int64 || g.Shape == nil || !slices.Equal(g.Shape, w.Shape) || len(g.Data) != len(w.Data) {
			t.Errorf("%s: got %#v, want %v", where, got, w.Shape)
			return
		}
		for i := range w.Data {
			if math.Float32bits(g.Data[i]) != math.Float32bits(w.Data[i]) {
				t.Errorf("%s[%d] = %v, want %v", where, i, g.Data[i], w.Data[i])
				return
			}
		}
	default:
		if got != want {
			t.Errorf("%s: got %#v, want %#v", where, got, want)
		}
	}
}

// TestWritePthRoundTrip writes checkpoints and reads them back.
func TestWritePthRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	dir := t.TempDir()
	for name, d := range map[string]*Dict{"state_dict": pthStateDict(rng), "checkpoint": pthCheckpoint(rng)} {
		path := filepath.Join(dir, name+".pth")
		if err := WritePth(path, d); err != nil {
			t.Fatal(err)
		}
		got, err := ReadPth(path)
		if err != nil {
			t.Fatal(err)
		}
		pthSame(t, got, d, name)
	}
}

// TestWritePthLayout checks the archive against what torch's writer
// produces: records in one folder, data.pkl first, one storage record per
// tensor, version "3\n", stored uncompressed with data aligned to 64 bytes.
func TestWritePthLayout(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	path := filepath.Join(t.TempDir(), "ckpt.pth")
	if err := WritePth(path, pthCheckpoint(rng)); err != nil {
		t.Fatal(err)
	}
	zr, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
		if f.Method != zip.Store {
			t.Errorf("%s: method %d", f.Name, f.Method)
		}
		off, err := f.DataOffset()
		if err != nil {
			t.Fatal(err)
		}
		if off%64 != 0 {
			t.Errorf("%s: data at offset %d", f.Name, off)
		}
	}
	// 9 tensors in the model, 3 momentum buffers.
	want := "archive/data.pkl archive/data/0 archive/data/1 archive/data/2 archive/data/3 archive/data/4 archive/data/5 " +
		"archive/data/6 archive/data/7 archive/data/8 archive/data/9 archive/data/10 archive/data/11 archive/version"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("records %s\nwant %s", got, want)
	}
	rc, err := zr.File[len(zr.File)-1].Open()
	if err != nil {
		t.Fatal(err)
	}
	v, _ := io.ReadAll(rc)
	rc.Close()
	if string(v) != "3\n" {
		t.Errorf("version %q", v)
	}
}

// TestWritePthErrors checks that values the format cannot hold are
// reported with their place, and that a failed write leaves the old file.
func TestWritePthErrors(t *testing.T) {
	cyclic := NewDict()
	cyclic.Set("self", cyclic)
	bad := func(key string, v any) *Dict {
		d := NewDict()
		d.Set("model", NewDict())
		d.Values["model"].(*Dict).Set(key, v)
		return d
	}
	cases := []struct {
		name string
		root *Dict
		want string
	}{
		{"nil", nil, "nil checkpoint"},
		{"shape", bad("w", layers.HostTensor{Shape: []int{2, 3}, Data: make([]float32, 5)}), "model.w: tensor of shape [2 3] holds 5 values, not 6"},
		{"type", bad("w", int32(3)), "model.w: values of type int32"},
		{"fractional int64", bad("n", layers.HostTensor{Shape: []int{}, Data: []float32{1.5}, Int64: true}), "model.n: int64 tensor holds 1.5"},
		{"utf-8", bad("s", "\xff"), "model.s: string is not valid UTF-8"},
		{"cycle", cyclic, "nested more than"},
		{"unset key", &Dict{Keys: []string{"a"}, Values: map[string]any{"b": 1.0}}, `key "a" has no value`},
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "old.pth")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		err := WritePth(path, c.root)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Errorf("a failed write changed the file: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("a failed write left %d files", len(ents))
	}
}

// pthExpect describes v as torch_pth.py's check mode expects it: dicts
// at the paths in intKeyed have int keys, dicts of tensors are
// OrderedDicts, tensors of more than 64 values are compared by hash.
func pthExpect(v any, path string, intKeyed map[string]bool) any {
	switch v := v.(type) {
	case *Dict:
		items := []any{}
		ordered := len(v.Keys) > 0
		for _, k := range v.Keys {
			var key any = k
			if intKeyed[path] {
				key = json.Number(k)
			}
			sub := k
			if path != "" {
				sub = path + "." + k
			}
			items = append(items, []any{key, pthExpect(v.Values[k], sub, intKeyed)})
			if _, ok := v.Values[k].(layers.HostTensor); !ok {
				ordered = false
			}
		}
		return map[string]any{"dict": items, "ordered": ordered}
	case []any:
		items := []any{}
		for _, x := range v {
			items = append(items, pthExpect(x, path+"[]", intKeyed))
		}
		return map[string]any{"list": items}
	case layers.HostTensor:
		w := map[string]any{"shape": append([]int{}, v.Shape...), "dtype": "float32"}
		var raw []byte
		if v.Int64 {
			w["dtype"] = "int64"
			ints := []int64{}
			for _, x := range v.Data {
				ints = append(ints, int64(x))
				raw = binary.LittleEndian.AppendUint64(raw, uint64(int64(x)))
			}
			w["ints"] = ints
		} else {
			bits := []uint32{}
			for _, x := range v.Data {
				bits = append(bits, math.Float32bits(x))
				raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(x))
			}
			w["bits"] = bits
		}
		if len(v.Data) > 64 {
			sum := sha256.Sum256(raw)
			delete(w, "bits")
			delete(w, "ints")
			w["sha256"] = hex.EncodeToString(sum[:])
		}
		return map[string]any{"tensor": w}
	case string:
		return map[string]any{"str": v}
	case int64:
		return map[string]any{"int": v}
	case float64:
		return map[string]any{"float": v}
	case bool:
		return map[string]any{"bool": v}
	case nil:
		return map[string]any{"none": true}
	}
	panic("pthExpect: unexpected value")
}

// TestWritePthTorchLoads writes a state dict, a full checkpoint and a
// torchvision ResNet-18 state dict (names and shapes from the fixture
// manifest, random values) and has PyTorch 1.13 load them: torch.load must
// give back every value, the state dict must also pass
// torch.load(weights_only=True), and resnet18(num_classes=10) must take the
// ResNet-18 one with load_state_dict(strict=True). PyTorch runs only when
// the files (deterministic) are not in the oracle cache.
func TestWritePthTorchLoads(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	resnet := NewDict()
	for _, e := range readPthManifest(t).ResNet18 {
		var shape []int
		for _, s := range e[1].([]any) {
			n, _ := s.(json.Number).Int64()
			shape = append(shape, int(n))
		}
		h := pthRandTensor(rng, shape...)
		if e[2] == "int64" {
			h.Int64 = true
			for i := range h.Data {
				h.Data[i] = float32(rng.IntN(1000))
			}
		}
		resnet.Set(e[0].(string), h)
	}
	if len(resnet.Keys) < 100 {
		t.Fatalf("ResNet-18 manifest of %d entries", len(resnet.Keys))
	}
	files := []struct {
		name      string
		root      *Dict
		intKeyed  map[string]bool
		extraKeys map[string]any
	}{
		{"state_dict", pthStateDict(rng), nil, map[string]any{"weights_only": true}},
		{"checkpoint", pthCheckpoint(rng), map[string]bool{"optimizer.state": true}, nil},
		{"resnet18", resnet, nil, map[string]any{"weights_only": true, "resnet18": true}},
	}
	script, err := os.ReadFile("testdata/torch_pth.py")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	parts := [][]byte{script}
	for _, f := range files {
		if err := WritePth(filepath.Join(dir, f.name+".pth"), f.root); err != nil {
			t.Fatal(err)
		}
		want := map[string]any{"expect": pthExpect(f.root, "", f.intKeyed)}
		for k, v := range f.extraKeys {
			want[k] = v
		}
		js, err := json.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.name+".json"), js, 0o644); err != nil {
			t.Fatal(err)
		}
		pth, err := os.ReadFile(filepath.Join(dir, f.name+".pth"))
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, []byte(f.name), pth, js)
	}
	cache, done := oracle.CacheDir(t, parts...)
	if done {
		return
	}
	py := oracle.Python(t, "torch", "torchvision", "numpy")
	out := oracle.RunFile(t, py, "testdata/torch_pth.py", "check", dir)
	for _, f := range files {
		if !bytes.Contains(out, []byte("ok "+f.name+"\n")) {
			os.RemoveAll(cache)
			t.Fatalf("PyTorch did not check %s:\n%s", f.name, out)
		}
	}
	oracle.MarkDone(t, cache)
}
