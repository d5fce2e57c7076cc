package layers

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// Kinds of gradient an optimizer test parameter gets at every step.
const (
	gradRandom = iota
	gradZero
	gradNone
)

// optimParam is one parameter of the optimizer tests.
type optimParam struct {
	shape []int
	grad  int
	zero  bool // starts at zero: LARS and LARC fall back to q = 1
}

// optimGroups are the parameters of the optimizer tests, in two groups: a 2-D
// weight, a bias, a 4-D convolution weight of 3200 values (more than a
// segment of the split device holds), a parameter with a zero gradient, one
// without a gradient, one that starts at zero, and a one-element parameter.
var optimGroups = [][]optimParam{
	{
		{shape: []int{23, 37}}, {shape: []int{37}}, {shape: []int{16, 8, 5, 5}},
		{shape: []int{5, 7}, grad: gradZero}, {shape: []int{3, 4}, grad: gradNone},
		{shape: []int{6, 5}, zero: true},
	},
	{{shape: []int{29, 31}}, {shape: []int{31}}, {shape: []int{1}}},
}

const optimSteps = 3

// optimCase is an optimizer under test and its settings per group (wd,
// fixed, noAdapt) and per step (lrs).
type optimCase struct {
	name                 string
	rule                 rule
	momentum, ratio, eps float64
	wd, fixed            []float64
	noAdapt              []bool
	lrs                  []float64
}

// optimCases: the weight decays of LARS and LARC are larger than the
// methods' (1e-6) so that a lost decay term shows in the buffers; group 1
// has a fixed learning rate, and LARS and LARC exclude it from adaptation.
var optimCases = []optimCase{
	{name: "sgd", rule: ruleSGD, momentum: 0.9, wd: []float64{1e-4, 1e-3}, fixed: []float64{0, 0.05},
		noAdapt: []bool{false, false}, lrs: []float64{0.5, 0.3, 0.2}},
	{name: "sgd-no-momentum", rule: ruleSGD, momentum: 0, wd: []float64{1e-2, 0}, fixed: []float64{0, 0.05},
		noAdapt: []bool{false, false}, lrs: []float64{0.5, 0.3, 0.2}},
	{name: "lars", rule: ruleLARS, momentum: 0.9, ratio: 0.001, wd: []float64{1e-2, 1e-2}, fixed: []float64{0, 1},
		noAdapt: []bool{false, true}, lrs: []float64{4.8, 3, 2}},
	{name: "larc", rule: ruleLARC, momentum: 0.9, ratio: 0.001, eps: 1e-8, wd: []float64{1e-2, 1e-2}, fixed: []float64{0, 1},
		noAdapt: []bool{false, true}, lrs: []float64{4.8, 3, 2}},
}

// optimTol is the tolerance of the device's parameters and momentum buffers
// against the float64 reference: a few float32 roundings per step (the
// norms are compensated sums); torchTol that against PyTorch's float32 steps.
const (
	optimTol = 1e-6
	torchTol = 1e-5
)

// optimInputs returns the initial parameters [group][param] and the
// gradients [step][group][param] (nil where a parameter has none).
func optimInputs() (p0 [][][]float32, grads [][][][]float32) {
	seed := uint64(100)
	for _, g := range optimGroups {
		var ps [][]float32
		for _, q := range g {
			seed++
			x := randn(seed, shapeLen(q.shape))
			if q.zero {
				x = make([]float32, len(x))
			}
			ps = append(ps, x)
		}
		p0 = append(p0, ps)
	}
	for k := 0; k < optimSteps; k++ {
		var step [][][]float32
		for _, g := range optimGroups {
			var gs [][]float32
			for _, q := range g {
				seed++
				switch q.grad {
				case gradRandom:
					gs = append(gs, randn(seed, shapeLen(q.shape)))
				case gradZero:
					gs = append(gs, make([]float32, shapeLen(q.shape)))
				default:
					gs = append(gs, nil)
				}
			}
			step = append(step, gs)
		}
		grads = append(grads, step)
	}
	return p0, grads
}

