package layers

import (
	"fmt"

	"github.com/e2mcvk/e2mcvk/vk"
)

// On GPUs the convolutions (the forward pass and the backward passes for the
// input and the weights) run as explicit GEMMs on gemm_tiled.comp, the
// fastest kernel of the library there, with the pixels gathered into (or
// scattered from) a column matrix by
// elementwise kernels:
//
//	forward:   col[ci][kh][kw][p] = x at the tap (conv_im2col.comp), then
//	           y[n][co][q] = sum_k w[co][k] * col[k][n*Ho*Wo + q];
//	data:      dcol[k][p] = sum_co w[co][k] * g[n][co][q] (a GEMM), then
//	           dx gathers its taps from dcol (conv_col2im.comp);
//	weight:    col as in the forward pass, g rearranged to gt[co][p], then
//	           dw[co][k] = sum_p gt[co][p] * col[k][p]; for a 1x1 kernel at
//	           stride 1 without padding, x is the column matrix and
//	           dw = sum_n g[n] x[n]ᵀ straight from both (pointwiseWeight).
//
// The gather kernel (conv_gather_tiled.comp), an implicit GEMM that stages
// the same operands in shared memory, ran the ResNet-50 layers with few
// pixels at 0.07-0.17x cuDNN's speed on an H100: too few output tiles to fill
// the GPU, and a slower inner loop; this way they run at 0.9-1.3x
// (BENCHMARKS.md). Here the column matrix costs a write and
// a read of memory, and a GEMM whose output tiles cannot fill the device is
// split along its sum into slices that separate workgroups compute into a
// temporary buffer, which conv_gemm_sum.comp (forward, with the bias) or Sum
// (weight gradient) adds up.
// Where an operand does not fit one buffer segment the gather kernel runs
// instead.

// convIm2col configures the GEMM convolutions of a GPU.
type convIm2col struct {
	gemm gemmKernel
	// colCap bounds the elements of one column matrix: the images are
	// taken in chunks whose columns fit it.
	colCap int
	// A GEMM is split along its sum until it has about targetGroups
	// workgroups, into slices of at least minSlice terms: at most
	// maxSlices slices in the forward pass (whose partial products are as
	// large as the output), maxWeightSlices for the weight gradient.
	targetGroups, minSlice, maxSlices, maxWeightSlices int
}

// chooseConvIm2col returns the GEMM convolutions' configuration for a
// device, or nil where the device gets the CPU kernels.
func chooseConvIm2col(info vk.DeviceInfo) *convIm2col {
	if cpuKernels(info) && texelSegments(info) {
		return nil
	}
	return &convIm2col{
		gemm:   gpuGemmKernel(info),
		colCap: 64 << 20, // 256 MiB of float32
		// As Gemm's split sums.
		targetGroups: gemmSplitTarget, minSlice: gemmSplitMinSlice, maxSlices: gemmSplitMost, maxWeightSlices: 64,
	}
}

// convIm2colWG is the workgroup size of the elementwise kernels.
const convIm2colWG = 256

// chunk returns how many images one column matrix of k rows and pix pixels
// per image covers.
func (c *convIm2col) chunk(n, k, pix int) int {
	return max(1, min(n, c.colCap/max(1, k*pix)))
}

// maxGridPixels is the most pixels the elementwise kernels cover in one
// dispatch (a grid row of at most maxGroupsX workgroups).
const maxGridPixels = maxGroupsX * convIm2colWG

// slices returns the number of slices, at most most, to split a sum of k
// terms into for a GEMM of groups workgroups: a divisor of k, so every slice
// is as long.
func (c *convIm2col) slices(k, groups, most int) int {
	return splitSlices(k, groups, most, c.targetGroups, c.minSlice)
}

// im2colPass is the geometry of one chunk of images shared by the kernels.
type im2colPass struct {
	g      convGeom
	n0, nb int // first image and images of the chunk
}

func (c im2colPass) pixels() int { return c.nb * c.g.ho * c.g.wo }

// taps returns the push constants of the tap geometry (strides, first
// tap's offsets, dilations).
func (c im2colPass) taps() Push {
	p := c.g.p
	return Push{}.I32(p.Stride[0], p.Stride[1], -p.Padding[0], -p.Padding[1], p.Dilation[0], p.Dilation[1])
}

