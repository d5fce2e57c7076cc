package loader

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/e2mcvk/e2mcvk/layers"
)

// Layout names the way a checkpoint file arranges a model's state, after the
// training code that wrote it (DESIGN.md section 6).
type Layout string

// The layouts SplitCheckpoint reads.
const (
	// LayoutVICReg is VICReg's full checkpoint {epoch, model, optimizer}:
	// module.backbone.* (a ResNet without fc) and module.projector.*
	// (Linear, BN, ReLU, Linear, BN, ReLU, Linear without bias).
	LayoutVICReg Layout = "vicreg"
	// LayoutVICRegBackbone is VICReg's released resnet50.pth: a plain
	// backbone state dict with torchvision's names and no fc. Its keys
	// cannot be told from a torchvision state dict without fc, so
	// detection calls it torchvision; both split the same way.
	LayoutVICRegBackbone Layout = "vicreg-backbone"
	// LayoutSwAV is SwAV's state dict (alone, or under "state_dict" with
	// epoch and optimizer): module.conv1 ... module.layer4 (no fc),
	// module.projection_head.* and module.prototypes.weight.
	LayoutSwAV Layout = "swav"
	// LayoutSimSiam is SimSiam's {epoch, arch, state_dict, optimizer}:
	// module.encoder.* (a ResNet whose fc is the projector) and
	// module.predictor.*.
	LayoutSimSiam Layout = "simsiam"
	// LayoutTorchvision is a plain torchvision ResNet state dict, with or
	// without fc.
	LayoutTorchvision Layout = "torchvision"
	// LayoutE2MCVK is e2mcvk's own checkpoint (checkpoint.go): backbone.*,
	// projector.*, predictor.*, prototypes.*, fc.*.
	LayoutE2MCVK Layout = "e2mcvk"
)

// Layouts returns every layout, in the order help texts list them.
func Layouts() []Layout {
	return []Layout{LayoutVICReg, LayoutVICRegBackbone, LayoutSwAV, LayoutSimSiam, LayoutTorchvision, LayoutE2MCVK}
}

// ParseLayout reads a --layout flag: one of Layouts, or "auto" (or empty)
// for detection, which it returns as the empty Layout.
func ParseLayout(s string) (Layout, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" || s == "auto" {
		return "", nil
	}
	for _, l := range Layouts() {
		if string(l) == s {
			return l, nil
		}
	}
	return "", fmt.Errorf("unknown checkpoint layout %q: want auto, %s", s, layoutList())
}

func layoutList() string {
	var names []string
	for _, l := range Layouts() {
		names = append(names, string(l))
	}
	return strings.Join(names, ", ")
}

// The heads a checkpoint may hold besides its backbone, as Parts.Heads
// names them whatever the layout calls them.
const (
	// HeadProjector is VICReg's projector, SwAV's projection_head and
	// SimSiam's projector (encoder.fc).
	HeadProjector = "projector"
	// HeadPredictor is SimSiam's predictor.
	HeadPredictor = "predictor"
	// HeadPrototypes is SwAV's prototypes, a Linear without bias whose
	// weight Parts calls "weight".
	HeadPrototypes = "prototypes"
	// HeadFC is a classifier's final Linear (torchvision's fc).
	HeadFC = "fc"
)

// isHead reports whether name is one of the heads above.
func isHead(name string) bool {
	switch name {
	case HeadProjector, HeadPredictor, HeadPrototypes, HeadFC:
		return true
	}
	return false
}

// Parts is a checkpoint taken apart: the backbone and the heads under
// names independent of the layout, and what else the file held.
type Parts struct {
	Layout Layout
	// Arch is "resnet18", "resnet34" or "resnet50", inferred from the
	// backbone's shapes (a checkpoint's "arch" entry only adds a note when
	// it disagrees).
	Arch string
	// Backbone holds the ResNet's state under torchvision's names, without
	// fc (which is Heads["fc"] when present).
	Backbone map[string]layers.HostTensor
	// Heads holds each head's state under names relative to the head:
	// nn.Sequential indices ("0.weight", "1.running_mean") for MLPs,
	// "weight" for the prototypes, "weight" and "bias" for fc.
	Heads map[string]map[string]layers.HostTensor
	// Epoch is the checkpoint's epoch entry, -1 when absent.
	Epoch int
	// Optimizer is a PyTorch checkpoint's optimizer state dict, nil when
	// absent; it is kept for inspection, never loaded.
	Optimizer *Dict
	// Notes say what was ignored or guessed, for the user.
	Notes []string
}

