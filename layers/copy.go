package layers

import (
	"fmt"
	"math"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// copy.comp: a workgroup of copyGroup invocations, each moving one element,
// or copyPer4 vec4s on the aligned contiguous path (on lavapipe vec4 loads
// double the bandwidth of scalar ones, which it gathers lane by lane).
const (
	copyGroup = 256
	copyPer4  = 4
)

// Paths of copy.comp, its specialization constant MODE.
const (
	copyGather = iota
	copyScalar
	copyVec4
)

// maxCopyRank is the highest rank of a strided source Copy takes (after
// merging the dimensions that are contiguous with each other).
const maxCopyRank = maxRank

// Copy records copying src into dst, which is contiguous and has src's shape.
// src may be any strided view (Transpose, Reshape) of rank up to 6; a
// contiguous src is copied at full bandwidth (vec4 where both are 16-byte
// aligned). src and dst must not overlap.
func Copy(s *vk.Stream, dst, src *Tensor) error {
	if !slices.Equal(dst.shape, src.shape) {
		return fmt.Errorf("copy: shapes %v and %v differ", dst.shape, src.shape)
	}
	if !dst.Contiguous() {
		return fmt.Errorf("copy into a strided view %v: the destination must be contiguous", dst.shape)
	}
	if src.Contiguous() {
		return copyContiguous(s, dst, src)
	}
	return copyStrided(s, dst, src)
}

// Contiguous records copying src into a new contiguous tensor, which the
// caller releases. It always copies, also when src is contiguous already.
func Contiguous(s *vk.Stream, src *Tensor) (*Tensor, error) {
	dst, err := New(src.Device(), src.shape...)
	if err != nil {
		return nil, err
	}
	if err := Copy(s, dst, src); err != nil {
		dst.Release()
		return nil, err
	}
	return dst, nil
}

// Transpose2D records dst = the transpose of the 2-D tensor src (any
// strides): dst is contiguous [cols, rows] for src [rows, cols].
func Transpose2D(s *vk.Stream, dst, src *Tensor) error {
	if len(src.shape) != 2 {
		return fmt.Errorf("transpose2d of a tensor %v: want 2 dimensions", src.shape)
	}
	return Copy(s, dst, src.Transpose(0, 1))
}

func copyContiguous(s *vk.Stream, dst, src *Tensor) error {
	ops := []operand{{src, false}, {dst, true}}
	err := elementwise(src.Len(), ops, func(n int, args []vk.Arg, offs []uint32) error {
		mode, per, items := copyScalar, 1, n
		if offs[0]%4 == 0 && offs[1]%4 == 0 && n >= 4 {
			mode, per, items = copyVec4, copyPer4, n/4
		}
		p := Push{}.U32(uint32(n), offs[1], offs[0]).U32(make([]uint32, maxWindow-1+3*maxCopyRank)...)
		bind := []vk.Arg{args[0], args[0], args[0], args[0], args[0], args[0], args[1], args[1]}
		return Launch(s, "copy", []uint32{copyGroup, uint32(per), uint32(mode), 1, 1},
			Grid(ceilDiv(items, copyGroup*per)), p, bind...)
	})
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	return nil
}

func copyStrided(s *vk.Stream, dst, src *Tensor) error {
	shape, sst := mergeDims(src.shape, src.strides)
	r := len(shape)
	if r > maxCopyRank {
		return fmt.Errorf("copy of a view %v with strides %v: more than %d dimensions after merging", src.shape, src.strides, maxCopyRank)
	}
	dst1 := contiguousStrides(shape)
	last := 0
	for d := range shape {
		last += (shape[d] - 1) * sst[d]
	}
	if last >= math.MaxUint32 || dst.Len() >= math.MaxUint32 {
		return fmt.Errorf("copy of a view %v with strides %v: over 2^32 elements", src.shape, src.strides)
	}
	// extent returns the first element and the count of elements from the
	// first to the last one that a box of the index space touches in a tensor
	// with strides st (all non-negative).
	extent := func(b box, st []int) (first, count int) {
		hi := 0
		for d := 0; d < r; d++ {
			first += b.lo[d] * st[d]
			hi += (b.hi[d] - 1) * st[d]
		}
		return first, hi - first + 1
	}
	var whole box
	copy(whole.hi[:], shape)
	pieces, err := split(whole, func(b box) int {
		// The dimension whose halving shrinks the touched ranges most.
		best, bd := -1, 0
		for d := 0; d < r; d++ {
			if w := (b.hi[d] - b.lo[d] - 1) * max(sst[d], dst1[d]); w > best {
				best, bd = w, d
			}
		}
		return bd
	}, func(b box) bool {
		first, count := extent(b, dst1)
		if _, _, ok := dst.locate(first, count, true); !ok {
			return false
		}
		first, count = extent(b, sst)
		_, ok := bindWindow(src, first, count)
		return ok
	})
	if err != nil {
		return fmt.Errorf("copy of a view %v with strides %v: %w", src.shape, src.strides, err)
	}
	for _, b := range pieces {
		var bs, ss, ds [maxCopyRank]uint32
		n := 1
		for d := 0; d < r; d++ {
			bs[d], ss[d], ds[d] = uint32(b.hi[d]-b.lo[d]), uint32(sst[d]), uint32(dst1[d])
			n *= b.hi[d] - b.lo[d]
		}
		first, count := extent(b, dst1)
		dArg, dOff, _ := dst.locate(first, count, true)
		first, count = extent(b, sst)
		w, _ := bindWindow(src, first, count)
		p := Push{}.U32(uint32(n), dOff, w.off).U32(w.ends[:]...).U32(bs[:]...).U32(ss[:]...).U32(ds[:]...)
		if err := Launch(s, "copy", []uint32{copyGroup, 1, copyGather, uint32(r), uint32(len(w.args))},
			Grid(ceilDiv(n, copyGroup)), p, append(w.bindings(), dArg, dArg)...); err != nil {
			return fmt.Errorf("copy: %w", err)
		}
	}
	return nil
}

// mergeDims drops the dimensions of size 1 of a view and merges each
// dimension into the one before it where the two are contiguous with each
// other (stride[d-1] == stride[d]*shape[d]), so that a view has as few
// dimensions as its layout really needs. The result has at least one.
func mergeDims(shape, strides []int) ([]int, []int) {
	var sh, st []int
	for d := range shape {
		if shape[d] == 1 {
			continue
		}
		if k := len(sh) - 1; k >= 0 && st[k] == strides[d]*shape[d] {
			sh[k] *= shape[d]
			st[k] = strides[d]
			continue
		}
		sh, st = append(sh, shape[d]), append(st, strides[d])
	}
	if len(sh) == 0 {
		return []int{1}, []int{1}
	}
	return sh, st
}