// chunks returns the chunks of g's images, or nil where an operand does not
// fit one buffer segment: a chunk's images of each of batched, the whole of
// each of whole (nil ones skipped), or the chunk's column matrix.
func (c *convIm2col) chunks(d *vk.Device, g convGeom, batched, whole []*Tensor) []im2colPass {
	nb := c.chunk(g.n, g.colRows(), g.ho*g.wo)
	nb = min(nb, maxGridPixels/max(g.ho*g.wo, g.h*g.w))
	if nb < 1 || int64(g.colRows())*int64(nb*g.ho*g.wo)*4 > d.SegmentLimit() || max(g.cin, g.cout) > maxGroupsX || !fitsOne(whole...) {
		return nil
	}
	var out []im2colPass
	for n0 := 0; n0 < g.n; n0 += nb {
		ch := im2colPass{g: g, n0: n0, nb: min(nb, g.n-n0)}
		for _, t := range batched {
			if !fitsOne(t.Narrow(0, ch.n0, ch.nb)) {
				return nil
			}
		}
		out = append(out, ch)
	}
	return out
}

// column allocates the chunk's column matrix [Cin*KH*KW, pixels], which the
// kernels bind whole; done gives it back.
func (c im2colPass) column(tmp convScratch) (*Tensor, error) {
	g := c.g
	col, err := tmp.alloc(g.colRows(), c.pixels())
	if err != nil {
		return nil, err
	}
	if !fitsOne(col) {
		tmp.done(col)
		return nil, fmt.Errorf("internal error: the column matrix does not fit one buffer segment")
	}
	return col, nil
}

// im2col records col = the column matrix of the chunk's images x.
func (c im2colPass) im2col(s *vk.Stream, col, x *Tensor) error {
	g, np := c.g, c.pixels()
	xArg, xRel, _ := x.locate(0, x.Len(), false)
	colArg, colRel, _ := col.locate(0, col.Len(), true)
	p := Push{}.U32(uint32(np), uint32(g.ho), uint32(g.wo), uint32(g.h), uint32(g.w), uint32(g.kh), uint32(g.kw),
		xRel, colRel, uint32(g.cin*g.h*g.w), uint32(g.h*g.w))
	p = append(p, c.taps()...)
	return Launch(s, "conv_im2col", []uint32{convIm2colWG}, [3]uint32{uint32(ceilDiv(np, convIm2colWG)), uint32(g.cin), 1}, p, xArg, colArg)
}

// forward records y = conv2d(x, w) + b as im2col and GEMM; ok is false
// (nothing recorded) where an operand does not fit one buffer segment.
func (c *convIm2col) forward(s *vk.Stream, tmp convScratch, g convGeom, y, x, w, b *Tensor) (ok bool, err error) {
	chunks := c.chunks(s.Device(), g, []*Tensor{x, y}, []*Tensor{w, b})
	if chunks == nil {
		return false, nil
	}
	for _, ch := range chunks {
		if err := c.forwardChunk(s, tmp, ch, y.Narrow(0, ch.n0, ch.nb), x.Narrow(0, ch.n0, ch.nb), w, b); err != nil {
			return true, err
		}
	}
	return true, nil
}

func (c *convIm2col) forwardChunk(s *vk.Stream, tmp convScratch, ch im2colPass, y, x, w, b *Tensor) error {
	g := ch.g
	k, np, hwo := g.colRows(), ch.pixels(), g.ho*g.wo
	col, err := ch.column(tmp)
	if err != nil {
		return err
	}
	defer tmp.done(col)
	if err := ch.im2col(s, col, x); err != nil {
		return err
	}
	groups := ceilDiv(g.cout, c.gemm.tileM) * ceilDiv(np, c.gemm.tileN)
	// The partial products, [slices, Cout, pixels], must fit one segment.
	most := min(c.maxSlices, int(s.Device().SegmentLimit()/(4*int64(g.cout*np))))
	sl := c.slices(k, groups, most)
	if sl == 1 && b == nil {
		// One GEMM per image straight into y: y[n] = w * col[:, n*Ho*Wo:].
		gp := gemmProblem{m: g.cout, n: hwo, k: k, batch: ch.nb,
			a: gemmOperand{t: w, s0: k, s1: 1},
			b: gemmOperand{t: col, s0: np, s1: 1, batch: hwo},
			c: gemmOperand{t: y, s0: hwo, s1: 1, batch: g.cout * hwo, writable: true},
		}
		return gp.record(s, c.gemm, 1, 0)
	}
	// Slice z of the sum: part[z] = w[:, z*ks:(z+1)*ks] * col[z*ks:(z+1)*ks, :].
	ks := k / sl
	part, err := tmp.alloc(sl, g.cout, np)
	if err != nil {
		return err
	}
	defer tmp.done(part)
	gp := gemmProblem{m: g.cout, n: np, k: ks, batch: sl,
		a: gemmOperand{t: w, s0: k, s1: 1, batch: ks},
		b: gemmOperand{t: col, s0: np, s1: 1, batch: ks * np},
		c: gemmOperand{t: part, s0: np, s1: 1, batch: g.cout * np, writable: true},
	}
	if err := gp.record(s, c.gemm, 1, 0); err != nil {
		return err
	}
	partArg, partRel, ok1 := part.locate(0, part.Len(), false)
	yArg, yRel, _ := y.locate(0, y.Len(), true)
	if !ok1 {
		return fmt.Errorf("internal error: the partial products do not fit one buffer segment")
	}
	bArg, bRel, flags := partArg, uint32(0), uint32(0)
	if b != nil {
		bArg, bRel, _ = b.locate(0, b.Len(), false)
		flags = 1
	}
	p := Push{}.U32(uint32(np), uint32(hwo), uint32(sl), partRel, yRel, bRel, uint32(g.cout*np), uint32(g.cout*hwo), flags)
	return Launch(s, "conv_gemm_sum", []uint32{convIm2colWG}, [3]uint32{uint32(ceilDiv(np, convIm2colWG)), uint32(g.cout), 1}, p, partArg, yArg, bArg)
}

