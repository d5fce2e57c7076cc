package layers

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// StateEntry is one named tensor of a module's state, in PyTorch's
// state_dict naming ("layer1.0.bn1.running_mean"). Exactly one of Param,
// Buffer and Count is set.
type StateEntry struct {
	Name string
	// Param is a trainable parameter.
	Param *Var
	// Buffer is a tensor the module updates itself (running statistics).
	Buffer *Tensor
	// Count is an integer counter (num_batches_tracked), int64 in checkpoints.
	Count *int64
}

// Module is a network or a part of one: it lists its state, in the order of
// PyTorch's state_dict, and frees its device memory.
type Module interface {
	State(prefix string) []StateEntry
	Release()
}

// Parameters returns the trainable parameters of m in state order.
func Parameters(m Module) []*Var {
	var ps []*Var
	for _, e := range m.State("") {
		if e.Param != nil {
			ps = append(ps, e.Param)
		}
	}
	return ps
}

// HostTensor is a tensor's values on the host, row-major, for state dicts.
type HostTensor struct {
	Shape []int
	Data  []float32
	// Int64 marks an integer counter (num_batches_tracked), stored in Data
	// as a float (exact below 2^24) and written as int64 to checkpoints.
	Int64 bool
}

// StateDict downloads the state of m (parameters, buffers, counters).
func StateDict(ctx context.Context, m Module) (map[string]HostTensor, error) {
	out := map[string]HostTensor{}
	for _, e := range m.State("") {
		switch {
		case e.Count != nil:
			out[e.Name] = HostTensor{Shape: []int{}, Data: []float32{float32(*e.Count)}, Int64: true}
		default:
			t := e.Buffer
			if e.Param != nil {
				t = e.Param.Value
			}
			data, err := t.Download(ctx)
			if err != nil {
				return nil, fmt.Errorf("state %s: %w", e.Name, err)
			}
			out[e.Name] = HostTensor{Shape: t.Shape(), Data: data}
		}
	}
	return out, nil
}

// LoadStateDict uploads sd into m. Every entry of m must be present with its
// shape; with strict, sd may hold nothing else (like torch's strict=True).
// Missing or unexpected names and shape mismatches are reported together.
func LoadStateDict(ctx context.Context, m Module, sd map[string]HostTensor, strict bool) error {
	var problems []string
	seen := map[string]bool{}
	entries := m.State("")
	for _, e := range entries {
		h, ok := sd[e.Name]
		if !ok {
			problems = append(problems, "missing "+e.Name)
			continue
		}
		seen[e.Name] = true
		var want []int
		switch {
		case e.Count != nil:
			want = []int{}
		case e.Param != nil:
			want = e.Param.Value.Shape()
		default:
			want = e.Buffer.Shape()
		}
		if !slices.Equal(h.Shape, want) && !(len(want) == 0 && len(h.Data) == 1) {
			problems = append(problems, fmt.Sprintf("%s has shape %v, want %v", e.Name, h.Shape, want))
		}
	}
	if strict {
		var extra []string
		for name := range sd {
			if !seen[name] {
				extra = append(extra, name)
			}
		}
		sort.Strings(extra)
		for _, name := range extra {
			problems = append(problems, "unexpected "+name)
		}
	}
	if len(problems) > 0 {
		if len(problems) > 8 {
			problems = append(problems[:8], fmt.Sprintf("and %d more", len(problems)-8))
		}
		return fmt.Errorf("load state dict: %s", strings.Join(problems, "; "))
	}
	for _, e := range entries {
		h := sd[e.Name]
		var err error
		switch {
		case e.Count != nil:
			*e.Count = int64(h.Data[0])
		case e.Param != nil:
			err = e.Param.Value.Upload(ctx, h.Data)
		default:
			err = e.Buffer.Upload(ctx, h.Data)
		}
		if err != nil {
			return fmt.Errorf("load state dict: %s: %w", e.Name, err)
		}
	}
	return nil
}

// State lists the convolution's weight and bias.
func (c *Conv2d) State(prefix string) []StateEntry {
	out := []StateEntry{{Name: prefix + "weight", Param: c.Weight}}
	if c.Bias != nil {
		out = append(out, StateEntry{Name: prefix + "bias", Param: c.Bias})
	}
	return out
}

// State lists the linear layer's weight and bias.
func (l *Linear) State(prefix string) []StateEntry {
	out := []StateEntry{{Name: prefix + "weight", Param: l.Weight}}
	if l.Bias != nil {
		out = append(out, StateEntry{Name: prefix + "bias", Param: l.Bias})
	}
	return out
}

// State lists weight and bias (when affine), then the running statistics and
// the batch counter, as torch's BatchNorm does.
func (bn *BatchNorm) State(prefix string) []StateEntry {
	var out []StateEntry
	if bn.Weight != nil {
		out = append(out, StateEntry{Name: prefix + "weight", Param: bn.Weight}, StateEntry{Name: prefix + "bias", Param: bn.Bias})
	}
	return append(out,
		StateEntry{Name: prefix + "running_mean", Buffer: bn.RunningMean},
		StateEntry{Name: prefix + "running_var", Buffer: bn.RunningVar},
		StateEntry{Name: prefix + "num_batches_tracked", Count: &bn.NumBatchesTracked})
}