func shapeLen(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// newOptimizer builds the case's optimizer over vars [group][param].
func (c optimCase) newOptimizer(vars [][]*Var) (*Optimizer, error) {
	groups := make([]Group, len(vars))
	for gi, vs := range vars {
		groups[gi] = Group{Params: vs, WeightDecay: c.wd[gi], FixedLR: c.fixed[gi], NoAdapt: c.noAdapt[gi]}
	}
	switch c.rule {
	case ruleLARS:
		return NewLARS(groups, c.momentum, c.ratio)
	case ruleLARC:
		return NewLARC(groups, c.momentum, c.ratio, c.eps)
	}
	return NewSGD(groups, c.momentum)
}

// optimRef is the float64 reference of an optimizer case, written from the
// formulas of torch.optim.SGD, VICReg's LARS and apex's LARC.
type optimRef struct {
	c      optimCase
	p, buf [][][]float64 // buf nil until a parameter's first step
}

func newOptimRef(c optimCase, p0 [][][]float32) *optimRef {
	r := &optimRef{c: c}
	for _, g := range p0 {
		var ps [][]float64
		for _, p := range g {
			ps = append(ps, toF64(p))
		}
		r.p = append(r.p, ps)
		r.buf = append(r.buf, make([][]float64, len(g)))
	}
	return r
}

func times(x []float64, f float64) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = f * v
	}
	return out
}

func norm2(x []float64) float64 {
	var s float64
	for _, v := range x {
		s += v * v
	}
	return math.Sqrt(s)
}

// step applies step k with gradients grads [group][param].
func (r *optimRef) step(k int, grads [][][]float32) {
	c := r.c
	for gi := range r.p {
		lr := c.lrs[k]
		if c.fixed[gi] > 0 {
			lr = c.fixed[gi]
		}
		wd := c.wd[gi]
		for pi, p := range r.p[gi] {
			if grads[gi][pi] == nil {
				continue
			}
			g := toF64(grads[gi][pi])
			decayed := make([]float64, len(p)) // g + wd*p
			for i := range p {
				decayed[i] = g[i] + wd*p[i]
			}
			d := g
			switch c.rule {
			case ruleSGD:
				d = decayed
			case ruleLARS:
				if !c.noAdapt[gi] && len(optimGroups[gi][pi].shape) != 1 {
					q := 1.0
					if pn, un := norm2(p), norm2(decayed); pn > 0 && un > 0 {
						q = c.ratio * pn / un
					}
					d = times(decayed, q)
				}
			case ruleLARC:
				if pn, gn := norm2(p), norm2(g); !c.noAdapt[gi] && pn != 0 && gn != 0 {
					d = times(decayed, c.ratio*pn/(gn+pn*wd+c.eps))
				}
			}
			upd := d
			if c.momentum != 0 {
				if r.buf[gi][pi] == nil {
					r.buf[gi][pi] = append([]float64(nil), d...)
				} else {
					b := r.buf[gi][pi]
					for i := range b {
						b[i] = c.momentum*b[i] + d[i]
					}
				}
				upd = r.buf[gi][pi]
			}
			for i := range p {
				p[i] -= lr * upd[i]
			}
		}
	}
}

// optimRun is an optimizer case on a device: its parameters and optimizer.
type optimRun struct {
	dev  *vk.Device
	vars [][]*Var
	opt  *Optimizer
}

// newOptimRun uploads the parameters p [group][param] and builds the case's
// optimizer, both released when the test ends.
func newOptimRun(t *testing.T, d *vk.Device, c optimCase, p [][][]float32) *optimRun {
	t.Helper()
	r := &optimRun{dev: d}
	for gi, g := range p {
		var vs []*Var
		for pi, x := range g {
			vs = append(vs, Param(upload(t, d, x, optimGroups[gi][pi].shape...)))
		}
		r.vars = append(r.vars, vs)
	}
	opt, err := c.newOptimizer(r.vars)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(opt.Release)
	r.opt = opt
	return r
}