func (p *Parts) notef(format string, args ...any) {
	p.Notes = append(p.Notes, fmt.Sprintf(format, args...))
}

// HeadNames returns the names of the heads p holds, sorted.
func (p *Parts) HeadNames() []string {
	return slices.Sorted(maps.Keys(p.Heads))
}

// findState returns the model's state dict inside a checkpoint's root:
// under "state_dict" (SwAV, SimSiam), "model" (VICReg), or the root itself;
// key is the entry's name, empty for the root.
func findState(root *Dict) (sd *Dict, key string, err error) {
	for _, k := range []string{"state_dict", "model"} {
		if v, ok := root.Get(k); ok {
			d, ok := v.(*Dict)
			if !ok {
				return nil, "", fmt.Errorf("checkpoint entry %q is %s, not a state dict", k, describe(v))
			}
			return d, k, nil
		}
	}
	return root, "", nil
}

// describe names the kind of a value of the checkpoint object model.
func describe(v any) string {
	switch v := v.(type) {
	case *Dict:
		return "a dictionary"
	case []any:
		return "a list"
	case layers.HostTensor:
		return fmt.Sprintf("a tensor of shape %v", v.Shape)
	case nil:
		return "None"
	case string:
		return "a string"
	case int64, float64, bool:
		return fmt.Sprintf("the number %v", v)
	}
	return fmt.Sprintf("a %T", v)
}

// sampleKeys lists the first few of keys for error messages.
func sampleKeys(keys []string) string {
	const n = 6
	if len(keys) <= n {
		return strings.Join(keys, ", ")
	}
	return fmt.Sprintf("%s, ... (%d in all)", strings.Join(keys[:n], ", "), len(keys))
}

// stripModule removes the "module." prefix DistributedDataParallel puts on
// every name, when every name has it.
func stripModule(names []string) ([]string, bool) {
	if len(names) == 0 {
		return names, false
	}
	for _, n := range names {
		if !strings.HasPrefix(n, "module.") {
			return names, false
		}
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.TrimPrefix(n, "module.")
	}
	return out, true
}

// tensorNames returns the names of the tensors of d, in order.
func tensorNames(d *Dict) []string {
	var out []string
	for _, k := range d.Keys {
		if _, ok := d.Values[k].(layers.HostTensor); ok {
			out = append(out, k)
		}
	}
	return out
}

// DetectLayout tells from its key names which layout a checkpoint (the
// object ReadPth returns, or ReadSafetensors' dictionary) has.
func DetectLayout(root any) (Layout, error) {
	d, ok := root.(*Dict)
	if !ok {
		return "", fmt.Errorf("the checkpoint holds %s, not a dictionary of tensors", describe(root))
	}
	sd, key, err := findState(d)
	if err != nil {
		return "", err
	}
	raw := tensorNames(sd)
	if len(raw) == 0 {
		return "", fmt.Errorf("the checkpoint holds no tensors (entries: %s)", sampleKeys(d.Keys))
	}
	names, module := stripModule(raw)
	has := func(prefix string) bool {
		return slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, prefix) })
	}
	switch {
	case has("backbone."):
		// Our own files name the backbone as VICReg's model does, but
		// neither under "model" nor wrapped in DistributedDataParallel.
		if module || key == "model" {
			return LayoutVICReg, nil
		}
		return LayoutE2MCVK, nil
	case has("encoder."):
		return LayoutSimSiam, nil
	case has("projection_head.") || has("prototypes"):
		return LayoutSwAV, nil
	case slices.Contains(names, "conv1.weight"):
		return LayoutTorchvision, nil
	}
	return "", fmt.Errorf("unknown checkpoint layout (keys: %s): not a ResNet checkpoint of VICReg, SwAV, SimSiam, torchvision or e2mcvk; name one with --layout (%s)", sampleKeys(raw), layoutList())
}