// data records dx, the gradient of the input, as a GEMM into a column
// matrix and col2im; ok is false (nothing recorded) where an operand does
// not fit one buffer segment.
func (c *convIm2col) data(s *vk.Stream, tmp convScratch, g convGeom, dx, gy, w *Tensor) (ok bool, err error) {
	chunks := c.chunks(s.Device(), g, []*Tensor{dx, gy}, []*Tensor{w})
	if chunks == nil {
		return false, nil
	}
	for _, ch := range chunks {
		if err := c.dataChunk(s, tmp, ch, dx.Narrow(0, ch.n0, ch.nb), gy.Narrow(0, ch.n0, ch.nb), w); err != nil {
			return true, err
		}
	}
	return true, nil
}

func (c *convIm2col) dataChunk(s *vk.Stream, tmp convScratch, ch im2colPass, dx, gy, w *Tensor) error {
	g := ch.g
	k, np, hwo := g.colRows(), ch.pixels(), g.ho*g.wo
	dcol, err := ch.column(tmp)
	if err != nil {
		return err
	}
	defer tmp.done(dcol)
	// One GEMM per image: dcol[:, n*Ho*Wo:] = w^T * g[n].
	gp := gemmProblem{m: k, n: hwo, k: g.cout, batch: ch.nb,
		a: gemmOperand{t: w, s0: 1, s1: k},
		b: gemmOperand{t: gy, s0: hwo, s1: 1, batch: g.cout * hwo},
		c: gemmOperand{t: dcol, s0: np, s1: 1, batch: hwo, writable: true},
	}
	if err := gp.record(s, c.gemm, 1, 0); err != nil {
		return err
	}
	colArg, colRel, _ := dcol.locate(0, dcol.Len(), false)
	dxArg, dxRel, _ := dx.locate(0, dx.Len(), true)
	npin := ch.nb * g.h * g.w
	p := Push{}.U32(uint32(npin), uint32(g.h), uint32(g.w), uint32(g.ho), uint32(g.wo), uint32(np), uint32(g.kh), uint32(g.kw),
		colRel, dxRel, uint32(g.cin*g.h*g.w), uint32(g.h*g.w))
	p = append(p, ch.taps()...)
	return Launch(s, "conv_col2im", []uint32{convIm2colWG}, [3]uint32{uint32(ceilDiv(npin, convIm2colWG)), uint32(g.cin), 1}, p, colArg, dxArg)
}

// weight records dw, the gradient of the weights; ok is false (nothing
// recorded) where an operand does not fit one buffer segment. Each chunk's
// sum over its pixels is split into slices (as many as fill the device); the
// products of all slices go to a temporary [slices, Cout, K] that Sum adds
// into dw, unless there is one.
func (c *convIm2col) weight(s *vk.Stream, tmp convScratch, g convGeom, dw, x, gy *Tensor) (ok bool, err error) {
	chunks := c.chunks(s.Device(), g, []*Tensor{x, gy}, []*Tensor{dw})
	if chunks == nil {
		return false, nil
	}
	k := g.colRows()
	groups := ceilDiv(g.cout, c.gemm.tileM) * ceilDiv(k, c.gemm.tileN)
	slices, total := make([]int, len(chunks)), 0
	for i, ch := range chunks {
		slices[i] = c.slices(ch.pixels(), groups, c.maxWeightSlices)
		total += slices[i]
	}
	if int64(total)*int64(g.cout*k)*4 > s.Device().SegmentLimit() {
		return false, nil
	}
	dw2, err := dw.Reshape(g.cout, k)
	if err != nil {
		return true, err
	}
	out := dw2
	if total > 1 {
		if out, err = tmp.alloc(total, g.cout, k); err != nil {
			return true, err
		}
		defer tmp.done(out)
	}
	z := 0
	for i, ch := range chunks {
		part := out
		if total > 1 {
			part = out.Narrow(0, z, slices[i])
		}
		if err := c.weightChunk(s, tmp, ch, part, slices[i], x.Narrow(0, ch.n0, ch.nb), gy.Narrow(0, ch.n0, ch.nb)); err != nil {
			return true, err
		}
		z += slices[i]
	}
	if total > 1 {
		return true, Sum(s, dw2, out, 0)
	}
	return true, nil
}

