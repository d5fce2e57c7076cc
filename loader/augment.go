package loader

import (
	"fmt"
	"math"
	"math/rand/v2"
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
	if !(scale[0] <= scale[1]) || !(ratio[0] <= ratio[1]) || !(scale[0] >= 0) || !(ratio[0] > 0) {
		return CropBox{}, fmt.Errorf("random resized crop: scale %v and ratio %v must be ordered, non-negative ranges", scale, ratio)
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
