package layers

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"

	"github.com/e2mcvk/e2mcvk/vk"
)

// Push builds a push-constant block: 32-bit values in declaration order,
// matching a GLSL `layout(push_constant)` block of uint/int/float members.
type Push []byte

// U32 appends unsigned values.
func (p Push) U32(vs ...uint32) Push {
	for _, v := range vs {
		p = binary.LittleEndian.AppendUint32(p, v)
	}
	return p
}

// I32 appends signed values.
func (p Push) I32(vs ...int) Push {
	for _, v := range vs {
		p = binary.LittleEndian.AppendUint32(p, uint32(int32(v)))
	}
	return p
}

// F32 appends float values.
func (p Push) F32(vs ...float32) Push {
	for _, v := range vs {
		p = binary.LittleEndian.AppendUint32(p, math.Float32bits(v))
	}
	return p
}

// maxGroupsX is the workgroup count per dimension every device supports.
const maxGroupsX = 65535

// Grid spreads n workgroups over x and y so that neither exceeds what every
// device allows; kernels recover the linear index with group_index() of
// shaders/include/common.glsl and ignore the surplus of the last row.
func Grid(n int) [3]uint32 {
	if n <= maxGroupsX {
		return [3]uint32{uint32(n), 1, 1}
	}
	y := (n + maxGroupsX - 1) / maxGroupsX
	x := (n + y - 1) / y
	return [3]uint32{uint32(x), uint32(y), 1}
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// Launch is the one way kernels are recorded, here and in the packages above:
// look up the pipeline of shader name with its specialization constants and
// dispatch it over groups workgroups.
func Launch(s *vk.Stream, name string, spec []uint32, groups [3]uint32, p Push, args ...vk.Arg) error {
	k, err := s.Device().Kernel(name, spec...)
	if err != nil {
		return err
	}
	return s.Dispatch(k, groups, p, args...)
}

// maxRank is the most dimensions an op's iteration space has (Copy's views).
const maxRank = 6

// box is a block of an op's iteration space, [lo[i], hi[i]) per dimension;
// unused dimensions stay empty (0, 0).
type box struct{ lo, hi [maxRank]int }

func (b box) size(i int) int { return b.hi[i] - b.lo[i] }

// longest picks the longest dimension of b: split's default rule.
func longest(b box) int {
	d := 0
	for i := 1; i < maxRank; i++ {
		if b.size(i) > b.size(d) {
			d = i
		}
	}
	return d
}

// split cuts b into pieces that fits accepts, halving the dimension pick
// names of each piece that it refuses. This is how every op crosses buffer
// segments: fits reports whether each operand's elements for a piece lie in
// one segment; pick says which cut keeps the pieces large for the op's
// memory layout.
func split(b box, pick func(box) int, fits func(box) bool) ([]box, error) {
	if fits(b) {
		return []box{b}, nil
	}
	d := pick(b)
	if b.size(d) <= 1 {
		return nil, fmt.Errorf("a single element of the op does not fit one buffer segment")
	}
	mid := b.lo[d] + b.size(d)/2
	lo, hi := b, b
	lo.hi[d], hi.lo[d] = mid, mid
	a, err := split(lo, pick, fits)
	if err != nil {
		return nil, err
	}
	c, err := split(hi, pick, fits)
	return append(a, c...), err
}

// operand is a contiguous tensor taking part in an elementwise op.
type operand struct {
	t     *Tensor
	write bool
}

// elementwise runs fn for each piece [lo, lo+n) of n elements in which every
// operand lies inside one buffer segment, with the operands' bindings and
// their element offsets within the bound segments. Kernels of this shape take
// push constants {n, off0, off1, ..., params...}.
func elementwise(total int, ops []operand, fn func(n int, args []vk.Arg, offs []uint32) error) error {
	for _, o := range ops {
		if !o.t.Contiguous() {
			return fmt.Errorf("elementwise op on a strided view %v: make it contiguous first", o.t.shape)
		}
		if o.t.Len() != total {
			return fmt.Errorf("elementwise op: tensor %v has %d elements, want %d", o.t.shape, o.t.Len(), total)
		}
	}
	pieces, err := split(box{hi: [maxRank]int{total}}, longest, func(b box) bool {
		for _, o := range ops {
			if _, _, ok := o.t.locate(b.lo[0], b.size(0), o.write); !ok {
				return false
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	args := make([]vk.Arg, len(ops))
	offs := make([]uint32, len(ops))
	for _, p := range pieces {
		for i, o := range ops {
			args[i], offs[i], _ = o.t.locate(p.lo[0], p.size(0), o.write)
		}
		if err := fn(p.size(0), args, offs); err != nil {
			return err
		}
	}
	return nil
}

// Bind binds the whole of a contiguous tensor for a kernel that cannot split
// its work, returning the binding and the tensor's element offset within the
// bound segment (for the kernel's push constants). It fails when the tensor
// does not lie in one buffer segment.
func Bind(t *Tensor, write bool) (vk.Arg, uint32, error) {
	if !t.Contiguous() {
		return vk.Arg{}, 0, fmt.Errorf("tensor %v is a strided view: make it contiguous first", t.shape)
	}
	arg, rel, ok := t.locate(0, t.Len(), write)
	if !ok {
		return vk.Arg{}, 0, fmt.Errorf("tensor %v (%s) does not fit one buffer binding of %s on %s",
			t.shape, vk.FormatBytes(4*int64(t.Len())), vk.FormatBytes(t.Device().SegmentLimit()), t.Device().Info.Name)
	}
	return arg, rel, nil
}

// fitsOne reports whether every tensor lies in one buffer segment (kernels that
// bind each operand whole).
func fitsOne(ts ...*Tensor) bool {
	for _, t := range ts {
		if t == nil {
			continue
		}
		if _, _, ok := t.locate(0, t.Len(), false); !ok {
			return false
		}
	}
	return true
}

// kernelsEnv names the environment variable that makes the convolution and
// GEMM kernels those of another kind of device ("cpu" or "gpu"), so that
// the GPU kernels can be tested on lavapipe and the other way round.
const kernelsEnv = "E2MCVK_KERNELS"

// cpuKernels reports whether a device gets the kernels written for CPU
// devices (lavapipe): its own type, unless E2MCVK_KERNELS says otherwise.
func cpuKernels(info vk.DeviceInfo) bool {
	switch os.Getenv(kernelsEnv) {
	case "cpu":
		return true
	case "gpu":
		return false
	}
	return info.Type == "cpu"
}
