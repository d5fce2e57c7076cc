package loader

import (
	"fmt"
	"math"
)

// PILGaussianBlur returns m blurred as PIL 9.4's
// ImageFilter.GaussianBlur(radius) does: three passes of a box blur whose
// (fractional) radius gives the Gaussian's variance, horizontal then
// vertical, edges extended, in PIL's 24-bit fixed point (BoxBlur.c). This is
// the blur of VICReg's, SimSiam's and SwAV's training pipelines, which call
// img.filter(ImageFilter.GaussianBlur(sigma)); the result equals PIL's byte
// for byte. A radius of 0 returns a copy.
func (m *RGBImage) PILGaussianBlur(radius float64) (*RGBImage, error) {
	// The bound keeps PIL's int conversions of the box radius defined; any
	// radius near it already spreads every line to its mean.
	if !(radius >= 0) || radius > maxBlurRadius {
		return nil, fmt.Errorf("gaussian blur radius %v: must be a number in [0, %d]", radius, maxBlurRadius)
	}
	const passes = 3
	out := &RGBImage{Width: m.Width, Height: m.Height, Pix: append([]uint8(nil), m.Pix...)}
	if m.Width <= 0 || m.Height <= 0 {
		return out, nil
	}
	r := pilBoxRadius(float32(radius), passes)
	if r == 0 {
		return out, nil
	}
	w, h := m.Width, m.Height
	line := make([]uint8, 3*max(w, h))
	res := make([]uint8, 3*max(w, h))
	// Rows.
	for y := 0; y < h; y++ {
		row := out.Pix[3*w*y : 3*w*(y+1)]
		for p := 0; p < passes; p++ {
			pilBoxBlurLine(res[:3*w], row, r)
			copy(row, res[:3*w])
		}
	}
	// Columns, gathered into a line as PIL's transpose does.
	for x := 0; x < w; x++ {
		col := line[:3*h]
		for y := 0; y < h; y++ {
			copy(col[3*y:3*y+3], out.Pix[3*(w*y+x):])
		}
		for p := 0; p < passes; p++ {
			pilBoxBlurLine(res[:3*h], col, r)
			copy(col, res[:3*h])
		}
		for y := 0; y < h; y++ {
			copy(out.Pix[3*(w*y+x):3*(w*y+x)+3], col[3*y:])
		}
	}
	return out, nil
}

// maxBlurRadius is the largest radius PILGaussianBlur accepts.
const maxBlurRadius = 1 << 20

// pilBoxRadius is PIL's _gaussian_blur_radius: the box radius whose passes
// have the variance of a Gaussian of the given radius (Gwosdek et al. 2011),
// in PIL's float32 with float64 constants.
func pilBoxRadius(radius float32, passes int) float32 {
	sigma2 := radius * radius / float32(passes)
	L := float32(math.Sqrt(12.0*float64(sigma2) + 1.0))
	l := float32(math.Floor((float64(L) - 1.0) / 2.0))
	a := (2*l + 1) * (l*(l+1) - 3*sigma2)
	a /= 6 * (sigma2 - (l+1)*(l+1))
	return l + a
}

// pilBoxBlurLine is one pass of PIL's ImagingHorizontalBoxBlur over a line
// of RGB pixels (ImagingLineBoxBlur32): a running sum over 2*radius+1
// pixels with weight ww, the two pixels just outside it with weight fw
// (the fractional part of the radius), pixels beyond the ends taken from the
// end pixels. The unsigned arithmetic wraps as PIL's does.
func pilBoxBlurLine(out, in []uint8, floatRadius float32) {
	radius := int(floatRadius)
	ww := uint32(float32(1<<24) / (floatRadius*2 + 1))
	fw := ((1 << 24) - uint32(radius*2+1)*ww) / 2
	n := len(in) / 3
	lastx := n - 1
	edgeA := min(radius+1, n)
	edgeB := max(n-radius-1, 0)
	for c := 0; c < 3; c++ {
		px := func(x int) uint32 { return uint32(in[3*x+c]) }
		acc := px(0) * uint32(radius+1)
		for x := 0; x < edgeA-1; x++ {
			acc += px(x)
		}
		acc += px(lastx) * uint32(radius-edgeA+1)
		step := func(x, sub, add, left, right int) {
			acc += px(add) - px(sub)
			bulk := acc*ww + (px(left)+px(right))*fw
			out[3*x+c] = uint8((bulk + (1 << 23)) >> 24)
		}
		if edgeA <= edgeB {
			for x := 0; x < edgeA; x++ {
				step(x, 0, x+radius, 0, x+radius+1)
			}
			for x := edgeA; x < edgeB; x++ {
				step(x, x-radius-1, x+radius, x-radius-1, x+radius+1)
			}
			for x := edgeB; x <= lastx; x++ {
				step(x, x-radius-1, lastx, x-radius-1, lastx)
			}
		} else {
			for x := 0; x < edgeB; x++ {
				step(x, 0, x+radius, 0, x+radius+1)
			}
			for x := edgeB; x < edgeA; x++ {
				step(x, 0, lastx, 0, lastx)
			}
			for x := edgeA; x <= lastx; x++ {
				step(x, x-radius-1, lastx, x-radius-1, lastx)
			}
		}
	}
}

