package layers

import (
	"fmt"

	"github.com/e2mcvk/e2mcvk/vk"
)

// Gemm records C = alpha*op(A)*op(B) + beta*C, where op(X) is X or its
// transpose. A, B and C are contiguous 2-D [rows, cols] or 3-D
// [batch, rows, cols] tensors; a 2-D operand is shared by every batch. On
// GPUs a GEMM too small to fill the device is computed in slices of its
// sum that Sum adds up (recordSplit).
func Gemm(s *vk.Stream, alpha float32, a *Tensor, transA bool, b *Tensor, transB bool, beta float32, c *Tensor) error {
	p, err := newGemmProblem(a, transA, b, transB, c)
	if err != nil {
		return err
	}
	d := s.Device()
	if a.Device() != d || b.Device() != d || c.Device() != d {
		return fmt.Errorf("gemm: the tensors and the stream belong to different devices")
	}
	k := chooseGemmKernel(d.Info, p.m, p.n)
	if done, err := p.recordSplit(s, k, alpha, beta, gemmSplitTarget, gemmSplitMinSlice, gemmSplitMost); done || err != nil {
		return err
	}
	return p.record(s, k, alpha, beta)
}

// Split sums of gemm_tiled: a GEMM whose output tiles cannot fill the
// device has its sum cut into equal slices of at least gemmSplitMinSlice
// terms, at most gemmSplitMost, until there are about gemmSplitTarget
// workgroups (four 64x64 tiles of 256 invocations per multiprocessor of a
// large GPU: an H100 has 132). Why: a linear layer at a small batch (8 rows
// through 8192-wide layers, VICReg's expander) has 128 output tiles, each
// walking all 8192 terms of the sum in one workgroup.
const (
	gemmSplitTarget   = 512
	gemmSplitMinSlice = 128
	gemmSplitMost     = 16
)

// splitSlices returns the number of slices, at most most, to split a sum of
// k terms into for a GEMM of groups workgroups so that there are about
// target: a divisor of k (every slice as long) whose slices have at least
// minSlice terms, or 1.
func splitSlices(k, groups, most, target, minSlice int) int {
	want := min(most, ceilDiv(target, groups))
	best := 1
	for s := 2; s <= want && k/s >= minSlice; s++ {
		if k%s == 0 {
			best = s
		}
	}
	return best
}

// recordSplit records the GEMM with its sum split (splitSlices with target,
// minSlice and most) where that pays: with gemm_tiled, beta = 0, C
// row-major and every operand in one buffer segment. All slices of all
// batches are one split-batch dispatch into a temporary [batch, slices, m,
// n], which Sum adds into C. done is false (nothing recorded) where the sum
// is not split.
func (p *gemmProblem) recordSplit(s *vk.Stream, k gemmKernel, alpha, beta float32, target, minSlice, most int) (done bool, err error) {
	rowMajor := p.c.s0 == p.n && p.c.s1 == 1 && (p.batch == 1 || p.c.batch == p.m*p.n)
	if k.name != "gemm_tiled" || beta != 0 || p.inner > 1 || !rowMajor {
		return false, nil
	}
	sl := splitSlices(p.k, ceilDiv(p.m, k.tileM)*ceilDiv(p.n, k.tileN)*p.batch, most, target, minSlice)
	// The temporary is rows of n: no larger than a segment, it lies in one
	// (New cuts segments at whole rows).
	if sl == 1 || p.batch*sl > maxBatchGroups || !fitsOne(p.a.t, p.b.t, p.c.t) ||
		int64(p.batch*sl)*int64(p.m*p.n)*4 > s.Device().SegmentLimit() {
		return false, nil
	}
	part, err := New(s.Device(), p.batch, sl, p.m, p.n)
	if err != nil {
		return true, fmt.Errorf("gemm: split sums: %w", err)
	}
	s.AfterRun(part.Release)
	// Batch z*sl + j is slice j of batch z: A's and B's terms from j*ks.
	ks := p.k / sl
	q := *p
	q.k, q.batch, q.inner = ks, p.batch*sl, sl
	q.a.inner = ks * p.a.s1 // A is (m, k): k at stride s1
	q.b.inner = ks * p.b.s0 // B is (k, n): k at stride s0
	q.c = gemmOperand{t: part, s0: p.n, s1: 1, batch: sl * p.m * p.n, inner: p.m * p.n, writable: true}
	if err := q.record(s, k, alpha, 0); err != nil {
		return true, err
	}
	c3, err := p.c.t.Reshape(p.batch, p.m, p.n)
	if err != nil {
		return true, err
	}
	return true, Sum(s, c3, part, 1)
}