// weightChunk records the products of one chunk's sl slices of pixels into
// part ([sl, Cout, K], or dw as [Cout, K] where sl is the only slice).
func (c *convIm2col) weightChunk(s *vk.Stream, tmp convScratch, ch im2colPass, part *Tensor, sl int, x, gy *Tensor) error {
	g := ch.g
	k, np := g.colRows(), ch.pixels()
	col, err := ch.column(tmp)
	if err != nil {
		return err
	}
	defer tmp.done(col)
	if err := ch.im2col(s, col, x); err != nil {
		return err
	}
	gt, err := tmp.alloc(g.cout, ch.nb, g.ho*g.wo)
	if err != nil {
		return err
	}
	defer tmp.done(gt)
	g3, err := gy.Reshape(ch.nb, g.cout, g.ho*g.wo)
	if err != nil {
		return err
	}
	if err := Copy(s, gt, g3.Transpose(0, 1)); err != nil {
		return err
	}
	// Slice z: part[z] = gt[:, z*ps:(z+1)*ps] * col[:, z*ps:(z+1)*ps]^T.
	ps := np / sl
	gp := gemmProblem{m: g.cout, n: k, k: ps, batch: sl,
		a: gemmOperand{t: gt, s0: np, s1: 1, batch: ps},
		b: gemmOperand{t: col, s0: 1, s1: np, batch: ps},
		c: gemmOperand{t: part, s0: k, s1: 1, batch: g.cout * k, writable: true},
	}
	return gp.record(s, c.gemm, 1, 0)
}

// pointwiseWeight records dw for a 1x1 convolution at stride 1 without
// padding, where each image's input [Cin, H*W] is its column matrix: dw =
// the sum over images i of gy_i x_iᵀ, one batched GEMM straight from gy and
// x (no im2col, no rearranged gy). Where the images' tiles cannot fill the
// device, each image's pixels are cut into q equal slices as well (batch
// i*q + r is slice r of image i: a split batch); the products of all go to
// a temporary [N*q, Cout, Cin] that Sum adds into dw. ok is false (nothing
// recorded) where an operand does not fit one buffer segment.
//
// Why: conv_wgrad_tiled, which took these before, ran ResNet-50's 33 such
// weight gradients in 2.1 ms of a 20 ms step on an H100 (4-12 TFLOP/s)
// where gemm_tiled runs the 3x3 ones' GEMMs at 13-17.
func (c *convIm2col) pointwiseWeight(s *vk.Stream, tmp convScratch, g convGeom, dw, x, gy *Tensor) (ok bool, err error) {
	hw := g.h * g.w
	groups := ceilDiv(g.cout, c.gemm.tileM) * ceilDiv(g.cin, c.gemm.tileN) * g.n
	q := c.slices(hw, groups, max(1, c.maxWeightSlices/g.n))
	total := g.n * q
	if !fitsOne(x, gy, dw) || total > maxBatchGroups || int64(total)*int64(g.cout*g.cin)*4 > s.Device().SegmentLimit() {
		return false, nil
	}
	dw2, err := dw.Reshape(g.cout, g.cin)
	if err != nil {
		return true, err
	}
	out := dw2
	if total > 1 {
		if out, err = tmp.alloc(total, g.cout, g.cin); err != nil {
			return true, err
		}
		defer tmp.done(out)
	}
	// Batch i*q + r: out[i*q + r] = gy_i[:, r*ps:(r+1)*ps] x_i[:, r*ps:(r+1)*ps]ᵀ.
	ps := hw / q
	gp := gemmProblem{m: g.cout, n: g.cin, k: ps, batch: total, inner: q,
		a: gemmOperand{t: gy, s0: hw, s1: 1, batch: g.cout * hw, inner: ps},
		b: gemmOperand{t: x, s0: 1, s1: hw, batch: g.cin * hw, inner: ps},
		c: gemmOperand{t: out, s0: g.cin, s1: 1, batch: q * g.cout * g.cin, inner: g.cout * g.cin, writable: true},
	}
	if err := gp.record(s, c.gemm, 1, 0); err != nil {
		return true, err
	}
	if total > 1 {
		return true, Sum(s, dw2, out, 0)
	}
	return true, nil
}
