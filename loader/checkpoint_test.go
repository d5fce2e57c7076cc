package loader

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/layers"
)

// testCheckpoint is a ResNet-18 with fc, projector, predictor and
// prototypes, counters that have counted, an optimizer state, and values
// whose bits must survive (-0, a NaN payload, a subnormal).
func testCheckpoint(t *testing.T) *Checkpoint {
	t.Helper()
	ctx := t.Context()
	r, _ := testResNet(t, 18, 10, 21)
	proj, _ := testMLP(t, 32, layers.MLPConfig{Spec: "6-6-5", LastBias: true, LastBN: true}, 22)
	pred, _ := testMLP(t, 5, layers.MLPConfig{Spec: "3-5", LastBias: true}, 23)
	protos, _ := testMLP(t, 5, layers.MLPConfig{Spec: "7"}, 24)
	p, err := ModelParts(ctx, r, map[string]*layers.MLP{HeadProjector: proj, HeadPredictor: pred, HeadPrototypes: protos})
	if err != nil {
		t.Fatal(err)
	}
	w := p.Backbone["conv1.weight"]
	w.Data[0] = float32(math.Copysign(0, -1))
	w.Data[1] = math.Float32frombits(0x7fc00abc)
	w.Data[2] = math.Float32frombits(1)
	p.Epoch = 17
	return &Checkpoint{
		Parts: *p,
		Meta:  map[string]string{MetaMethod: "simsiam", MetaStep: "4321", MetaArgs: `{"lr":0.05,"batch":512}`, MetaVersion: "0.1.0", MetaEpoch: "99"},
		OptState: &layers.OptimizerState{Steps: 4321, Tensors: map[string]layers.HostTensor{
			"0.0.momentum_buffer": {Shape: []int{2, 3}, Data: []float32{1.5, -2, 3e-8, 4, 5, 6}},
			"1.3.momentum_buffer": {Shape: []int{4}, Data: []float32{-7, 8, 9, 1e30}},
		}},
	}
}