// step sets the gradients of step k, records the optimizer's step on a fresh
// stream and runs it.
func (r *optimRun) step(t *testing.T, lr float64, grads [][][]float32) {
	t.Helper()
	for gi, vs := range r.vars {
		for pi, v := range vs {
			v.Grad = nil
			if g := grads[gi][pi]; g != nil {
				v.Grad = upload(t, r.dev, g, optimGroups[gi][pi].shape...)
			}
		}
	}
	s := stream(t, r.dev)
	if err := r.opt.Step(s, lr); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// params downloads the parameters [group][param].
func (r *optimRun) params(t *testing.T) [][][]float32 {
	t.Helper()
	var out [][][]float32
	for _, vs := range r.vars {
		var ps [][]float32
		for _, v := range vs {
			x, err := v.Value.Download(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			ps = append(ps, x)
		}
		out = append(out, ps)
	}
	return out
}

// buffers downloads the optimizer's state as buffers [group][param] (nil
// where it keeps none).
func (r *optimRun) buffers(t *testing.T) [][][]float32 {
	t.Helper()
	st, err := r.opt.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make([][][]float32, len(r.vars))
	for gi, vs := range r.vars {
		out[gi] = make([][]float32, len(vs))
	}
	for k, ht := range st.Tensors {
		var gi, pi int
		if _, err := fmt.Sscanf(k, "%d.%d.", &gi, &pi); err != nil {
			t.Fatalf("state key %q: %v", k, err)
		}
		out[gi][pi] = ht.Data
	}
	return out
}

// closeOrZero is assertClose, except that a reference of all zeros (the
// momentum of LARC with a zero gradient) must be matched exactly.
func closeOrZero(t *testing.T, label string, got []float32, want []float64, tol float64) {
	t.Helper()
	for _, v := range want {
		if v != 0 {
			assertClose(t, label, got, want, tol)
			return
		}
	}
	for i, v := range got {
		if v != 0 {
			t.Errorf("%s: element %d is %v, want 0", label, i, v)
			return
		}
	}
}

// compareStep checks a device step against expected parameters and buffers
// [group][param] (a nil buffer: the optimizer must keep none).
func compareStep(t *testing.T, label string, gotP, gotBuf [][][]float32, wantP, wantBuf [][][]float64, tol float64) {
	t.Helper()
	for gi := range wantP {
		for pi := range wantP[gi] {
			at := fmt.Sprintf("%s: group %d param %d %v", label, gi, pi, optimGroups[gi][pi].shape)
			assertClose(t, at+" value", gotP[gi][pi], wantP[gi][pi], tol)
			switch {
			case wantBuf[gi][pi] == nil && gotBuf[gi][pi] != nil:
				t.Errorf("%s: a momentum buffer where the reference keeps none", at)
			case wantBuf[gi][pi] != nil && gotBuf[gi][pi] == nil:
				t.Errorf("%s: no momentum buffer", at)
			case wantBuf[gi][pi] != nil:
				closeOrZero(t, at+" buffer", gotBuf[gi][pi], wantBuf[gi][pi], tol)
			}
		}
	}
}

// TestOptimizer steps every case three times on both devices and compares
// the parameters and momentum buffers after each step with the float64
// reference. A parameter without a gradient must keep its exact values.
func TestOptimizer(t *testing.T) {
	p0, grads := optimInputs()
	for _, dev := range testDevices(t) {
		for _, c := range optimCases {
			t.Run(dev.name+"/"+c.name, func(t *testing.T) {
				run := newOptimRun(t, dev.dev, c, p0)
				ref := newOptimRef(c, p0)
				for k := 0; k < optimSteps; k++ {
					run.step(t, c.lrs[k], grads[k])
					ref.step(k, grads[k])
					gotP := run.params(t)
					compareStep(t, fmt.Sprintf("step %d", k), gotP, run.buffers(t), ref.p, ref.buf, optimTol)
					for gi, g := range optimGroups {
						for pi, q := range g {
							if q.grad != gradNone {
								continue
							}
							for i, v := range gotP[gi][pi] {
								if v != p0[gi][pi][i] {
									t.Fatalf("step %d: group %d param %d has no gradient but changed", k, gi, pi)
								}
							}
						}
					}
				}
				if n := run.opt.Steps(); n != optimSteps {
					t.Errorf("Steps() = %d, want %d", n, optimSteps)
				}
			})
		}
	}
}

// TestOptimizerDispatches checks the cost of a LARC step on the unsplit
// device: one norm dispatch per adapted parameter and one step dispatch per
// parameter with a gradient, and a single barrier between the norms and the
// steps (besides the one that opens every recording).
func TestOptimizerDispatches(t *testing.T) {
	d := testDevices(t)[0].dev
	c := optimCases[3]
	if c.rule != ruleLARC {
		t.Fatal("optimCases[3] is not LARC")
	}
	p0, grads := optimInputs()
	run := newOptimRun(t, d, c, p0)
	want := 0
	for gi, vs := range run.vars {
		for pi, v := range vs {
			if v.Grad = nil; grads[0][gi][pi] != nil {
				v.Grad = upload(t, d, grads[0][gi][pi], optimGroups[gi][pi].shape...)
				want++
				if !c.noAdapt[gi] {
					want++
				}
			}
		}
	}
	s := stream(t, d)
	if err := run.opt.Step(s, c.lrs[0]); err != nil {
		t.Fatal(err)
	}
	dispatches, barriers := s.Stats()
	if dispatches != want || barriers > 2 {
		t.Errorf("%d dispatches and %d barriers; want %d and at most 2", dispatches, barriers, want)
	}
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestOptimizerState saves the state after two steps, loads it into a fresh
// optimizer over the saved parameters, and checks that the third step gives
// the same bits as an uninterrupted run. It also checks that states that do
// not fit are refused and leave the optimizer as it was.
func TestOptimizerState(t *testing.T) {
	ctx := context.Background()
	p0, grads := optimInputs()
	for _, dev := range testDevices(t) {
		for _, c := range optimCases {
			if c.momentum == 0 {
				continue
			}
			t.Run(dev.name+"/"+c.name, func(t *testing.T) {
				whole := newOptimRun(t, dev.dev, c, p0)
				for k := 0; k < optimSteps; k++ {
					whole.step(t, c.lrs[k], grads[k])
				}
				first := newOptimRun(t, dev.dev, c, p0)
				for k := 0; k < optimSteps-1; k++ {
					first.step(t, c.lrs[k], grads[k])
				}
				saved, err := first.opt.State(ctx)
				if err != nil {
					t.Fatal(err)
				}
				resumed := newOptimRun(t, dev.dev, c, first.params(t))
				if err := resumed.opt.LoadState(ctx, saved); err != nil {
					t.Fatal(err)
				}
				if resumed.opt.Steps() != optimSteps-1 {
					t.Errorf("resumed at step %d, want %d", resumed.opt.Steps(), optimSteps-1)
				}
				resumed.step(t, c.lrs[optimSteps-1], grads[optimSteps-1])
				assertSameBits(t, "parameters", resumed.params(t), whole.params(t))
				assertSameBits(t, "buffers", resumed.buffers(t), whole.buffers(t))

				before := resumed.buffers(t)
				for _, bad := range badStates(saved, c) {
					if err := resumed.opt.LoadState(ctx, bad.st); err == nil {
						t.Errorf("loading a state with %s: no error", bad.what)
					} else if !strings.Contains(err.Error(), "load state") {
						t.Errorf("loading a state with %s: %v", bad.what, err)
					}
				}
				assertSameBits(t, "buffers after refused loads", resumed.buffers(t), before)
			})
		}
	}
}

// badStates returns states derived from a good one that LoadState must refuse.
func badStates(good *OptimizerState, c optimCase) []struct {
	what string
	st   *OptimizerState
} {
	kind := "momentum_buffer"
	if c.rule == ruleLARS {
		kind = "mu"
	}
	key := "0.0." + kind // the [23, 37] weight
	with := func(k string, ht HostTensor) *OptimizerState {
		st := &OptimizerState{Steps: good.Steps, Tensors: map[string]HostTensor{}}
		for k, v := range good.Tensors {
			st.Tensors[k] = v
		}
		st.Tensors[k] = ht
		return st
	}
	w := good.Tensors[key]
	return []struct {
		what string
		st   *OptimizerState
	}{
		{"a transposed buffer", with(key, HostTensor{Shape: []int{37, 23}, Data: w.Data})},
		{"a buffer of the wrong length", with(key, HostTensor{Shape: w.Shape, Data: w.Data[1:]})},
		{"another optimizer's buffer", with("0.0.other", w)},
		{"a parameter index out of range", with("0.6."+kind, w)},
		{"a group out of range", with("2.0."+kind, w)},
		{"a malformed key", with("0-0-"+kind, w)},
	}
}

// assertSameBits fails unless got and want [group][param] hold the same
// float32 values bit for bit.
func assertSameBits(t *testing.T, label string, got, want [][][]float32) {
	t.Helper()
	for gi := range want {
		for pi := range want[gi] {
			g, w := got[gi][pi], want[gi][pi]
			if len(g) != len(w) {
				t.Fatalf("%s: group %d param %d: %d values, want %d", label, gi, pi, len(g), len(w))
			}
			for i := range w {
				if math.Float32bits(g[i]) != math.Float32bits(w[i]) {
					t.Fatalf("%s: group %d param %d element %d: %v, want %v", label, gi, pi, i, g[i], w[i])
				}
			}
		}
	}
}

// TestOptimizerErrors checks what the constructors and Step refuse.
func TestOptimizerErrors(t *testing.T) {
	d := testDevices(t)[0].dev
	w := Param(upload(t, d, randn(1, 6), 2, 3))
	x := Constant(upload(t, d, randn(2, 6), 2, 3))
	y := &Var{Value: w.Value} // not a leaf, as a Tape op's output is not
	for _, tc := range []struct {
		name string
		make func() (*Optimizer, error)
	}{
		{"duplicate", func() (*Optimizer, error) { return NewSGD([]Group{{Params: []*Var{w}}, {Params: []*Var{w}}}, 0.9) }},
		{"nil", func() (*Optimizer, error) { return NewSGD([]Group{{Params: []*Var{nil}}}, 0.9) }},
		{"not a leaf", func() (*Optimizer, error) { return NewSGD([]Group{{Params: []*Var{y}}}, 0.9) }},
		{"negative decay", func() (*Optimizer, error) { return NewSGD([]Group{{Params: []*Var{w}, WeightDecay: -1}}, 0.9) }},
		{"negative momentum", func() (*Optimizer, error) { return NewSGD([]Group{{Params: []*Var{w}}}, -0.1) }},
		{"zero eta", func() (*Optimizer, error) { return NewLARS([]Group{{Params: []*Var{w}}}, 0.9, 0) }},
		{"NaN trust", func() (*Optimizer, error) { return NewLARC([]Group{{Params: []*Var{w}}}, 0.9, math.NaN(), 1e-8) }},
	} {
		if _, err := tc.make(); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	opt, err := NewSGD([]Group{{Params: []*Var{w, x}}}, 0.9)
	if err != nil {
		t.Fatal(err)
	}
	defer opt.Release()
	s := stream(t, d)
	w.Grad = upload(t, d, randn(3, 6), 3, 2)
	if err := opt.Step(s, 0.1); err == nil {
		t.Error("a gradient of another shape: no error")
	}
	w.Grad = upload(t, d, randn(3, 6), 2, 3)
	if err := opt.Step(s, math.Inf(1)); err == nil {
		t.Error("an infinite learning rate: no error")
	}
}

// torchOptimIn is the input of testdata/torch_optim.py.
type torchOptimIn struct {
	Groups []torchOptimGroup `json:"groups"`
	Cases  []torchOptimCase  `json:"cases"`
}

type torchOptimGroup struct {
	Params []torchOptimParam `json:"params"`
}

type torchOptimParam struct {
	Shape []int       `json:"shape"`
	P     []float64   `json:"p"`
	Grads [][]float64 `json:"grads"` // per step; null: no gradient
}

type torchOptimCase struct {
	Rule     string             `json:"rule"`
	Momentum float64            `json:"momentum"`
	Ratio    float64            `json:"ratio"`
	Eps      float64            `json:"eps"`
	LRs      []float64          `json:"lrs"`
	Groups   []torchOptimConfig `json:"groups"`
}

type torchOptimConfig struct {
	WD      float64 `json:"wd"`
	FixedLR float64 `json:"fixed_lr"`
	NoAdapt bool    `json:"no_adapt"`
}

// torchOptimOut is its output: per case, per step, the parameters and
// buffers [group][param] (a null buffer: none kept).
type torchOptimOut struct {
	Cases [][]struct {
		P   [][][]float64 `json:"p"`
		Buf [][][]float64 `json:"buf"`
	} `json:"cases"`
}

// runTorchOptim runs the oracle on the test's inputs and cases (cached).
func runTorchOptim(t *testing.T, p0 [][][]float32, grads [][][][]float32) *torchOptimOut {
	t.Helper()
	var in torchOptimIn
	for gi, g := range optimGroups {
		var tg torchOptimGroup
		for pi, q := range g {
			tp := torchOptimParam{Shape: q.shape, P: toF64(p0[gi][pi])}
			for k := 0; k < optimSteps; k++ {
				var gr []float64
				if grads[k][gi][pi] != nil {
					gr = toF64(grads[k][gi][pi])
				}
				tp.Grads = append(tp.Grads, gr)
			}
			tg.Params = append(tg.Params, tp)
		}
		in.Groups = append(in.Groups, tg)
	}
	for _, c := range optimCases {
		tc := torchOptimCase{Rule: ruleNames[c.rule], Momentum: c.momentum, Ratio: c.ratio, Eps: c.eps, LRs: c.lrs}
		for gi := range c.wd {
			tc.Groups = append(tc.Groups, torchOptimConfig{WD: c.wd[gi], FixedLR: c.fixed[gi], NoAdapt: c.noAdapt[gi]})
		}
		in.Cases = append(in.Cases, tc)
	}
	raw, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	const path = "testdata/torch_optim.py"
	script, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := oracle.Cached(t, []string{"torch", "numpy"}, func(py, dir string) {
		inPath := filepath.Join(dir, "input.json")
		if err := os.WriteFile(inPath, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		out := oracle.RunFile(t, py, path, inPath)
		if err := os.WriteFile(filepath.Join(dir, "output.json"), out, 0o644); err != nil {
			t.Fatal(err)
		}
	}, script, raw)
	var o torchOptimOut
	oracle.ReadJSON(t, filepath.Join(dir, "output.json"), &o)
	if len(o.Cases) != len(optimCases) {
		t.Fatalf("oracle output has %d cases, want %d", len(o.Cases), len(optimCases))
	}
	return &o
}

// TestOptimizerTorch steps every case on both devices and compares the
// parameters and momentum buffers after each step with PyTorch's
// torch.optim.SGD and the LARS and LARC classes of the methods' code.
func TestOptimizerTorch(t *testing.T) {
	p0, grads := optimInputs()
	o := runTorchOptim(t, p0, grads)
	for _, dev := range testDevices(t) {
		for ci, c := range optimCases {
			t.Run(dev.name+"/"+c.name, func(t *testing.T) {
				run := newOptimRun(t, dev.dev, c, p0)
				for k := 0; k < optimSteps; k++ {
					run.step(t, c.lrs[k], grads[k])
					want := o.Cases[ci][k]
					compareStep(t, fmt.Sprintf("step %d", k), run.params(t), run.buffers(t), want.P, want.Buf, torchTol)
				}
			})
		}
	}
}

// resnet50Shapes returns the shapes of torchvision ResNet-50's 161
// parameters (1000 classes).
func resnet50Shapes() [][]int {
	shapes := [][]int{{64, 3, 7, 7}, {64}, {64}}
	in := 64
	for i, blocks := range []int{3, 4, 6, 3} {
		planes := 64 << i
		for b := 0; b < blocks; b++ {
			shapes = append(shapes, []int{planes, in, 1, 1}, []int{planes}, []int{planes},
				[]int{planes, planes, 3, 3}, []int{planes}, []int{planes},
				[]int{4 * planes, planes, 1, 1}, []int{4 * planes}, []int{4 * planes})
			if b == 0 {
				shapes = append(shapes, []int{4 * planes, in, 1, 1}, []int{4 * planes}, []int{4 * planes})
			}
			in = 4 * planes
		}
	}
	return append(shapes, []int{1000, 2048}, []int{1000})
}

// BenchmarkOptimizer times one step of each optimizer over ResNet-50's
// parameters on the test device (the wall clock around the submission), and
// reports the dispatches and barriers it records.
//
//	go test ./layers -run '^$' -bench Optimizer -benchtime 10x
func BenchmarkOptimizer(b *testing.B) {
	d := testDevicesB(b)
	shapes := resnet50Shapes()
	var params []*Var
	elems := 0
	for i, sh := range shapes {
		v := Param(upload(b, d, randn(uint64(i), shapeLen(sh)), sh...))
		v.Grad = upload(b, d, randn(uint64(1000+i), shapeLen(sh)), sh...)
		params = append(params, v)
		elems += shapeLen(sh)
	}
	for _, c := range []optimCase{optimCases[0], optimCases[2], optimCases[3]} {
		b.Run(fmt.Sprintf("%s/%d-params", c.name, len(params)), func(b *testing.B) {
			groups := [][]*Var{params, nil}
			opt, err := c.newOptimizer(groups)
			if err != nil {
				b.Fatal(err)
			}
			defer opt.Release()
			s := stream(b, d)
			var dispatches, barriers int
			step := func() time.Duration {
				if err := opt.Step(s, 1e-6); err != nil {
					b.Fatal(err)
				}
				dispatches, barriers = s.Stats()
				t0 := time.Now()
				if err := s.Run(context.Background()); err != nil {
					b.Fatal(err)
				}
				return time.Since(t0)
			}
			step() // pipelines and buffers outside the timing
			b.ResetTimer()
			var total time.Duration
			for i := 0; i < b.N; i++ {
				total += step()
			}
			b.ReportMetric(total.Seconds()*1e3/float64(b.N), "ms/step")
			b.ReportMetric(float64(dispatches), "dispatches")
			b.ReportMetric(float64(barriers), "barriers")
			b.ReportMetric(float64(elems), "elements")
		})
	}
}

func testDevicesB(b *testing.B) *vk.Device { return vktest.Device(b) }