// gemmOperand is one matrix of a GEMM: its tensor and the element strides of
// its two logical dimensions and of its batch (0 when shared by all batches).
type gemmOperand struct {
	t        *Tensor
	s0, s1   int // strides of (m, k) for A, (k, n) for B, (m, n) for C
	batch    int // stride between batches, 0 for a shared 2-D operand
	inner    int // stride between the inner batches of a split batch (gemmProblem.inner)
	writable bool
}

// first and count give the element range an (i0..i1) x (j0..j1) block of
// batch z touches, from its first to its last element.
func (o gemmOperand) span(z, i0, i1, j0, j1 int) (first, count int) {
	first = z*o.batch + i0*o.s0 + j0*o.s1
	last := z*o.batch + (i1-1)*o.s0 + (j1-1)*o.s1
	return first, last - first + 1
}

type gemmProblem struct {
	m, n, k, batch int
	a, b, c        gemmOperand
	// inner, when above 1, splits the batches as z = zo*inner + zi: an
	// operand's batch z is at zo*batch + zi*inner. gemm_tiled only, with
	// every operand in one buffer segment.
	inner int
}

// at returns the element offset of operand o's batch z.
func (p *gemmProblem) at(o gemmOperand, z int) int {
	if p.inner > 1 {
		return z/p.inner*o.batch + z%p.inner*o.inner
	}
	return z * o.batch
}

// matrixDims returns the batch (1 for a 2-D tensor), rows and columns of a
// GEMM operand, or an error naming it.
func matrixDims(name string, t *Tensor) (batch, rows, cols int, err error) {
	if t == nil {
		return 0, 0, 0, fmt.Errorf("gemm: %s is nil", name)
	}
	if !t.Contiguous() {
		return 0, 0, 0, fmt.Errorf("gemm: %s %v is a strided view: make it contiguous first", name, t.shape)
	}
	switch len(t.shape) {
	case 2:
		return 1, t.shape[0], t.shape[1], nil
	case 3:
		return t.shape[0], t.shape[1], t.shape[2], nil
	}
	return 0, 0, 0, fmt.Errorf("gemm: %s has shape %v; want [rows, cols] or [batch, rows, cols]", name, t.shape)
}

func newGemmProblem(a *Tensor, transA bool, b *Tensor, transB bool, c *Tensor) (*gemmProblem, error) {
	ba, ra, ca, err := matrixDims("A", a)
	if err != nil {
		return nil, err
	}
	bb, rb, cb, err := matrixDims("B", b)
	if err != nil {
		return nil, err
	}
	bc, rc, cc, err := matrixDims("C", c)
	if err != nil {
		return nil, err
	}
	m, k := ra, ca
	if transA {
		m, k = ca, ra
	}
	kb, n := rb, cb
	if transB {
		kb, n = cb, rb
	}
	if k != kb {
		return nil, fmt.Errorf("gemm: op(A) is %dx%d and op(B) is %dx%d: inner dimensions differ (A %v transA=%v, B %v transB=%v)",
			m, k, kb, n, a.shape, transA, b.shape, transB)
	}
	if rc != m || cc != n {
		return nil, fmt.Errorf("gemm: C has shape %v, want %dx%d matrices for op(A) %dx%d times op(B) %dx%d", c.shape, m, n, m, k, k, n)
	}
	for _, o := range []struct {
		name  string
		t     *Tensor
		batch int
	}{{"A", a, ba}, {"B", b, bb}} {
		if len(o.t.shape) == 3 && o.batch != bc {
			return nil, fmt.Errorf("gemm: %s has %d batches but C has %d (C %v): a 3-D operand needs one matrix per batch of C",
				o.name, o.batch, bc, c.shape)
		}
	}
	for _, o := range []struct {
		name string
		t    *Tensor
	}{{"A", a}, {"B", b}} {
		if o.t.buf == c.buf && o.t.offset < c.offset+c.Len() && c.offset < o.t.offset+o.t.Len() {
			return nil, fmt.Errorf("gemm: C overlaps %s; write the product to another tensor", o.name)
		}
	}
	p := &gemmProblem{m: m, n: n, k: k, batch: bc}
	p.a = gemmOperand{t: a, s0: ca, s1: 1}
	if transA {
		p.a.s0, p.a.s1 = 1, ca
	}
	p.b = gemmOperand{t: b, s0: cb, s1: 1}
	if transB {
		p.b.s0, p.b.s1 = 1, cb
	}
	p.c = gemmOperand{t: c, s0: n, s1: 1, writable: true}
	if len(a.shape) == 3 {
		p.a.batch = ra * ca
	}
	if len(b.shape) == 3 {
		p.b.batch = rb * cb
	}
	if len(c.shape) == 3 {
		p.c.batch = m * n
	}
	return p, nil
}

