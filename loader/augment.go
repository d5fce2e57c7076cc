package loader

import (
	"fmt"
	"image"
	"math"
	"math/rand/v2"

	"github.com/go-gl/mathgl/mgl64"
)

// The random transforms below sample their parameters with torchvision
// 0.14's algorithms (and VICReg's, SimSiam's and SwAV's own blur and
// solarization classes), drawing from a math/rand/v2 generator instead of
// torch's: the distributions are torchvision's, the streams are not.

// HFlip returns m mirrored left to right: torchvision's hflip, PIL's
// transpose(FLIP_LEFT_RIGHT).
func (m *RGBImage) HFlip() *RGBImage {
	out := newRGBImage(m.Width, m.Height)
	w := m.Width
	for y := 0; y < m.Height; y++ {
		in := m.Pix[3*w*y : 3*w*(y+1)]
		o := out.Pix[3*w*y : 3*w*(y+1)]
		for x := 0; x < w; x++ {
			copy(o[3*(w-1-x):3*(w-x)], in[3*x:3*x+3])
		}
	}
	return out
}

// Chance reports whether an event of probability p happens: torchvision's
// `torch.rand(1) < p` test of RandomHorizontalFlip, RandomGrayscale and
// the papers' blur and solarization (RandomApply's `rand <= p` differs only
// on a set of probability zero).
func Chance(rng *rand.Rand, p float64) bool {
	return rng.Float64() < p
}

// CropBox is a crop rectangle in torchvision's (i, j, h, w) order: top row,
// left column, height and width.
type CropBox struct {
	Top, Left, Height, Width int
}

// RandomResizedCropParams samples the crop of torchvision's
// RandomResizedCrop.get_params for a width x height image: up to ten tries
// of an area fraction uniform in scale and an aspect ratio (width/height)
// log-uniform in ratio, rounded half to even as Python's round does, the
// first that fits placed uniformly; after ten misses, the central crop of
// the largest region whose aspect ratio lies in ratio. torchvision draws in
// float32; so does this, for the same rounding of the sampled sizes.
func RandomResizedCropParams(rng *rand.Rand, width, height int, scale, ratio [2]float64) (CropBox, error) {
	if width <= 0 || height <= 0 {
		return CropBox{}, fmt.Errorf("random resized crop of an empty %dx%d image", width, height)
	}
	if !(scale[0] <= scale[1]) || !(ratio[0] <= ratio[1]) || !(scale[0] >= 0) || !(ratio[0] > 0) || math.IsInf(scale[1], 0) || math.IsInf(ratio[1], 0) {
		return CropBox{}, fmt.Errorf("random resized crop: scale %v and ratio %v must be ordered, finite, non-negative ranges", scale, ratio)
	}
	area := float64(height * width)
	logLo, logHi := float32(math.Log(float64(float32(ratio[0])))), float32(math.Log(float64(float32(ratio[1]))))
	for range 10 {
		s := uniform32(rng, float32(scale[0]), float32(scale[1]))
		target := area * float64(s)
		aspect := float64(float32(math.Exp(float64(uniform32(rng, logLo, logHi)))))
		w := int(math.RoundToEven(math.Sqrt(target * aspect)))
		h := int(math.RoundToEven(math.Sqrt(target / aspect)))
		if 0 < w && w <= width && 0 < h && h <= height {
			i := rng.IntN(height - h + 1)
			j := rng.IntN(width - w + 1)
			return CropBox{Top: i, Left: j, Height: h, Width: w}, nil
		}
	}
	inRatio := float64(width) / float64(height)
	w, h := width, height
	switch {
	case inRatio < ratio[0]:
		h = int(math.RoundToEven(float64(w) / ratio[0]))
	case inRatio > ratio[1]:
		w = int(math.RoundToEven(float64(h) * ratio[1]))
	}
	return CropBox{Top: (height - h) / 2, Left: (width - w) / 2, Height: h, Width: w}, nil
}

// uniform32 is torch's uniform_(lo, hi) on a float32 tensor: lo + (hi-lo)*u
// in float32, u uniform in [0, 1).
func uniform32(rng *rand.Rand, lo, hi float32) float32 {
	return lo + (hi-lo)*float32(rng.Float64())
}

// ColorJitter holds the strengths of torchvision's
// ColorJitter(brightness, contrast, saturation, hue): factors are drawn
// uniformly from [max(0, 1-b), 1+b] for the first three and from [-h, h] for
// the hue; a zero strength leaves that adjustment out. The SSL papers use
// ColorJitter{0.4, 0.4, 0.2, 0.1} (SimSiam: {0.4, 0.4, 0.4, 0.1}; SwAV
// scales 0.8 by its strength s=1).
type ColorJitter struct {
	Brightness, Contrast, Saturation, Hue float64
}

