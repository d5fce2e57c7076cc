package layers

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/e2mcvk/e2mcvk/vk"
)

// Group is a set of parameters that share their optimizer settings, like a
// param group of torch.optim.
type Group struct {
	// Params are the leaves (Param) to update. After Backward each holds its
	// gradient in Grad; a parameter whose Grad is nil is left alone, as
	// PyTorch skips parameters without a gradient.
	Params []*Var
	// WeightDecay is the L2 penalty added to the gradient (wd * p).
	WeightDecay float64
	// FixedLR, when positive, is this group's learning rate at every step,
	// whatever Step is given: SimSiam's predictor (fix_pred_lr) keeps the
	// base learning rate while the schedule decays the rest.
	FixedLR float64
	// NoAdapt turns off weight decay and the trust ratio of LARS and LARC
	// for the whole group (a plain momentum step); SGD ignores it.
	NoAdapt bool
}

// rule is the update an Optimizer applies.
type rule int

const (
	ruleSGD rule = iota
	ruleLARS
	ruleLARC
)

var ruleNames = [...]string{"sgd", "lars", "larc"}

// Modes of optim_step.comp, its specialization constant MODE.
const (
	stepPlain = iota // q = 1
	stepLARS
	stepLARC
)

// Flags of optim_step.comp's push constants.
const (
	stepFirst = 1 // the momentum buffer starts as the update
	stepNoBuf = 2 // no momentum: nothing is stored
)

// Work split of the optimizer kernels: optim_step.comp takes one element per
// invocation (like the elementwise kernels); optim_norm.comp gives each of
// at most normParts workgroups of a parameter (per buffer segment it spans)
// at least normPer elements per invocation. Few partials keep the step
// kernel's serial sum of them short; the norm dispatches of different
// parameters have no barrier between them, so together they still fill a GPU.
const (
	optimGroup = 256
	normParts  = 16
	normPer    = 16
)

// Optimizer updates parameters from their gradients on the device: SGD with
// momentum (NewSGD), VICReg's LARS (NewLARS) or SwAV's LARC around SGD
// (NewLARC). Step records the whole update into a stream, with no host round
// trip; the state it keeps (momentum buffers) lives on the device and is
// saved and restored as host tensors by State and LoadState. An Optimizer is
// used by one goroutine.
type Optimizer struct {
	rule     rule
	groups   []Group
	momentum float64
	ratio    float64 // LARS's eta, LARC's trust coefficient
	eps      float64 // LARC's eps
	state    [][]paramState
	steps    int
}

// paramState is what the optimizer keeps for one parameter.
type paramState struct {
	// buf is the momentum buffer, nil until the parameter's first step with
	// a gradient (and always without momentum).
	buf *Tensor
	// parts holds the partial sums of squares of the trust ratio's norms
	// (2 per workgroup of optim_norm.comp), allocated on first use; nparts
	// is their count, fixed by the parameter's shape and the device.
	parts  *Tensor
	nparts int
}

// NewSGD returns torch.optim.SGD with the given momentum (dampening 0, no
// Nesterov): for each parameter with a gradient g, d = g + wd*p; the momentum
// buffer is d at the parameter's first step and momentum*buf + d after; then
// p -= lr*buf (p -= lr*d without momentum).
func NewSGD(groups []Group, momentum float64) (*Optimizer, error) {
	return newOptimizer(ruleSGD, groups, momentum, 0, 0)
}

// NewLARS returns the LARS of VICReg's main_vicreg.py (its defaults: eta
// 0.001, momentum 0.9), whose weight-decay and adaptation filters are both
// exclude_bias_and_norm: for a parameter of one dimension (a bias or a norm's
// affine parameter), or any parameter of a NoAdapt group, d = g; for the
// others d = (g + wd*p) * q with q = eta*||p||/||g + wd*p|| when both norms
// are positive and 1 otherwise. The momentum buffer mu starts at zero:
// mu = momentum*mu + d; p -= lr*mu.
func NewLARS(groups []Group, momentum, eta float64) (*Optimizer, error) {
	if eta <= 0 || math.IsInf(eta, 0) || math.IsNaN(eta) {
		return nil, fmt.Errorf("lars: eta %v must be positive", eta)
	}
	return newOptimizer(ruleLARS, groups, momentum, eta, 0)
}