// gemmKernel is a GEMM shader with its tile sizes, all of them
// specialization constants of the shader.
type gemmKernel struct {
	name string
	spec []uint32
	// A workgroup covers tileM x tileN outputs.
	tileM, tileN int
	// maxK bounds the K extent of one dispatch (0: no bound).
	maxK int
}

// Tile sizes of gemm.comp on CPU devices (see the shader). A workgroup is
// one 8-wide subgroup; each lane computes gemmCPURows x gemmCPUCols outputs,
// which llvmpipe keeps in registers and on the stack. 16x16 is the fastest
// tile on Mesa 25 and builds in half the time of 24x16 (below).
//
// First measured on Mesa 22.3 lavapipe at 1024^3 (GFLOP/s per CPU second,
// variants timed round-robin in one process):
// 24x16 14.8, 40x8 13.9, 24x20 14.2, 32x12 13.1, 16x24 11.1 (all with B read
// as vec4); B read as scalars costs 15-20% more; all lanes loading A instead
// of the subgroup broadcast about 20% more. Bigger tiles compile for longer
// (24x16: 7 s, 32x32: 100 s) and overflow the instruction cache.
//
// Re-measured on Mesa 25.0.7 (llvmpipe, LLVM 15, 256 bits; 2 shared cores,
// medians of round-robin runs, BenchmarkGemmVariants). SSBO loads are still
// one scalar load and bounds check per lane, even where the address is the
// same for every lane, and a*b+c is not fused (fma() measures the same). So
// the broadcast of A still wins: all lanes loading A, 8x8 12.3 vs 15.8 with
// the broadcast, and 4x4 to 8x8 tiles without it 6-12 (24x16 at that time:
// 17). Tiles, GFLOP/s in three runs (the load of the other core varied):
// 24x16 33.2 / 12.6 / 17.8, 16x16 41.9 / 18.3 / 22.9, 16x12 - / 19.3 / 22.2,
// 16x8 - / 14.6 / 20.4: 16x16 and 16x12 are 25-45% faster than 24x16 and
// 16x8 about 15% (all pass the correctness tests). Pipeline builds without the shader cache: 24x16 61 s,
// 16x16 25-30 s, 16x12 17 s, 24x8 16 s, 16x8 7-10 s, 8x16 8 s, 8x8 2 s;
// without the broadcast 24x16 takes 95 s. Mesa's on-disk shader cache
// hides these after the first run.
//
// Those kernels read storage buffers. Reading A and B through texel views
// instead and writing the accumulators once per two steps of K (see the
// shader) took 16x16 to 57-66 GFLOP/s at 1024^3 (wall clock, medians of 7
// round-robin runs on a quiet machine); with texel reads 24x16 was no faster
// (and builds in 60 s), and reading A as vec4 along K gained nothing.
const (
	gemmCPUWG   = 8
	gemmCPURows = 16
	gemmCPUCols = 16
	// One dispatch covers at most this much of K; longer sums are cut into
	// pieces that add to C. That keeps llvmpipe's loops below its limit of
	// 65535 iterations and blocks the float32 sum.
	gemmCPUMaxK = 4096
	// Steps of K per iteration of gemm.comp's loop (see the shader): at
	// 1024^3 on Mesa 25 (BenchmarkGemmVariants, medians of 7 round-robin
	// runs, GFLOP/s) 2 steps 59.6, 4 steps 56.2, 1 step 50.0 (no texel
	// reads, the kernel before: about 45).
	gemmCPUKSteps = 2
)

