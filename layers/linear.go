package layers

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// biasGroup is the workgroup size of bias_add.comp.
const biasGroup = 256

// AddBias records y[n, c, ...] += b[c]: a bias per channel (dimension 1) of a
// contiguous y of rank 2 or more, such as a Linear's [N, out] or a
// convolution's [N, C, H, W]. b is contiguous [C] and lies in one buffer
// segment; y may span several.
func AddBias(s *vk.Stream, y, b *Tensor) error {
	if len(y.shape) < 2 || len(b.shape) != 1 || b.shape[0] != y.shape[1] {
		return fmt.Errorf("add bias %v to %v: want a bias [C] for [N, C, ...]", b.shape, y.shape)
	}
	if !y.Contiguous() {
		return fmt.Errorf("add bias to a strided view %v: make it contiguous first", y.shape)
	}
	bArg, bOff, err := Bind(b, false)
	if err != nil {
		return fmt.Errorf("add bias: %w", err)
	}
	c := y.shape[1]
	inner := y.Len() / (y.shape[0] * c)
	pieces, err := split(box{hi: [maxRank]int{y.Len()}}, longest, func(p box) bool {
		_, _, ok := y.locate(p.lo[0], p.size(0), true)
		return ok
	})
	if err != nil {
		return fmt.Errorf("add bias: %w", err)
	}
	for _, p := range pieces {
		lo, n := p.lo[0], p.size(0)
		yArg, yOff, _ := y.locate(lo, n, true)
		if err := Launch(s, "bias_add", []uint32{biasGroup}, Grid(ceilDiv(n, biasGroup)),
			Push{}.U32(uint32(n), yOff, bOff, uint32(lo%(c*inner)), uint32(c), uint32(inner)), yArg, bArg); err != nil {
			return fmt.Errorf("add bias: %w", err)
		}
	}
	return nil
}

// Linear returns x w^T + b for x [N, in], w [out, in] and b [out], or
// x w^T when b is nil: torch.nn.functional.linear. Its backward takes the
// gradients of the inputs that require one only: x (g w), w (g^T x) and b
// (the column sums of g).
func (tp *Tape) Linear(x, w, b *Var) *Var {
	const op = "linear"
	if !tp.ok(x, w) || (b != nil && !tp.ok(b)) {
		return nil
	}
	xs, ws := x.Value.shape, w.Value.shape
	if len(xs) != 2 || len(ws) != 2 || xs[1] != ws[1] {
		tp.Fail(op, fmt.Errorf("input %v and weight %v: want [N, in] and [out, in]", xs, ws))
		return nil
	}
	n, in, out := xs[0], xs[1], ws[0]
	if b != nil && !slices.Equal(b.Value.shape, []int{out}) {
		tp.Fail(op, fmt.Errorf("bias %v for a weight %v: want [%d]", b.Value.shape, ws, out))
		return nil
	}
	y := tp.alloc(op, n, out)
	if y == nil {
		return nil
	}
	tp.Fail(op, Gemm(tp.s, 1, x.Value, false, w.Value, true, 0, y))
	inputs := []*Var{x, w}
	if b != nil {
		tp.Fail(op, AddBias(tp.s, y, b.Value))
		inputs = append(inputs, b)
	}
	return tp.record(y, inputs, func(g *Tensor) []*Tensor {
		grads := make([]*Tensor, len(inputs))
		if x.requiresGrad {
			if grads[0] = tp.alloc(op+" backward", n, in); grads[0] != nil {
				tp.Fail(op+" backward", Gemm(tp.s, 1, g, false, w.Value, false, 0, grads[0]))
			}
		}
		if w.requiresGrad {
			if grads[1] = tp.alloc(op+" backward", out, in); grads[1] != nil {
				tp.Fail(op+" backward", Gemm(tp.s, 1, g, true, x.Value, false, 0, grads[1]))
			}
		}
		if b != nil && b.requiresGrad {
			if grads[2] = tp.alloc(op+" backward", out); grads[2] != nil {
				tp.Fail(op+" backward", Sum(tp.s, grads[2], g, 0))
			}
		}
		return grads
	})
}

// Linear is a fully connected layer, torch.nn.Linear: y = x W^T + b.
type Linear struct {
	// Weight is [out, in].
	Weight *Var
	// Bias is [out], or nil for a layer without bias.
	Bias *Var
}

// NewLinear makes a Linear layer of in inputs and out outputs with
// PyTorch's default initialisation: weight and bias drawn from
// U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_ with a = sqrt(5) gives that
// bound for the weight), on the host from rng (weight first, row by row,
// then the bias) and uploaded.
func NewLinear(ctx context.Context, d *vk.Device, in, out int, bias bool, rng *rand.Rand) (*Linear, error) {
	if in <= 0 || out <= 0 {
		return nil, fmt.Errorf("linear %d -> %d: sizes must be positive", in, out)
	}
	if rng == nil {
		return nil, fmt.Errorf("linear %d -> %d: no random generator", in, out)
	}
	bound := 1 / math.Sqrt(float64(in))
	uniform := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32((2*rng.Float64() - 1) * bound)
		}
		return v
	}
	w, err := FromHost(ctx, d, uniform(out*in), out, in)
	if err != nil {
		return nil, fmt.Errorf("linear %d -> %d: %w", in, out, err)
	}
	l := &Linear{Weight: Param(w)}
	if bias {
		b, err := FromHost(ctx, d, uniform(out), out)
		if err != nil {
			w.Release()
			return nil, fmt.Errorf("linear %d -> %d: %w", in, out, err)
		}
		l.Bias = Param(b)
	}
	return l, nil
}

// Forward returns x W^T + b for x [N, in].
func (l *Linear) Forward(tp *Tape, x *Var) *Var { return tp.Linear(x, l.Weight, l.Bias) }

// Release frees the layer's parameters and their gradients.
func (l *Linear) Release() {
	for _, v := range []*Var{l.Weight, l.Bias} {
		if v != nil {
			v.ZeroGrad()
			v.Value.Release()
		}
	}
}
