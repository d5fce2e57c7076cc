package layers

import "fmt"

// Narrow returns a view of length elements of dimension dim of t, starting
// at start, like torch.narrow; a negative dim counts from the end. The view
// shares t's memory (Release on it does nothing). Narrowing the first
// dimension of a contiguous tensor gives a contiguous tensor, which every
// kernel accepts (the halves of a batch of two views); other views are
// strided, for Copy. Like slicing, it panics when dim or the range lies
// outside t.
func (t *Tensor) Narrow(dim, start, length int) *Tensor {
	d := dim
	if d < 0 {
		d += len(t.shape)
	}
	if d < 0 || d >= len(t.shape) || start < 0 || length <= 0 || start+length > t.shape[d] {
		panic(fmt.Sprintf("narrow of a tensor %v: dimension %d, elements [%d, %d)", t.shape, dim, start, start+length))
	}
	v := t.view()
	v.shape[d] = length
	v.offset += start * t.strides[d]
	return v
}
