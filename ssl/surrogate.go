package ssl

import "github.com/e2mcvk/e2mcvk/layers"

// Surrogate records sum(z * grad), grad a constant of z's shape: a scalar
// whose gradient with respect to z is grad. A criterion whose gradient is
// computed outside the tape (on the host, or by its own kernels, as E2MC's
// is) adds it to the loss so that one backward pass carries the criterion's
// gradient into the network together with the method's. The tape owns
// nothing of grad: the caller frees it after the step's stream has run.
func Surrogate(tp *layers.Tape, z *layers.Var, grad *layers.Tensor) *layers.Var {
	return tp.Sum(tp.Mul(z, layers.Constant(grad)))
}