// route says where a tensor of a layout belongs: the head's name, "" for
// the backbone, or ok false for a tensor outside the model. name has no
// "module." prefix.
func route(l Layout, name string) (head, rel string, ok bool) {
	cut := func(prefix string) (string, bool) { return strings.CutPrefix(name, prefix) }
	switch l {
	case LayoutVICReg:
		if r, ok := cut("backbone."); ok {
			return "", r, true
		}
		if r, ok := cut("projector."); ok {
			return HeadProjector, r, true
		}
	case LayoutE2MCVK:
		if r, ok := cut("backbone."); ok {
			return "", r, true
		}
		if h, r, ok := strings.Cut(name, "."); ok && isHead(h) {
			return h, r, true
		}
	case LayoutSwAV:
		if r, ok := cut("projection_head."); ok {
			return HeadProjector, r, true
		}
		if r, ok := cut("prototypes."); ok {
			return HeadPrototypes, r, true
		}
		if strings.HasPrefix(name, "prototypes") {
			// MultiPrototypes (prototypes0, prototypes1, ...): no
			// model of ours has several prototype sets.
			return "", "", false
		}
		if r, ok := cut("fc."); ok {
			return HeadFC, r, true
		}
		return "", name, true
	case LayoutSimSiam:
		if r, ok := cut("encoder.fc."); ok {
			return HeadProjector, r, true
		}
		if r, ok := cut("encoder."); ok {
			return "", r, true
		}
		if r, ok := cut("predictor."); ok {
			return HeadPredictor, r, true
		}
	case LayoutTorchvision, LayoutVICRegBackbone:
		if r, ok := cut("fc."); ok {
			return HeadFC, r, true
		}
		return "", name, true
	}
	return "", "", false
}

// SplitCheckpoint takes a checkpoint apart by its layout; the empty layout
// detects it. It fails when the layout finds no ResNet backbone.
func SplitCheckpoint(root any, layout Layout) (*Parts, error) {
	if layout == "" {
		l, err := DetectLayout(root)
		if err != nil {
			return nil, err
		}
		layout = l
	} else if !slices.Contains(Layouts(), layout) {
		return nil, fmt.Errorf("unknown checkpoint layout %q: want %s", layout, layoutList())
	}
	d, ok := root.(*Dict)
	if !ok {
		return nil, fmt.Errorf("the checkpoint holds %s, not a dictionary of tensors", describe(root))
	}
	sd, key, err := findState(d)
	if err != nil {
		return nil, err
	}
	p := &Parts{Layout: layout, Backbone: map[string]layers.HostTensor{}, Heads: map[string]map[string]layers.HostTensor{}, Epoch: -1}
	var archEntry string
	if key != "" {
		for _, k := range d.Keys {
			v := d.Values[k]
			switch k {
			case key:
			case "epoch":
				n, ok := v.(int64)
				if !ok {
					p.notef("ignored the epoch entry: it is %s", describe(v))
					continue
				}
				p.Epoch = int(n)
			case "optimizer":
				switch o := v.(type) {
				case *Dict:
					p.Optimizer = o
				case nil:
				default:
					p.notef("ignored the optimizer entry: it is %s", describe(v))
				}
			case "arch":
				if s, ok := v.(string); ok {
					archEntry = s
				} else {
					p.notef("ignored the arch entry: it is %s", describe(v))
				}
			default:
				p.notef("ignored the checkpoint entry %q", k)
			}
		}
	}

	var raw []string
	var other []string
	for _, k := range sd.Keys {
		if _, ok := sd.Values[k].(layers.HostTensor); ok {
			raw = append(raw, k)
		} else {
			other = append(other, k)
		}
	}
	if len(other) > 0 {
		p.notef("ignored %d entries of the state dict that are not tensors: %s", len(other), sampleKeys(other))
	}
	names, _ := stripModule(raw)
	var ignored []string
	for i, name := range names {
		t := sd.Values[raw[i]].(layers.HostTensor)
		head, rel, ok := route(layout, name)
		switch {
		case !ok:
			ignored = append(ignored, raw[i])
		case head == "":
			p.Backbone[rel] = t
		default:
			if p.Heads[head] == nil {
				p.Heads[head] = map[string]layers.HostTensor{}
			}
			p.Heads[head][rel] = t
		}
	}
	if len(ignored) > 0 {
		p.notef("ignored %d tensors that belong to no part of a %s model: %s", len(ignored), layout, sampleKeys(ignored))
	}
	if len(p.Backbone) == 0 {
		return nil, fmt.Errorf("no backbone found as layout %s (keys: %s)", layout, sampleKeys(raw))
	}
	arch, err := inferArch(p.Backbone)
	if err != nil {
		return nil, fmt.Errorf("layout %s: %w", layout, err)
	}
	p.Arch = arch
	if archEntry != "" && archEntry != arch {
		p.notef("the checkpoint's arch entry says %s, its backbone's shapes say %s: using %s", archEntry, arch, arch)
	}
	return p, nil
}

