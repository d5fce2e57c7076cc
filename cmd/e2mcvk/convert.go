package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/e2mcvk/e2mcvk/loader"
)

// convertCmd is `e2mcvk convert`.
type convertCmd struct {
	In     string `arg:"" type:"existingfile" placeholder:"IN" help:"Checkpoint to read: a .pth (VICReg, SwAV, SimSiam, torchvision) or an e2mcvk .safetensors."`
	Out    string `arg:"" placeholder:"OUT" help:"Checkpoint to write: .safetensors (e2mcvk's format, backbone and heads) or .pth (PyTorch's zip format, the backbone as a torchvision state dict)."`
	Layout string `name:"layout" default:"" placeholder:"L" help:"Layout of IN, detected when empty: vicreg, vicreg-backbone, swav, simsiam, torchvision, e2mcvk."`
}

// Help is the long help of `e2mcvk convert --help`.
func (convertCmd) Help() string {
	return `Converts a checkpoint between PyTorch's .pth files and e2mcvk's .safetensors.

A .safetensors output holds the backbone under torchvision's names and every
head the input has (projector, predictor, prototypes, fc), with the epoch.
A .pth output holds the backbone as a torchvision state dict (with fc when
the input has one), in PyTorch's zip format: load it with
  model = torchvision.models.resnet50(); model.fc = torch.nn.Identity()
  model.load_state_dict(torch.load("OUT.pth"))
(keep the fc when the state has fc.weight). Heads are not written to a .pth.`
}

// Run converts the checkpoint.
func (c *convertCmd) Run(e *env) error {
	if !strings.HasSuffix(c.Out, ".safetensors") && !strings.HasSuffix(c.Out, ".pth") {
		return fmt.Errorf("%s: the output must end in .safetensors or .pth", c.Out)
	}
	parts, err := readCheckpoint(c.In, c.Layout)
	if err != nil {
		return err
	}
	for _, n := range parts.Notes {
		fmt.Fprintf(e.stderr, "note: %s\n", n)
	}
	switch {
	case strings.HasSuffix(c.Out, ".safetensors"):
		meta := map[string]string{loader.MetaSourceLayout: string(parts.Layout)}
		if err := loader.WriteCheckpoint(c.Out, &loader.Checkpoint{Parts: *parts, Meta: meta}); err != nil {
			return err
		}
	default: // .pth
		// Sorted names: load_state_dict does not care about the order,
		// and a sorted file is the same file every time.
		sd := loader.NewDict()
		for _, k := range slices.Sorted(maps.Keys(parts.Backbone)) {
			sd.Set(k, parts.Backbone[k])
		}
		if fc, ok := parts.Heads["fc"]; ok {
			sd.Set("fc.weight", fc["weight"])
			sd.Set("fc.bias", fc["bias"])
		}
		heads := slices.DeleteFunc(parts.HeadNames(), func(h string) bool { return h == "fc" })
		if len(heads) > 0 {
			fmt.Fprintf(e.stderr, "note: the .pth holds the backbone only; not written: %s\n", strings.Join(heads, ", "))
		}
		if err := loader.WritePth(c.Out, sd); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stderr, "wrote %s (%s backbone; input layout %s)\n", c.Out, parts.Arch, parts.Layout)
	return nil
}

// readCheckpoint reads a .safetensors checkpoint of ours or a PyTorch .pth
// and takes it apart; layout "" detects the layout.
func readCheckpoint(path, layout string) (*loader.Parts, error) {
	l, err := loader.ParseLayout(layout)
	if err != nil {
		return nil, err
	}
	if strings.HasSuffix(path, ".safetensors") {
		c, err := loader.ReadCheckpoint(path)
		if err != nil {
			return nil, err
		}
		return &c.Parts, nil
	}
	root, err := loader.ReadPth(path)
	if err != nil {
		return nil, err
	}
	p, err := loader.SplitCheckpoint(root, l)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}