// chooseGemmKernel picks the kernel and tile sizes for a device and an
// m x n output: on CPU devices the register-blocked gemm.comp with tiles
// shrunk for thin matrices, elsewhere the shared-memory gemm_tiled.comp.
func chooseGemmKernel(info vk.DeviceInfo, m, n int) gemmKernel {
	if !cpuKernels(info) || !texelSegments(info) {
		return gpuGemmKernel(info)
	}
	// The broadcast of A's rows is written for 8-wide subgroups, llvmpipe's
	// width with 256-bit vectors; other widths load A in every lane.
	wg, bcast := gemmCPUWG, uint32(1)
	if info.SubgroupSize != gemmCPUWG {
		wg, bcast = max(int(info.SubgroupSize), 1), 0
	}
	tm := min(gemmCPURows, ceilDiv(m, 8)*8) // a multiple of 8 rows
	if bcast == 0 {
		tm = 16
		for tm > 1 && tm/2 >= m {
			tm /= 2
		}
	}
	tn := gemmCPUCols
	for tn > 1 && wg*tn/2 >= n {
		tn /= 2
	}
	return gemmKernel{
		name: "gemm",
		// BV4 and BK4 (constants 4 and 5) are set per dispatch.
		spec:  []uint32{uint32(wg), uint32(tm), uint32(tn), bcast, 0, 0, gemmCPUKSteps},
		tileM: tm, tileN: wg * tn,
		maxK: gemmCPUMaxK,
	}
}

// texelSegments reports whether a texel view can cover any buffer segment
// of the device, as the CPU kernels' texel reads need (every device allows
// 65536 texels; lavapipe and GPUs allow hundreds of millions).
func texelSegments(info vk.DeviceInfo) bool {
	return info.MaxTexelElements >= info.MaxStorageBufferRange/4
}

// gpuGemmKernel configures gemm_tiled.comp: a 64x64 output tile per
// workgroup of 256 invocations (4x4 outputs each), K in steps of 16 through
// shared memory, sized down where the device allows less.
func gpuGemmKernel(info vk.DeviceInfo) gemmKernel {
	bm, bn, bk, tm, tn := 64, 64, 16, 4, 4
	if info.MaxWorkgroupSize > 0 && info.MaxWorkgroupSize < 256 {
		bm, bn = 32, 32 // 64 invocations of 4x4
	}
	if need := uint32(4 * bk * (bm + bn + 8)); info.MaxSharedMemory > 0 && info.MaxSharedMemory < need {
		bk = 8
	}
	wg := (bm / tm) * (bn / tn)
	return gemmKernel{
		name:  "gemm_tiled",
		spec:  []uint32{uint32(wg), uint32(bm), uint32(bn), uint32(bk), uint32(tm), uint32(tn)},
		tileM: bm, tileN: bn,
	}
}

// maxBatchGroups is the number of batches one dispatch covers (the z extent
// of the workgroup grid every device allows).
const maxBatchGroups = 65535