// JitterParams is one draw of ColorJitter: the order in which the four
// adjustments run (torch.randperm(4): 0 brightness, 1 contrast, 2
// saturation, 3 hue), their factors, and which are enabled.
type JitterParams struct {
	Order   [4]int
	Factors [4]float64
	Enabled [4]bool
}

// Sample draws the jitter's parameters as ColorJitter.get_params does: the
// order first, then a factor for each enabled adjustment.
func (c ColorJitter) Sample(rng *rand.Rand) (JitterParams, error) {
	if c.Brightness < 0 || c.Contrast < 0 || c.Saturation < 0 || !(c.Hue >= 0 && c.Hue <= 0.5) {
		return JitterParams{}, fmt.Errorf("color jitter %+v: strengths must be non-negative and the hue's at most 0.5", c)
	}
	var p JitterParams
	copy(p.Order[:], rng.Perm(4))
	for k, v := range [3]float64{c.Brightness, c.Contrast, c.Saturation} {
		if v > 0 {
			p.Enabled[k] = true
			p.Factors[k] = float64(uniform32(rng, float32(max(0, 1-v)), float32(1+v)))
		}
	}
	if c.Hue > 0 {
		p.Enabled[3] = true
		p.Factors[3] = float64(uniform32(rng, float32(-c.Hue), float32(c.Hue)))
	}
	return p, nil
}

// Apply runs the enabled adjustments on m in p's order.
func (p JitterParams) Apply(m *RGBImage) (*RGBImage, error) {
	out := m
	for _, k := range p.Order {
		if k < 0 || k > 3 {
			return nil, fmt.Errorf("color jitter: adjustment %d out of range", k)
		}
		if !p.Enabled[k] {
			continue
		}
		var err error
		f := p.Factors[k]
		switch k {
		case 0:
			out, err = out.AdjustBrightness(f)
		case 1:
			out, err = out.AdjustContrast(f)
		case 2:
			out, err = out.AdjustSaturation(f)
		case 3:
			out, err = out.AdjustHue(f)
		}
		if err != nil {
			return nil, fmt.Errorf("color jitter: %w", err)
		}
	}
	if out == m {
		out = &RGBImage{Width: m.Width, Height: m.Height, Pix: append([]uint8(nil), m.Pix...)}
	}
	return out, nil
}

// BlurSigma draws the blur radius of VICReg's, SimSiam's and SwAV's
// GaussianBlur: uniform in [0.1, 2.0).
func BlurSigma(rng *rand.Rand) float64 {
	return 0.1 + 1.9*rng.Float64()
}

// Interpolation is the filter of a resize, as torchvision's
// InterpolationMode names PIL's filters.
type Interpolation int

const (
	// Bilinear is PIL's BILINEAR: the triangle filter, support 1 (SwAV's
	// and SimSiam's crops, the evaluation transform).
	Bilinear Interpolation = iota
	// Bicubic is PIL's BICUBIC: Keys' cubic with a = -0.5, support 2
	// (VICReg's crops).
	Bicubic
)

// kernel returns the filter's function and support.
func (f Interpolation) kernel() (func(float64) float64, float64, error) {
	switch f {
	case Bilinear:
		return pilTriangle, 1, nil
	case Bicubic:
		return pilCubic, 2, nil
	}
	return nil, 0, fmt.Errorf("unknown interpolation %d", int(f))
}

