package loader

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// ordered is a module's state in state_dict order, as PyTorch saves it.
func ordered(t *testing.T, m layers.Module) []NamedTensor {
	t.Helper()
	sd, err := layers.StateDict(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	var out []NamedTensor
	for _, e := range m.State("") {
		out = append(out, NamedTensor{Name: e.Name, Tensor: sd[e.Name]})
	}
	return out
}

// testResNet builds a width-4 ResNet (torchvision's names, small tensors)
// whose batch norms have counted some batches, and returns it with its
// state.
func testResNet(t *testing.T, depth, classes int, seed uint64) (*layers.ResNet, []NamedTensor) {
	t.Helper()
	r, err := layers.NewResNet(context.Background(), vktest.Device(t), layers.ResNetConfig{Depth: depth, Width: 4, Classes: classes}, rand.New(rand.NewPCG(seed, 1)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Release)
	for _, e := range r.State("") {
		if e.Count != nil {
			*e.Count = int64(seed) + 3
		}
	}
	return r, ordered(t, r)
}

// testMLP builds a head with its state.
func testMLP(t *testing.T, in int, c layers.MLPConfig, seed uint64) (*layers.MLP, []NamedTensor) {
	t.Helper()
	m, err := layers.NewMLP(context.Background(), vktest.Device(t), in, c, rand.New(rand.NewPCG(seed, 2)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Release)
	for _, e := range m.State("") {
		if e.Count != nil {
			*e.Count = int64(seed) + 3
		}
	}
	return m, ordered(t, m)
}

// dictOf builds a state dict with every name prefixed.
func dictOf(parts ...any) *Dict {
	d := NewDict()
	for i := 0; i < len(parts); i += 2 {
		prefix := parts[i].(string)
		for _, nt := range parts[i+1].([]NamedTensor) {
			d.Set(prefix+nt.Name, nt.Tensor)
		}
	}
	return d
}

func without(ts []NamedTensor, prefix string) []NamedTensor {
	return slices.DeleteFunc(slices.Clone(ts), func(nt NamedTensor) bool { return strings.HasPrefix(nt.Name, prefix) })
}

func only(ts []NamedTensor, prefix string) []NamedTensor {
	var out []NamedTensor
	for _, nt := range ts {
		if rel, ok := strings.CutPrefix(nt.Name, prefix); ok {
			out = append(out, NamedTensor{Name: rel, Tensor: nt.Tensor})
		}
	}
	return out
}

func asMap(ts []NamedTensor) map[string]layers.HostTensor {
	m := map[string]layers.HostTensor{}
	for _, nt := range ts {
		m[nt.Name] = nt.Tensor
	}
	return m
}

// sameTensors compares two state maps bit for bit.
func sameTensors(t *testing.T, what string, got, want map[string]layers.HostTensor) {
	t.Helper()
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Errorf("%s: missing %s", what, name)
			continue
		}
		if !slices.Equal(g.Shape, w.Shape) || g.Int64 != w.Int64 || len(g.Data) != len(w.Data) {
			t.Errorf("%s: %s is %v (int64 %v), want %v (int64 %v)", what, name, g.Shape, g.Int64, w.Shape, w.Int64)
			continue
		}
		for i := range w.Data {
			if math.Float32bits(g.Data[i]) != math.Float32bits(w.Data[i]) {
				t.Errorf("%s: %s[%d] = %v, want %v", what, name, i, g.Data[i], w.Data[i])
				break
			}
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: unexpected %s", what, name)
		}
	}
}

// Official head structures (HeadConfig) at small widths, with the input
// width a width-4 ResNet-50 gives (128).
func smallHead(t *testing.T, layout Layout, head string) (layers.MLPConfig, int) {
	t.Helper()
	c, in := smallHeadOrNone(layout, head)
	if c == nil {
		t.Fatalf("no standard %s %s", layout, head)
	}
	return *c, in
}

// fixture is a checkpoint tree of one layout, with what splitting it must
// give.
type fixture struct {
	name     string
	root     *Dict
	layout   Layout
	arch     string
	epoch    int
	backbone []NamedTensor
	heads    map[string][]NamedTensor
	notes    []string // substrings of the notes
}

// fixtures builds every layout from real module names: a width-4 ResNet-50
// and the methods' heads.
func fixtures(t *testing.T) []fixture {
	_, r50 := testResNet(t, 50, 0, 1)
	_, r18fc := testResNet(t, 18, 10, 2)

	vcfg, vin := smallHead(t, LayoutVICReg, HeadProjector)
	_, vproj := testMLP(t, vin, vcfg, 3)
	scfg, sin := smallHead(t, LayoutSwAV, HeadProjector)
	_, sproj := testMLP(t, sin, scfg, 4)
	pcfg, pin := smallHead(t, LayoutSwAV, HeadPrototypes)
	_, protos := testMLP(t, pin, pcfg, 5)
	protos = only(protos, "0.") // a bare Linear: "weight"
	mcfg, mIn := smallHead(t, LayoutSimSiam, HeadProjector)
	_, mproj := testMLP(t, mIn, mcfg, 6)
	qcfg, qin := smallHead(t, LayoutSimSiam, HeadPredictor)
	_, mpred := testMLP(t, qin, qcfg, 7)

	optim := func() *Dict {
		o := NewDict()
		o.Set("state", NewDict())
		o.Set("param_groups", []any{})
		return o
	}
	vicreg := NewDict()
	vicreg.Set("epoch", int64(100))
	vicreg.Set("model", dictOf("module.backbone.", r50, "module.projector.", vproj))
	vicreg.Set("optimizer", optim())

	swav := dictOf("module.", r50, "module.projection_head.", sproj, "module.prototypes.", protos)
	swavWrapped := NewDict()
	swavWrapped.Set("state_dict", swav)
	swavFull := NewDict()
	swavFull.Set("epoch", int64(800))
	swavFull.Set("state_dict", swav)
	swavFull.Set("optimizer", optim())
	swavFull.Set("amp", NewDict())
	swavMulti := dictOf("module.", r50, "module.projection_head.", sproj, "module.prototypes0.", protos, "module.prototypes1.", protos)

	simsiam := NewDict()
	simsiam.Set("epoch", int64(100))
	simsiam.Set("arch", "resnet50")
	simsiam.Set("state_dict", dictOf("module.encoder.", r50, "module.encoder.fc.", mproj, "module.predictor.", mpred))
	simsiam.Set("optimizer", optim())
	simsiamWrongArch := NewDict()
	simsiamWrongArch.Set("arch", "resnet18")
	simsiamWrongArch.Set("state_dict", simsiam.Values["state_dict"])

	swavHeads := map[string][]NamedTensor{HeadProjector: sproj, HeadPrototypes: protos}
	return []fixture{
		{name: "vicreg", root: vicreg, layout: LayoutVICReg, arch: "resnet50", epoch: 100, backbone: r50, heads: map[string][]NamedTensor{HeadProjector: vproj}},
		{name: "vicreg model only", root: dictOf("module.backbone.", r50, "module.projector.", vproj), layout: LayoutVICReg, arch: "resnet50", epoch: -1, backbone: r50, heads: map[string][]NamedTensor{HeadProjector: vproj}},
		{name: "vicreg resnet50.pth", root: dictOf("", r50), layout: LayoutTorchvision, arch: "resnet50", epoch: -1, backbone: r50},
		{name: "swav plain", root: swav, layout: LayoutSwAV, arch: "resnet50", epoch: -1, backbone: r50, heads: swavHeads},
		{name: "swav state_dict", root: swavWrapped, layout: LayoutSwAV, arch: "resnet50", epoch: -1, backbone: r50, heads: swavHeads},
		{name: "swav training", root: swavFull, layout: LayoutSwAV, arch: "resnet50", epoch: 800, backbone: r50, heads: swavHeads, notes: []string{`"amp"`}},
		{name: "swav multi-prototypes", root: swavMulti, layout: LayoutSwAV, arch: "resnet50", epoch: -1, backbone: r50, heads: map[string][]NamedTensor{HeadProjector: sproj}, notes: []string{"module.prototypes0.weight"}},
		{name: "simsiam", root: simsiam, layout: LayoutSimSiam, arch: "resnet50", epoch: 100, backbone: r50, heads: map[string][]NamedTensor{HeadProjector: mproj, HeadPredictor: mpred}},
		{name: "simsiam wrong arch entry", root: simsiamWrongArch, layout: LayoutSimSiam, arch: "resnet50", epoch: -1, backbone: r50, heads: map[string][]NamedTensor{HeadProjector: mproj, HeadPredictor: mpred}, notes: []string{"arch entry says resnet18"}},
		{name: "torchvision with fc", root: dictOf("", r18fc), layout: LayoutTorchvision, arch: "resnet18", epoch: -1, backbone: without(r18fc, "fc."), heads: map[string][]NamedTensor{HeadFC: only(r18fc, "fc.")}},
		{name: "torchvision under DataParallel", root: dictOf("module.", r18fc), layout: LayoutTorchvision, arch: "resnet18", epoch: -1, backbone: without(r18fc, "fc."), heads: map[string][]NamedTensor{HeadFC: only(r18fc, "fc.")}},
		{name: "e2mcvk", root: dictOf("backbone.", r50, "projector.", mproj, "predictor.", mpred), layout: LayoutE2MCVK, arch: "resnet50", epoch: -1, backbone: r50, heads: map[string][]NamedTensor{HeadProjector: mproj, HeadPredictor: mpred}},
	}
}

func TestParseLayout(t *testing.T) {
	for _, l := range Layouts() {
		got, err := ParseLayout(" " + strings.ToUpper(string(l)))
		if err != nil || got != l {
			t.Errorf("ParseLayout(%q) = %q, %v", l, got, err)
		}
	}
	for _, s := range []string{"", "auto"} {
		if got, err := ParseLayout(s); err != nil || got != "" {
			t.Errorf("ParseLayout(%q) = %q, %v; want detection", s, got, err)
		}
	}
	_, err := ParseLayout("moco")
	if err == nil || !strings.Contains(err.Error(), `"moco"`) || !strings.Contains(err.Error(), "vicreg-backbone") || !strings.Contains(err.Error(), "simsiam") {
		t.Errorf("ParseLayout(moco): %v; want an error listing the layouts", err)
	}
}

func TestDetectAndSplit(t *testing.T) {
	for _, f := range fixtures(t) {
		t.Run(f.name, func(t *testing.T) {
			l, err := DetectLayout(f.root)
			if err != nil || l != f.layout {
				t.Fatalf("DetectLayout = %q, %v; want %q", l, err, f.layout)
			}
			p, err := SplitCheckpoint(f.root, "")
			if err != nil {
				t.Fatal(err)
			}
			if p.Layout != f.layout || p.Arch != f.arch || p.Epoch != f.epoch {
				t.Errorf("layout %q arch %q epoch %d; want %q %q %d", p.Layout, p.Arch, p.Epoch, f.layout, f.arch, f.epoch)
			}
			sameTensors(t, "backbone", p.Backbone, asMap(f.backbone))
			if _, fc := p.Backbone["fc.weight"]; fc {
				t.Error("fc left in the backbone")
			}
			var wantHeads []string
			for h, ts := range f.heads {
				wantHeads = append(wantHeads, h)
				sameTensors(t, h, p.Heads[h], asMap(ts))
			}
			slices.Sort(wantHeads)
			if !slices.Equal(p.HeadNames(), wantHeads) {
				t.Errorf("heads %v, want %v", p.HeadNames(), wantHeads)
			}
			_, hasOptim := f.root.Get("optimizer")
			if (p.Optimizer != nil) != hasOptim {
				t.Errorf("optimizer kept: %v, in the file: %v", p.Optimizer != nil, hasOptim)
			}
			notes := strings.Join(p.Notes, "\n")
			for _, n := range f.notes {
				if !strings.Contains(notes, n) {
					t.Errorf("notes %q lack %q", notes, n)
				}
			}
			if len(f.notes) == 0 && len(p.Notes) > 0 {
				t.Errorf("unexpected notes %q", p.Notes)
			}
		})
	}
}

// TestSplitOverride splits a backbone file as vicreg-backbone, and refuses a
// layout whose names are not in the file.
func TestSplitOverride(t *testing.T) {
	_, r50 := testResNet(t, 50, 0, 1)
	p, err := SplitCheckpoint(dictOf("", r50), LayoutVICRegBackbone)
	if err != nil {
		t.Fatal(err)
	}
	if p.Layout != LayoutVICRegBackbone || p.Arch != "resnet50" || len(p.Heads) != 0 {
		t.Errorf("got %q %q heads %v", p.Layout, p.Arch, p.HeadNames())
	}
	sameTensors(t, "backbone", p.Backbone, asMap(r50))

	_, err = SplitCheckpoint(dictOf("", r50), LayoutSimSiam)
	if err == nil || !strings.Contains(err.Error(), "no backbone") || !strings.Contains(err.Error(), "conv1.weight") {
		t.Errorf("torchvision file as simsiam: %v; want no backbone, listing keys", err)
	}
	if _, err := SplitCheckpoint(dictOf("", r50), Layout("moco")); err == nil {
		t.Error("unknown layout accepted")
	}
}

func TestDetectErrors(t *testing.T) {
	moco := NewDict()
	moco.Set("module.encoder_q.0.weight", layers.HostTensor{Shape: []int{1}, Data: []float32{1}})
	moco.Set("module.queue", layers.HostTensor{Shape: []int{1}, Data: []float32{2}})
	noTensors := NewDict()
	noTensors.Set("epoch", int64(3))
	badState := NewDict()
	badState.Set("state_dict", []any{int64(1)})
	for _, tc := range []struct {
		name string
		root any
		want []string
	}{
		{"list", []any{int64(1)}, []string{"a list"}},
		{"tensor", layers.HostTensor{Shape: []int{2}, Data: []float32{1, 2}}, []string{"tensor"}},
		{"no tensors", noTensors, []string{"no tensors", "epoch"}},
		{"state_dict not a dict", badState, []string{"state_dict", "a list"}},
		{"unknown keys", moco, []string{"module.encoder_q.0.weight", "module.queue", "--layout", "simsiam"}},
	} {
		_, err := DetectLayout(tc.root)
		if err == nil {
			t.Errorf("%s: detected", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.name, err, w)
			}
		}
		if _, err := SplitCheckpoint(tc.root, ""); err == nil {
			t.Errorf("%s: split", tc.name)
		}
	}
}

