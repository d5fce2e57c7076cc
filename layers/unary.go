package layers

import (
	"fmt"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// Functions of unary.comp, its specialization constant OP.
const (
	unRelu = iota
	unSigmoid
	unExp
	unLog
	unNormalCDF
	unErf       // erf, erfc and the normal density are not exported yet; the
	unErfc      // tests check them, as the E2MC kernels will include them
	unNormalPDF // from shaders/include/erf.glsl
)

var unNames = [...]string{"relu", "sigmoid", "exp", "log", "normal cdf", "erf", "erfc", "normal pdf"}

// unaryOp records dst = f(x) elementwise over contiguous tensors of one shape.
func unaryOp(s *vk.Stream, op int, dst, x *Tensor) error {
	if !slices.Equal(dst.shape, x.shape) {
		return fmt.Errorf("%s: shapes %v and %v differ", unNames[op], dst.shape, x.shape)
	}
	err := elementwise(x.Len(), []operand{{x, false}, {dst, true}}, func(n int, args []vk.Arg, offs []uint32) error {
		v4, per := fours(offs)
		return Launch(s, "unary", []uint32{elementGroup, elementsPer, uint32(op), v4},
			Grid(ceilDiv(ceilDiv(n, per), elementGroup*elementsPer)),
			Push{}.U32(uint32(n), offs[0], offs[1]), args...)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", unNames[op], err)
	}
	return nil
}

// Relu records dst = max(x, 0). dst and x are contiguous tensors of one
// shape; dst may be x. NaN stays NaN.
func Relu(s *vk.Stream, dst, x *Tensor) error { return unaryOp(s, unRelu, dst, x) }

// Sigmoid records dst = 1 / (1 + exp(-x)), computed without overflow for any
// x (exp is only taken of -|x|), under the rules of Relu.
func Sigmoid(s *vk.Stream, dst, x *Tensor) error { return unaryOp(s, unSigmoid, dst, x) }

// Exp records dst = exp(x), under the rules of Relu, to a few ulp over the
// whole float range (the builtin exp of drivers loses accuracy as |x| grows;
// see shaders/include/erf.glsl).
func Exp(s *vk.Stream, dst, x *Tensor) error { return unaryOp(s, unExp, dst, x) }

// Log records dst = ln(x) (NaN for x < 0, -Inf for 0), under the rules of
// Relu, to a few ulp relative, also near x = 1 where builtin logs only hold
// an absolute error.
func Log(s *vk.Stream, dst, x *Tensor) error { return unaryOp(s, unLog, dst, x) }

// NormalCDF records dst = Phi(x) = 0.5 * (1 + erf(x / sqrt(2))), the standard
// normal distribution function, under the rules of Relu. It is accurate to
// about 1.2e-7 absolute everywhere and keeps relative accuracy in the lower
// tail (shaders/include/erf.glsl).
func NormalCDF(s *vk.Stream, dst, x *Tensor) error { return unaryOp(s, unNormalCDF, dst, x) }
