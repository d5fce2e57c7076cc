package layers

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// ConvParams are the geometry of a 2-D convolution, per dimension (height,
// width). A zero Stride or Dilation means 1.
type ConvParams struct {
	Stride, Padding, Dilation [2]int
}

// normalized returns p with zero strides and dilations made 1, or an error
// for negative values.
func (p ConvParams) normalized() (ConvParams, error) {
	for i := 0; i < 2; i++ {
		if p.Stride[i] == 0 {
			p.Stride[i] = 1
		}
		if p.Dilation[i] == 0 {
			p.Dilation[i] = 1
		}
		if p.Stride[i] < 0 || p.Dilation[i] < 0 || p.Padding[i] < 0 {
			return p, fmt.Errorf("conv parameters %+v: strides, dilations and paddings must not be negative", p)
		}
	}
	return p, nil
}

// ConvOutputSize returns the output length of a convolution along one
// dimension: (in + 2*pad - dil*(kernel-1) - 1) / stride + 1, or 0 when the
// dilated kernel is longer than the padded input. A zero stride or dilation
// means 1.
func ConvOutputSize(in, kernel, stride, pad, dil int) int {
	if stride == 0 {
		stride = 1
	}
	if dil == 0 {
		dil = 1
	}
	span := in + 2*pad - dil*(kernel-1) - 1
	if span < 0 || stride < 0 || kernel < 1 {
		return 0
	}
	return span/stride + 1
}

// convGeom is the shape of one convolution: x [n, cin, h, w], weights
// [cout, cin, kh, kw], y [n, cout, ho, wo].
type convGeom struct {
	n, cin, h, w int
	cout, kh, kw int
	ho, wo       int
	p            ConvParams // normalized
}

func newConvGeom(op string, x, w []int, p ConvParams) (convGeom, error) {
	var g convGeom
	p, err := p.normalized()
	if err != nil {
		return g, fmt.Errorf("%s: %w", op, err)
	}
	if len(x) != 4 {
		return g, fmt.Errorf("%s: input has shape %v; want [batch, channels, height, width]", op, x)
	}
	if len(w) != 4 {
		return g, fmt.Errorf("%s: weights have shape %v; want [out channels, in channels, kernel height, kernel width]", op, w)
	}
	if x[1] != w[1] {
		return g, fmt.Errorf("%s: input %v has %d channels but the weights %v take %d", op, x, x[1], w, w[1])
	}
	g = convGeom{n: x[0], cin: x[1], h: x[2], w: x[3], cout: w[0], kh: w[2], kw: w[3], p: p}
	g.ho = ConvOutputSize(g.h, g.kh, p.Stride[0], p.Padding[0], p.Dilation[0])
	g.wo = ConvOutputSize(g.w, g.kw, p.Stride[1], p.Padding[1], p.Dilation[1])
	if g.ho < 1 || g.wo < 1 {
		return g, fmt.Errorf("%s: a %dx%d kernel (dilation %v) does not fit the %dx%d input padded by %v",
			op, g.kh, g.kw, p.Dilation, g.h, g.w, p.Padding)
	}
	return g, nil
}

func (g convGeom) xShape() []int { return []int{g.n, g.cin, g.h, g.w} }
func (g convGeom) wShape() []int { return []int{g.cout, g.cin, g.kh, g.kw} }
func (g convGeom) yShape() []int { return []int{g.n, g.cout, g.ho, g.wo} }

// colRows returns Cin*KH*KW: the rows of a column matrix (conv_im2col.go),
// the columns of the weights as a matrix.
func (g convGeom) colRows() int { return g.cin * g.kh * g.kw }

// pointwise reports whether the convolution is a plain matrix product per
// image: a 1x1 kernel at stride 1 without padding.
func (g convGeom) pointwise() bool {
	return g.kh == 1 && g.kw == 1 && g.p.Stride == [2]int{1, 1} && g.p.Padding == [2]int{0, 0}
}

// convCheckOperand reports a nil, misshapen or strided operand of a convolution.
func convCheckOperand(op, name string, t *Tensor, want []int, d *vk.Device) error {
	if t == nil {
		return fmt.Errorf("%s: %s is nil", op, name)
	}
	if !slices.Equal(t.shape, want) {
		return fmt.Errorf("%s: %s has shape %v, want %v", op, name, t.shape, want)
	}
	if !t.Contiguous() {
		return fmt.Errorf("%s: %s %v is a strided view: make it contiguous first", op, name, t.shape)
	}
	if t.Device() != d {
		return fmt.Errorf("%s: %s and the stream belong to different devices", op, name)
	}
	return nil
}

// convOverlaps reports whether two tensors share memory.
func convOverlaps(a, b *Tensor) bool {
	return a != nil && b != nil && a.buf == b.buf && a.offset < b.offset+b.Len() && b.offset < a.offset+a.Len()
}

// Conv2dForward records y = conv2d(x, w) + b (PyTorch's Conv2d with
// groups = 1): x [N, Cin, H, W], w [Cout, Cin, KH, KW], b [Cout] or nil, y
// [N, Cout, Ho, Wo] with Ho = ConvOutputSize(H, KH, ...) and likewise Wo. All
// are contiguous; y must not overlap the others.
//
// 1x1 convolutions at stride 1 without padding are batched GEMMs (Gemm).
// On GPUs every other one is im2col and a GEMM (conv_im2col.go); on CPU
// devices, and where an operand crosses a buffer segment, it runs the gather
// kernel (an implicit GEMM, no im2col buffer) on weights rearranged into a
// temporary buffer.
func Conv2dForward(s *vk.Stream, y, x, w, b *Tensor, p ConvParams) error {
	return conv2dForward(s, y, x, w, b, p, defaultConvConfig(s))
}

