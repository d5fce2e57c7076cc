package layers

import (
	"fmt"
	"math/bits"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// reduceGroup is the largest workgroup of reduce.comp.
const reduceGroup = 256

// Operations of reduce.comp, its specialization constant OP.
const (
	redSum = iota // sum / div
	redVar        // sum of squares about the slice's mean / div
)

// Sum records dst = the sum of x over axis (negative counts from the end).
// x is contiguous; dst is contiguous with x's shape without that axis, or with
// it kept as 1 (keepdim), and does not overlap x. Every sum is accurate to a
// few float32 ulp of the exact result, whatever its length (compensated and
// pairwise summation).
//
// The work split: x is viewed as [outer, n, inner]; a workgroup takes up to
// 32 neighbouring outputs along inner (coalesced loads) and spreads each
// slice of n over the rest of its 256 invocations, so a reduction over the
// last axis (inner == 1) gives each long row a whole workgroup. Outputs are
// not split across workgroups: a reduction to very few outputs runs on few
// workgroups (a two-stage reduction would need a scratch buffer that lives
// until the stream has run, which vk.Stream does not offer yet).
//
// Each dispatch must see a whole reduced slice (n elements at stride inner) in
// at most six consecutive buffer segments (maxWindow); a slice longer than
// that (over 640 MiB of x on lavapipe, five times maxStorageBufferRange in
// general) is an error rather than a wrong answer.
func Sum(s *vk.Stream, dst, x *Tensor, axis int) error {
	return reduce(s, "sum", dst, x, axis, redSum, func(n int) float32 { return 1 })
}

// Mean records dst = the mean of x over axis, under the rules of Sum.
func Mean(s *vk.Stream, dst, x *Tensor, axis int) error {
	return reduce(s, "mean", dst, x, axis, redSum, func(n int) float32 { return float32(n) })
}

// Variance records dst = the variance of x over axis, sum((x - mean)^2) /
// (n - correction), like torch.var: correction 0 is the population variance,
// 1 the unbiased estimate. As in torch, n - correction <= 0 gives inf (or NaN
// for a constant slice). The kernel reads each slice twice, for its mean and
// then for the centred squares, so the result is accurate whatever the mean.
// The rules of Sum apply.
func Variance(s *vk.Stream, dst, x *Tensor, axis, correction int) error {
	if correction < 0 {
		return fmt.Errorf("var: correction %d is negative", correction)
	}
	return reduce(s, "var", dst, x, axis, redVar, func(n int) float32 { return float32(max(0, n-correction)) })
}

func reduce(s *vk.Stream, name string, dst, x *Tensor, axis, op int, div func(n int) float32) error {
	rank := len(x.shape)
	if axis < -rank || axis >= rank {
		return fmt.Errorf("%s over axis %d of a tensor %v", name, axis, x.shape)
	}
	if axis < 0 {
		axis += rank
	}
	if !x.Contiguous() {
		return fmt.Errorf("%s of a strided view %v: make it contiguous first", name, x.shape)
	}
	drop := append(append([]int(nil), x.shape[:axis]...), x.shape[axis+1:]...)
	keep := append([]int(nil), x.shape...)
	keep[axis] = 1
	if !slices.Equal(dst.shape, drop) && !slices.Equal(dst.shape, keep) {
		return fmt.Errorf("%s over axis %d of %v: result has shape %v, want %v or %v", name, axis, x.shape, dst.shape, drop, keep)
	}
	if !dst.Contiguous() {
		return fmt.Errorf("%s into a strided view %v: the result must be contiguous", name, dst.shape)
	}
	outer, n, inner := 1, x.shape[axis], 1
	for _, d := range x.shape[:axis] {
		outer *= d
	}
	for _, d := range x.shape[axis+1:] {
		inner *= d
	}
	// Element ranges of a piece of outputs [o0, o1) x [i0, i1).
	xRange := func(b box) (first, count int) {
		first = b.lo[0]*n*inner + b.lo[1]
		last := (b.hi[0]-1)*n*inner + (n-1)*inner + b.hi[1] - 1
		return first, last - first + 1
	}
	yRange := func(b box) (first, count int) {
		first = b.lo[0]*inner + b.lo[1]
		return first, (b.hi[0]-1)*inner + b.hi[1] - first
	}
	pieces, err := split(box{hi: [maxRank]int{outer, inner}}, outerFirst, func(b box) bool {
		first, count := xRange(b)
		if _, ok := bindWindow(x, first, count); !ok {
			return false
		}
		first, count = yRange(b)
		_, _, ok := dst.locate(first, count, true)
		return ok
	})
	if err != nil {
		return fmt.Errorf("%s over axis %d of %v: one reduced slice spans %s, more than %d consecutive buffer segments of this device hold (at most %s each)",
			name, axis, x.shape, vk.FormatBytes(4*int64((n-1)*inner+1)), maxWindow, vk.FormatBytes(x.Device().SegmentLimit()))
	}
	wg, ty := reduceSplit(outer*inner, n, inner)
	tx := wg / ty
	for _, b := range pieces {
		po, pi := b.size(0), b.size(1)
		first, count := xRange(b)
		w, _ := bindWindow(x, first, count)
		first, count = yRange(b)
		yArg, yOff, _ := dst.locate(first, count, true)
		p := Push{}.U32(uint32(po), uint32(pi), uint32(n), uint32(inner), uint32(n*inner), w.off).
			U32(w.ends[:]...).U32(yOff, uint32(inner)).F32(div(n))
		if err := Launch(s, "reduce", []uint32{uint32(wg), uint32(ty), uint32(op), uint32(len(w.args))},
			Grid(ceilDiv(po*pi, tx)), p, append(w.bindings(), yArg)...); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// outerFirst picks the outer range of an (outer, inner) box before the inner
// one: whole outer rows are contiguous in memory, so this finds large pieces
// where the longest-side rule would shred a short outer range of long rows
// into single elements.
func outerFirst(b box) int {
	if b.size(0) > 1 {
		return 0
	}
	return 1
}

// reduceSplit chooses the workgroup of reduce.comp for m outputs, each a sum
// of n elements at stride inner: wg invocations, ty of them per output.
// Across outputs, a workgroup takes up to 32 neighbouring inner indices, which
// lie next to each other in memory. Along n, an invocation takes at least 64
// elements (fewer invocations per output mean fewer barriers: a third of the
// time on lavapipe), or down to 8 while the dispatch would have under 256
// workgroups (a GPU needs that many to fill). The rest of the workgroup goes
// to more outputs, or is left out when there are no more.
func reduceSplit(m, n, inner int) (wg, ty int) {
	tx := 1
	if inner > 1 {
		tx = min(32, pow2AtLeast(inner))
	}
	ty = min(reduceGroup/tx, pow2AtMost(max(1, n/64)))
	for ty < reduceGroup/tx && n >= 16*ty && ceilDiv(m, reduceGroup/ty) < 256 {
		ty *= 2
	}
	tx = min(reduceGroup/ty, pow2AtLeast(m))
	return tx * ty, ty
}

func pow2AtLeast(v int) int {
	if v <= 1 {
		return 1
	}
	return 1 << bits.Len(uint(v-1))
}

func pow2AtMost(v int) int {
	if v <= 1 {
		return 1
	}
	return 1 << (bits.Len(uint(v)) - 1)
}

// maxWindow is the most buffer segments one operand of a kernel may span
// (reduce.comp, copy.comp): bindings 0 to maxWindow-1 of those kernels.
const maxWindow = 6

// segWindow is a read-only binding of elements [first, first+count) of a
// tensor that may cross boundaries between buffer segments: element e
// (relative to first) is in segment j of the window for ends[j-1] <= e <
// ends[j], at e - ends[j-1] from its start (the first segment: at off + e).
type segWindow struct {
	args []vk.Arg
	off  uint32
	ends [maxWindow - 1]uint32
}

// bindWindow binds elements [first, first+count) of t as a segWindow, or
// reports false when they touch more than maxWindow segments (or are 2^32
// elements or more).
func bindWindow(t *Tensor, first, count int) (segWindow, bool) {
	var w segWindow
	if count >= 1<<32 {
		return w, false // kernels index a window with 32 bits
	}
	pos, rest := first, count
	for len(w.args) < maxWindow {
		if a, off, ok := t.locate(pos, rest, false); ok {
			if len(w.args) == 0 {
				w.off = off
			} else if off != 0 {
				return segWindow{}, false
			}
			w.args = append(w.args, a)
			return w, true
		}
		// The longest prefix inside this segment.
		lo, hi := 0, rest-1
		for lo < hi {
			mid := (lo + hi + 1) / 2
			if _, _, ok := t.locate(pos, mid, false); ok {
				lo = mid
			} else {
				hi = mid - 1
			}
		}
		if lo == 0 || len(w.args) == maxWindow-1 {
			return segWindow{}, false
		}
		a, off, _ := t.locate(pos, lo, false)
		if len(w.args) == 0 {
			w.off = off
		} else if off != 0 {
			return segWindow{}, false
		}
		w.args = append(w.args, a)
		pos, rest = pos+lo, rest-lo
		w.ends[len(w.args)-1] = uint32(pos - first)
	}
	return segWindow{}, false
}

// bindings returns the window's maxWindow bindings, the unused ones repeating
// its last segment (every binding a kernel declares must be valid).
func (w segWindow) bindings() []vk.Arg {
	out := make([]vk.Arg, maxWindow)
	for i := range out {
		out[i] = w.args[min(i, len(w.args)-1)]
	}
	return out
}