// NewLARC returns apex.parallel.LARC with clip=False wrapped around
// torch.optim.SGD (SwAV: trust 0.001, eps 1e-8, momentum 0.9). For each
// parameter with a gradient, with pn = ||p|| and gn = ||g||: when both are
// non-zero, d = (g + wd*p) * trust*pn/(gn + pn*wd + eps); otherwise d = g,
// with no weight decay, because LARC sets the wrapped SGD's weight decay to 0
// for the whole step (it restores it afterwards). A NoAdapt group takes d = g
// too. The SGD momentum step follows as in NewSGD. Unlike apex, the gradients
// are left unchanged.
func NewLARC(groups []Group, momentum, trust, eps float64) (*Optimizer, error) {
	if trust <= 0 || math.IsInf(trust, 0) || math.IsNaN(trust) {
		return nil, fmt.Errorf("larc: trust coefficient %v must be positive", trust)
	}
	if eps < 0 || math.IsInf(eps, 0) || math.IsNaN(eps) {
		return nil, fmt.Errorf("larc: eps %v must be non-negative", eps)
	}
	return newOptimizer(ruleLARC, groups, momentum, trust, eps)
}

func newOptimizer(r rule, groups []Group, momentum, ratio, eps float64) (*Optimizer, error) {
	name := ruleNames[r]
	if momentum < 0 || math.IsInf(momentum, 0) || math.IsNaN(momentum) {
		return nil, fmt.Errorf("%s: momentum %v must be non-negative", name, momentum)
	}
	seen := map[*Var]string{}
	o := &Optimizer{rule: r, momentum: momentum, ratio: ratio, eps: eps}
	for gi, g := range groups {
		if g.WeightDecay < 0 || math.IsInf(g.WeightDecay, 0) || math.IsNaN(g.WeightDecay) {
			return nil, fmt.Errorf("%s: group %d: weight decay %v must be non-negative", name, gi, g.WeightDecay)
		}
		if g.FixedLR < 0 || math.IsInf(g.FixedLR, 0) || math.IsNaN(g.FixedLR) {
			return nil, fmt.Errorf("%s: group %d: fixed learning rate %v must be non-negative", name, gi, g.FixedLR)
		}
		for pi, v := range g.Params {
			at := fmt.Sprintf("group %d parameter %d", gi, pi)
			switch {
			case v == nil || v.Value == nil:
				return nil, fmt.Errorf("%s: %s is nil", name, at)
			case !v.leaf:
				return nil, fmt.Errorf("%s: %s is not a leaf (make it with Param)", name, at)
			case !v.Value.Contiguous():
				return nil, fmt.Errorf("%s: %s is a strided view %v", name, at, v.Value.shape)
			case seen[v] != "":
				return nil, fmt.Errorf("%s: %s is also %s", name, at, seen[v])
			}
			seen[v] = at
		}
		g.Params = append([]*Var(nil), g.Params...)
		o.groups = append(o.groups, g)
		o.state = append(o.state, make([]paramState, len(g.Params)))
	}
	return o, nil
}

// Steps returns how many steps the optimizer has recorded (or was restored
// to by LoadState).
func (o *Optimizer) Steps() int { return o.steps }

// adapts reports whether parameter v of group g gets a trust ratio.
func (o *Optimizer) adapts(g *Group, v *Var) bool {
	switch o.rule {
	case ruleLARS:
		return !g.NoAdapt && len(v.Value.shape) != 1
	case ruleLARC:
		return !g.NoAdapt
	}
	return false
}

// Step records one update of every parameter that has a gradient, with
// learning rate lr (a group's FixedLR instead, where set). The stream must
// be run before the gradients or parameters are next read or written by the
// host. Norms are taken of all parameters first and the updates recorded
// after them, so that a step waits on one barrier, not one per parameter.
func (o *Optimizer) Step(s *vk.Stream, lr float64) error {
	name := ruleNames[o.rule]
	if lr < 0 || math.IsInf(lr, 0) || math.IsNaN(lr) {
		return fmt.Errorf("%s: learning rate %v must be non-negative and finite", name, lr)
	}
	for gi := range o.groups {
		g := &o.groups[gi]
		for pi, v := range g.Params {
			if v.Grad == nil {
				continue
			}
			if err := o.check(s, v); err != nil {
				return fmt.Errorf("%s: group %d parameter %d: %w", name, gi, pi, err)
			}
			if !o.adapts(g, v) {
				continue
			}
			if err := o.recordNorms(s, g, v, &o.state[gi][pi]); err != nil {
				return fmt.Errorf("%s: group %d parameter %d: norms: %w", name, gi, pi, err)
			}
		}
	}
	for gi := range o.groups {
		g := &o.groups[gi]
		glr := lr
		if g.FixedLR > 0 {
			glr = g.FixedLR
		}
		for pi, v := range g.Params {
			if v.Grad == nil {
				continue
			}
			if err := o.recordStep(s, g, v, &o.state[gi][pi], glr); err != nil {
				return fmt.Errorf("%s: group %d parameter %d: %w", name, gi, pi, err)
			}
		}
	}
	o.steps++
	return nil
}

