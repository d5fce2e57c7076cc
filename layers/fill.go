package layers

import "github.com/e2mcvk/e2mcvk/vk"

// fillGroup is the workgroup size of fill.comp.
const fillGroup = 256

// Fill records setting every element of contiguous tensor t to v.
func Fill(s *vk.Stream, t *Tensor, v float32) error {
	return elementwise(t.Len(), []operand{{t, true}}, func(n int, args []vk.Arg, offs []uint32) error {
		return launch(s, "fill", []uint32{fillGroup}, grid(ceilDiv(n, fillGroup)),
			push{}.u32(uint32(n), offs[0]).f32(v), args...)
	})
}
