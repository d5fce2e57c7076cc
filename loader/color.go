package loader

import (
	"fmt"
	"math"
)

// The colour operations below reproduce torchvision 0.14's functional
// transforms on PIL images (torchvision.transforms.functional_pil), which is
// what the SSL pipelines run: PIL 9.4's integer conversions and its float32
// blend, so the results equal PIL's byte for byte.

// pilLuma is PIL's RGB to "L" conversion (Convert.c L24): ITU-R 601-2 luma
// weights in 16-bit fixed point, rounded.
func pilLuma(r, g, b uint8) uint8 {
	return uint8((uint32(r)*19595 + uint32(g)*38470 + uint32(b)*7471 + 0x8000) >> 16)
}

// Grayscale returns m converted to grey as PIL's convert("L") does, with the
// grey replicated to three channels: torchvision's to_grayscale(img, 3), as
// RandomGrayscale applies it to RGB images.
func (m *RGBImage) Grayscale() *RGBImage {
	out := newRGBImage(m.Width, m.Height)
	for i := 0; i+2 < len(m.Pix); i += 3 {
		l := pilLuma(m.Pix[i], m.Pix[i+1], m.Pix[i+2])
		out.Pix[i], out.Pix[i+1], out.Pix[i+2] = l, l, l
	}
	return out
}

// pilBlend is one byte of PIL's Image.blend(im1, im2, alpha) (Blend.c):
// in1 + alpha*(in2-in1) in float32, clipped, truncated towards zero. PIL's
// ImageEnhance classes are blends of a degenerate image (im1) with the image
// (im2) by the enhancement factor.
func pilBlend(in1, in2 uint8, alpha float32) uint8 {
	// The explicit conversion keeps Go from fusing the multiply and add,
	// which the C code compiled for plain x86-64 does not do either.
	t := float32(in1) + float32(alpha*float32(int(in2)-int(in1)))
	switch {
	case t <= 0:
		return 0
	case t >= 255:
		return 255
	}
	return uint8(t)
}

// checkFactor rejects the enhancement factors torchvision refuses.
func checkFactor(name string, f float64) error {
	if f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("%s factor %v: must be a non-negative number", name, f)
	}
	return nil
}

// AdjustBrightness returns m with its brightness scaled by factor (0 gives
// black, 1 the image itself): torchvision's adjust_brightness, which is PIL's
// ImageEnhance.Brightness, a blend with a black image.
func (m *RGBImage) AdjustBrightness(factor float64) (*RGBImage, error) {
	if err := checkFactor("brightness", factor); err != nil {
		return nil, err
	}
	out := newRGBImage(m.Width, m.Height)
	a := float32(factor)
	for i, p := range m.Pix {
		out.Pix[i] = pilBlend(0, p, a)
	}
	return out, nil
}

// AdjustContrast returns m with its contrast scaled by factor (0 gives a
// uniform grey, 1 the image itself): torchvision's adjust_contrast, which is
// PIL's ImageEnhance.Contrast, a blend with a uniform image at the mean of
// the "L" image rounded to an integer, int(mean + 0.5).
func (m *RGBImage) AdjustContrast(factor float64) (*RGBImage, error) {
	if err := checkFactor("contrast", factor); err != nil {
		return nil, err
	}
	out := newRGBImage(m.Width, m.Height)
	n := m.Width * m.Height
	if n == 0 {
		return out, nil
	}
	// ImageStat sums the histogram: an exact integer sum, divided in
	// float64 as Python does.
	var sum int64
	for i := 0; i+2 < len(m.Pix); i += 3 {
		sum += int64(pilLuma(m.Pix[i], m.Pix[i+1], m.Pix[i+2]))
	}
	mean := uint8(int(float64(sum)/float64(n) + 0.5))
	a := float32(factor)
	for i, p := range m.Pix {
		out.Pix[i] = pilBlend(mean, p, a)
	}
	return out, nil
}

// AdjustSaturation returns m with its saturation scaled by factor (0 gives
// the grey image, 1 the image itself): torchvision's adjust_saturation,
// which is PIL's ImageEnhance.Color, a blend with the "L" image.
func (m *RGBImage) AdjustSaturation(factor float64) (*RGBImage, error) {
	if err := checkFactor("saturation", factor); err != nil {
		return nil, err
	}
	out := newRGBImage(m.Width, m.Height)
	a := float32(factor)
	for i := 0; i+2 < len(m.Pix); i += 3 {
		l := pilLuma(m.Pix[i], m.Pix[i+1], m.Pix[i+2])
		out.Pix[i] = pilBlend(l, m.Pix[i], a)
		out.Pix[i+1] = pilBlend(l, m.Pix[i+1], a)
		out.Pix[i+2] = pilBlend(l, m.Pix[i+2], a)
	}
	return out, nil
}