// check verifies that a parameter and its gradient can be stepped on s.
func (o *Optimizer) check(s *vk.Stream, v *Var) error {
	if v.Value.Device() != s.Device() {
		return fmt.Errorf("the parameter lives on another device than the stream's")
	}
	if !slices.Equal(v.Grad.shape, v.Value.shape) {
		return fmt.Errorf("gradient of shape %v for a parameter of shape %v", v.Grad.shape, v.Value.shape)
	}
	if !v.Grad.Contiguous() {
		return fmt.Errorf("the gradient is a strided view %v", v.Grad.shape)
	}
	return nil
}

// recordNorms records optim_norm.comp over v and its gradient into st.parts:
// sums of p^2 and of (g + c*p)^2 with c the weight decay for LARS's update
// norm, 0 for LARC's gradient norm.
func (o *Optimizer) recordNorms(s *vk.Stream, g *Group, v *Var, st *paramState) error {
	p, grad := v.Value, v.Grad
	ops := []operand{{p, false}, {grad, false}}
	groupsOf := func(n int) int { return min(normParts, max(1, ceilDiv(n, optimGroup*normPer))) }
	if st.parts == nil {
		count := 0
		if err := elementwise(p.Len(), ops, func(n int, _ []vk.Arg, _ []uint32) error {
			count += groupsOf(n)
			return nil
		}); err != nil {
			return err
		}
		parts, err := New(p.Device(), 2*count)
		if err != nil {
			return err
		}
		st.parts, st.nparts = parts, count
	}
	partArg, partOff, err := Bind(st.parts, true)
	if err != nil {
		return err
	}
	c := 0.0
	if o.rule == ruleLARS {
		c = g.WeightDecay
	}
	done := 0
	return elementwise(p.Len(), ops, func(n int, args []vk.Arg, offs []uint32) error {
		k := groupsOf(n)
		push := Push{}.U32(uint32(n), offs[0], offs[1], partOff+uint32(2*done), uint32(k)).F32(float32(c))
		done += k
		return Launch(s, "optim_norm", []uint32{optimGroup}, [3]uint32{uint32(k), 1, 1}, push, args[0], args[1], partArg)
	})
}

// recordStep records optim_step.comp over v with learning rate lr.
func (o *Optimizer) recordStep(s *vk.Stream, g *Group, v *Var, st *paramState, lr float64) error {
	p, grad := v.Value, v.Grad
	mode, wd := stepPlain, g.WeightDecay
	switch {
	case o.adapts(g, v) && o.rule == ruleLARS:
		mode = stepLARS
	case o.adapts(g, v) && o.rule == ruleLARC:
		mode = stepLARC
	case o.rule != ruleSGD:
		wd = 0 // an excluded parameter of LARS or LARC
	}
	flags := uint32(0)
	if o.momentum == 0 {
		flags = stepFirst | stepNoBuf
	} else if st.buf == nil {
		buf, err := New(p.Device(), p.shape...)
		if err != nil {
			return err
		}
		st.buf = buf
		flags = stepFirst
	}
	ops := []operand{{p, true}, {grad, false}}
	if st.buf != nil {
		ops = append(ops, operand{st.buf, true})
	}
	var partArg vk.Arg
	var partOff uint32
	if mode != stepPlain {
		var err error
		if partArg, partOff, err = Bind(st.parts, false); err != nil {
			return err
		}
	}
	return elementwise(p.Len(), ops, func(n int, args []vk.Arg, offs []uint32) error {
		bufArg, bufOff := args[1], uint32(0) // unused without momentum
		if st.buf != nil {
			bufArg, bufOff = args[2], offs[2]
		}
		pa := partArg
		if mode == stepPlain {
			pa = args[1] // unused, but every binding must be valid
		}
		push := Push{}.U32(uint32(n), offs[0], offs[1], bufOff, partOff, uint32(st.nparts), flags).
			F32(float32(lr), float32(wd), float32(o.momentum), float32(o.ratio), float32(o.eps))
		// Four elements an invocation where the vec4 views line up.
		v4, per := fours([]uint32{offs[0], offs[1], bufOff})
		return Launch(s, "optim_step", []uint32{optimGroup, uint32(mode), v4}, Grid(ceilDiv(ceilDiv(n, per), optimGroup)),
			push, args[0], args[1], bufArg, pa)
	})
}