func conv2dForward(s *vk.Stream, y, x, w, b *Tensor, p ConvParams, cfg convConfig) error {
	const op = "conv2d"
	if x == nil || w == nil {
		return fmt.Errorf("%s: nil input or weights", op)
	}
	g, err := newConvGeom(op, x.shape, w.shape, p)
	if err != nil {
		return err
	}
	d := s.Device()
	if err := convCheckOperand(op, "input", x, g.xShape(), d); err != nil {
		return err
	}
	if err := convCheckOperand(op, "weights", w, g.wShape(), d); err != nil {
		return err
	}
	if err := convCheckOperand(op, "output", y, g.yShape(), d); err != nil {
		return err
	}
	if b != nil {
		if err := convCheckOperand(op, "bias", b, []int{g.cout}, d); err != nil {
			return err
		}
	}
	if convOverlaps(y, x) || convOverlaps(y, w) || convOverlaps(y, b) {
		return fmt.Errorf("%s: the output overlaps an input; write it to another tensor", op)
	}
	if cfg.pointwise && g.pointwise() {
		return convPointwiseForward(s, cfg.tmp, g, y, x, w, b)
	}
	if cfg.im2col != nil {
		done, err := cfg.im2col.forward(s, cfg.tmp, g, y, x, w, b)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if done {
			return nil
		}
	}
	k := cfg.gather(g.cout)
	mp := ceilDiv(g.cout, 4) * 4
	wt, err := convRearrange(s, cfg.tmp, w, g.cout, g.cin, g.kh*g.kw, mp, g.cin*g.kh*g.kw, g.kh*g.kw)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer cfg.tmp.done(wt)
	kk := g.kh * g.kw
	pass := convGatherPass{
		in: x, out: y, wt: wt, bias: b,
		n: g.n, c: g.cin, m: g.cout, inN: g.cin * g.h * g.w, inC: g.h * g.w, hin: g.h, win: g.w,
		rows: g.ho, cols: g.wo,
		outN: g.cout * g.ho * g.wo, outC: g.ho * g.wo, outRow: g.wo, outCol: 1,
		sh: g.p.Stride[0], sw: g.p.Stride[1], oh0: -g.p.Padding[0], ow0: -g.p.Padding[1],
		dth: g.p.Dilation[0], dtw: g.p.Dilation[1], th: g.kh, tw: g.kw,
		wsc: kk * mp, wsh: g.kw * mp, wsw: mp,
	}
	if err := pass.record(s, k); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// Conv2dBackwardData records dx, the gradient of a convolution's input x,
// from the gradient g of its output y = conv2d(x, w) (PyTorch's
// conv2d_input). dx has x's shape [N, Cin, H, W], g y's [N, Cout, Ho, Wo];
// the input's height and width come from dx. All are contiguous; dx must not
// overlap g or w.
//
// On GPUs it is a GEMM into a column matrix and col2im (conv_im2col.go).
// Elsewhere it is the transposed convolution, gathered per input pixel: for each of
// the stride's phases (input rows ih = ph + stride*i, likewise columns) the
// kernel taps that reach the phase are the same for every pixel, so each
// phase is a gather convolution over exactly its taps (no multiply with
// zeros). A 1x1 kernel at stride 1 without padding is a GEMM with w
// transposed.
func Conv2dBackwardData(s *vk.Stream, dx, g, w *Tensor, p ConvParams) error {
	return conv2dBackwardData(s, dx, g, w, p, defaultConvConfig(s))
}

func conv2dBackwardData(s *vk.Stream, dx, g, w *Tensor, p ConvParams, cfg convConfig) error {
	const op = "conv2d backward data"
	if dx == nil || w == nil || g == nil {
		return fmt.Errorf("%s: nil operand", op)
	}
	geo, err := newConvGeom(op, dx.shape, w.shape, p)
	if err != nil {
		return err
	}
	d := s.Device()
	if err := convCheckOperand(op, "input gradient", dx, geo.xShape(), d); err != nil {
		return err
	}
	if err := convCheckOperand(op, "weights", w, geo.wShape(), d); err != nil {
		return err
	}
	if err := convCheckOperand(op, "output gradient", g, geo.yShape(), d); err != nil {
		return err
	}
	if convOverlaps(dx, g) || convOverlaps(dx, w) {
		return fmt.Errorf("%s: the input gradient overlaps an operand; write it to another tensor", op)
	}
	if cfg.pointwise && geo.pointwise() {
		return convPointwiseData(s, geo, dx, g, w)
	}
	if cfg.im2col != nil {
		done, err := cfg.im2col.data(s, cfg.tmp, geo, dx, g, w)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if done {
			return nil
		}
	}
	k := cfg.gather(geo.cin)
	kk := geo.kh * geo.kw
	mp := ceilDiv(geo.cin, 4) * 4
	// wt[co][kh][kw][ci]: the reduction runs over the output channels.
	wt, err := convRearrange(s, cfg.tmp, w, geo.cin, geo.cout, kk, mp, kk, geo.cin*kk)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer cfg.tmp.done(wt)
	st, pad, dil := geo.p.Stride, geo.p.Padding, geo.p.Dilation
	for ph := 0; ph < st[0] && ph < geo.h; ph++ {
		kh0, th, ksh := convPhaseTaps(ph, pad[0], dil[0], st[0], geo.kh)
		for pw := 0; pw < st[1] && pw < geo.w; pw++ {
			kw0, tw, ksw := convPhaseTaps(pw, pad[1], dil[1], st[1], geo.kw)
			pass := convGatherPass{
				in: g, out: dx, wt: wt,
				n: geo.n, c: geo.cout, m: geo.cin, inN: geo.cout * geo.ho * geo.wo, inC: geo.ho * geo.wo,
				hin: geo.ho, win: geo.wo,
				rows: ceilDiv(geo.h-ph, st[0]), cols: ceilDiv(geo.w-pw, st[1]),
				outBase: ph*geo.w + pw, outN: geo.cin * geo.h * geo.w, outC: geo.h * geo.w,
				outRow: st[0] * geo.w, outCol: st[1],
				sh: 1, sw: 1,
				wsc: kk * mp, wsh: ksh * geo.kw * mp, wsw: ksw * mp,
			}
			if th > 0 && tw > 0 {
				// Tap t of the phase is kernel row kh0 + t*ksh, which reads
				// output row i + (ph + pad - kh*dil)/stride.
				pass.th, pass.tw = th, tw
				pass.oh0 = (ph + pad[0] - kh0*dil[0]) / st[0]
				pass.ow0 = (pw + pad[1] - kw0*dil[1]) / st[1]
				pass.dth = -ksh * dil[0] / st[0]
				pass.dtw = -ksw * dil[1] / st[1]
				pass.wBase = (kh0*geo.kw + kw0) * mp
			}
			if err := pass.record(s, k); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
		}
	}
	return nil
}

// convPhaseTaps returns the kernel positions k = k0 + t*step, t < taps, whose
// outputs reach input position ph + stride*i along one dimension: those with
// (ph + pad - k*dil) divisible by stride.
func convPhaseTaps(ph, pad, dil, stride, kernel int) (k0, taps, step int) {
	step = stride / convGCD(stride, dil)
	for k0 = 0; k0 < kernel && k0 < step; k0++ {
		if ((ph+pad-k0*dil)%stride+stride)%stride == 0 {
			return k0, (kernel-1-k0)/step + 1, step
		}
	}
	return 0, 0, step
}

func convGCD(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// Conv2dBackwardWeight records the gradients of a convolution's weights, dw
// [Cout, Cin, KH, KW], and of its bias, db [Cout], from its input x [N, Cin,
// H, W] and the gradient g [N, Cout, Ho, Wo] of its output (PyTorch's
// conv2d_weight, and g summed over n, h and w). Either of dw and db may be
// nil, not both; the kernel size comes from dw. All are contiguous and the
// outputs overlap nothing else.
//
// dw is a GEMM whose sum runs over every pixel of the batch. On GPUs it is
// im2col and a GEMM (conv_im2col.go; for 1x1 convolutions at stride 1
// without padding, GEMMs straight from the input), except where operands
// cross buffer segments: those run
// conv_wgrad_tiled.comp (weight rows by output channels, the input gathered
// at each weight's tap, the pixels cut into chunks that separate workgroups
// sum into a temporary buffer, which Sum adds up). On
// CPU devices it runs on the forward gather kernel (convWgradByGather): a
// register-blocked kernel with the pixels as its sum (the input gathered and
// masked at every pixel) ran at 17-20 GFLOP per CPU second on llvmpipe where
// the gather kernel runs at 37.
func Conv2dBackwardWeight(s *vk.Stream, dw, db, x, g *Tensor, p ConvParams) error {
	return conv2dBackwardWeight(s, dw, db, x, g, p, defaultConvConfig(s))
}

func conv2dBackwardWeight(s *vk.Stream, dw, db, x, g *Tensor, p ConvParams, cfg convConfig) error {
	const op = "conv2d backward weight"
	if x == nil || g == nil {
		return fmt.Errorf("%s: nil input or output gradient", op)
	}
	if dw == nil && db == nil {
		return fmt.Errorf("%s: neither a weight nor a bias gradient asked for", op)
	}
	d := s.Device()
	if dw == nil {
		// The bias gradient alone: only g's shape matters.
		if len(g.shape) != 4 {
			return fmt.Errorf("%s: output gradient has shape %v; want [batch, channels, height, width]", op, g.shape)
		}
		if err := convCheckOperand(op, "output gradient", g, g.shape, d); err != nil {
			return err
		}
		if err := convCheckOperand(op, "bias gradient", db, []int{g.shape[1]}, d); err != nil {
			return err
		}
		if convOverlaps(db, g) {
			return fmt.Errorf("%s: the bias gradient overlaps the output gradient", op)
		}
		return convBiasGrad(s, cfg.tmp, db, g)
	}
	geo, err := newConvGeom(op, x.shape, dw.shape, p)
	if err != nil {
		return err
	}
	if err := convCheckOperand(op, "input", x, geo.xShape(), d); err != nil {
		return err
	}
	if err := convCheckOperand(op, "weight gradient", dw, geo.wShape(), d); err != nil {
		return err
	}
	if err := convCheckOperand(op, "output gradient", g, geo.yShape(), d); err != nil {
		return err
	}
	if db != nil {
		if err := convCheckOperand(op, "bias gradient", db, []int{geo.cout}, d); err != nil {
			return err
		}
		if convOverlaps(db, dw) || convOverlaps(db, x) || convOverlaps(db, g) {
			return fmt.Errorf("%s: the bias gradient overlaps another operand", op)
		}
	}
	if convOverlaps(dw, x) || convOverlaps(dw, g) {
		return fmt.Errorf("%s: the weight gradient overlaps an input; write it to another tensor", op)
	}
	done := false
	switch {
	case cfg.im2col == nil:
	case cfg.pointwise && geo.pointwise():
		done, err = cfg.im2col.pointwiseWeight(s, cfg.tmp, geo, dw, x, g)
	default:
		done, err = cfg.im2col.weight(s, cfg.tmp, geo, dw, x, g)
	}
	switch {
	case done || err != nil:
	case cfg.wgrad == nil:
		err = convWgradByGather(s, cfg.tmp, dw, x, g, geo, cfg.gather(geo.cout))
	default:
		pass := convWgradPass{x: x, g: g, dw: dw, geo: geo}
		err = pass.record(s, cfg.tmp, *cfg.wgrad)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if db != nil {
		return convBiasGrad(s, cfg.tmp, db, g)
	}
	return nil
}

// convBiasGrad records db = the sum of g [N, C, H, W] over n, h and w: a Sum over
// the pixels of each (n, c) into a temporary [N, C], then over n.
func convBiasGrad(s *vk.Stream, tmp convScratch, db, g *Tensor) error {
	n, c := g.shape[0], g.shape[1]
	g3, err := g.Reshape(n, c, g.shape[2]*g.shape[3])
	if err != nil {
		return err
	}
	if n == 1 {
		db2, err := db.Reshape(1, c)
		if err != nil {
			return err
		}
		return Sum(s, db2, g3, 2)
	}
	part, err := tmp.alloc(n, c)
	if err != nil {
		return fmt.Errorf("conv2d bias gradient: %w", err)
	}
	defer tmp.done(part)
	if err := Sum(s, part, g3, 2); err != nil {
		return fmt.Errorf("conv2d bias gradient: %w", err)
	}
	if err := Sum(s, db, part, 0); err != nil {
		return fmt.Errorf("conv2d bias gradient: %w", err)
	}
	return nil
}

// convPointwiseForward is the 1x1 stride-1 convolution as a batched GEMM:
// y[n] = w [Cout, Cin] x[n] [Cin, H*W], after y[n] = b 1ᵀ when there is a
// bias (a rank-1 GEMM with a row of ones).
func convPointwiseForward(s *vk.Stream, tmp convScratch, g convGeom, y, x, w, b *Tensor) error {
	hw := g.h * g.w
	x3, err := x.Reshape(g.n, g.cin, hw)
	if err != nil {
		return err
	}
	y3, err := y.Reshape(g.n, g.cout, hw)
	if err != nil {
		return err
	}
	w2, err := w.Reshape(g.cout, g.cin)
	if err != nil {
		return err
	}
	beta := float32(0)
	if b != nil {
		ones, err := tmp.alloc(1, hw)
		if err != nil {
			return fmt.Errorf("conv2d: %w", err)
		}
		defer tmp.done(ones)
		if err := Fill(s, ones, 1); err != nil {
			return fmt.Errorf("conv2d: %w", err)
		}
		b2, err := b.Reshape(g.cout, 1)
		if err != nil {
			return err
		}
		if err := Gemm(s, 1, b2, false, ones, false, 0, y3); err != nil {
			return fmt.Errorf("conv2d bias: %w", err)
		}
		beta = 1
	}
	if err := Gemm(s, 1, w2, false, x3, false, beta, y3); err != nil {
		return fmt.Errorf("conv2d: %w", err)
	}
	return nil
}

// convPointwiseData is dx[n] = wᵀ g[n] for a 1x1 stride-1 convolution.
func convPointwiseData(s *vk.Stream, geo convGeom, dx, g, w *Tensor) error {
	hw := geo.h * geo.w
	dx3, err := dx.Reshape(geo.n, geo.cin, hw)
	if err != nil {
		return err
	}
	g3, err := g.Reshape(geo.n, geo.cout, hw)
	if err != nil {
		return err
	}
	w2, err := w.Reshape(geo.cout, geo.cin)
	if err != nil {
		return err
	}
	if err := Gemm(s, 1, w2, true, g3, false, 0, dx3); err != nil {
		return fmt.Errorf("conv2d backward data: %w", err)
	}
	return nil
}

// convRearrange records a new tensor wt of cTot*kk*mp elements holding
// wt[c][k][m] = w[m*swm + c*swc + k] for m < mTot and zeros up to mp (a
// multiple of 4): the weights (or, for convWgradByGather, the output gradient)
// with the gather kernels' output channels m contiguous, allocated from
// tmp; the caller gives it back to tmp once the kernels that read it are
// recorded.
func convRearrange(s *vk.Stream, tmp convScratch, w *Tensor, mTot, cTot, kk, mp, swm, swc int) (*Tensor, error) {
	// Segment boundaries fall between rows of the tensor: make a row all
	// the weights of one channel c where they fit a segment, else those of
	// one kernel position.
	rows, cols := cTot*kk, mp
	if lim := s.Device().SegmentLimit(); 4*int64(kk*mp) <= lim {
		rows, cols = cTot, kk*mp
	}
	wt, err := tmp.alloc(rows, cols)
	if err != nil {
		return nil, fmt.Errorf("rearranged weights: %w", err)
	}
	tsc := kk * mp
	wSpan := func(b box) (int, int) {
		m1 := min(b.hi[2], mTot)
		if m1 <= b.lo[2] {
			return 0, 1 // only padding: w is bound but not read
		}
		first := b.lo[2]*swm + b.lo[0]*swc + b.lo[1]
		return first, (m1-1)*swm + (b.hi[0]-1)*swc + b.hi[1] - first
	}
	tSpan := func(b box) (int, int) {
		first := b.lo[0]*tsc + b.lo[1]*mp + b.lo[2]
		return first, (b.hi[0]-1)*tsc + (b.hi[1]-1)*mp + b.hi[2] - first
	}
	spans := func(b box) []convSpan {
		f, n := wSpan(b)
		g, m := tSpan(b)
		return []convSpan{{f, n}, {g, m}}
	}
	ts, writable := []*Tensor{w, wt}, []bool{false, true}
	pieces, err := convCutBox(box{hi: [maxRank]int{cTot, kk, mp}}, func(b box) (int, func(box) bool) {
		// w is [m][c][kk], wt [c][kk][m].
		return convOperandCut(b, ts, writable, spans, [][]int{{2, 0, 1}, {0, 1, 2}}, []int{1, 0})
	}, func(b box) bool {
		sp := spans(b)
		for i, t := range ts {
			if _, _, ok := t.locate(sp[i].first, sp[i].count, writable[i]); !ok {
				return false
			}
		}
		return true
	})
	if err != nil {
		tmp.done(wt)
		return nil, fmt.Errorf("rearranged weights: %w", err)
	}
	for _, b := range pieces {
		f, n := wSpan(b)
		wArg, wOff, _ := w.locate(f, n, false)
		f, n = tSpan(b)
		tArg, tOff, _ := wt.locate(f, n, true)
		rows := b.size(0) * b.size(1)
		p := Push{}.U32(uint32(b.size(0)), uint32(b.size(1)), uint32(b.size(2)), wOff, tOff).
			I32(swm, swc, tsc, mp, mTot-b.lo[2])
		v4 := uint32(0) // rows written as vec4 where they line up (tsc and mp are multiples of 4)
		if tOff%4 == 0 && b.size(2)%4 == 0 {
			v4 = 1
		}
		if err := Launch(s, "conv_wtrans", []uint32{convWtransGroup, v4}, Grid(ceilDiv(rows, convWtransGroup)), p, wArg, tArg); err != nil {
			tmp.done(wt)
			return nil, err
		}
	}
	return wt, nil
}

// convConfig is the choice of kernels for a device's convolutions.
type convConfig struct {
	// gather returns the gather kernel for m output channels.
	gather func(m int) convGatherKernel
	// wgrad is the weight-gradient kernel; nil: the gather kernel
	// (convWgradByGather).
	wgrad *convWgradKernel
	// pointwise sends 1x1 stride-1 convolutions without padding through
	// Gemm (forward and backward data) and, with im2col, their weight
	// gradients through convIm2col.pointwiseWeight.
	pointwise bool
	// im2col runs the other convolutions as im2col and GEMM
	// (conv_im2col.go); nil: the gather kernel.
	im2col *convIm2col
	// tmp allocates the temporary buffers.
	tmp convScratch
}

// defaultConvConfig is the choice for the stream's device, with temporaries
// freed after the stream's next Run.
func defaultConvConfig(s *vk.Stream) convConfig {
	cfg := convConfigFor(s.Device().Info)
	cfg.tmp = streamScratch(s)
	return cfg
}

// convConfigFor chooses the kernels for a device (tmp left unset).
func convConfigFor(info vk.DeviceInfo) convConfig {
	return convConfig{
		gather:    func(m int) convGatherKernel { return chooseConvGather(info, m) },
		wgrad:     chooseConvWgrad(info),
		pointwise: true,
		im2col:    chooseConvIm2col(info),
	}
}

// convScratch allocates the temporary buffers of a convolution (rearranged
// weights and output gradients, partial sums), which only recorded kernels
// write; done gives one back once the recording no longer needs it.
type convScratch struct {
	alloc func(shape ...int) (*Tensor, error)
	done  func(t *Tensor)
}

// streamScratch allocates temporaries that are freed after the stream's
// next Run. (Handing the memory to new tensors earlier could let a host
// upload into one of them be overwritten when the recorded work runs.)
func streamScratch(s *vk.Stream) convScratch {
	return convScratch{
		alloc: func(shape ...int) (*Tensor, error) { return New(s.Device(), shape...) },
		done:  func(t *Tensor) { s.AfterRun(t.Release) },
	}
}

// convScratch allocates the temporaries of the tape's convolutions from the
// tape's pool, where later ops of the recording reuse their memory.
func (tp *Tape) convScratch() convScratch {
	return convScratch{
		alloc: func(shape ...int) (*Tensor, error) {
			if t := tp.alloc("conv2d", shape...); t != nil {
				return t, nil
			}
			return nil, tp.err
		},
		done: tp.release,
	}
}

// convWtransGroup is the workgroup size of conv_wtrans.comp.
const convWtransGroup = 64

// convGatherKernel is a gather convolution shader with its tile sizes.
type convGatherKernel struct {
	name string
	spec []uint32
	// A workgroup covers tileP pixels by tileM output channels.
	tileP, tileM int
	// maxC bounds the channels summed by one dispatch (0: no bound).
	maxC int
}

// Tiles of conv_gather.comp on CPU devices: 16 pixels by 8 lanes x 16
// output channels, or 8 or 4 channels per lane for thinner layers rather than
// computing padding.
//
// Measured on Mesa 25.0.7 llvmpipe (2 cores; GFLOP per CPU second, variants
// in one process), 3x3 64->64 at 32x32, batch 64: 16x8 37, 24x8 27 (36 s
// pipeline build), 32x8 24-29 (57 s build), 16x16 19 (half its columns
// idle); 256->256 at 14x14: 16x16 46, 16x8 40. Without the broadcast (all
// lanes loading the same pixel) 16x8 25, 8x8 22. In the generated code a
// multiply-add was 5 instructions (multiply, add, the loop's exec-mask blend,
// the spilled accumulator's load and store) and every lane of a storage-buffer
// load about 12 (descriptor, bounds check, branch; vec4 loads split into
// scalars). Texel reads and two channels per iteration (each accumulator
// written once per two multiply-adds) then gave, forward / backward-data /
// backward-weight (BenchmarkConv2d, CPU-time GFLOP/s): 64->64 at 32x32
// 42 / 41 / 48, 256->256 at 14x14 60 / 60 / 45 (four channels per
// iteration: 48 / 48 / 35).
const (
	convCPUWG   = 8
	convCPURows = 16
	// One dispatch sums at most this many channels: llvmpipe ends loops
	// after 65535 iterations, and it blocks the float32 sum.
	convCPUMaxC = 4096
	// Channels per iteration of conv_gather.comp's loop (see the shader
	// and the measurements above).
	convCPUChannelSteps = 2
)

// chooseConvGather picks the gather kernel for a device and m output
// channels: conv_gather.comp (register blocking, subgroup broadcast) on CPU
// devices, conv_gather_tiled.comp (shared memory) elsewhere.
func chooseConvGather(info vk.DeviceInfo, m int) convGatherKernel {
	if !cpuKernels(info) || !texelSegments(info) {
		bm, bk, tile := 64, 16, 4
		if info.MaxWorkgroupSize > 0 && info.MaxWorkgroupSize < 256 {
			bm = 32
		}
		wg := (bm / tile) * (bm / tile)
		return convGatherKernel{
			name:  "conv_gather_tiled",
			spec:  []uint32{uint32(wg), uint32(bm), uint32(bm), uint32(bk), uint32(tile), uint32(tile)},
			tileP: bm, tileM: bm,
		}
	}
	wg, bcast, tm := convCPUWG, uint32(1), convCPURows
	if info.SubgroupSize != convCPUWG {
		wg, bcast, tm = max(int(info.SubgroupSize), 1), 0, 8
	}
	tn := 16
	for tn > 4 && wg*tn/2 >= m {
		tn /= 2
	}
	return convGatherKernel{
		name:  "conv_gather",
		spec:  []uint32{uint32(wg), uint32(tm), uint32(tn), bcast, convCPUChannelSteps},
		tileP: tm, tileM: wg * tn,
		maxC: convCPUMaxC,
	}
}

// convGatherPass is one gather convolution (shaders/include/conv_gather.glsl):
//
//	out[n][m][i][j] = sum over taps (th, tw) and channels c of
//	    in[n][c][i*sh + oh0 + th*dth][j*sw + ow0 + tw*dtw] * wt[c][th][tw][m]
//
// over an output grid of rows x cols pixels per image, with in element
// (n, c, ih, iw) at n*inN + c*inC + ih*win + iw, out element
// (n, m, i, j) at outBase + n*outN + m*outC + i*outRow + j*outCol and wt
// element (c, th, tw, m) at wBase + c*wsc + th*wsh + tw*wsw + m.
type convGatherPass struct {
	in, out, wt, bias *Tensor
	n, c, m           int // images, reduction channels, output channels
	inN, inC          int // strides of in's images and channels
	hin, win          int // in's rows (and their stride) and columns
	rows, cols        int

	outBase, outN, outC, outRow, outCol int

	sh, sw, oh0, ow0, dth, dtw int
	th, tw                     int // taps; th == 0: out is zeroed

	wBase, wsc, wsh, wsw int

	// tapLo is the first tap (rows, columns) that record sums: the taps
	// before it read only padding. Pieces that start later add to out.
	tapLo [2]int
}

// The dimensions of a convGatherPass's work, as boxes for convCutBox.
const (
	cgDimN = iota
	cgDimRows
	cgDimM
	cgDimC
	cgDimTapH
	cgDimTapW
	cgDims
)

// convSpan is a range of a tensor's elements that a piece of work touches.
type convSpan struct{ first, count int }

// inRows returns the input rows that piece b reads, [lo, hi], and the rows to
// bind, [blo, bhi]; when it reads none (it lies in the padding), lo > hi and
// one real row is bound.
func (g *convGatherPass) inRows(b box) (lo, hi, blo, bhi int) {
	first := b.lo[cgDimRows]*g.sh + g.oh0
	last := (b.hi[cgDimRows]-1)*g.sh + g.oh0
	if b.size(cgDimTapH) > 0 {
		t0, t1 := b.lo[cgDimTapH]*g.dth, (b.hi[cgDimTapH]-1)*g.dth
		lo, hi = max(first+min(t0, t1), 0), min(last+max(t0, t1), g.hin-1)
		if lo <= hi {
			return lo, hi, lo, hi
		}
	}
	r := min(max(first, 0), g.hin-1)
	return r + 1, r, r, r
}

// spans returns the ranges of in, wt, out and bias that piece b touches. The
// weights are bound from the quad holding the piece's first output channel
// to the end of the quad holding its last (they are read as vec4).
func (g *convGatherPass) spans(b box) [4]convSpan {
	var sp [4]convSpan
	_, _, blo, bhi := g.inRows(b)
	first := b.lo[cgDimN]*g.inN + b.lo[cgDimC]*g.inC + blo*g.win
	last := (b.hi[cgDimN]-1)*g.inN + (b.hi[cgDimC]-1)*g.inC + bhi*g.win + g.win - 1
	sp[0] = convSpan{first, last - first + 1}

	mlo, mhi := b.lo[cgDimM], b.hi[cgDimM]
	ma, mz := mlo&^3, ceilDiv(mhi, 4)*4
	if b.size(cgDimTapH) > 0 {
		first = g.wBase + b.lo[cgDimC]*g.wsc + b.lo[cgDimTapH]*g.wsh + b.lo[cgDimTapW]*g.wsw + ma
		last = g.wBase + (b.hi[cgDimC]-1)*g.wsc + (b.hi[cgDimTapH]-1)*g.wsh + (b.hi[cgDimTapW]-1)*g.wsw + mz - 1
		sp[1] = convSpan{first, last - first + 1}
	} else {
		sp[1] = convSpan{ma, mz - ma} // bound, not read
	}

	first = g.outBase + b.lo[cgDimN]*g.outN + mlo*g.outC + b.lo[cgDimRows]*g.outRow
	last = g.outBase + (b.hi[cgDimN]-1)*g.outN + (mhi-1)*g.outC + (b.hi[cgDimRows]-1)*g.outRow + (g.cols-1)*g.outCol
	sp[2] = convSpan{first, last - first + 1}
	sp[3] = convSpan{mlo, mhi - mlo}
	return sp
}

func (g *convGatherPass) fits(b box, maxC int) bool {
	if maxC > 0 && b.size(cgDimC) > maxC {
		return false
	}
	sp := g.spans(b)
	for i, t := range []*Tensor{g.in, g.wt, g.out, g.bias} {
		if t == nil {
			continue
		}
		if _, _, ok := t.locate(sp[i].first, sp[i].count, i == 2); !ok {
			return false
		}
	}
	return true
}

// record dispatches the pass, cut into pieces whose operands each lie in one
// buffer segment. Pieces along the sum (channels, taps) add to what the
// earlier ones wrote; convCutBox returns them in that order.
func (g *convGatherPass) record(s *vk.Stream, k convGatherKernel) error {
	full := box{hi: [maxRank]int{g.n, g.rows, g.m, g.c, g.th, g.tw}}
	// Leading and trailing taps that read only padding for every output
	// are left out of the sum (at 1x1 pixels, 8 of a 3x3 kernel's 9).
	hlo, hhi := liveTaps(g.th, g.dth, g.oh0, g.sh, g.rows, g.hin)
	wlo, whi := liveTaps(g.tw, g.dtw, g.ow0, g.sw, g.cols, g.win)
	if hlo == hhi || wlo == whi {
		// No taps, or every tap reads padding: the kernel writes zeros
		// (and the bias).
		full.hi[cgDimC], full.hi[cgDimTapH], full.hi[cgDimTapW] = 1, 0, 0
	} else {
		full.lo[cgDimTapH], full.hi[cgDimTapH] = hlo, hhi
		full.lo[cgDimTapW], full.hi[cgDimTapW] = wlo, whi
	}
	g.tapLo = [2]int{full.lo[cgDimTapH], full.lo[cgDimTapW]}
	pieces, err := convCutBox(full, func(b box) (int, func(box) bool) { return g.pick(b, k.maxC) }, func(b box) bool { return g.fits(b, k.maxC) })
	if err != nil {
		return err
	}
	for _, b := range pieces {
		if err := g.dispatch(s, k, b); err != nil {
			return err
		}
	}
	return nil
}

// liveTaps returns the first tap and one past the last of n taps whose
// input positions base + t*dt + i*s, over the outputs i < outs, meet
// [0, size): the taps outside that range read only padding. Taps between
// live ones are kept even when they read only padding.
func liveTaps(n, dt, base, s, outs, size int) (lo, hi int) {
	live := func(t int) bool {
		b := base + t*dt
		i := 0
		if b < 0 {
			if s <= 0 {
				return false
			}
			i = ceilDiv(-b, s) // the first output at or past row 0
		}
		return i < outs && b+i*s <= size-1
	}
	lo, hi = 0, n
	for lo < hi && !live(lo) {
		lo++
	}
	for hi > lo && !live(hi-1) {
		hi--
	}
	return lo, hi
}

// pick chooses the dimension to cut for a piece that does not fit: the
// channels while there are more than a dispatch may sum, else the outermost
// dimension of an operand that does not fit one segment.
func (g *convGatherPass) pick(b box, maxC int) (int, func(box) bool) {
	if maxC > 0 && b.size(cgDimC) > maxC {
		return cgDimC, func(h box) bool { return h.size(cgDimC) <= maxC }
	}
	return convOperandCut(b, []*Tensor{g.in, g.wt, g.out, g.bias}, []bool{false, false, true, false},
		func(h box) []convSpan { sp := g.spans(h); return sp[:] },
		[][]int{
			{cgDimN, cgDimC, cgDimRows, cgDimTapH},
			{cgDimC, cgDimTapH, cgDimTapW, cgDimM},
			{cgDimN, cgDimM, cgDimRows},
			{cgDimM},
		}, []int{2, 0, 1, 3})
}

// convCutBox cuts b into pieces that fits accepts, the way Gemm cuts its
// operands at segment ends. pick names an operand that does not fit and the
// dimension to cut for it (the outermost of its memory layout that is longer
// than 1), with a test of that operand alone; b is cut along the dimension
// into the fewest ranges that pass the test (cutGreedy), and each range that
// does not fit is cut further. Along every dimension the pieces come in
// increasing order, so the first piece of a sum that is cut (lower bound 0
// in its summed dimensions) is recorded before the others that add to the
// same outputs.
func convCutBox(b box, pick func(box) (int, func(box) bool), fits func(box) bool) ([]box, error) {
	if fits(b) {
		return []box{b}, nil
	}
	d, test := pick(b)
	if d < 0 {
		return nil, fmt.Errorf("a single element of the op does not fit one buffer segment")
	}
	slice := func(lo, hi int) box {
		h := b
		h.lo[d], h.hi[d] = b.lo[d]+lo, b.lo[d]+hi
		return h
	}
	var out []box
	for _, r := range cutGreedy(b.size(d), func(lo, hi int) bool { return test(slice(lo, hi)) }) {
		more, err := convCutBox(slice(r[0], r[1]), pick, fits)
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}

// convOperandCut is pick for convCutBox over operands whose spans spans returns:
// the first of them in order that does not fit, cut along the first of its
// dims (outer to inner) longer than 1.
func convOperandCut(b box, ts []*Tensor, writable []bool, spans func(box) []convSpan, dims [][]int, order []int) (int, func(box) bool) {
	sp := spans(b)
	for _, i := range order {
		if ts[i] == nil {
			continue
		}
		if _, _, ok := ts[i].locate(sp[i].first, sp[i].count, writable[i]); ok {
			continue
		}
		if d := convFirstLonger(b, dims[i]...); d >= 0 {
			i := i
			return d, func(h box) bool {
				s := spans(h)[i]
				_, _, ok := ts[i].locate(s.first, s.count, writable[i])
				return ok
			}
		}
	}
	return -1, nil
}

// convFirstLonger returns the first of dims along which b is longer than 1, or
// -1.
func convFirstLonger(b box, dims ...int) int {
	for _, d := range dims {
		if b.size(d) > 1 {
			return d
		}
	}
	return -1
}

func (g *convGatherPass) dispatch(s *vk.Stream, k convGatherKernel, b box) error {
	sp := g.spans(b)
	inArg, inRel, ok1 := g.in.locate(sp[0].first, sp[0].count, false)
	wArg, wRel, ok2 := g.wt.locate(sp[1].first, sp[1].count, false)
	outArg, outRel, ok3 := g.out.locate(sp[2].first, sp[2].count, true)
	if !ok1 || !ok2 || !ok3 {
		return fmt.Errorf("internal error: a convolution piece %v crosses a buffer segment", b)
	}
	if wRel%4 != 0 {
		return fmt.Errorf("internal error: rearranged weights at element %d of their segment, not 16-byte aligned", wRel)
	}
	bArg, bRel := wArg, uint32(0)
	flags := uint32(0)
	if b.lo[cgDimC] > 0 || b.lo[cgDimTapH] > g.tapLo[0] || b.lo[cgDimTapW] > g.tapLo[1] {
		flags |= 1
	} else if g.bias != nil {
		flags |= 2
		var ok bool
		if bArg, bRel, ok = g.bias.locate(sp[3].first, sp[3].count, false); !ok {
			return fmt.Errorf("internal error: bias piece %v crosses a buffer segment", sp[3])
		}
	}
	lo, hi, blo, _ := g.inRows(b)
	rows, m, shift := b.size(cgDimRows), b.size(cgDimM), b.lo[cgDimM]%4
	npix := b.size(cgDimN) * rows * g.cols
	tilesP := ceilDiv(npix, k.tileP)
	tilesM := ceilDiv(m+shift, k.tileM)
	// inoff addresses row 0 of the piece's first image and channel; the
	// bound range starts at row blo, so it may wrap (see conv_gather.glsl).
	inoff := uint32(int64(inRel) - int64(blo*g.win))
	p := Push{}.U32(uint32(npix), uint32(rows), uint32(g.cols), uint32(m), uint32(b.size(cgDimC)), uint32(g.wsc)).
		U32(inoff, wRel, outRel, bRel).
		I32(g.inN, g.inC, g.win, lo, hi).
		I32(g.outN, g.outC, g.outRow, g.outCol, g.sh, g.sw).
		I32(g.oh0+b.lo[cgDimRows]*g.sh+b.lo[cgDimTapH]*g.dth, g.ow0+b.lo[cgDimTapW]*g.dtw, g.dth, g.dtw).
		I32(b.size(cgDimTapH), b.size(cgDimTapW), g.wsh, g.wsw).
		U32(flags, uint32(shift), uint32(tilesP))
	if k.name == "conv_gather" {
		// The CPU kernel reads the input and the weights through texel
		// views (see gemm.comp for why).
		return Launch(s, k.name, k.spec, Grid(tilesP*tilesM), p, outArg, bArg, inArg.Texel(1), wArg.Texel(4))
	}
	return Launch(s, k.name, k.spec, Grid(tilesP*tilesM), p, inArg, wArg, outArg, bArg)
}

// convWgradKernel is a weight-gradient shader with its tile sizes.
type convWgradKernel struct {
	name string
	spec []uint32
	// A workgroup covers tileR weight rows by tileC output channels.
	tileR, tileC int
	// The pixels are cut into chunks of at least minChunk pixels until
	// there are targetGroups workgroups.
	minChunk, targetGroups int
}

// chooseConvWgrad picks the weight-gradient kernel for a device:
// conv_wgrad_tiled.comp on GPUs (where the GEMM convolutions of
// conv_im2col.go cannot take an operand that crosses buffer segments), whose
// pixels are cut into chunks until there are about a thousand workgroups;
// nil on CPU devices, where the gather kernel does the work
// (convWgradByGather).
func chooseConvWgrad(info vk.DeviceInfo) *convWgradKernel {
	if cpuKernels(info) {
		return nil
	}
	bm, bk, tile := 64, 16, 4
	if info.MaxWorkgroupSize > 0 && info.MaxWorkgroupSize < 256 {
		bm = 32
	}
	wg := (bm / tile) * (bm / tile)
	return &convWgradKernel{
		name:  "conv_wgrad_tiled",
		spec:  []uint32{uint32(wg), uint32(bm), uint32(bm), uint32(bk), uint32(tile), uint32(tile)},
		tileR: bm, tileC: bm,
		minChunk: 512, targetGroups: 1024,
	}
}

// convWgradByGather records dw as a gather convolution (the forward kernel):
//
//	dw[co][ci][kh][kw] = sum over images n and output pixels (oh, ow) of
//	    x[n][ci][kh*dil - pad + oh*stride][kw*dil - pad + ow*stride] * g[n][co][oh][ow]
//
// is convGatherPass's sum with the input channels as its images, the kernel
// positions as its output pixels, the images as the channels it sums over
// and the output pixels as its taps, reading g rearranged to
// gt[n][oh][ow][co] as the weights. The GEMM runs through the same loads as
// the forward pass; gt costs one pass over g.
func convWgradByGather(s *vk.Stream, tmp convScratch, dw, x, g *Tensor, geo convGeom, k convGatherKernel) error {
	ohw := geo.ho * geo.wo
	mp := ceilDiv(geo.cout, 4) * 4
	gt, err := convRearrange(s, tmp, g, geo.cout, geo.n, ohw, mp, ohw, geo.cout*ohw)
	if err != nil {
		return err
	}
	defer tmp.done(gt)
	st, pad, dil := geo.p.Stride, geo.p.Padding, geo.p.Dilation
	pass := convGatherPass{
		in: x, out: dw, wt: gt,
		n: geo.cin, c: geo.n, m: geo.cout, inN: geo.h * geo.w, inC: geo.cin * geo.h * geo.w,
		hin: geo.h, win: geo.w,
		rows: geo.kh, cols: geo.kw,
		outN: geo.kh * geo.kw, outC: geo.cin * geo.kh * geo.kw, outRow: geo.kw, outCol: 1,
		sh: dil[0], sw: dil[1], oh0: -pad[0], ow0: -pad[1], dth: st[0], dtw: st[1],
		th: geo.ho, tw: geo.wo,
		wsc: ohw * mp, wsh: geo.wo * mp, wsw: mp,
	}
	return pass.record(s, k)
}

// convWgradPass is the weight gradient of one convolution
// (shaders/conv_wgrad_tiled.comp).
type convWgradPass struct {
	x, g, dw *Tensor
	geo      convGeom
}

// The dimensions of a convWgradPass's work, as boxes for convCutBox.
const (
	cwDimN = iota
	cwDimRows
	cwDimCo
	cwDimCi
	cwDimKH
	cwDimKW
	cwDims
)

// xRows is convGatherPass.inRows for the weight gradient: the input rows that
// output rows [b.lo, b.hi) read at the piece's kernel rows.
func (w *convWgradPass) xRows(b box) (lo, hi, blo, bhi int) {
	p := w.geo.p
	first := b.lo[cwDimRows]*p.Stride[0] - p.Padding[0] + b.lo[cwDimKH]*p.Dilation[0]
	last := (b.hi[cwDimRows]-1)*p.Stride[0] - p.Padding[0] + (b.hi[cwDimKH]-1)*p.Dilation[0]
	lo, hi = max(first, 0), min(last, w.geo.h-1)
	if lo <= hi {
		return lo, hi, lo, hi
	}
	r := min(max(first, 0), w.geo.h-1)
	return r + 1, r, r, r
}

// spans returns the ranges of x, g and dw that piece b touches.
func (w *convWgradPass) spans(b box) [3]convSpan {
	geo := w.geo
	kk := geo.kh * geo.kw
	_, _, blo, bhi := w.xRows(b)
	sxN, sxC := geo.cin*geo.h*geo.w, geo.h*geo.w
	first := b.lo[cwDimN]*sxN + b.lo[cwDimCi]*sxC + blo*geo.w
	last := (b.hi[cwDimN]-1)*sxN + (b.hi[cwDimCi]-1)*sxC + bhi*geo.w + geo.w - 1
	x := convSpan{first, last - first + 1}
	sgN, sgC := geo.cout*geo.ho*geo.wo, geo.ho*geo.wo
	first = b.lo[cwDimN]*sgN + b.lo[cwDimCo]*sgC + b.lo[cwDimRows]*geo.wo
	last = (b.hi[cwDimN]-1)*sgN + (b.hi[cwDimCo]-1)*sgC + b.hi[cwDimRows]*geo.wo - 1
	g := convSpan{first, last - first + 1}
	sco := geo.cin * kk
	first = b.lo[cwDimCo]*sco + b.lo[cwDimCi]*kk + b.lo[cwDimKH]*geo.kw + b.lo[cwDimKW]
	last = (b.hi[cwDimCo]-1)*sco + (b.hi[cwDimCi]-1)*kk + (b.hi[cwDimKH]-1)*geo.kw + b.hi[cwDimKW] - 1
	return [3]convSpan{x, g, {first, last - first + 1}}
}

func (w *convWgradPass) fits(b box) bool {
	sp := w.spans(b)
	for i, t := range []*Tensor{w.x, w.g, w.dw} {
		if _, _, ok := t.locate(sp[i].first, sp[i].count, i == 2); !ok {
			return false
		}
	}
	return true
}

// pick is convGatherPass.pick for the weight gradient.
func (w *convWgradPass) pick(b box) (int, func(box) bool) {
	return convOperandCut(b, []*Tensor{w.x, w.g, w.dw}, []bool{false, false, true},
		func(h box) []convSpan { sp := w.spans(h); return sp[:] },
		[][]int{
			{cwDimN, cwDimCi, cwDimRows, cwDimKH},
			{cwDimN, cwDimCo, cwDimRows},
			{cwDimCo, cwDimCi, cwDimKH, cwDimKW},
		}, []int{2, 0, 1})
}

// convChunking cuts the pixels of a piece of n images of rows x cols into about
// slots chunks: nb whole images each, or rc rows of one image each.
type convChunking struct{ nb, rc, rowChunks, slots int }

func planConvChunks(n, rows, cols, slots int) convChunking {
	per := ceilDiv(n*rows*cols, max(slots, 1)) // pixels per chunk
	if rows*cols >= per {
		rc := min(rows, ceilDiv(per, cols))
		c := convChunking{nb: 1, rc: rc, rowChunks: ceilDiv(rows, rc)}
		c.slots = n * c.rowChunks
		return c
	}
	nb := max(1, per/(rows*cols))
	return convChunking{nb: nb, rc: rows, rowChunks: 1, slots: ceilDiv(n, nb)}
}

// record dispatches the weight gradient. On a device where the operands fit
// one buffer segment, the pixels are cut into chunks (planConvChunks) whose sums
// go to a temporary [chunks, Cout, Cin*KH*KW] that Sum adds into dw, unless
// one chunk does. Otherwise the work is cut into pieces that fit the
// segments, each summing all of its pixels and adding to what the earlier
// pieces wrote.
func (w *convWgradPass) record(s *vk.Stream, tmp convScratch, k convWgradKernel) error {
	geo := w.geo
	full := box{hi: [maxRank]int{geo.n, geo.ho, geo.cout, geo.cin, geo.kh, geo.kw}}
	pieces, err := convCutBox(full, w.pick, w.fits)
	if err != nil {
		return err
	}
	if len(pieces) > 1 {
		for _, b := range pieces {
			c := convChunking{nb: b.size(cwDimN), rc: b.size(cwDimRows), rowChunks: 1, slots: 1}
			acc := b.lo[cwDimN] > 0 || b.lo[cwDimRows] > 0
			if err := w.dispatch(s, k, b, c, w.dw, 0, acc); err != nil {
				return err
			}
		}
		return nil
	}
	kk := geo.kh * geo.kw
	r, m := geo.cin*kk, geo.cout
	tiles := ceilDiv(r, k.tileR) * ceilDiv(m, k.tileC)
	want := min(ceilDiv(k.targetGroups, tiles), max(1, geo.n*geo.ho*geo.wo/k.minChunk), maxBatchGroups)
	limit := s.Device().SegmentLimit() / 4
	var c convChunking
	for ; ; want /= 2 {
		c = planConvChunks(geo.n, geo.ho, geo.wo, want)
		if c.slots == 1 || (int64(c.slots)*int64(r*m) <= limit && c.slots <= maxBatchGroups) {
			break
		}
	}
	if c.slots == 1 {
		return w.dispatch(s, k, full, c, w.dw, 0, false)
	}
	part, err := tmp.alloc(c.slots, m, r)
	if err != nil {
		return err
	}
	defer tmp.done(part)
	if _, _, ok := part.locate(0, part.Len(), true); !ok {
		return fmt.Errorf("internal error: the partial sums do not fit one buffer segment")
	}
	if err := w.dispatch(s, k, full, c, part, m*r, false); err != nil {
		return err
	}
	dw2, err := w.dw.Reshape(m, r)
	if err != nil {
		return err
	}
	return Sum(s, dw2, part, 0)
}

// dispatch records piece b in chunks c into out (dw, or the partial sums
// with a stride of sz between chunks); acc adds to out.
func (w *convWgradPass) dispatch(s *vk.Stream, k convWgradKernel, b box, c convChunking, out *Tensor, sz int, acc bool) error {
	geo := w.geo
	kk := geo.kh * geo.kw
	sp := w.spans(b)
	if sz > 0 {
		sp[2] = convSpan{0, out.Len()}
	}
	xArg, xRel, ok1 := w.x.locate(sp[0].first, sp[0].count, false)
	gArg, gRel, ok2 := w.g.locate(sp[1].first, sp[1].count, false)
	oArg, oRel, ok3 := out.locate(sp[2].first, sp[2].count, true)
	if !ok1 || !ok2 || !ok3 {
		return fmt.Errorf("internal error: a weight-gradient piece %v crosses a buffer segment", b)
	}
	lo, hi, blo, _ := w.xRows(b)
	kkp := b.size(cwDimKH) * b.size(cwDimKW)
	r, m := b.size(cwDimCi)*kkp, b.size(cwDimCo)
	tilesR := ceilDiv(r, k.tileR)
	groups := Grid(tilesR * ceilDiv(m, k.tileC))
	groups[2] = uint32(c.slots)
	flags := uint32(0)
	if acc {
		flags = 1
	}
	p := geo.p
	xoff := uint32(int64(xRel) - int64(blo*geo.w))
	push := Push{}.U32(uint32(r), uint32(m), uint32(kkp), uint32(b.size(cwDimKW)), xoff, gRel, oRel).
		I32(geo.cin*geo.h*geo.w, geo.h*geo.w, geo.w, lo, hi).
		I32(geo.cout*geo.ho*geo.wo, geo.ho*geo.wo, geo.wo).
		I32(p.Stride[0], p.Stride[1]).
		I32(b.lo[cwDimRows]*p.Stride[0]-p.Padding[0]+b.lo[cwDimKH]*p.Dilation[0], b.lo[cwDimKW]*p.Dilation[1]-p.Padding[1]).
		I32(p.Dilation[0], p.Dilation[1]).
		I32(geo.cin*kk, kk, geo.kw, sz, b.size(cwDimN), b.size(cwDimRows), c.nb, c.rc, c.rowChunks, tilesR).
		U32(flags)
	return Launch(s, k.name, k.spec, groups, push, xArg, gArg, oArg)
}

// Conv2d records y = conv2d(x, w) + b (b may be nil) on the tape; its
// backward pass gives the gradients of x (Conv2dBackwardData), w and b
// (Conv2dBackwardWeight), each only where it is asked for.
func (tp *Tape) Conv2d(x, w, b *Var, p ConvParams) *Var {
	const op = "conv2d"
	if !tp.ok(x, w) {
		return nil
	}
	geo, err := newConvGeom(op, x.Value.shape, w.Value.shape, p)
	if err != nil {
		tp.Fail(op, err)
		return nil
	}
	y := tp.alloc(op, geo.yShape()...)
	if y == nil {
		return nil
	}
	inputs := []*Var{x, w}
	var bt *Tensor
	if b != nil {
		inputs, bt = append(inputs, b), b.Value
	}
	cfg := defaultConvConfig(tp.s)
	cfg.tmp = tp.convScratch()
	if err := conv2dForward(tp.s, y, x.Value, w.Value, bt, p, cfg); err != nil {
		tp.Fail(op, err)
		return nil
	}
	return tp.record(y, inputs, func(g *Tensor) []*Tensor {
		grads := make([]*Tensor, len(inputs))
		if x.requiresGrad {
			if grads[0] = tp.alloc("conv2d backward", geo.xShape()...); grads[0] != nil {
				tp.Fail("conv2d backward", conv2dBackwardData(tp.s, grads[0], g, w.Value, p, cfg))
			}
		}
		if w.requiresGrad {
			grads[1] = tp.alloc("conv2d backward", geo.wShape()...)
		}
		if b != nil && b.requiresGrad {
			grads[2] = tp.alloc("conv2d backward", geo.cout)
		}
		var db *Tensor
		if len(grads) > 2 {
			db = grads[2]
		}
		if (grads[1] != nil || db != nil) && tp.err == nil {
			tp.Fail("conv2d backward", conv2dBackwardWeight(tp.s, grads[1], db, x.Value, g, p, cfg))
		}
		return grads
	})
}

// Conv2d is a convolution layer with its parameters, like PyTorch's
// nn.Conv2d with groups = 1.
type Conv2d struct {
	// Weight is [out, in, kernel height, kernel width].
	Weight *Var
	// Bias is [out], or nil for a layer without bias.
	Bias *Var
	// Params are the stride, padding and dilation.
	Params ConvParams
}

// NewConv2d makes a convolution layer from in to out channels with PyTorch's
// default initialisation: weights and bias drawn from U(-1/sqrt(fan_in),
// 1/sqrt(fan_in)), fan_in = in*kernel[0]*kernel[1], weights first, on the
// host with rng, then uploaded.
func NewConv2d(ctx context.Context, d *vk.Device, in, out int, kernel [2]int, p ConvParams, bias bool, rng *rand.Rand) (*Conv2d, error) {
	if in < 1 || out < 1 || kernel[0] < 1 || kernel[1] < 1 {
		return nil, fmt.Errorf("conv2d layer: %d to %d channels with a %v kernel: all must be positive", in, out, kernel)
	}
	if _, err := p.normalized(); err != nil {
		return nil, fmt.Errorf("conv2d layer: %w", err)
	}
	bound := 1 / math.Sqrt(float64(in*kernel[0]*kernel[1]))
	draw := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32((2*rng.Float64() - 1) * bound)
		}
		return v
	}
	w, err := FromHost(ctx, d, draw(out*in*kernel[0]*kernel[1]), out, in, kernel[0], kernel[1])
	if err != nil {
		return nil, fmt.Errorf("conv2d layer weights: %w", err)
	}
	c := &Conv2d{Weight: Param(w), Params: p}
	if bias {
		b, err := FromHost(ctx, d, draw(out), out)
		if err != nil {
			w.Release()
			return nil, fmt.Errorf("conv2d layer bias: %w", err)
		}
		c.Bias = Param(b)
	}
	return c, nil
}

// Forward records the layer on x [N, in, H, W].
func (c *Conv2d) Forward(tp *Tape, x *Var) *Var {
	return tp.Conv2d(x, c.Weight, c.Bias, c.Params)
}

// Release frees the parameters and their gradients.
func (c *Conv2d) Release() {
	for _, v := range []*Var{c.Weight, c.Bias} {
		if v != nil {
			v.ZeroGrad()
			v.Value.Release()
		}
	}
}