func TestInferArch(t *testing.T) {
	for _, depth := range []int{18, 34, 50} {
		_, st := testResNet(t, depth, 0, 9)
		p, err := SplitCheckpoint(dictOf("", st), "")
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("resnet%d", depth); p.Arch != want {
			t.Errorf("depth %d: arch %q", depth, p.Arch)
		}
		c, err := ResNetConfigFor(p)
		if err != nil {
			t.Fatal(err)
		}
		if want := (layers.ResNetConfig{Depth: depth, Width: 4, InChannels: 3}); c != want {
			t.Errorf("depth %d: config %+v, want %+v", depth, c, want)
		}
	}

	// ResNet-101's layer3 has 23 bottlenecks.
	_, st := testResNet(t, 50, 0, 9)
	d := dictOf("", st)
	w := layers.HostTensor{Shape: []int{1, 1, 1, 1}, Data: []float32{0.5}}
	for i := 6; i < 23; i++ {
		d.Set(fmt.Sprintf("layer3.%d.conv1.weight", i), w)
	}
	_, err := SplitCheckpoint(d, "")
	if err == nil || !strings.Contains(err.Error(), "resnet101") || !strings.Contains(err.Error(), "[3 4 23 3]") {
		t.Errorf("resnet101: %v", err)
	}
	// Not a ResNet at all.
	vit := NewDict()
	vit.Set("conv1.weight", layers.HostTensor{Shape: []int{8, 3}, Data: make([]float32, 24)})
	if _, err := SplitCheckpoint(vit, LayoutTorchvision); err == nil || !strings.Contains(err.Error(), "conv1.weight") {
		t.Errorf("2-d conv1: %v", err)
	}
}

