package layers

import "github.com/e2mcvk/e2mcvk/vk"

// fillGroup is the workgroup size of fill.comp.
const fillGroup = 256

// Fill records setting every element of contiguous tensor t to v.
func Fill(s *vk.Stream, t *Tensor, v float32) error {
	return elementwise(t.Len(), []operand{{t, true}}, func(n int, args []vk.Arg, offs []uint32) error {
		return Launch(s, "fill", []uint32{fillGroup}, Grid(ceilDiv(n, fillGroup)),
			Push{}.U32(uint32(n), offs[0]).F32(v), args...)
	})
}
