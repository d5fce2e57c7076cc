package layers

import (
	"context"
	"fmt"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// Var is a value in a recorded computation: a tensor and, once Backward has
// run past it, the gradient of the loss with respect to it. Leaves are made
// by Param (trainable, gradients accumulate across Backward calls until
// ZeroGrad) and Constant; every other Var is the output of a Tape op.
type Var struct {
	// Value is the tensor the Var stands for.
	Value *Tensor
	// Grad is the gradient of the last Backward's loss (summed over Backward
	// calls for a leaf); nil until a Backward reached the Var.
	Grad *Tensor

	requiresGrad bool
	leaf         bool
	kept         bool
}

// Param makes a trainable leaf of t: Backward accumulates its gradient in Grad.
func Param(t *Tensor) *Var { return &Var{Value: t, requiresGrad: true, leaf: true} }

// Constant makes a leaf of t that takes no gradient (inputs, targets).
func Constant(t *Tensor) *Var { return &Var{Value: t, leaf: true} }

// RequiresGrad reports whether Backward computes a gradient for v.
func (v *Var) RequiresGrad() bool { return v.requiresGrad }

// SetRequiresGrad freezes (false) or unfreezes a leaf: a frozen parameter
// takes no gradient and the ops that read only frozen values record no
// backward work.
func (v *Var) SetRequiresGrad(on bool) { v.requiresGrad = on && v.leaf }

// ZeroGrad releases the accumulated gradient of a leaf at once: call it
// between runs, not while a recorded, unrun stream still reads the gradient
// (an optimizer step).
func (v *Var) ZeroGrad() {
	if v.Grad != nil {
		v.Grad.Release()
		v.Grad = nil
	}
}

// Shape returns the shape of the Var's value.
func (v *Var) Shape() []int { return v.Value.Shape() }

// node is one recorded op: what it read, what it made, and its
// vector-Jacobian product, which maps the gradient of out to fresh gradient
// tensors for the inputs (nil where an input takes none).
type node struct {
	inputs   []*Var
	out      *Var
	backward func(g *Tensor) []*Tensor
}

// Tape records ops on Vars into a stream for reverse-mode differentiation.
// Ops allocate their outputs, record their kernels at once and remember a
// backward function when any input requires a gradient. Errors are sticky, as
// in bufio: after the first failure every op returns nil without recording
// and Err (and Backward) report that failure, so model code reads as a chain
// of calls with one check at the end. A Tape is used by one goroutine.
type Tape struct {
	s     *vk.Stream
	nodes []*node
	// owned are the op outputs the tape allocated and has not yet released.
	owned map[*Tensor]bool
	// pool holds the buffers of tensors the recording is past, by size and
	// row length, for later ops of the same recording to reuse: the stream
	// orders the reuse after the earlier uses (its hazard tracking follows
	// memory), and since tape tensors are only ever written by recorded
	// kernels, never uploaded from the host, nothing can overtake them.
	// Release hands the pool back to the device after the run.
	pool map[poolKey][]*vk.Buffer
	err  error
	// coll is the data-parallel group the tape's replica belongs to, nil
	// for a single replica; ctx bounds the waits of its collectives (see
	// SetCollective in parallel.go).
	coll Collective
	ctx  context.Context
}

// poolKey is what makes a pooled buffer fit a new tensor: its element count
// and its row length (New's segment granule).
type poolKey struct{ n, row int }

func keyOf(shape []int) poolKey {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return poolKey{n, shape[len(shape)-1]}
}

// NewTape starts an empty recording into s.
func NewTape(s *vk.Stream) *Tape {
	return &Tape{s: s, owned: map[*Tensor]bool{}, pool: map[poolKey][]*vk.Buffer{}}
}

// Stream returns the stream ops record into.
func (tp *Tape) Stream() *vk.Stream { return tp.s }

// Device returns the device of the tape's stream.
func (tp *Tape) Device() *vk.Device { return tp.s.Device() }

// Err returns the first error an op met, or nil.
func (tp *Tape) Err() error { return tp.err }

// Fail records err (with the op's name) as the tape's error if it is the
// first; ops outside this package use it to join the sticky-error protocol.
func (tp *Tape) Fail(op string, err error) {
	if err != nil && tp.err == nil {
		tp.err = fmt.Errorf("%s: %w", op, err)
	}
}

// ok reports whether the tape has no error and every Var given is non-nil
// (a nil Var is the output of an op that failed).
func (tp *Tape) ok(vs ...*Var) bool {
	if tp.err != nil {
		return false
	}
	for _, v := range vs {
		if v == nil {
			tp.err = fmt.Errorf("nil Var given to an op")
			return false
		}
	}
	return true
}

// alloc makes a tensor owned by the tape: released when Backward is past
// it or by Release. Its memory may come from a tensor released earlier in
// the same recording, so it must only be written by recorded kernels, never
// uploaded from the host. On failure it sets the tape's error and returns
// nil.
func (tp *Tape) alloc(op string, shape ...int) *Tensor {
	var t *Tensor
	if len(shape) > 0 {
		k := keyOf(shape)
		if bufs := tp.pool[k]; len(bufs) > 0 {
			t = &Tensor{buf: bufs[len(bufs)-1], shape: append([]int(nil), shape...), strides: contiguousStrides(shape), owner: true}
			tp.pool[k] = bufs[:len(bufs)-1]
		}
	}
	if t == nil {
		var err error
		if t, err = New(tp.Device(), shape...); err != nil {
			tp.Fail(op, err)
			return nil
		}
	}
	tp.owned[t] = true
	return t
}

// release passes a tape-owned tensor's memory to the pool, for later ops of
// this recording; tensors the tape does not own are left alone.
func (tp *Tape) release(t *Tensor) {
	if t != nil && tp.owned[t] {
		delete(tp.owned, t)
		if len(t.shape) > 0 {
			k := keyOf(t.shape)
			tp.pool[k] = append(tp.pool[k], t.buf)
		} else {
			tp.s.Release(t.buf)
		}
		t.buf = nil
	}
}

// record makes the Var of an op's output. backward is kept only when some
// input requires a gradient; it must return fresh tape-owned tensors (or
// nil), one per input, since the tape takes them over as gradients.
func (tp *Tape) record(out *Tensor, inputs []*Var, backward func(g *Tensor) []*Tensor) *Var {
	v := &Var{Value: out}
	for _, in := range inputs {
		if in != nil && in.requiresGrad {
			v.requiresGrad = true
		}
	}
	if v.requiresGrad {
		tp.nodes = append(tp.nodes, &node{inputs: inputs, out: v, backward: backward})
	}
	return v
}

// Detach returns a Var of the same value that takes no gradient: the
// stop-gradient of SimSiam and of the target branches.
func (tp *Tape) Detach(v *Var) *Var {
	if !tp.ok(v) {
		return nil
	}
	return &Var{Value: v.Value}
}

// Keep marks v's value to survive Backward and Release (a loss or an
// embedding the caller downloads after the stream ran); the caller then
// releases it with v.Value.Release. When v is a view of an op's output
// (Reshape, Split), the view takes over the memory of the whole output.
func (tp *Tape) Keep(v *Var) {
	if v == nil {
		return
	}
	v.kept = true
	if tp.owned[v.Value] {
		delete(tp.owned, v.Value)
		return
	}
	for t := range tp.owned {
		if t.buf == v.Value.buf {
			delete(tp.owned, t)
			t.owner, v.Value.owner = false, true
			return
		}
	}
}

// Backward records the gradients of the scalar loss (a one-element Var) with
// respect to every Var that requires one. Leaves accumulate into Grad; the
// op outputs' values and gradients are released as soon as the backward work
// no longer needs them, so the memory of the forward activations is reused
// while the backward pass is recorded. Call it once per tape.
func (tp *Tape) Backward(loss *Var) error {
	if !tp.ok(loss) {
		return tp.err
	}
	if loss.Value.Len() != 1 {
		return fmt.Errorf("backward: the loss has shape %v; want one element", loss.Value.shape)
	}
	seed := tp.alloc("backward", loss.Value.shape...)
	if seed != nil {
		tp.Fail("backward", Fill(tp.s, seed, 1))
	}
	return tp.BackwardWith(loss, seed)
}

// BackwardWith records the backward pass from v given g, the gradient of
// some loss with respect to v computed outside the tape (the E2MC criterion
// computes the gradient of its loss with respect to the embeddings with its
// own kernels). g has v's shape and is only read; it stays the caller's,
// unless it was allocated by the tape.
func (tp *Tape) BackwardWith(v *Var, g *Tensor) error {
	if tp.err != nil {
		return tp.err
	}
	if !slices.Equal(g.shape, v.Value.shape) {
		return fmt.Errorf("backward: gradient of shape %v for a value of shape %v", g.shape, v.Value.shape)
	}
	if !v.requiresGrad {
		tp.release(g)
		return fmt.Errorf("backward: the loss does not depend on anything that requires a gradient")
	}
	tp.accumulate(v, g)
	for i := len(tp.nodes) - 1; i >= 0 && tp.err == nil; i-- {
		n := tp.nodes[i]
		if n.out.Grad != nil {
			grads := n.backward(n.out.Grad)
			if tp.err != nil {
				break
			}
			for j, in := range n.inputs {
				if j < len(grads) && grads[j] != nil {
					if in.requiresGrad {
						tp.accumulate(in, grads[j])
					} else {
						tp.release(grads[j])
					}
				}
			}
		}
		// Every reader of n.out was recorded after n and so is already past.
		if !n.out.kept {
			tp.release(n.out.Grad)
			n.out.Grad = nil
			tp.release(n.out.Value)
		}
	}
	tp.nodes = nil
	return tp.err
}

// accumulate adds gradient g (tape-owned, taken over) to v.Grad.
func (tp *Tape) accumulate(v *Var, g *Tensor) {
	if !slices.Equal(g.shape, v.Value.shape) {
		tp.Fail("backward", fmt.Errorf("gradient of shape %v for a value of shape %v", g.shape, v.Value.shape))
		return
	}
	if v.Grad == nil {
		v.Grad = g
		if v.leaf || v.kept {
			delete(tp.owned, g) // the leaf's gradient outlives the tape
		}
		return
	}
	tp.Fail("backward", Add(tp.s, v.Grad, v.Grad, g))
	tp.release(g)
}

// Release frees every tensor the tape still owns (the outputs of ops that
// Backward did not pass, or all of them without a Backward) and its pool,
// once the recorded work has run. Values marked with Keep and the gradients
// of leaves stay.
func (tp *Tape) Release() {
	for t := range tp.owned {
		tp.release(t)
	}
	for k, bufs := range tp.pool {
		for _, b := range bufs {
			tp.s.Release(b)
		}
		delete(tp.pool, k)
	}
	tp.nodes = nil
}