func TestResNetConfigFor(t *testing.T) {
	ctx := context.Background()
	for _, want := range []layers.ResNetConfig{
		{Depth: 18, Width: 8, InChannels: 1, SmallStem: true, Classes: 10},
		{Depth: 34, Width: 4, InChannels: 3, Classes: 0},
	} {
		r, err := layers.NewResNet(ctx, vktest.Device(t), want, rand.New(rand.NewPCG(1, 1)))
		if err != nil {
			t.Fatal(err)
		}
		p, err := SplitCheckpoint(dictOf("", ordered(t, r)), "")
		r.Release()
		if err != nil {
			t.Fatal(err)
		}
		if got, err := ResNetConfigFor(p); err != nil || got != want {
			t.Errorf("ResNetConfigFor = %+v, %v; want %+v", got, err, want)
		}
	}
	if _, err := ResNetConfigFor(&Parts{Arch: "vit_b_16"}); err == nil {
		t.Error("vit arch accepted")
	}
}

// TestLoadBackbone loads every layout's backbone into a fresh ResNet and
// reads back exactly the checkpoint's values.
func TestLoadBackbone(t *testing.T) {
	ctx := context.Background()
	for _, f := range fixtures(t) {
		p, err := SplitCheckpoint(f.root, "")
		if err != nil {
			t.Fatal(err)
		}
		c, err := ResNetConfigFor(p)
		if err != nil {
			t.Fatal(err)
		}
		r, err := layers.NewResNet(ctx, vktest.Device(t), c, rand.New(rand.NewPCG(77, 1)))
		if err != nil {
			t.Fatal(err)
		}
		if err := LoadBackbone(ctx, r, p); err != nil {
			t.Errorf("%s: %v", f.name, err)
		}
		got, err := layers.StateDict(ctx, r)
		r.Release()
		if err != nil {
			t.Fatal(err)
		}
		want := asMap(f.backbone)
		for _, v := range f.heads[HeadFC] {
			want["fc."+v.Name] = v.Tensor
		}
		sameTensors(t, f.name, got, want)
	}
}