// record dispatches the GEMM. When every operand lies in one buffer segment,
// one dispatch covers all batches; otherwise each batch is cut into boxes of
// (m, n, k) whose operands each lie in one segment. Later pieces along k add
// to what the earlier ones wrote (beta = 1).
func (p *gemmProblem) record(s *vk.Stream, k gemmKernel, alpha, beta float32) error {
	ops := []gemmOperand{p.a, p.b, p.c}
	whole := k.maxK == 0 || p.k <= k.maxK
	for _, o := range ops {
		if _, _, ok := o.t.locate(0, o.t.Len(), o.writable); !ok {
			whole = false
		}
	}
	if p.inner > 1 && (!whole || k.name != "gemm_tiled" || p.batch > maxBatchGroups) {
		return fmt.Errorf("gemm: internal error: split batches need gemm_tiled, at most %d batches and operands in one buffer segment", maxBatchGroups)
	}
	if whole {
		for z0 := 0; z0 < p.batch; z0 += maxBatchGroups {
			nz := min(maxBatchGroups, p.batch-z0)
			if err := p.dispatch(s, k, box{hi: [maxRank]int{p.m, p.n, p.k}}, z0, nz, alpha, beta); err != nil {
				return err
			}
		}
		return nil
	}
	for z := 0; z < p.batch; z++ {
		pieces, err := p.pieces(z, k.maxK)
		if err != nil {
			return err
		}
		for _, bx := range pieces {
			bt := beta
			if bx.lo[2] > 0 {
				bt = 1
			}
			if err := p.dispatch(s, k, bx, z, 1, alpha, bt); err != nil {
				return err
			}
		}
	}
	return nil
}

// pieces cuts the (m, n, k) box of batch z into pieces whose operands each
// lie in one buffer segment, and whose k extent is at most maxK (0: any).
// Each operand's rows run along one dimension (the one with the larger
// stride); that dimension is cut where the operand's segments end, so the
// pieces are as large as the segments allow. A piece that still does not fit
// (a row longer than a segment) is halved further by split. The pieces of
// one output block come in order of k, as the beta = 1 accumulation needs.
func (p *gemmProblem) pieces(z, maxK int) ([]box, error) {
	ext := [3]int{p.m, p.n, p.k}
	// Operand rows along each dimension: A spans (m, k), B (k, n), C (m, n).
	type rows struct {
		o     gemmOperand
		other int // the operand's other dimension
		first bool
	}
	var along [3][]rows
	for _, r := range []struct {
		o      gemmOperand
		d0, d1 int
	}{{p.a, 0, 2}, {p.b, 2, 1}, {p.c, 0, 1}} {
		if r.o.s0 >= r.o.s1 {
			along[r.d0] = append(along[r.d0], rows{r.o, r.d1, true})
		} else {
			along[r.d1] = append(along[r.d1], rows{r.o, r.d0, false})
		}
	}
	var cuts [3][][2]int
	for d := 0; d < 3; d++ {
		ok := func(lo, hi int) bool {
			if d == 2 && maxK > 0 && hi-lo > maxK {
				return false
			}
			for _, r := range along[d] {
				var first, count int
				if r.first {
					first, count = r.o.span(z, lo, hi, 0, ext[r.other])
				} else {
					first, count = r.o.span(z, 0, ext[r.other], lo, hi)
				}
				if _, _, fits := r.o.t.locate(first, count, r.o.writable); !fits {
					return false
				}
			}
			return true
		}
		cuts[d] = cutGreedy(ext[d], ok)
	}
	var out []box
	for _, cm := range cuts[0] {
		for _, cn := range cuts[1] {
			for _, ck := range cuts[2] {
				bx := box{lo: [maxRank]int{cm[0], cn[0], ck[0]}, hi: [maxRank]int{cm[1], cn[1], ck[1]}}
				if p.fits(z, bx) {
					out = append(out, bx)
					continue
				}
				more, err := split(bx, longest, func(b box) bool { return p.fits(z, b) })
				if err != nil {
					return nil, fmt.Errorf("gemm: %w", err)
				}
				out = append(out, more...)
			}
		}
	}
	return out, nil
}

// cutGreedy cuts [0, n) into the fewest intervals [lo, hi) that ok accepts,
// taking from each lo the longest one (ok accepts every part of an interval
// it accepts). Where not even one element is accepted, that element stands
// alone and the caller splits it further.
func cutGreedy(n int, ok func(lo, hi int) bool) [][2]int {
	var out [][2]int
	for lo := 0; lo < n; {
		// The longest accepted [lo, hi): binary search on hi in (lo, n].
		good, bad := lo+1, n+1
		if !ok(lo, lo+1) {
			bad = lo + 1
		}
		for good+1 < bad {
			mid := (good + bad) / 2
			if ok(lo, mid) {
				good = mid
			} else {
				bad = mid
			}
		}
		out = append(out, [2]int{lo, good})
		lo = good
	}
	return out
}

