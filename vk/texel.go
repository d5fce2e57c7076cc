package vk

import (
	"fmt"

	vulkan "github.com/vulkan-go/vulkan"
)

// Texel returns the binding a read through a uniform texel buffer of
// float32 (components 1, GLSL texelFetch giving .x) or vec4 (components 4)
// elements, bound at the next of TexelBinding, TexelBinding+1, ... .
//
// Why: llvmpipe (lavapipe) compiles every storage-buffer load into one
// scalar load per SIMD lane, each behind a branch on the lane's mask and
// another on the buffer's bound, while a texel fetch becomes straight-line
// vector code (eight 16-byte loads and a transpose for vec4). Kernels for
// CPU devices read their large operands this way; element offsets stay in
// push constants, counted in texels from the segment's start.
func (a Arg) Texel(components int) Arg {
	a.texel = components
	a.write = false
	return a
}

// texelFormat is the view format of a texel arg.
func texelFormat(components int) (vulkan.Format, error) {
	switch components {
	case 1:
		return vulkan.FormatR32Sfloat, nil
	case 4:
		return vulkan.FormatR32g32b32a32Sfloat, nil
	}
	return 0, fmt.Errorf("texel view of %d components: want 1 or 4", components)
}

// texelView creates a view of a's segment for this recording; it is
// destroyed once the recorded work has run. The range is rounded up to whole
// texels, which stays inside the sub-allocation (sizes are multiples of
// allocAlign).
func (s *Stream) texelView(a Arg) (vulkan.BufferView, error) {
	format, err := texelFormat(a.texel)
	if err != nil {
		return nil, err
	}
	blk, off, size := a.region()
	elem := int64(4 * a.texel)
	size = min(alignUp(size, elem), blk.size-off)
	if lim := s.dev.Info.MaxTexelElements; size/elem > lim {
		return nil, fmt.Errorf("texel view of %d elements exceeds the device's limit of %d", size/elem, lim)
	}
	d := s.dev.handle
	v, r := createTexelView(d, blk.buf, format, off, size)
	if r != vulkan.Success {
		return nil, fmt.Errorf("create texel view: %w", resultError(r))
	}
	s.AfterRun(func() { vulkan.DestroyBufferView(d, v, nil) })
	return v, nil
}
