package layers

import (
	"fmt"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// Elementwise kernels (binary.comp, unary.comp): each invocation handles
// elementsPer elements, a workgroup elementGroup*elementsPer consecutive ones.
// One element per invocation was twice as fast as 4 on lavapipe, and is
// what GPUs want.
const (
	elementGroup = 256
	elementsPer  = 1
)

// Operations of binary.comp, its specialization constant OP.
const (
	binAdd = iota
	binSub
	binMul
	binScale
	binAxpy
	binReluGrad
	binAddRelu
	binReluGrad2 // binReluGrad into two outputs (binaryOpInto)
)

var binNames = [...]string{"add", "sub", "mul", "scale", "axpy", "relu gradient", "add and relu", "relu gradient"}

// fours returns the V4 specialization constant of the elementwise kernels
// (binary.comp, unary.comp, optim_step.comp) and the elements an
// invocation then takes: 1 and 4 when every operand's
// offset is a multiple of 4 (vec4 views line up), else 0 and 1.
func fours(offs []uint32) (v4 uint32, per int) {
	for _, o := range offs {
		if o%4 != 0 {
			return 0, 1
		}
	}
	return 1, 4
}

// binaryOp records y = op(a, b) over contiguous tensors of equal shape.
func binaryOp(s *vk.Stream, op int, y, a, b *Tensor, alpha float32) error {
	return binaryOpInto(s, op, y, nil, a, b, alpha)
}

// binaryOpInto is binaryOp that also writes z (binReluGrad2 only; nil
// otherwise, when y is bound in its place).
func binaryOpInto(s *vk.Stream, op int, y, z, a, b *Tensor, alpha float32) error {
	if !slices.Equal(y.shape, a.shape) || !slices.Equal(y.shape, b.shape) || (z != nil && !slices.Equal(y.shape, z.shape)) {
		return fmt.Errorf("%s: the operands' shapes differ", binNames[op])
	}
	if (z != nil) != (op == binReluGrad2) {
		return fmt.Errorf("%s: a second output is for binReluGrad2 only", binNames[op])
	}
	if z == nil {
		z = y
	}
	ops := []operand{{a, false}, {b, false}, {y, true}, {z, true}}
	err := elementwise(y.Len(), ops, func(n int, args []vk.Arg, offs []uint32) error {
		v4, per := fours(offs)
		return Launch(s, "binary", []uint32{elementGroup, elementsPer, uint32(op), v4},
			Grid(ceilDiv(ceilDiv(n, per), elementGroup*elementsPer)),
			Push{}.U32(uint32(n), offs[0], offs[1], offs[2]).F32(alpha).U32(offs[3]), args...)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", binNames[op], err)
	}
	return nil
}

// Add records dst = a + b. All three are contiguous tensors of one shape;
// dst may be a or b.
func Add(s *vk.Stream, dst, a, b *Tensor) error { return binaryOp(s, binAdd, dst, a, b, 0) }

// Sub records dst = a - b, under the rules of Add.
func Sub(s *vk.Stream, dst, a, b *Tensor) error { return binaryOp(s, binSub, dst, a, b, 0) }

// Mul records the elementwise product dst = a * b, under the rules of Add.
func Mul(s *vk.Stream, dst, a, b *Tensor) error { return binaryOp(s, binMul, dst, a, b, 0) }

// Scale records dst = alpha * x for contiguous tensors of one shape; dst may
// be x.
func Scale(s *vk.Stream, dst, x *Tensor, alpha float32) error {
	return binaryOp(s, binScale, dst, x, x, alpha)
}

// Axpy records y += alpha * x for contiguous tensors of one shape.
func Axpy(s *vk.Stream, y *Tensor, alpha float32, x *Tensor) error {
	return binaryOp(s, binAxpy, y, y, x, alpha)
}