func TestCheckpointRoundTrip(t *testing.T) {
	c := testCheckpoint(t)
	path := filepath.Join(t.TempDir(), "ckpt.safetensors")
	if err := WriteCheckpoint(path, c); err != nil {
		t.Fatal(err)
	}
	got, err := ReadCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Layout != LayoutE2MCVK || got.Arch != "resnet18" || got.Epoch != 17 || len(got.Notes) != 0 {
		t.Errorf("layout %q arch %q epoch %d notes %q", got.Layout, got.Arch, got.Epoch, got.Notes)
	}
	sameTensors(t, "backbone", got.Backbone, c.Backbone)
	if !slices.Equal(got.HeadNames(), c.HeadNames()) {
		t.Errorf("heads %v, want %v", got.HeadNames(), c.HeadNames())
	}
	for _, h := range c.HeadNames() {
		sameTensors(t, h, got.Heads[h], c.Heads[h])
	}
	for k, v := range map[string]string{
		MetaMethod: "simsiam", MetaStep: "4321", MetaArgs: `{"lr":0.05,"batch":512}`, MetaVersion: "0.1.0",
		MetaEpoch: "17", MetaArch: "resnet18", MetaFormat: "e2mcvk-checkpoint", MetaFormatVersion: "1",
	} {
		if got.Meta[k] != v {
			t.Errorf("meta %s = %q, want %q", k, got.Meta[k], v)
		}
	}
	if got.OptState == nil || got.OptState.Steps != 4321 {
		t.Fatalf("optimizer state %+v", got.OptState)
	}
	sameTensors(t, "optimizer", got.OptState.Tensors, c.OptState.Tensors)

	// The file read by hand, as the format is written down: counters are
	// I64, the rest F32, every byte of the data accounted for.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(raw)
	var header map[string]json.RawMessage
	if err := json.Unmarshal(raw[8:8+n], &header); err != nil {
		t.Fatal(err)
	}
	var meta map[string]string
	if err := json.Unmarshal(header["__metadata__"], &meta); err != nil {
		t.Fatal(err)
	}
	if meta[MetaMethod] != "simsiam" {
		t.Errorf("__metadata__ %v", meta)
	}
	var bytesCovered uint64
	for name, msg := range header {
		if name == "__metadata__" {
			continue
		}
		var info struct {
			DType   string   `json:"dtype"`
			Shape   []int    `json:"shape"`
			Offsets []uint64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(msg, &info); err != nil {
			t.Fatal(err)
		}
		if info.Shape == nil {
			t.Errorf("%s: shape is null", name)
		}
		want := "F32"
		if strings.HasSuffix(name, "num_batches_tracked") {
			want = "I64"
			v := int64(binary.LittleEndian.Uint64(raw[8+n+info.Offsets[0]:]))
			part, rel, _ := strings.Cut(name, ".")
			src := c.Backbone[rel]
			if part != "backbone" {
				src = c.Heads[part][rel]
			}
			if v != int64(src.Data[0]) || v == 0 || len(info.Shape) != 0 {
				t.Errorf("%s = %d shape %v, want %v and a scalar", name, v, info.Shape, src.Data)
			}
		}
		if info.DType != want {
			t.Errorf("%s is %s, want %s", name, info.DType, want)
		}
		bytesCovered += info.Offsets[1] - info.Offsets[0]
		if name == "backbone.conv1.weight" {
			if b := binary.LittleEndian.Uint32(raw[8+n+info.Offsets[0]+4:]); b != 0x7fc00abc {
				t.Errorf("NaN payload written as %#x", b)
			}
		}
	}
	if bytesCovered != uint64(len(raw))-8-n {
		t.Errorf("tensors cover %d bytes of %d", bytesCovered, uint64(len(raw))-8-n)
	}
	if _, ok := header["projector.7.running_mean"]; !ok {
		t.Errorf("no projector.7.running_mean in %d entries", len(header))
	}
	if _, ok := header["prototypes.weight"]; !ok {
		t.Error("no prototypes.weight")
	}
}

// TestCheckpointWithoutOptimizer writes a model alone: no optimizer file, no
// optimizer state read back, even with a stray optimizer file beside it.
func TestCheckpointWithoutOptimizer(t *testing.T) {
	c := testCheckpoint(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	if err := WriteCheckpoint(path, c); err != nil {
		t.Fatal(err)
	}
	c.OptState = nil
	c.Epoch = -1
	if err := WriteCheckpoint(path, c); err != nil {
		t.Fatal(err)
	}
	got, err := ReadCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.OptState != nil || got.Epoch != -1 || got.Meta[MetaEpoch] != "" || got.Meta[MetaOptimizerSHA256] != "" {
		t.Errorf("optimizer %v epoch %d meta %v", got.OptState, got.Epoch, got.Meta)
	}
	if OptimPath(path) != filepath.Join(dir, "model.optim.safetensors") || OptimPath("x.ckpt") != "x.ckpt.optim.safetensors" {
		t.Errorf("OptimPath = %q", OptimPath(path))
	}
}

// TestCheckpointAtomic checks that a failing write leaves the old files as
// they were, without temporary files, and that a model never takes another
// save's optimizer state.
func TestCheckpointAtomic(t *testing.T) {
	c := testCheckpoint(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "ckpt.safetensors")
	if err := WriteCheckpoint(path, c); err != nil {
		t.Fatal(err)
	}
	snapshot := func() map[string][]byte {
		out := map[string][]byte{}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			out[e.Name()] = b
		}
		return out
	}
	before := snapshot()
	if len(before) != 2 {
		t.Fatalf("files %v, want the model and its optimizer", slices.Sorted(maps.Keys(before)))
	}
	same := func(what string) {
		t.Helper()
		after := snapshot()
		if len(after) != len(before) {
			t.Errorf("%s: %d files, had %d", what, len(after), len(before))
		}
		for name, b := range before {
			if !bytes.Equal(after[name], b) {
				t.Errorf("%s: %s changed", what, name)
			}
		}
	}

	// Invalid model tensors: nothing is written, the optimizer file
	// included.
	bad := testCheckpoint(t)
	w := bad.Backbone["layer1.0.conv1.weight"]
	bad.Backbone["layer1.0.conv1.weight"] = layers.HostTensor{Shape: w.Shape, Data: w.Data[:len(w.Data)-1]}
	if err := WriteCheckpoint(path, bad); err == nil || !strings.Contains(err.Error(), "layer1.0.conv1.weight") {
		t.Errorf("short tensor: %v", err)
	}
	same("short tensor")
	bad = testCheckpoint(t)
	bad.OptState.Tensors["0.0.momentum_buffer"] = layers.HostTensor{Shape: []int{3}, Data: []float32{1}}
	if err := WriteCheckpoint(path, bad); err == nil {
		t.Error("short optimizer tensor written")
	}
	same("short optimizer tensor")
	bad = testCheckpoint(t)
	bad.Backbone["bn1.num_batches_tracked"] = layers.HostTensor{Shape: []int{}, Data: []float32{1.5}, Int64: true}
	if err := WriteCheckpoint(path, bad); err == nil {
		t.Error("fractional counter written")
	}
	same("fractional counter")
	bad = testCheckpoint(t)
	delete(bad.Backbone, "layer4.1.conv1.weight")
	if err := WriteCheckpoint(path, bad); err == nil || !strings.Contains(err.Error(), "[2 2 2 1]") {
		t.Errorf("a backbone that is no ResNet: %v", err)
	}
	same("no ResNet")
	bad = testCheckpoint(t)
	bad.Arch = "resnet34"
	if err := WriteCheckpoint(path, bad); err == nil || !strings.Contains(err.Error(), "resnet34") {
		t.Errorf("wrong arch: %v", err)
	}
	same("wrong arch")

	// A write that fails half-way through the file.
	err := writeAtomic(path, func(w io.Writer) error {
		if _, err := w.Write(before["ckpt.safetensors"][:100]); err != nil {
			return err
		}
		return errors.New("disk full")
	})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("failing write: %v", err)
	}
	same("failing write")

	// A save interrupted between its two renames: the new optimizer file
	// beside the old model. The model refuses it.
	newer := testCheckpoint(t)
	newer.OptState.Steps = 5000
	other := filepath.Join(t.TempDir(), "ckpt.safetensors")
	if err := WriteCheckpoint(other, newer); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(OptimPath(other))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(OptimPath(path), b, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ReadCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.OptState != nil || !strings.Contains(strings.Join(got.Notes, "\n"), "belongs to another checkpoint") {
		t.Errorf("stale optimizer: state %v notes %q", got.OptState, got.Notes)
	}
	// The optimizer file lost.
	os.Remove(OptimPath(path))
	got, err = ReadCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.OptState != nil || !strings.Contains(strings.Join(got.Notes, "\n"), "no optimizer state") {
		t.Errorf("missing optimizer: state %v notes %q", got.OptState, got.Notes)
	}
	sameTensors(t, "backbone", got.Backbone, c.Backbone)
}

// stFile assembles a safetensors file from a header and data.
func stFile(header string, data []byte) []byte {
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(out, header...), data...)
}