// OptimizerState is an Optimizer's state on the host: the step count and
// one tensor per momentum buffer, named "<group>.<index>.<kind>" after the
// parameter's group and its index within the group; kind is PyTorch's name
// of the buffer: "momentum_buffer" for SGD and LARC, "mu" for LARS.
// Parameters that never had a gradient have no entry, as in PyTorch.
type OptimizerState struct {
	Steps   int
	Tensors map[string]HostTensor
}

// bufferKind is the state name of the optimizer's momentum buffer.
func (o *Optimizer) bufferKind() string {
	if o.rule == ruleLARS {
		return "mu"
	}
	return "momentum_buffer"
}

// State downloads the optimizer's state. The streams that recorded its steps
// must have run.
func (o *Optimizer) State(ctx context.Context) (*OptimizerState, error) {
	st := &OptimizerState{Steps: o.steps, Tensors: map[string]HostTensor{}}
	for gi, ps := range o.state {
		for pi, p := range ps {
			if p.buf == nil {
				continue
			}
			data, err := p.buf.Download(ctx)
			if err != nil {
				return nil, fmt.Errorf("%s state: group %d parameter %d: %w", ruleNames[o.rule], gi, pi, err)
			}
			st.Tensors[fmt.Sprintf("%d.%d.%s", gi, pi, o.bufferKind())] = HostTensor{Shape: p.buf.Shape(), Data: data}
		}
	}
	return st, nil
}

// LoadState replaces the optimizer's state with st, so that a run resumes
// where State saved it, bit for bit. Every tensor of st must name a
// parameter of this optimizer and the buffer kind of its rule, with the
// parameter's shape; otherwise LoadState fails and changes nothing.
// Parameters without an entry start afresh. No recorded step may be pending.
func (o *Optimizer) LoadState(ctx context.Context, st *OptimizerState) error {
	name := ruleNames[o.rule]
	if st.Steps < 0 {
		return fmt.Errorf("%s: load state: %d steps", name, st.Steps)
	}
	type entry struct {
		g, p int
		t    HostTensor
	}
	var entries []entry
	keys := make([]string, 0, len(st.Tensors))
	for k := range st.Tensors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t := st.Tensors[k]
		f := strings.Split(k, ".")
		if len(f) != 3 {
			return fmt.Errorf("%s: load state: key %q is not <group>.<index>.<kind>", name, k)
		}
		gi, err1 := strconv.Atoi(f[0])
		pi, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil || gi < 0 || gi >= len(o.groups) || pi < 0 || pi >= len(o.groups[gi].Params) {
			return fmt.Errorf("%s: load state: %q names no parameter of this optimizer", name, k)
		}
		if o.momentum == 0 {
			return fmt.Errorf("%s: load state: %q: an optimizer without momentum keeps no buffers", name, k)
		}
		if f[2] != o.bufferKind() {
			return fmt.Errorf("%s: load state: %q: this optimizer's buffers are %q", name, k, o.bufferKind())
		}
		want := o.groups[gi].Params[pi].Value.shape
		if !slices.Equal(t.Shape, want) {
			return fmt.Errorf("%s: load state: %q has shape %v, the parameter %v", name, k, t.Shape, want)
		}
		n := 1
		for _, d := range t.Shape {
			n *= d
		}
		if len(t.Data) != n {
			return fmt.Errorf("%s: load state: %q of shape %v holds %d values", name, k, t.Shape, len(t.Data))
		}
		entries = append(entries, entry{gi, pi, t})
	}
	bufs := make([]*Tensor, len(entries))
	for i, e := range entries {
		b, err := FromHost(ctx, o.groups[e.g].Params[e.p].Value.Device(), e.t.Data, e.t.Shape...)
		if err != nil {
			for _, b := range bufs[:i] {
				b.Release()
			}
			return fmt.Errorf("%s: load state: %d.%d: %w", name, e.g, e.p, err)
		}
		bufs[i] = b
	}
	for gi := range o.state {
		for pi := range o.state[gi] {
			if b := o.state[gi][pi].buf; b != nil {
				b.Release()
				o.state[gi][pi].buf = nil
			}
		}
	}
	for i, e := range entries {
		o.state[e.g][e.p].buf = bufs[i]
	}
	o.steps = st.Steps
	return nil
}

// Release frees the optimizer's device memory. No recorded step may be
// pending.
func (o *Optimizer) Release() {
	for gi := range o.state {
		for pi := range o.state[gi] {
			st := &o.state[gi][pi]
			if st.buf != nil {
				st.buf.Release()
			}
			if st.parts != nil {
				st.parts.Release()
			}
			*st = paramState{}
		}
	}
}
