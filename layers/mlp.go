package layers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/e2mcvk/e2mcvk/vk"
)

// MLPConfig describes a projection or prediction head: Linear, BatchNorm1d,
// ReLU for every hidden layer, then a last Linear, as the SSL methods build
// them (nn.Sequential, so the state names are the layer indices: VICReg's
// "0", "1", "3", "4", "6").
type MLPConfig struct {
	// Spec gives the layer widths after the input, dash-separated:
	// VICReg's "8192-8192-8192" (two hidden layers and the output).
	Spec string
	// HiddenBias puts biases on the hidden Linears (VICReg, SwAV: true;
	// SimSiam: false).
	HiddenBias bool
	// LastBias puts a bias on the last Linear (VICReg: false; SwAV: true).
	LastBias bool
	// LastBN appends a BatchNorm1d after the last Linear, without affine
	// parameters when LastBNAffine is false (SimSiam's projector).
	LastBN, LastBNAffine bool
}

// ParseWidths reads a dash-separated list of positive layer widths.
func ParseWidths(spec string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(spec, "-") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("mlp spec %q: %q is not a positive width", spec, f)
		}
		out = append(out, n)
	}
	return out, nil
}

// MLP is a head built from an MLPConfig.
type MLP struct {
	Config   MLPConfig
	Training bool
	// Linears[i] and BNs[i] are the i-th Linear and the norm after it (nil
	// after the last Linear unless LastBN).
	Linears []*Linear
	BNs     []*BatchNorm
}

// NewMLP builds the head for inputs of width in, with PyTorch's default
// initialisation.
func NewMLP(ctx context.Context, d *vk.Device, in int, c MLPConfig, rng *rand.Rand) (*MLP, error) {
	widths, err := ParseWidths(c.Spec)
	if err != nil {
		return nil, err
	}
	m := &MLP{Config: c, Training: true}
	b := &builder{ctx: ctx, d: d, rng: rng}
	for i, w := range widths {
		last := i == len(widths)-1
		m.Linears = append(m.Linears, b.linearBias(in, w, (!last && c.HiddenBias) || (last && c.LastBias)))
		var bn *BatchNorm
		if !last {
			bn = b.bn(w, false)
		} else if c.LastBN {
			bn = b.bn(w, !c.LastBNAffine)
		}
		m.BNs = append(m.BNs, bn)
		in = w
	}
	if b.err != nil {
		m.Release()
		return nil, fmt.Errorf("mlp %q: %w", c.Spec, b.err)
	}
	return m, nil
}

// Forward runs the head on x [N, in].
func (m *MLP) Forward(tp *Tape, x *Var) *Var {
	h := x
	for i, l := range m.Linears {
		h = l.Forward(tp, h)
		hidden := i < len(m.Linears)-1
		switch {
		case m.BNs[i] != nil && hidden:
			h = m.BNs[i].ForwardRelu(tp, h, m.Training)
		case m.BNs[i] != nil:
			h = m.BNs[i].Forward(tp, h, m.Training)
		case hidden:
			h = tp.Relu(h)
		}
	}
	return h
}

// State names the layers by their nn.Sequential index: Linear, BatchNorm1d
// and ReLU take one index each.
func (m *MLP) State(prefix string) []StateEntry {
	var out []StateEntry
	idx := 0
	for i, l := range m.Linears {
		out = append(out, l.State(fmt.Sprintf("%s%d.", prefix, idx))...)
		idx++
		if m.BNs[i] != nil {
			out = append(out, m.BNs[i].State(fmt.Sprintf("%s%d.", prefix, idx))...)
			idx++
		}
		idx++ // the ReLU
	}
	return out
}

// Release frees the head's device memory.
func (m *MLP) Release() {
	for i, l := range m.Linears {
		if l != nil {
			l.Release()
		}
		if m.BNs[i] != nil {
			m.BNs[i].Release()
		}
	}
}