func TestSafetensorsCorrupt(t *testing.T) {
	var good bytes.Buffer
	ts := []NamedTensor{
		{Name: "a", Tensor: layers.HostTensor{Shape: []int{2, 2}, Data: []float32{1, 2, 3, 4}}},
		{Name: "n", Tensor: layers.HostTensor{Shape: []int{}, Data: []float32{5}, Int64: true}},
	}
	if err := EncodeSafetensors(&good, ts, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	raw := good.Bytes()
	if got, meta, err := DecodeSafetensors(raw); err != nil || len(got) != 2 || meta["k"] != "v" {
		t.Fatalf("good file: %v %v %v", got, meta, err)
	}
	for cut := range len(raw) {
		if _, _, err := DecodeSafetensors(raw[:cut]); err == nil {
			t.Errorf("truncated to %d of %d bytes: no error", cut, len(raw))
		}
	}
	data := make([]byte, 16)
	for _, tc := range []struct{ name, header string }{
		{"offsets past the end", `{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,1099511627776]}}`},
		{"offsets reversed", `{"a":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}}`},
		{"offsets with a gap", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`},
		{"overlapping tensors", `{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`},
		{"shape against size", `{"a":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}}`},
		{"overflowing shape", `{"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,16]}}`},
		{"negative shape", `{"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}`},
		{"unknown dtype", `{"a":{"dtype":"F8","shape":[16],"data_offsets":[0,16]}}`},
		{"unsupported dtype", `{"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}}`},
		{"huge counter", `{"a":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}`},
		{"metadata not strings", `{"__metadata__":{"epoch":3},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`},
		{"not JSON", `{"a":`},
		{"tensor not an object", `{"a":[1,2]}`},
	} {
		d := slices.Clone(data)
		if tc.name == "huge counter" {
			binary.LittleEndian.PutUint64(d, 1<<40)
		}
		_, _, err := DecodeSafetensors(stFile(tc.header, d))
		if err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	// A header length beyond the file, and a huge one.
	for _, n := range []uint64{1 << 20, 1 << 62, math.MaxUint64} {
		b := binary.LittleEndian.AppendUint64(nil, n)
		if _, _, err := DecodeSafetensors(append(b, "{}"...)); err == nil {
			t.Errorf("header length %d: no error", n)
		}
	}
	// Through the file reader, with the path in the error.
	path := filepath.Join(t.TempDir(), "cut.safetensors")
	if err := os.WriteFile(path, raw[:len(raw)-3], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadCheckpoint(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("truncated checkpoint: %v", err)
	}
}

// TestSafetensorsDTypes reads the floating types other writers use.
func TestSafetensorsDTypes(t *testing.T) {
	var data []byte
	for _, h := range []uint16{0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x3555} {
		data = binary.LittleEndian.AppendUint16(data, h)
	}
	for _, h := range []uint16{0x3f80, 0xc0a0} { // bf16 1, -5
		data = binary.LittleEndian.AppendUint16(data, h)
	}
	data = binary.LittleEndian.AppendUint64(data, math.Float64bits(0.1))
	header := `{"__metadata__":{"format":"pt"},"h":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[12,16]},"d":{"dtype":"F64","shape":[1],"data_offsets":[16,24]}}`
	ts, meta, err := DecodeSafetensors(stFile(header, data))
	if err != nil {
		t.Fatal(err)
	}
	if meta["format"] != "pt" || len(ts) != 3 || ts[0].Name != "h" || ts[1].Name != "b" || ts[2].Name != "d" {
		t.Fatalf("%v %v", meta, ts)
	}
	want := map[string][]float32{
		"h": {1, -2, 65504, float32(math.Ldexp(1, -24)), float32(math.Copysign(0, -1)), 0.333251953125},
		"b": {1, -5},
		"d": {0.1},
	}
	for _, nt := range ts {
		for i, v := range want[nt.Name] {
			if math.Float32bits(nt.Tensor.Data[i]) != math.Float32bits(v) {
				t.Errorf("%s[%d] = %v, want %v", nt.Name, i, nt.Tensor.Data[i], v)
			}
		}
	}
	if !slices.Equal(ts[0].Tensor.Shape, []int{2, 3}) {
		t.Errorf("shape %v", ts[0].Tensor.Shape)
	}
	if v := halfToFloat(0x7c00); !math.IsInf(float64(v), 1) {
		t.Errorf("f16 inf = %v", v)
	}
	if v := halfToFloat(0x7e00); !math.IsNaN(float64(v)) {
		t.Errorf("f16 nan = %v", v)
	}
}

// TestReadForeignSafetensors reads a torchvision state dict saved as
// safetensors by other tools, and refuses an optimizer file or a newer
// format in place of a model.
func TestReadForeignSafetensors(t *testing.T) {
	_, st := testResNet(t, 18, 10, 31)
	dir := t.TempDir()
	path := filepath.Join(dir, "resnet18.safetensors")
	if err := WriteSafetensors(path, st, nil); err != nil {
		t.Fatal(err)
	}
	c, err := ReadCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Layout != LayoutTorchvision || c.Arch != "resnet18" || c.Epoch != -1 || c.OptState != nil {
		t.Errorf("%q %q %d", c.Layout, c.Arch, c.Epoch)
	}
	sameTensors(t, "fc", c.Heads[HeadFC], asMap(only(st, "fc.")))

	full := testCheckpoint(t)
	ck := filepath.Join(dir, "ck.safetensors")
	if err := WriteCheckpoint(ck, full); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadCheckpoint(OptimPath(ck)); err == nil || !strings.Contains(err.Error(), "e2mcvk-optimizer") {
		t.Errorf("optimizer file as a model: %v", err)
	}
	future := filepath.Join(dir, "future.safetensors")
	if err := WriteSafetensors(future, st, map[string]string{MetaFormat: "e2mcvk-checkpoint", MetaFormatVersion: "2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadCheckpoint(future); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("format version 2: %v", err)
	}
	if err := WriteSafetensors(future, st, map[string]string{MetaEpoch: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadCheckpoint(future); err == nil || !strings.Contains(err.Error(), "epoch") {
		t.Errorf("bad epoch: %v", err)
	}
	dup := append(slices.Clone(st), st[0])
	if err := WriteSafetensors(future, dup, nil); err == nil || !strings.Contains(err.Error(), fmt.Sprint(st[0].Name)) {
		t.Errorf("duplicate name: %v", err)
	}
}