// ResizedCrop returns box of m resized to w x h with the filter interp and,
// when flip is set, mirrored left to right: torchvision's resized_crop then
// hflip on a PIL image (crop, PIL's antialiased resize, transpose), byte
// for byte, computed as one resample. The crop, the scale and the mirror
// are one affine map (cropAffine); along each axis it gives the scale of
// PIL's weights and whether the output runs backwards. The weights are
// PIL's for the cropped image (Resample.c with the box (0, size) of the
// crop: the support widened by the scale when shrinking, taps clipped to
// the crop's edges, 22-bit fixed point), read from m directly inside the
// box; the mirror reverses the order of the output columns; the
// horizontal pass runs first and is rounded to 8 bits, as PIL's is. PIL
// skips a pass whose size does not change (the crop's side equals the
// output's): that pass here has one unit weight a position, which copies
// the bytes exactly. Without the copies of the crop and the mirror it runs
// in about two thirds of the composition's time (BenchmarkResizedCrop).
func (m *RGBImage) ResizedCrop(box CropBox, w, h int, interp Interpolation, flip bool) (*RGBImage, error) {
	if m.Width <= 0 || m.Height <= 0 || len(m.Pix) != 3*m.Width*m.Height {
		return nil, fmt.Errorf("resized crop of a %dx%d image holding %d bytes", m.Width, m.Height, len(m.Pix))
	}
	if box.Width <= 0 || box.Height <= 0 || box.Left < 0 || box.Top < 0 || box.Left > m.Width-box.Width || box.Top > m.Height-box.Height {
		return nil, fmt.Errorf("resized crop: box %+v lies outside the %dx%d image", box, m.Width, m.Height)
	}
	if w <= 0 || h <= 0 || int64(w)*int64(h) > MaxImagePixels {
		return nil, fmt.Errorf("resized crop to %dx%d: sizes must be positive and at most %d pixels", w, h, MaxImagePixels)
	}
	filter, support, err := interp.kernel()
	if err != nil {
		return nil, fmt.Errorf("resized crop: %w", err)
	}
	a := cropAffine(box, w, h, flip)
	// The map has neither rotation nor shear: along each axis it is
	// v -> s*v + t, the scale s (negative where it mirrors) on its
	// diagonal. Multiplying by 1, -1 and 0 is exact, so |s| is the box's
	// side over the output's to the last bit, PIL's scale.
	cols := boxTaps(a.At(0, 0), box.Left, box.Width, w, filter, support)
	rows := boxTaps(a.At(1, 1), box.Top, box.Height, h, filter, support)

	// The horizontal pass, over the rows the vertical pass reads. Each
	// column's taps are gathered once: where its first input byte lies in
	// a row, and its weights.
	type colTaps struct {
		off int
		k   []int32
	}
	ct := make([]colTaps, w)
	for x := range ct {
		lo, n := cols.bounds[2*x], cols.bounds[2*x+1]
		ct[x] = colTaps{off: 3 * lo, k: cols.k[x*cols.ksize : x*cols.ksize+n]}
	}
	const half = 1 << (pilPrecision - 1) // PIL's rounding term
	y0, y1 := rows.span()
	tmp := newRGBImage(w, y1-y0)
	for y := y0; y < y1; y++ {
		in := m.Pix[3*m.Width*y : 3*m.Width*(y+1)]
		o := tmp.Pix[3*w*(y-y0) : 3*w*(y-y0+1)]
		for x, c := range ct {
			p := in[c.off:]
			s0, s1, s2 := int32(half), int32(half), int32(half)
			for i, ki := range c.k {
				s0 += int32(p[3*i]) * ki
				s1 += int32(p[3*i+1]) * ki
				s2 += int32(p[3*i+2]) * ki
			}
			q := o[3*x : 3*x+3 : 3*x+3]
			q[0], q[1], q[2] = pilClip8(s0), pilClip8(s1), pilClip8(s2)
		}
	}
	if rows.unit && !rows.mirror {
		return tmp, nil
	}

	// The vertical pass, row by row: PIL's sums read along rows rather
	// than down columns (integer sums, so the order does not matter), the
	// first tap's row starting the sums and the last one's finishing them
	// into the output.
	out := newRGBImage(w, h)
	rw := 3 * w
	acc := make([]int32, rw)
	for y := 0; y < h; y++ {
		lo, n := rows.bounds[2*y]-y0, rows.bounds[2*y+1] // n >= 1: PIL's taps cover the centre
		ks := rows.k[y*rows.ksize : y*rows.ksize+n]
		row := tmp.Pix[rw*lo : rw*(lo+1)]
		o := out.Pix[rw*y : rw*(y+1)]
		o = o[:len(row)]
		if n == 1 {
			for x, v := range row {
				o[x] = pilClip8(half + int32(v)*ks[0])
			}
			continue
		}
		a := acc[:len(row)]
		for x, v := range row {
			a[x] = half + int32(v)*ks[0]
		}
		for i := 1; i < n-1; i++ {
			ki := ks[i]
			row := tmp.Pix[rw*(lo+i) : rw*(lo+i+1)]
			a := acc[:len(row)]
			for x, v := range row {
				a[x] += int32(v) * ki
			}
		}
		last := ks[n-1]
		row = tmp.Pix[rw*(lo+n-1) : rw*(lo+n)]
		a = acc[:len(row)]
		for x, v := range row {
			o[x] = pilClip8(a[x] + int32(v)*last)
		}
	}
	return out, nil
}