func TestLoadBackboneStrict(t *testing.T) {
	ctx := context.Background()
	r, st := testResNet(t, 18, 10, 4)
	base, err := SplitCheckpoint(dictOf("", st), "")
	if err != nil {
		t.Fatal(err)
	}
	clone := func() *Parts {
		p := *base
		p.Backbone = asMap(without(st, "fc."))
		p.Heads = map[string]map[string]layers.HostTensor{HeadFC: asMap(only(st, "fc."))}
		p.Notes = nil
		return &p
	}

	// A missing key, an unexpected key and a mis-shaped key: one message.
	p := clone()
	delete(p.Backbone, "layer2.1.bn2.running_var")
	p.Backbone["layer5.0.conv1.weight"] = layers.HostTensor{Shape: []int{1}, Data: []float32{1}}
	w := p.Backbone["layer3.0.conv1.weight"]
	p.Backbone["layer3.0.conv1.weight"] = layers.HostTensor{Shape: []int{w.Shape[0] * 2, w.Shape[1] / 2, 3, 3}, Data: w.Data}
	err = LoadBackbone(ctx, r, p)
	if err == nil {
		t.Fatal("loaded a broken backbone")
	}
	for _, want := range []string{"missing layer2.1.bn2.running_var", "unexpected layer5.0.conv1.weight", "layer3.0.conv1.weight has shape [32 4 3 3], want [16 8 3 3]", "torchvision", "resnet18"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}

	// The model has an fc the checkpoint lacks.
	p = clone()
	delete(p.Heads, HeadFC)
	if err := LoadBackbone(ctx, r, p); err == nil || !strings.Contains(err.Error(), "missing fc.weight") {
		t.Errorf("no fc in the checkpoint: %v", err)
	}

	// The checkpoint has an fc the model lacks: a note.
	r0, _ := testResNet(t, 18, 0, 5)
	p = clone()
	if err := LoadBackbone(ctx, r0, p); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "fc (10 classes) is not loaded") {
		t.Errorf("notes %q", p.Notes)
	}

	// torchvision's own weights predate num_batches_tracked.
	p = clone()
	n := 0
	for k := range p.Backbone {
		if strings.HasSuffix(k, "num_batches_tracked") {
			delete(p.Backbone, k)
			n++
		}
	}
	if err := LoadBackbone(ctx, r, p); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), fmt.Sprintf("%d batch norms have no num_batches_tracked", n)) {
		t.Errorf("notes %q", p.Notes)
	}
	if r.BN1.NumBatchesTracked != 0 {
		t.Errorf("bn1 counted %d batches, want 0", r.BN1.NumBatchesTracked)
	}
}