// inferArch tells the ResNet from its backbone's names: bottleneck blocks
// (conv3) make ResNet-50; the blocks per stage tell 18 from 34.
func inferArch(bb map[string]layers.HostTensor) (string, error) {
	w, ok := bb["conv1.weight"]
	if !ok || len(w.Shape) != 4 {
		return "", fmt.Errorf("the backbone is not a torchvision ResNet: no 4-d conv1.weight (keys: %s)", sampleKeys(slices.Sorted(maps.Keys(bb))))
	}
	var blocks [4]int
	for s := range blocks {
		for {
			if _, ok := bb[fmt.Sprintf("layer%d.%d.conv1.weight", s+1, blocks[s])]; !ok {
				break
			}
			blocks[s]++
		}
	}
	_, bottleneck := bb["layer1.0.conv3.weight"]
	switch {
	case !bottleneck && blocks == [4]int{2, 2, 2, 2}:
		return "resnet18", nil
	case !bottleneck && blocks == [4]int{3, 4, 6, 3}:
		return "resnet34", nil
	case bottleneck && blocks == [4]int{3, 4, 6, 3}:
		return "resnet50", nil
	}
	kind := "basic"
	name := ""
	if bottleneck {
		kind = "bottleneck"
		switch blocks {
		case [4]int{3, 4, 23, 3}:
			name = " (resnet101)"
		case [4]int{3, 8, 36, 3}:
			name = " (resnet152)"
		}
	}
	return "", fmt.Errorf("a ResNet with %v %s blocks per stage%s: only resnet18, resnet34 and resnet50 are supported", blocks, kind, name)
}

// ResNetConfigFor returns the configuration of the ResNet p's backbone
// fits: depth from Arch, width, input channels and stem from conv1.weight
// (a 3x3 conv1 is the small stem, without max pool), Classes from the fc
// head (0 without one).
func ResNetConfigFor(p *Parts) (layers.ResNetConfig, error) {
	var c layers.ResNetConfig
	switch p.Arch {
	case "resnet18":
		c.Depth = 18
	case "resnet34":
		c.Depth = 34
	case "resnet50":
		c.Depth = 50
	default:
		return c, fmt.Errorf("arch %q: want resnet18, resnet34 or resnet50", p.Arch)
	}
	w, ok := p.Backbone["conv1.weight"]
	if !ok || len(w.Shape) != 4 {
		return c, fmt.Errorf("%s backbone without a 4-d conv1.weight", p.Arch)
	}
	c.Width, c.InChannels = w.Shape[0], w.Shape[1]
	switch {
	case w.Shape[2] == 7 && w.Shape[3] == 7:
	case w.Shape[2] == 3 && w.Shape[3] == 3:
		c.SmallStem = true
	default:
		return c, fmt.Errorf("%s backbone: conv1 is %dx%d, want 7x7 (torchvision) or 3x3 (small stem)", p.Arch, w.Shape[2], w.Shape[3])
	}
	if fc, ok := p.Heads[HeadFC]; ok {
		fw, ok := fc["weight"]
		if !ok || len(fw.Shape) != 2 {
			return c, fmt.Errorf("%s: the fc head has no 2-d weight", p.Arch)
		}
		c.Classes = fw.Shape[0]
	}
	return c, nil
}

// LoadBackbone loads p's backbone into r strictly, as torch's strict
// load_state_dict does: missing, unexpected and mis-shaped names are
// reported together. r's fc, when it has one, loads from p's fc head; an fc
// head r lacks is left out with a note. Batch norms saved before PyTorch
// counted batches (torchvision's own ResNet weights) have no
// num_batches_tracked: like PyTorch, LoadBackbone starts them at 0, with a
// note. Notes go to p.Notes.
func LoadBackbone(ctx context.Context, r *layers.ResNet, p *Parts) error {
	sd := make(map[string]layers.HostTensor, len(p.Backbone)+2)
	maps.Copy(sd, p.Backbone)
	filled := 0
	for name := range p.Backbone {
		if prefix, ok := strings.CutSuffix(name, ".running_mean"); ok {
			if _, ok := sd[prefix+".num_batches_tracked"]; !ok {
				sd[prefix+".num_batches_tracked"] = layers.HostTensor{Shape: []int{}, Data: []float32{0}, Int64: true}
				filled++
			}
		}
	}
	if filled > 0 {
		p.notef("%d batch norms have no num_batches_tracked (saved before PyTorch 0.4.1): set to 0", filled)
	}
	fc, hasFC := p.Heads[HeadFC]
	switch {
	case r.FC != nil:
		for k, v := range fc {
			sd["fc."+k] = v
		}
	case hasFC:
		n := 0
		if w, ok := fc["weight"]; ok && len(w.Shape) == 2 {
			n = w.Shape[0]
		}
		p.notef("the checkpoint's fc (%d classes) is not loaded: the model has none", n)
	}
	if err := layers.LoadStateDict(ctx, r, sd, true); err != nil {
		return fmt.Errorf("load %s %s backbone into resnet-%d: %w", p.Layout, p.Arch, r.Config.Depth, err)
	}
	return nil
}