// cropAffine returns the map from output coordinates to input coordinates,
// both PIL's (pixel i covers [i, i+1), its centre at i + 0.5): mirror the
// output (x -> w - x) when flip is set, scale it onto the box, shift it to
// the box's corner.
func cropAffine(box CropBox, w, h int, flip bool) mgl64.Mat3 {
	sx := float64(box.Width) / float64(w)
	sy := float64(box.Height) / float64(h)
	m := mgl64.Translate2D(float64(box.Left), float64(box.Top)).
		Mul3(mgl64.Scale2D(sx, sy))
	if flip {
		m = m.Mul3(mgl64.Translate2D(float64(w), 0)).Mul3(mgl64.Scale2D(-1, 1))
	}
	return m
}

// axisTaps are one axis's taps of ResizedCrop: for output position k, the
// first input position in the image's coordinates and the count
// (bounds[2k], bounds[2k+1]) and the fixed-point weights (ksize a
// position).
type axisTaps struct {
	resampleCoeffs
	unit   bool // one unit weight a position: PIL skips this pass
	mirror bool // the output runs backwards
}

// boxTaps returns the taps that resample the side [origin, origin+size) of
// the image to out positions along an axis the crop's map scales by s
// (negative: mirrored). The weights are PIL's for the cropped image, whose
// first position is the box's, so they are computed at the crop's origin
// and then moved by origin; the mirror takes them in reverse order.
func boxTaps(s float64, origin, size, out int, filter func(float64) float64, support float64) axisTaps {
	t := axisTaps{mirror: s < 0}
	if size == out {
		t.unit = true
		t.resampleCoeffs = resampleCoeffs{bounds: make([]int, 2*out), k: make([]int32, out), ksize: 1}
		for k := range out {
			t.bounds[2*k], t.bounds[2*k+1] = k, 1
			t.k[k] = 1 << pilPrecision
		}
	} else {
		t.resampleCoeffs = pilResampleCoeffs(size, out, math.Abs(s), filter, support)
	}
	for k := range out {
		t.bounds[2*k] += origin
	}
	if t.mirror {
		for i, j := 0, out-1; i < j; i, j = i+1, j-1 {
			t.bounds[2*i], t.bounds[2*j] = t.bounds[2*j], t.bounds[2*i]
			t.bounds[2*i+1], t.bounds[2*j+1] = t.bounds[2*j+1], t.bounds[2*i+1]
			ki, kj := t.k[i*t.ksize:(i+1)*t.ksize], t.k[j*t.ksize:(j+1)*t.ksize]
			for x := range ki {
				ki[x], kj[x] = kj[x], ki[x]
			}
		}
	}
	return t
}

// span returns the first input position the taps read and one past the
// last.
func (t axisTaps) span() (int, int) {
	lo, hi := t.bounds[0], t.bounds[0]+t.bounds[1]
	for k := 1; 2*k < len(t.bounds); k++ {
		lo = min(lo, t.bounds[2*k])
		hi = max(hi, t.bounds[2*k]+t.bounds[2*k+1])
	}
	return lo, hi
}

// ResizeBicubic resamples m to w x h as PIL's Image.resize(size, BICUBIC)
// does for 8-bit images (VICReg's RandomResizedCrop interpolation): the
// Keys cubic with a = -0.5 and support 2, widened by the scale when
// shrinking, PIL's 22-bit fixed point with its rounding of negative
// weights, horizontal pass first, the intermediate rounded and clipped to
// 8 bits.
func (m *RGBImage) ResizeBicubic(w, h int) (*RGBImage, error) {
	if w <= 0 || h <= 0 || int64(w)*int64(h) > MaxImagePixels {
		return nil, fmt.Errorf("resize to %dx%d: sizes must be positive and at most %d pixels", w, h, MaxImagePixels)
	}
	if m.Width <= 0 || m.Height <= 0 {
		return nil, fmt.Errorf("resize an empty %dx%d image", m.Width, m.Height)
	}
	if w == m.Width && h == m.Height {
		return &RGBImage{Width: w, Height: h, Pix: append([]uint8(nil), m.Pix...)}, nil
	}
	return m.resizeRegion(w, h, image.Rect(0, 0, w, h), pilCubicCoeffs), nil
}

// pilCubic is PIL's bicubic_filter (Resample.c), a = -0.5.
func pilCubic(x float64) float64 {
	const a = -0.5
	if x < 0 {
		x = -x
	}
	if x < 1 {
		return ((a+2)*x-(a+3))*x*x + 1
	}
	if x < 2 {
		return (((x-5)*x+8)*x - 4) * a
	}
	return 0
}