// AdjustHue returns m with its hue rotated by factor turns, factor in
// [-0.5, 0.5]: torchvision's adjust_hue for PIL images, which converts to
// PIL's 8-bit HSV, adds uint8(factor*255) to the hue with uint8 wrap-around
// and converts back.
func (m *RGBImage) AdjustHue(factor float64) (*RGBImage, error) {
	if !(factor >= -0.5 && factor <= 0.5) {
		return nil, fmt.Errorf("hue factor %v: must lie in [-0.5, 0.5]", factor)
	}
	// np.uint8(x) of a float64 truncates towards zero, then wraps.
	shift := uint8(int32(factor * 255))
	out := newRGBImage(m.Width, m.Height)
	for i := 0; i+2 < len(m.Pix); i += 3 {
		h, s, v := pilRGBToHSV(m.Pix[i], m.Pix[i+1], m.Pix[i+2])
		out.Pix[i], out.Pix[i+1], out.Pix[i+2] = pilHSVToRGB(h+shift, s, v)
	}
	return out, nil
}

// pilRGBToHSV is PIL's rgb2hsv_row (Convert.c), with its mix of float32
// variables and float64 constants.
func pilRGBToHSV(r, g, b uint8) (uint8, uint8, uint8) {
	maxc := max(r, g, b)
	minc := min(r, g, b)
	if maxc == minc {
		return 0, 0, maxc
	}
	cr := float32(maxc - minc)
	s := cr / float32(maxc)
	rc := float32(maxc-r) / cr
	gc := float32(maxc-g) / cr
	bc := float32(maxc-b) / cr
	var h float32
	switch {
	case r == maxc:
		h = bc - gc
	case g == maxc:
		h = float32(2.0 + float64(rc) - float64(bc))
	default:
		h = float32(4.0 + float64(gc) - float64(rc))
	}
	// PIL's fmod(h/6 + 1, 1): the argument lies in [5/6, 2), where the
	// remainder is exactly the argument less 1 (Sterbenz), and much cheaper
	// than math.Mod.
	hh := float64(h)/6.0 + 1.0
	if hh >= 1 {
		hh--
	}
	h = float32(hh)
	uh := clampU8(int(float64(h) * 255.0))
	us := clampU8(int(float64(s) * 255.0))
	return uh, us, maxc
}

// hueSector holds, for each 8-bit hue, PIL's sector i = floor(h*6/255) and
// the fraction f within it, computed as hsv2rgb does: a table of 256 entries
// (computed once, never written again) instead of a floor and a division a
// pixel.
var hueSector = func() (t [256]struct {
	i int
	f float32
}) {
	for h := range t {
		i := int(math.Floor(float64(float32(h)) * 6.0 / 255.0))
		t[h].i, t[h].f = i, float32(float64(float32(h))*6.0/255.0-float64(float32(i)))
	}
	return t
}()

// pilHSVToRGB is PIL's hsv2rgb (Convert.c).
func pilHSVToRGB(h, s, v uint8) (uint8, uint8, uint8) {
	if s == 0 {
		return v, v, v
	}
	i, f := hueSector[h].i, hueSector[h].f
	fs := float32(float64(float32(s)) / 255.0)
	fv := float64(float32(v))
	p := clampU8(int(math.Round(fv * (1.0 - float64(fs)))))
	q := clampU8(int(math.Round(fv * (1.0 - float64(fs*f)))))
	t := clampU8(int(math.Round(fv * (1.0 - float64(fs)*(1.0-float64(f))))))
	switch i % 6 {
	case 0:
		return v, t, p
	case 1:
		return q, v, p
	case 2:
		return p, v, t
	case 3:
		return p, q, v
	case 4:
		return t, p, v
	default:
		return v, p, q
	}
}

// Solarize returns m with every channel value at or above threshold
// inverted (255 - value): PIL's ImageOps.solarize, which torchvision's
// solarize and VICReg's Solarization (threshold 128) call.
func (m *RGBImage) Solarize(threshold uint8) *RGBImage {
	out := newRGBImage(m.Width, m.Height)
	for i, p := range m.Pix {
		if p >= threshold {
			p = 255 - p
		}
		out.Pix[i] = p
	}
	return out
}