// sequentialNames returns a head's tensors under nn.Sequential names: a
// head that is one bare Linear (SwAV's prototypes: "weight") becomes layer
// "0", as layers.MLP names it.
func sequentialNames(t map[string]layers.HostTensor) map[string]layers.HostTensor {
	bare := true
	for k := range t {
		if k != "weight" && k != "bias" {
			bare = false
		}
	}
	if !bare {
		return t
	}
	out := make(map[string]layers.HostTensor, len(t))
	for k, v := range t {
		out["0."+k] = v
	}
	return out
}

// headState returns the tensors of head, or an error naming the heads p has.
func headState(p *Parts, head string) (map[string]layers.HostTensor, error) {
	t, ok := p.Heads[head]
	if !ok || len(t) == 0 {
		have := "none"
		if len(p.Heads) > 0 {
			have = strings.Join(p.HeadNames(), ", ")
		}
		return nil, fmt.Errorf("the %s checkpoint has no %s head (heads: %s)", p.Layout, head, have)
	}
	return sequentialNames(t), nil
}

// LoadHead loads p's head (HeadProjector, ...) into m strictly, with the
// same checks as LoadBackbone.
func LoadHead(ctx context.Context, m *layers.MLP, p *Parts, head string) error {
	sd, err := headState(p, head)
	if err != nil {
		return err
	}
	if err := layers.LoadStateDict(ctx, m, sd, true); err != nil {
		return fmt.Errorf("load %s %s into mlp %q: %w", p.Layout, head, m.Config.Spec, err)
	}
	return nil
}

// HeadConfig returns the head as a method's published code builds it on a
// ResNet-50, and its input width. Layouts without fixed heads (torchvision,
// vicreg-backbone, e2mcvk) have none: InferHeadConfig reads any head from
// its tensors.
func HeadConfig(layout Layout, head string) (layers.MLPConfig, int, error) {
	switch {
	case layout == LayoutVICReg && head == HeadProjector:
		return layers.MLPConfig{Spec: "8192-8192-8192", HiddenBias: true}, 2048, nil
	case layout == LayoutSwAV && head == HeadProjector:
		return layers.MLPConfig{Spec: "2048-128", HiddenBias: true, LastBias: true}, 2048, nil
	case layout == LayoutSwAV && head == HeadPrototypes:
		return layers.MLPConfig{Spec: "3000"}, 128, nil
	case layout == LayoutSimSiam && head == HeadProjector:
		return layers.MLPConfig{Spec: "2048-2048-2048", LastBias: true, LastBN: true}, 2048, nil
	case layout == LayoutSimSiam && head == HeadPredictor:
		return layers.MLPConfig{Spec: "512-2048", LastBias: true}, 2048, nil
	}
	return layers.MLPConfig{}, 0, fmt.Errorf("layout %s has no standard %s head", layout, head)
}