// GaussianBlur returns m blurred as torchvision 0.14's
// F.gaussian_blur(img, [kernelSize, kernelSize], [sigma, sigma]) does for a
// PIL image: a kernelSize-tap Gaussian (torch.linspace positions, float32,
// normalised to sum 1), reflect padding, float32 convolution, rounded half
// to even back to uint8. torchvision convolves with the 2-D outer-product
// kernel; this convolves separably (rows, then columns), which sums in a
// different order, so a value that falls within float32 rounding of a half
// may round the other way (at most 1 level). Like torchvision it refuses an
// image whose side is not larger than kernelSize/2 (reflect padding cannot
// pad it).
func (m *RGBImage) GaussianBlur(kernelSize int, sigma float64) (*RGBImage, error) {
	if kernelSize <= 0 || kernelSize%2 == 0 {
		return nil, fmt.Errorf("gaussian blur kernel size %d: must be odd and positive", kernelSize)
	}
	if !(float32(sigma) > 0) || math.IsInf(float64(float32(sigma)), 0) {
		return nil, fmt.Errorf("gaussian blur sigma %v: must be positive", sigma)
	}
	pad := kernelSize / 2
	if m.Width <= pad || m.Height <= pad {
		return nil, fmt.Errorf("gaussian blur with kernel %d of a %dx%d image: reflect padding needs sides larger than %d", kernelSize, m.Width, m.Height, pad)
	}
	k := torchGaussianKernel(kernelSize, sigma)
	w, h := m.Width, m.Height
	reflect := func(i, n int) int {
		if i < 0 {
			return -i
		}
		if i >= n {
			return 2*(n-1) - i
		}
		return i
	}
	// Rows, in float32.
	tmp := make([]float32, 3*w*h)
	for y := 0; y < h; y++ {
		in := m.Pix[3*w*y:]
		o := tmp[3*w*y:]
		for x := 0; x < w; x++ {
			var s0, s1, s2 float32
			for i, kv := range k {
				p := in[3*reflect(x+i-pad, w):]
				s0 += float32(kv * float32(p[0]))
				s1 += float32(kv * float32(p[1]))
				s2 += float32(kv * float32(p[2]))
			}
			o[3*x], o[3*x+1], o[3*x+2] = s0, s1, s2
		}
	}
	// Columns, then torch.round (half to even) and the cast to uint8.
	out := newRGBImage(w, h)
	acc := make([]float32, 3*w)
	for y := 0; y < h; y++ {
		clear(acc)
		for i, kv := range k {
			row := tmp[3*w*reflect(y+i-pad, h):][:3*w]
			for x, v := range row {
				acc[x] += float32(kv * v)
			}
		}
		o := out.Pix[3*w*y:]
		for x, v := range acc {
			o[x] = clampU8(int(math.RoundToEven(float64(v))))
		}
	}
	return out, nil
}

// torchGaussianKernel is torchvision's _get_gaussian_kernel1d in float32:
// exp(-0.5 (x/sigma)^2) at x = linspace(-(n-1)/2, (n-1)/2, n), divided by
// its sum.
func torchGaussianKernel(n int, sigma float64) []float32 {
	k := make([]float32, n)
	half := float32(n-1) * 0.5
	sig := float32(sigma)
	var sum float32
	for i := range k {
		x := -half + float32(i)
		z := x / sig
		k[i] = float32(math.Exp(float64(-0.5 * float32(z*z))))
		sum += k[i]
	}
	for i := range k {
		k[i] /= sum
	}
	return k
}
