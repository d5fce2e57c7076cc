package loader

import "github.com/e2mcvk/e2mcvk/layers"

// The object model of a PyTorch checkpoint as ReadPth returns it (pth.go)
// and WritePth takes it: the pickled tree with its tensors converted to
// float32 host tensors. Layouts (layout.go) read model state out of it.
//
// A value in the tree is one of: *Dict, []any (a list or tuple), string,
// int64, float64, bool, nil, or layers.HostTensor (a tensor of any
// floating dtype converted to float32; an int64 tensor such as
// num_batches_tracked comes with Int64 set).

// Dict is a pickled dictionary (dict or OrderedDict) with its keys in
// insertion order, which is the order of a state dict. Keys that are not
// strings (optimizer state is keyed by parameter index) are written in
// decimal.
type Dict struct {
	Keys   []string
	Values map[string]any
}

// NewDict returns an empty dictionary.
func NewDict() *Dict { return &Dict{Values: map[string]any{}} }

// Set adds or replaces key, keeping the first insertion's position.
func (d *Dict) Set(key string, v any) {
	if _, ok := d.Values[key]; !ok {
		d.Keys = append(d.Keys, key)
	}
	d.Values[key] = v
}

// Get returns the value of key and whether it is present.
func (d *Dict) Get(key string) (any, bool) {
	v, ok := d.Values[key]
	return v, ok
}

// Tensors returns the entries of d that are tensors, in order, as a state
// dict.
func (d *Dict) Tensors() []NamedTensor {
	var out []NamedTensor
	for _, k := range d.Keys {
		if t, ok := d.Values[k].(layers.HostTensor); ok {
			out = append(out, NamedTensor{Name: k, Tensor: t})
		}
	}
	return out
}

// NamedTensor is one entry of a state dict.
type NamedTensor struct {
	Name   string
	Tensor layers.HostTensor
}
