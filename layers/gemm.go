package layers

import (
	"errors"

	"github.com/e2mcvk/e2mcvk/vk"
)

// Gemm records C = alpha*op(A)*op(B) + beta*C, where op(X) is X or its
// transpose. A, B and C are contiguous 2-D [rows, cols] or 3-D
// [batch, rows, cols] tensors; a 2-D operand is shared by every batch.
func Gemm(s *vk.Stream, alpha float32, a *Tensor, transA bool, b *Tensor, transB bool, beta float32, c *Tensor) error {
	return errors.New("gemm: not implemented yet")
}