// pilCubicCoeffs is PIL's precompute_coeffs and normalize_coeffs_8bpc for
// the bicubic filter over the whole input (see pilResampleCoeffs).
func pilCubicCoeffs(inSize, outSize int) resampleCoeffs {
	return pilResampleCoeffs(inSize, outSize, float64(inSize)/float64(outSize), pilCubic, 2)
}

// ViewAugment is one view's training transform, in the order of VICReg's
// TrainTransform (augmentations.py): RandomResizedCrop(Size, Scale, ratio
// 3/4 to 4/3), RandomHorizontalFlip(FlipP), RandomApply(ColorJitter,
// JitterP), RandomGrayscale(GrayP), VICReg's GaussianBlur(BlurP) (PIL's
// blur, sigma uniform in [0.1, 2.0)) and Solarization(SolarizeP) (threshold
// 128). ToTensor and Normalize follow as RGBImage.Normalize. The crop, its
// resize and the flip run as one resample (RGBImage.ResizedCrop), which
// gives torchvision's bytes.
type ViewAugment struct {
	Size      int
	Scale     [2]float64
	Bicubic   bool // the crop's interpolation: PIL bicubic, else bilinear
	FlipP     float64
	Jitter    ColorJitter
	JitterP   float64
	GrayP     float64
	BlurP     float64
	SolarizeP float64
}

// VICRegViews returns VICReg's two view transforms, transform and
// transform_prime: the same but for the blur (probability 1.0 and 0.1) and
// the solarization (0.0 and 0.2).
func VICRegViews() [2]ViewAugment {
	v := ViewAugment{
		Size:    224,
		Scale:   [2]float64{0.08, 1},
		Bicubic: true,
		FlipP:   0.5,
		Jitter:  ColorJitter{Brightness: 0.4, Contrast: 0.4, Saturation: 0.2, Hue: 0.1},
		JitterP: 0.8,
		GrayP:   0.2,
		BlurP:   1.0,
	}
	prime := v
	prime.BlurP, prime.SolarizeP = 0.1, 0.2
	return [2]ViewAugment{v, prime}
}

// Apply runs the transform on m with the draws taken from rng in
// torchvision's order (each random transform draws its event, then its
// parameters).
func (a ViewAugment) Apply(m *RGBImage, rng *rand.Rand) (*RGBImage, error) {
	if a.Size <= 0 {
		return nil, fmt.Errorf("view augment: output size %d must be positive", a.Size)
	}
	box, err := RandomResizedCropParams(rng, m.Width, m.Height, a.Scale, [2]float64{3.0 / 4, 4.0 / 3})
	if err != nil {
		return nil, fmt.Errorf("view augment: %w", err)
	}
	interp := Bilinear
	if a.Bicubic {
		interp = Bicubic
	}
	// RandomHorizontalFlip's event is the next draw after the crop's
	// parameters (the resize draws nothing), so it is known before the
	// resample and folded into it: one pass instead of crop, resize and
	// mirror, with the same stream and the same bytes.
	out, err := m.ResizedCrop(box, a.Size, a.Size, interp, Chance(rng, a.FlipP))
	if err != nil {
		return nil, fmt.Errorf("view augment: %w", err)
	}
	if Chance(rng, a.JitterP) {
		p, err := a.Jitter.Sample(rng)
		if err != nil {
			return nil, fmt.Errorf("view augment: %w", err)
		}
		if out, err = p.Apply(out); err != nil {
			return nil, fmt.Errorf("view augment: %w", err)
		}
	}
	if Chance(rng, a.GrayP) {
		out = out.Grayscale()
	}
	if Chance(rng, a.BlurP) {
		if out, err = out.PILGaussianBlur(BlurSigma(rng)); err != nil {
			return nil, fmt.Errorf("view augment: %w", err)
		}
	}
	if Chance(rng, a.SolarizeP) {
		out = out.Solarize(128)
	}
	return out, nil
}

// ViewRNG returns the generator of one view of one sample in one epoch: a
// PCG stream keyed by all four numbers, so an augmented view is the same
// whatever the order, batching or worker that computes it.
func ViewRNG(seed uint64, epoch, sample, view int) *rand.Rand {
	s1 := splitMix64(seed ^ splitMix64(uint64(epoch)))
	s2 := splitMix64(splitMix64(uint64(sample)) ^ uint64(view))
	return rand.New(rand.NewPCG(s1, s2))
}

// splitMix64 is SplitMix64's output function: a bijective mix that spreads
// nearby keys over the whole 64-bit range.
func splitMix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