// ranges returns the element ranges of A, B and C that box bx of batch z
// touches.
func (p *gemmProblem) ranges(z int, bx box) [3][2]int {
	var r [3][2]int
	r[0][0], r[0][1] = p.a.span(z, bx.lo[0], bx.hi[0], bx.lo[2], bx.hi[2])
	r[1][0], r[1][1] = p.b.span(z, bx.lo[2], bx.hi[2], bx.lo[1], bx.hi[1])
	r[2][0], r[2][1] = p.c.span(z, bx.lo[0], bx.hi[0], bx.lo[1], bx.hi[1])
	return r
}

func (p *gemmProblem) fits(z int, bx box) bool {
	r := p.ranges(z, bx)
	for i, o := range []gemmOperand{p.a, p.b, p.c} {
		if _, _, ok := o.t.locate(r[i][0], r[i][1], o.writable); !ok {
			return false
		}
	}
	return true
}

// dispatch records one kernel launch over box bx of batches [z0, z0+nz).
// With nz > 1 every operand must lie in one segment (the batch strides step
// through it).
func (p *gemmProblem) dispatch(s *vk.Stream, k gemmKernel, bx box, z0, nz int, alpha, beta float32) error {
	ops := []gemmOperand{p.a, p.b, p.c}
	var r [3][2]int
	if nz == 1 {
		r = p.ranges(z0, bx)
	} else {
		// The whole problem: bind from the first batch's origin to the end.
		for i, o := range ops {
			r[i][0] = p.at(o, z0)
			r[i][1] = o.t.Len() - r[i][0]
		}
	}
	args := make([]vk.Arg, 3)
	offs := make([]uint32, 3)
	for i, o := range ops {
		arg, rel, ok := o.t.locate(r[i][0], r[i][1], o.writable)
		if !ok {
			return fmt.Errorf("gemm: internal error: operand %d range %v crosses a buffer segment", i, r[i])
		}
		args[i], offs[i] = arg, rel
	}
	mp, np, kp := bx.size(0), bx.size(1), bx.size(2)
	tilesM := ceilDiv(mp, k.tileM)
	tilesN := ceilDiv(np, k.tileN)
	groups := Grid(tilesM * tilesN)
	groups[2] = uint32(nz)
	spec := k.spec
	if k.name == "gemm" {
		// Read B as vec4 along N (BV4) or along K (BK4) where every vec4
		// is aligned.
		spec = append([]uint32(nil), spec...)
		spec[4], spec[5] = 0, 0
		aligned := offs[1]%4 == 0 && p.b.batch%4 == 0
		switch {
		case aligned && p.b.s1 == 1 && p.b.s0%4 == 0 && np%4 == 0 && spec[2]%4 == 0:
			spec[4] = 1
		case aligned && p.b.s0 == 1 && p.b.s1%4 == 0 && kp%4 == 0:
			spec[5] = 1
			spec[6] = 4 // one vec4 of B along K covers four steps
		}
		// The CPU kernel reads A and B through texel views (see gemm.comp).
		comps := 1
		if spec[4] != 0 || spec[5] != 0 {
			comps = 4
		}
		args = []vk.Arg{args[2], args[0].Texel(1), args[1].Texel(comps)}
	}
	pc := Push{}.U32(uint32(mp), uint32(np), uint32(kp)).U32(offs...).
		I32(p.a.s0, p.a.s1, p.b.s0, p.b.s1, p.c.s0, p.c.s1).
		I32(p.a.batch, p.b.batch, p.c.batch).
		U32(uint32(tilesM)).F32(alpha, beta).
		U32(uint32(max(1, p.inner))).I32(p.a.inner, p.b.inner, p.c.inner)
	return Launch(s, k.name, spec, groups, pc, args...)
}