// TestHeads infers every official head's structure from its tensors, builds
// it and loads it.
func TestHeads(t *testing.T) {
	ctx := context.Background()
	for _, f := range fixtures(t) {
		p, err := SplitCheckpoint(f.root, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, head := range p.HeadNames() {
			c, in, err := InferHeadConfig(p, head)
			if err != nil {
				t.Errorf("%s %s: %v", f.name, head, err)
				continue
			}
			if std, stdIn := smallHeadOrNone(f.layout, head); std != nil && (c != *std || in != stdIn) {
				t.Errorf("%s %s: inferred %+v in %d, want %+v in %d", f.name, head, c, in, *std, stdIn)
			}
			m, err := layers.NewMLP(ctx, vktest.Device(t), in, c, rand.New(rand.NewPCG(8, 8)))
			if err != nil {
				t.Fatal(err)
			}
			if err := LoadHead(ctx, m, p, head); err != nil {
				t.Errorf("%s %s: %v", f.name, head, err)
			}
			got, err := layers.StateDict(ctx, m)
			m.Release()
			if err != nil {
				t.Fatal(err)
			}
			sameTensors(t, f.name+" "+head, got, sequentialNames(asMap(f.heads[head])))
		}
	}
}

// smallHeadOrNone is smallHead, nil for a layout without the standard
// head.
func smallHeadOrNone(layout Layout, head string) (*layers.MLPConfig, int) {
	c, in, err := HeadConfig(layout, head)
	if err != nil {
		return nil, 0
	}
	ws, _ := layers.ParseWidths(c.Spec)
	var parts []string
	for _, w := range ws {
		parts = append(parts, fmt.Sprint(max(w/64, 3)))
	}
	c.Spec = strings.Join(parts, "-")
	return &c, max(in/16, 3)
}

func TestHeadErrors(t *testing.T) {
	ctx := context.Background()
	cfg, in := smallHead(t, LayoutVICReg, HeadProjector)
	m, st := testMLP(t, in, cfg, 3)
	p := &Parts{Layout: LayoutVICReg, Heads: map[string]map[string]layers.HostTensor{HeadProjector: asMap(st)}}
	if err := LoadHead(ctx, m, p, HeadPredictor); err == nil || !strings.Contains(err.Error(), "no predictor head (heads: projector)") {
		t.Errorf("missing head: %v", err)
	}
	if _, _, err := InferHeadConfig(p, HeadPrototypes); err == nil {
		t.Error("inferred a missing head")
	}
	// A batch norm gone: the indices no longer follow the pattern.
	noBN := asMap(st)
	for k := range noBN {
		if strings.HasPrefix(k, "1.") {
			delete(noBN, k)
		}
	}
	p.Heads[HeadProjector] = noBN
	if _, _, err := InferHeadConfig(p, HeadProjector); err == nil || !strings.Contains(err.Error(), "entry 2 is not a Linear") {
		t.Errorf("a batch norm gone: %v", err)
	}
	// Linear, ReLU, Linear: a valid nn.Sequential layers.MLP cannot build.
	all := asMap(st)
	w3 := all["3.weight"]
	p.Heads[HeadProjector] = map[string]layers.HostTensor{
		"0.weight": all["0.weight"], "0.bias": all["0.bias"],
		"2.weight": layers.HostTensor{Shape: []int{5, w3.Shape[1]}, Data: w3.Data[:5*w3.Shape[1]]},
	}
	if _, _, err := InferHeadConfig(p, HeadProjector); err == nil || !strings.Contains(err.Error(), "no affine batch norm") {
		t.Errorf("hidden Linear without batch norm: %v", err)
	}
	// Mis-chained widths.
	bad := asMap(st)
	w := bad["3.weight"]
	bad["3.weight"] = layers.HostTensor{Shape: []int{w.Shape[1], w.Shape[0] + 1}, Data: make([]float32, w.Shape[1]*(w.Shape[0]+1))}
	p.Heads[HeadProjector] = bad
	if _, _, err := InferHeadConfig(p, HeadProjector); err == nil || !strings.Contains(err.Error(), "inputs") {
		t.Errorf("mis-chained widths: %v", err)
	}
	// Strict loading: an extra entry and a mis-shaped one, reported together.
	extra := asMap(st)
	extra["9.weight"] = layers.HostTensor{Shape: []int{1}, Data: []float32{1}}
	b := extra["0.bias"]
	extra["0.bias"] = layers.HostTensor{Shape: []int{b.Shape[0] + 1}, Data: append(slices.Clone(b.Data), 1)}
	p.Heads[HeadProjector] = extra
	err := LoadHead(ctx, m, p, HeadProjector)
	if err == nil || !strings.Contains(err.Error(), "unexpected 9.weight") || !strings.Contains(err.Error(), "0.bias has shape") {
		t.Errorf("strict head load: %v", err)
	}
	if _, _, err := HeadConfig(LayoutTorchvision, HeadProjector); err == nil {
		t.Error("torchvision has a standard projector")
	}
}

// TestModelParts takes a model of ours apart and loads it back into fresh
// modules.
func TestModelParts(t *testing.T) {
	ctx := context.Background()
	r, st := testResNet(t, 18, 5, 11)
	pcfg := layers.MLPConfig{Spec: "7"}
	protos, pst := testMLP(t, 32, pcfg, 12)
	jcfg := layers.MLPConfig{Spec: "6-32", HiddenBias: true, LastBias: true}
	proj, jst := testMLP(t, 32, jcfg, 13)
	p, err := ModelParts(ctx, r, map[string]*layers.MLP{HeadPrototypes: protos, HeadProjector: proj})
	if err != nil {
		t.Fatal(err)
	}
	if p.Layout != LayoutE2MCVK || p.Arch != "resnet18" || p.Epoch != -1 {
		t.Errorf("%q %q %d", p.Layout, p.Arch, p.Epoch)
	}
	sameTensors(t, "backbone", p.Backbone, asMap(without(st, "fc.")))
	sameTensors(t, "fc", p.Heads[HeadFC], asMap(only(st, "fc.")))
	sameTensors(t, "prototypes", p.Heads[HeadPrototypes], asMap(only(pst, "0.")))
	sameTensors(t, "projector", p.Heads[HeadProjector], asMap(jst))
	for head, want := range map[string]layers.MLPConfig{HeadPrototypes: pcfg, HeadProjector: jcfg} {
		c, in, err := InferHeadConfig(p, head)
		if err != nil || c != want || in != 32 {
			t.Errorf("%s: %+v in %d, %v; want %+v", head, c, in, err, want)
		}
	}
	if _, err := ModelParts(ctx, r, map[string]*layers.MLP{"classifier": proj}); err == nil {
		t.Error("unknown head name accepted")
	}
	if !reflect.DeepEqual(p.HeadNames(), []string{HeadFC, HeadProjector, HeadPrototypes}) {
		t.Errorf("heads %v", p.HeadNames())
	}
}

// torchLayouts runs testdata/torch_layouts.py (cached): real PyTorch
// checkpoints in every layout, and what splitting each must give.
func torchLayouts(t *testing.T) (string, map[string]torchEntry) {
	t.Helper()
	script, err := os.ReadFile("testdata/torch_layouts.py")
	if err != nil {
		t.Fatal(err)
	}
	dir := oracle.Cached(t, []string{"torch", "torchvision", "numpy"}, func(py, dir string) {
		oracle.RunFile(t, py, "testdata/torch_layouts.py", "write", dir)
	}, script, []byte("write"))
	var m map[string]torchEntry
	oracle.ReadJSON(t, filepath.Join(dir, "manifest.json"), &m)
	return dir, m
}

// torchEntry is one file of the manifest; a tensor is [shape, sha256 of
// its values as little-endian float32].
type torchEntry struct {
	Layout    Layout
	Arch      string
	Epoch     int
	Optimizer bool
	Parts     map[string]map[string][2]json.RawMessage
}

// digest is the manifest's sha256 of a tensor's float32 values.
func digest(t layers.HostTensor) string {
	b := make([]byte, 0, 4*len(t.Data))
	for _, v := range t.Data {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// matchManifest compares tensors with a part of the manifest.
func matchManifest(t *testing.T, what string, got map[string]layers.HostTensor, want map[string][2]json.RawMessage) {
	t.Helper()
	n := 0
	for name, sw := range want {
		n++
		var shape []int
		var sum string
		if err := json.Unmarshal(sw[0], &shape); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(sw[1], &sum); err != nil {
			t.Fatal(err)
		}
		g, ok := got[name]
		switch {
		case !ok:
			t.Errorf("%s: missing %s", what, name)
		case !slices.Equal(g.Shape, shape) && !(len(shape) == 0 && len(g.Shape) == 0):
			t.Errorf("%s: %s has shape %v, want %v", what, name, g.Shape, shape)
		case digest(g) != sum:
			t.Errorf("%s: %s differs from PyTorch's values", what, name)
		case g.Int64 != strings.HasSuffix(name, "num_batches_tracked"):
			t.Errorf("%s: %s int64 %v", what, name, g.Int64)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: unexpected %s", what, name)
		}
	}
	if n == 0 {
		t.Errorf("%s: nothing compared", what)
	}
}

// TestTorchLayouts reads real PyTorch checkpoints of every layout (VICReg,
// its released backbone, SwAV in three forms, one in the legacy format,
// SimSiam, torchvision with and without counters), splits them, loads them
// into our modules, and saves and reads them as e2mcvk checkpoints, every
// value compared with PyTorch's.
func TestTorchLayouts(t *testing.T) {
	ctx := context.Background()
	dir, manifest := torchLayouts(t)
	heads := map[string]layers.MLPConfig{
		"vicreg.pth/projector":                      {Spec: "16-16-16", HiddenBias: true},
		"swav/projector":                            {Spec: "32-16", HiddenBias: true, LastBias: true},
		"swav/prototypes":                           {Spec: "30"},
		"simsiam_checkpoint_0099.pth.tar/projector": {Spec: "128-128-32", LastBias: true, LastBN: true},
		"simsiam_checkpoint_0099.pth.tar/predictor": {Spec: "8-32", LastBias: true},
	}
	out := t.TempDir()
	for _, name := range slices.Sorted(maps.Keys(manifest)) {
		e := manifest[name]
		t.Run(name, func(t *testing.T) {
			root, err := ReadPth(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			p, err := SplitCheckpoint(root, "")
			if err != nil {
				t.Fatal(err)
			}
			if p.Layout != e.Layout || p.Arch != e.Arch || p.Epoch != e.Epoch || (p.Optimizer != nil) != e.Optimizer || len(p.Notes) > 0 {
				t.Errorf("layout %q arch %q epoch %d optimizer %v notes %q; want %q %q %d %v", p.Layout, p.Arch, p.Epoch, p.Optimizer != nil, p.Notes, e.Layout, e.Arch, e.Epoch, e.Optimizer)
			}
			matchManifest(t, "backbone", p.Backbone, e.Parts["backbone"])
			var wantHeads []string
			for part := range e.Parts {
				if part != "backbone" {
					wantHeads = append(wantHeads, part)
					matchManifest(t, part, p.Heads[part], e.Parts[part])
				}
			}
			slices.Sort(wantHeads)
			if !slices.Equal(p.HeadNames(), wantHeads) {
				t.Errorf("heads %v, want %v", p.HeadNames(), wantHeads)
			}

			// Into our modules and out again.
			c, err := ResNetConfigFor(p)
			if err != nil {
				t.Fatal(err)
			}
			r, err := layers.NewResNet(ctx, vktest.Device(t), c, rand.New(rand.NewPCG(5, 5)))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Release()
			p.Notes = nil // the split's notes were checked above
			if err := LoadBackbone(ctx, r, p); err != nil {
				t.Fatal(err)
			}
			sd, err := layers.StateDict(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			want := maps.Clone(e.Parts["backbone"])
			for k, v := range e.Parts["fc"] {
				want["fc."+k] = v
			}
			// The zoo file has no counters: LoadBackbone starts them at 0.
			for k, v := range sd {
				if _, ok := want[k]; !ok && strings.HasSuffix(k, "num_batches_tracked") && v.Data[0] == 0 {
					delete(sd, k)
				}
			}
			matchManifest(t, "loaded backbone", sd, want)
			if zoo := name == "resnet18_zoo.pth"; zoo != strings.Contains(strings.Join(p.Notes, "\n"), "20 batch norms have no num_batches_tracked") {
				t.Errorf("notes %q", p.Notes)
			}
			for _, head := range p.HeadNames() {
				if head == HeadFC {
					continue
				}
				cfg, in, err := InferHeadConfig(p, head)
				if err != nil {
					t.Fatal(err)
				}
				key := name + "/" + head
				if strings.HasPrefix(name, "swav") {
					key = "swav/" + head
				}
				if wc, ok := heads[key]; !ok || cfg != wc {
					t.Errorf("%s: inferred %+v, want %+v", head, cfg, wc)
				}
				m, err := layers.NewMLP(ctx, vktest.Device(t), in, cfg, rand.New(rand.NewPCG(6, 6)))
				if err != nil {
					t.Fatal(err)
				}
				defer m.Release()
				if err := LoadHead(ctx, m, p, head); err != nil {
					t.Fatal(err)
				}
				hs, err := layers.StateDict(ctx, m)
				if err != nil {
					t.Fatal(err)
				}
				matchManifest(t, "loaded "+head, hs, sequentialNamesManifest(e.Parts[head]))
			}

			// As an e2mcvk checkpoint.
			path := filepath.Join(out, name+".safetensors")
			if err := WriteCheckpoint(path, &Checkpoint{Parts: *p, Meta: map[string]string{MetaMethod: string(e.Layout)}}); err != nil {
				t.Fatal(err)
			}
			back, err := ReadCheckpoint(path)
			if err != nil {
				t.Fatal(err)
			}
			if back.Layout != LayoutE2MCVK || back.Arch != e.Arch || back.Epoch != e.Epoch || back.Meta[MetaSourceLayout] != string(e.Layout) {
				t.Errorf("read back: %q %q %d %v", back.Layout, back.Arch, back.Epoch, back.Meta)
			}
			matchManifest(t, "saved backbone", back.Backbone, e.Parts["backbone"])
			for _, head := range wantHeads {
				matchManifest(t, "saved "+head, back.Heads[head], e.Parts[head])
			}
			if name == "simsiam_checkpoint_0099.pth.tar" {
				checkWithNumpy(t, path, e)
			}
		})
	}
}

// sequentialNamesManifest is sequentialNames for a manifest part.
func sequentialNamesManifest(m map[string][2]json.RawMessage) map[string][2]json.RawMessage {
	if _, ok := m["weight"]; !ok {
		return m
	}
	out := map[string][2]json.RawMessage{}
	for k, v := range m {
		out["0."+k] = v
	}
	return out
}

// checkWithNumpy reads a checkpoint we wrote with json and numpy alone
// (torch_layouts.py readst) and compares it with PyTorch's values.
func checkWithNumpy(t *testing.T, path string, e torchEntry) {
	t.Helper()
	script, err := os.ReadFile("testdata/torch_layouts.py")
	if err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := oracle.Cached(t, []string{"numpy"}, func(py, dir string) {
		raw := oracle.RunFile(t, py, "testdata/torch_layouts.py", "readst", path)
		if err := os.WriteFile(filepath.Join(dir, "readst.json"), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}, script, []byte("readst"), file)
	var got struct {
		Metadata map[string]string
		Tensors  map[string][3]json.RawMessage
	}
	oracle.ReadJSON(t, filepath.Join(dir, "readst.json"), &got)
	if got.Metadata[MetaFormat] != "e2mcvk-checkpoint" || got.Metadata[MetaArch] != e.Arch {
		t.Errorf("numpy reads metadata %v", got.Metadata)
	}
	n := 0
	for part, ts := range e.Parts {
		for name, sw := range ts {
			key := part + "." + name
			g, ok := got.Tensors[key]
			if !ok {
				t.Errorf("numpy finds no %s", key)
				continue
			}
			n++
			wantType := `"F32"`
			if strings.HasSuffix(name, "num_batches_tracked") {
				wantType = `"I64"`
			}
			if string(g[0]) != wantType || string(g[2]) != string(sw[1]) {
				t.Errorf("numpy reads %s as %s %s", key, g[0], g[1])
			}
		}
	}
	if n != len(got.Tensors) {
		t.Errorf("numpy reads %d tensors, the manifest has %d", len(got.Tensors), n)
	}
}