// InferHeadConfig reads a head's configuration and input width from its
// tensors: Linear layers (2-d weight) and the batch norms after them at
// nn.Sequential indices, a ReLU between. It fails for a head layers.MLP
// cannot build.
func InferHeadConfig(p *Parts, head string) (layers.MLPConfig, int, error) {
	var c layers.MLPConfig
	sd, err := headState(p, head)
	if err != nil {
		return c, 0, err
	}
	fail := func(format string, args ...any) (layers.MLPConfig, int, error) {
		return layers.MLPConfig{}, 0, fmt.Errorf("%s %s head: %s", p.Layout, head, fmt.Sprintf(format, args...))
	}
	byIndex := map[int]map[string]layers.HostTensor{}
	maxIndex := -1
	for name, t := range sd {
		is, rel, _ := strings.Cut(name, ".")
		i, err := strconv.Atoi(is)
		if err != nil || i < 0 || rel == "" {
			return fail("%q is not an entry of an nn.Sequential", name)
		}
		if byIndex[i] == nil {
			byIndex[i] = map[string]layers.HostTensor{}
		}
		byIndex[i][rel] = t
		maxIndex = max(maxIndex, i)
	}
	type layer struct{ bias, bn, affine bool }
	var ls []layer
	var widths []string
	in, prev := -1, -1
	for pos := 0; pos <= maxIndex; {
		lin := byIndex[pos]
		w, ok := lin["weight"]
		if !ok || len(w.Shape) != 2 {
			return fail("entry %d is not a Linear layer", pos)
		}
		_, bias := lin["bias"]
		for k := range lin {
			if k != "weight" && k != "bias" {
				return fail("Linear %d has an entry %q", pos, k)
			}
		}
		if in < 0 {
			in = w.Shape[1]
		} else if w.Shape[1] != prev {
			return fail("Linear %d takes %d inputs, the layer before gives %d", pos, w.Shape[1], prev)
		}
		prev = w.Shape[0]
		widths = append(widths, strconv.Itoa(w.Shape[0]))
		l := layer{bias: bias}
		pos++
		if bn, ok := byIndex[pos]; ok {
			if _, ok := bn["running_mean"]; !ok {
				return fail("entry %d after Linear %d is neither a batch norm nor a ReLU", pos, pos-1)
			}
			for k := range bn {
				switch k {
				case "weight", "bias", "running_mean", "running_var", "num_batches_tracked":
				default:
					return fail("batch norm %d has an entry %q", pos, k)
				}
			}
			_, l.affine = bn["weight"]
			l.bn = true
			pos++
		}
		ls = append(ls, l)
		if pos > maxIndex {
			break
		}
		// The ReLU, without state.
		if _, ok := byIndex[pos]; ok {
			return fail("entry %d has state where the ReLU belongs", pos)
		}
		pos++
	}
	for i, l := range ls[:len(ls)-1] {
		if !l.bn || !l.affine {
			return fail("hidden Linear %d has no affine batch norm after it (layers.MLP cannot build it)", i)
		}
		if l.bias != ls[0].bias {
			return fail("hidden Linears differ in having a bias")
		}
	}
	last := ls[len(ls)-1]
	c.Spec = strings.Join(widths, "-")
	c.HiddenBias = len(ls) > 1 && ls[0].bias
	c.LastBias, c.LastBN, c.LastBNAffine = last.bias, last.bn, last.bn && last.affine
	return c, in, nil
}

// ModelParts takes the state of a model of ours apart for WriteCheckpoint:
// the backbone (its fc as the fc head) and each named head (HeadProjector,
// ...). Layout is e2mcvk, Epoch -1.
func ModelParts(ctx context.Context, r *layers.ResNet, heads map[string]*layers.MLP) (*Parts, error) {
	sd, err := layers.StateDict(ctx, r)
	if err != nil {
		return nil, err
	}
	p := &Parts{Layout: LayoutE2MCVK, Arch: fmt.Sprintf("resnet%d", r.Config.Depth), Backbone: map[string]layers.HostTensor{}, Heads: map[string]map[string]layers.HostTensor{}, Epoch: -1}
	for k, v := range sd {
		if rel, ok := strings.CutPrefix(k, "fc."); ok {
			if p.Heads[HeadFC] == nil {
				p.Heads[HeadFC] = map[string]layers.HostTensor{}
			}
			p.Heads[HeadFC][rel] = v
			continue
		}
		p.Backbone[k] = v
	}
	for name, m := range heads {
		if !isHead(name) || name == HeadFC {
			return nil, fmt.Errorf("head %q: want %s, %s or %s", name, HeadProjector, HeadPredictor, HeadPrototypes)
		}
		hs, err := layers.StateDict(ctx, m)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if name == HeadPrototypes && len(m.Linears) == 1 && m.BNs[0] == nil {
			// SwAV's prototypes are a bare Linear: "weight", not "0.weight".
			bare := map[string]layers.HostTensor{}
			for k, v := range hs {
				bare[strings.TrimPrefix(k, "0.")] = v
			}
			hs = bare
		}
		p.Heads[name] = hs
	}
	return p, nil
}
