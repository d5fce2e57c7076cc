package loader

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	_ "image/jpeg" // registers JPEG with image.Decode
	_ "image/png"  // registers PNG with image.Decode
	"math"
	"os"
)

// MaxImagePixels is the largest image, in pixels, that DecodeImage and the
// resize accept. It is PIL's decompression-bomb limit (twice
// Image.MAX_IMAGE_PIXELS), so a file PIL refuses is refused here too, and a
// hostile header cannot make the decoder allocate gigabytes.
const MaxImagePixels = 2 * 89478485

// ImageNet statistics that torchvision's Normalize uses for the evaluation
// transforms of VICReg, SwAV and SimSiam.
const (
	meanR, meanG, meanB = 0.485, 0.456, 0.406
	stdR, stdG, stdB    = 0.229, 0.224, 0.225
)

// DecodeImage reads an image file with the standard library's decoders
// (JPEG, PNG and GIF; any other format registered with package image also
// works). The file's format is found from its contents, not its name, as
// PIL does: ImageNet holds PNG and CMYK files named .JPEG. An unreadable,
// truncated or corrupt file is an error naming the path.
func DecodeImage(path string) (image.Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("decode image: %w", err)
	}
	img, err := decodeImageBytes(data)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	return img, nil
}

// decodeImageBytes decodes one image held in memory, checking its size
// before the pixels are allocated.
func decodeImageBytes(data []byte) (img image.Image, err error) {
	// The standard decoders should never panic, but a panic on a hostile
	// file must still come back as an error.
	defer func() {
		if r := recover(); r != nil {
			img, err = nil, fmt.Errorf("corrupt image (decoder failed: %v)", r)
		}
	}()
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if errors.Is(err, image.ErrFormat) {
		return nil, errors.New("unsupported image format (e2mcvk reads JPEG, PNG and GIF)")
	}
	if err != nil {
		return nil, err
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, fmt.Errorf("empty image (%dx%d)", cfg.Width, cfg.Height)
	}
	if int64(cfg.Width)*int64(cfg.Height) > MaxImagePixels {
		return nil, fmt.Errorf("image of %dx%d pixels exceeds the limit of %d pixels", cfg.Width, cfg.Height, MaxImagePixels)
	}
	if format == "gif" {
		return decodeGIF(data, cfg)
	}
	img, _, err = image.Decode(bytes.NewReader(data))
	return img, err
}

// decodeGIF returns a GIF's first frame the way PIL opens it: on a canvas of
// the logical screen's size, filled with the frame's transparent index (or
// index 0) where the frame does not cover it, with the colour table's true
// colour at the transparent index (Go's decoder replaces it with transparent
// black, which PIL's convert("RGB") would not show).
func decodeGIF(data []byte, cfg image.Config) (image.Image, error) {
	frame, err := gif.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	pf, ok := frame.(*image.Paletted)
	if !ok {
		return nil, fmt.Errorf("gif: unexpected frame type %T", frame)
	}
	table, transparent, err := gifFirstFrameTable(data)
	if err != nil {
		return nil, err
	}
	palette := make(color.Palette, len(table)/3)
	for i := range palette {
		palette[i] = color.RGBA{table[3*i], table[3*i+1], table[3*i+2], 0xff}
	}
	fill := uint8(0)
	if transparent >= 0 {
		fill = uint8(transparent)
	}
	canvas := image.NewPaletted(image.Rect(0, 0, cfg.Width, cfg.Height), palette)
	for i := range canvas.Pix {
		canvas.Pix[i] = fill
	}
	r := pf.Rect.Intersect(canvas.Rect)
	for y := r.Min.Y; y < r.Max.Y; y++ {
		copy(canvas.Pix[canvas.PixOffset(r.Min.X, y):canvas.PixOffset(r.Max.X, y)], pf.Pix[pf.PixOffset(r.Min.X, y):pf.PixOffset(r.Max.X, y)])
	}
	return canvas, nil
}

// gifFirstFrameTable walks a GIF's blocks up to its first image and returns
// the colour table that image uses (its local table, else the global one) as
// RGB triples, and the transparent index of its graphic control extension
// (-1 when it has none).
func gifFirstFrameTable(data []byte) (table []byte, transparent int, err error) {
	truncated := errors.New("gif: truncated file")
	if len(data) < 13 {
		return nil, -1, truncated
	}
	pos := 13
	var global []byte
	if flags := data[10]; flags&0x80 != 0 {
		n := 3 << ((flags & 7) + 1)
		if len(data) < pos+n {
			return nil, -1, truncated
		}
		global = data[pos : pos+n]
		pos += n
	}
	transparent = -1
	for pos < len(data) {
		switch data[pos] {
		case 0x21: // extension: label, then sub-blocks
			if pos+2 > len(data) {
				return nil, -1, truncated
			}
			label := data[pos+1]
			pos += 2
			if label == 0xf9 && pos+5 <= len(data) && data[pos] == 4 {
				transparent = -1
				if data[pos+1]&1 != 0 {
					transparent = int(data[pos+4])
				}
			}
			for {
				if pos >= len(data) {
					return nil, -1, truncated
				}
				n := int(data[pos])
				pos += 1 + n
				if n == 0 {
					break
				}
			}
		case 0x2c: // image descriptor
			if pos+10 > len(data) {
				return nil, -1, truncated
			}
			if packed := data[pos+9]; packed&0x80 != 0 {
				n := 3 << ((packed & 7) + 1)
				if len(data) < pos+10+n {
					return nil, -1, truncated
				}
				return data[pos+10 : pos+10+n], transparent, nil
			}
			if global == nil {
				return nil, -1, errors.New("gif: no colour table")
			}
			return global, transparent, nil
		default:
			return nil, -1, fmt.Errorf("gif: unexpected block 0x%02x", data[pos])
		}
	}
	return nil, -1, truncated
}

// RGBImage is an 8-bit RGB image, row-major, three bytes a pixel: what PIL's
// Image.convert("RGB") holds, and what torchvision's transforms work on.
type RGBImage struct {
	Width, Height int
	Pix           []uint8
}

func newRGBImage(w, h int) *RGBImage {
	return &RGBImage{Width: w, Height: h, Pix: make([]uint8, 3*w*h)}
}

// ToRGB converts img to 8-bit RGB as PIL's convert("RGB") does for the image
// PIL would have opened from the same file:
//   - grey is replicated to the three channels;
//   - alpha is dropped without compositing (straight colour, as stored);
//   - palette images take their palette's colour, ignoring transparency;
//   - 16-bit colour keeps the high byte, but 16-bit grey (PIL's mode "I") is
//     clipped to 255, not scaled, as PIL does;
//   - JPEG's YCbCr is converted with libjpeg's fancy (triangle) chroma
//     upsampling and its fixed-point colour equations, CMYK with PIL's
//     formula.
//
// Other image types go through their color.Model.
func ToRGB(img image.Image) *RGBImage {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	out := newRGBImage(w, h)
	switch m := img.(type) {
	case *image.Gray:
		for y := 0; y < h; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			o := out.Pix[3*w*y:]
			for x := 0; x < w; x++ {
				v := row[x]
				o[3*x], o[3*x+1], o[3*x+2] = v, v, v
			}
		}
	case *image.Gray16:
		for y := 0; y < h; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			o := out.Pix[3*w*y:]
			for x := 0; x < w; x++ {
				v := min(uint16(row[2*x])<<8|uint16(row[2*x+1]), 255)
				o[3*x], o[3*x+1], o[3*x+2] = uint8(v), uint8(v), uint8(v)
			}
		}
	case *image.NRGBA:
		for y := 0; y < h; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			o := out.Pix[3*w*y:]
			for x := 0; x < w; x++ {
				o[3*x], o[3*x+1], o[3*x+2] = row[4*x], row[4*x+1], row[4*x+2]
			}
		}
	case *image.RGBA:
		// Premultiplied: opaque pixels (all of a JPEG or an RGB PNG) as
		// they are, others through the colour model.
		for y := 0; y < h; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			o := out.Pix[3*w*y:]
			for x := 0; x < w; x++ {
				p := row[4*x : 4*x+4]
				if p[3] != 0xff {
					n := nrgbaOf(color.RGBA{p[0], p[1], p[2], p[3]})
					o[3*x], o[3*x+1], o[3*x+2] = n.R, n.G, n.B
					continue
				}
				o[3*x], o[3*x+1], o[3*x+2] = p[0], p[1], p[2]
			}
		}
	case *image.RGBA64:
		for y := 0; y < h; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			o := out.Pix[3*w*y:]
			for x := 0; x < w; x++ {
				p := row[8*x : 8*x+8]
				if p[6] != 0xff || p[7] != 0xff {
					c := color.RGBA64{uint16(p[0])<<8 | uint16(p[1]), uint16(p[2])<<8 | uint16(p[3]), uint16(p[4])<<8 | uint16(p[5]), uint16(p[6])<<8 | uint16(p[7])}
					n := nrgbaOf(c)
					o[3*x], o[3*x+1], o[3*x+2] = n.R, n.G, n.B
					continue
				}
				o[3*x], o[3*x+1], o[3*x+2] = p[0], p[2], p[4]
			}
		}
	case *image.NRGBA64:
		for y := 0; y < h; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			o := out.Pix[3*w*y:]
			for x := 0; x < w; x++ {
				o[3*x], o[3*x+1], o[3*x+2] = row[8*x], row[8*x+2], row[8*x+4]
			}
		}
	case *image.Paletted:
		var table [256][3]uint8 // entries past the palette stay black
		for i, c := range m.Palette {
			if i == len(table) {
				break
			}
			n := nrgbaOf(c)
			table[i] = [3]uint8{n.R, n.G, n.B}
		}
		for y := 0; y < h; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			o := out.Pix[3*w*y:]
			for x := 0; x < w; x++ {
				t := &table[row[x]]
				o[3*x], o[3*x+1], o[3*x+2] = t[0], t[1], t[2]
			}
		}
	case *image.YCbCr:
		if b.Min == (image.Point{}) {
			ycbcrToRGB(m, out)
			break
		}
		genericToRGB(img, out)
	case *image.CMYK:
		for y := 0; y < h; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			o := out.Pix[3*w*y:]
			for x := 0; x < w; x++ {
				// PIL's cmyk2rgb: nk - c*nk/255, rounded by its MULDIV255.
				nk := 255 - int(row[4*x+3])
				for c := 0; c < 3; c++ {
					t := int(row[4*x+c])*nk + 128
					o[3*x+c] = clampU8(nk - ((t>>8)+t)>>8)
				}
			}
		}
	default:
		genericToRGB(img, out)
	}
	return out
}

// nrgbaOf returns c as straight (non-premultiplied) 8-bit colour.
func nrgbaOf(c color.Color) color.NRGBA {
	if n, ok := c.(color.NRGBA); ok {
		return n
	}
	return color.NRGBAModel.Convert(c).(color.NRGBA)
}

// genericToRGB converts any image through its colour model: straight colour,
// alpha dropped.
func genericToRGB(img image.Image, out *RGBImage) {
	b := img.Bounds()
	for y := 0; y < out.Height; y++ {
		o := out.Pix[3*out.Width*y:]
		for x := 0; x < out.Width; x++ {
			n := nrgbaOf(img.At(b.Min.X+x, b.Min.Y+y))
			o[3*x], o[3*x+1], o[3*x+2] = n.R, n.G, n.B
		}
	}
}

func clampU8(v int) uint8 {
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return uint8(v)
}

// ycbcrToRGB converts a decoded JPEG (its rectangle at the origin) as
// libjpeg-turbo does for PIL: chroma upsampled with libjpeg's "fancy"
// triangle filter (jdsample.c: h2v1, h1v2 and h2v2, edges replicated, its
// alternating rounding biases), other ratios by replication, then
// jdcolor.c's fixed-point YCbCr to RGB. Go's own conversion takes the
// nearest chroma sample, which differs from PIL's by up to tens of levels at
// colour edges.
func ycbcrToRGB(m *image.YCbCr, out *RGBImage) {
	w, h := out.Width, out.Height
	hs, vs := 1, 1
	switch m.SubsampleRatio {
	case image.YCbCrSubsampleRatio422:
		hs = 2
	case image.YCbCrSubsampleRatio420:
		hs, vs = 2, 2
	case image.YCbCrSubsampleRatio440:
		vs = 2
	case image.YCbCrSubsampleRatio411:
		hs = 4
	case image.YCbCrSubsampleRatio410:
		hs, vs = 4, 2
	}
	// libjpeg's downsampled_width and downsampled_height.
	cw, ch := (w+hs-1)/hs, (h+vs-1)/vs
	fancyH := hs == 2 && cw > 2
	fancyV := vs == 2 && hs == 1 || vs == 2 && hs == 2 && cw > 2

	// libjpeg's tables (jdcolor.c build_ycc_rgb_table), SCALEBITS 16.
	fix := func(x float64) int32 { return int32(x*65536 + 0.5) }
	var crR, cbB, crG, cbG [256]int32
	for i := range 256 {
		x := int32(i - 128)
		crR[i] = (fix(1.40200)*x + 1<<15) >> 16
		cbB[i] = (fix(1.77200)*x + 1<<15) >> 16
		crG[i] = -fix(0.71414) * x
		cbG[i] = -fix(0.34414)*x + 1<<15
	}

	cb := make([]int32, w+1) // upsampled chroma of one row (+1: 2*cw may exceed w)
	cr := make([]int32, w+1)
	cbSum := make([]int32, cw) // vertical sums 3*near + far (fancy vertical)
	crSum := make([]int32, cw)
	for y := 0; y < h; y++ {
		// Vertical step: the chroma rows this output row reads.
		var srcCb, srcCr []int32
		scale := int32(1) // the weight the vertical step gave each sample
		if fancyV {
			r0 := y / 2
			r1 := r0 - 1
			if y%2 == 1 {
				r1 = r0 + 1
			}
			r1 = max(0, min(r1, ch-1))
			o0, o1 := r0*m.CStride, r1*m.CStride
			for c := 0; c < cw; c++ {
				cbSum[c] = 3*int32(m.Cb[o0+c]) + int32(m.Cb[o1+c])
				crSum[c] = 3*int32(m.Cr[o0+c]) + int32(m.Cr[o1+c])
			}
			srcCb, srcCr, scale = cbSum, crSum, 4
		} else {
			o := (y / vs) * m.CStride
			for c := 0; c < cw; c++ {
				cbSum[c] = int32(m.Cb[o+c])
				crSum[c] = int32(m.Cr[o+c])
			}
			srcCb, srcCr = cbSum, crSum
		}
		// Horizontal step.
		switch {
		case fancyH && scale == 4: // h2v2 fancy
			for c := 0; c < cw; c++ {
				l, r := max(c-1, 0), min(c+1, cw-1)
				cb[2*c] = (3*srcCb[c] + srcCb[l] + 8) >> 4
				cb[2*c+1] = (3*srcCb[c] + srcCb[r] + 7) >> 4
				cr[2*c] = (3*srcCr[c] + srcCr[l] + 8) >> 4
				cr[2*c+1] = (3*srcCr[c] + srcCr[r] + 7) >> 4
			}
		case fancyH: // h2v1 fancy
			for c := 0; c < cw; c++ {
				l, r := max(c-1, 0), min(c+1, cw-1)
				cb[2*c] = (3*srcCb[c] + srcCb[l] + 1) >> 2
				cb[2*c+1] = (3*srcCb[c] + srcCb[r] + 2) >> 2
				cr[2*c] = (3*srcCr[c] + srcCr[l] + 1) >> 2
				cr[2*c+1] = (3*srcCr[c] + srcCr[r] + 2) >> 2
			}
		case scale == 4: // h1v2 fancy: bias 1 above, 2 below
			bias := int32(1 + y%2)
			for x := 0; x < w; x++ {
				cb[x] = (srcCb[x] + bias) >> 2
				cr[x] = (srcCr[x] + bias) >> 2
			}
		default: // replication
			for x := 0; x < w; x++ {
				cb[x] = srcCb[x/hs]
				cr[x] = srcCr[x/hs]
			}
		}
		yrow := m.Y[y*m.YStride:]
		o := out.Pix[3*w*y:]
		for x := 0; x < w; x++ {
			yy := int32(yrow[x])
			b, r := cb[x], cr[x]
			o[3*x] = clampU8(int(yy + crR[r]))
			o[3*x+1] = clampU8(int(yy + (cbG[b]+crG[r])>>16))
			o[3*x+2] = clampU8(int(yy + cbB[b]))
		}
	}
}

// Resize resamples m to w x h with PIL's bilinear filter, exactly as
// Image.resize(size, BILINEAR) does for 8-bit images: separable, horizontal
// pass first, the triangle filter's support widened by the scale when
// downscaling (antialiasing), coefficients in PIL's 22-bit fixed point and
// the intermediate image rounded to 8 bits.
func (m *RGBImage) Resize(w, h int) (*RGBImage, error) {
	if w <= 0 || h <= 0 {
		return nil, fmt.Errorf("resize to %dx%d: sizes must be positive", w, h)
	}
	if int64(w)*int64(h) > MaxImagePixels {
		return nil, fmt.Errorf("resize to %dx%d exceeds the limit of %d pixels", w, h, MaxImagePixels)
	}
	if m.Width <= 0 || m.Height <= 0 {
		return nil, fmt.Errorf("resize an empty %dx%d image", m.Width, m.Height)
	}
	if w == m.Width && h == m.Height {
		return &RGBImage{Width: w, Height: h, Pix: append([]uint8(nil), m.Pix...)}, nil
	}
	return m.resizeRegion(w, h, image.Rect(0, 0, w, h), pilCoeffs), nil
}

// resizeRegion returns the region r of m resized to w x h with PIL's
// separable resampling and the filter's coefficients (pilCoeffs: bilinear,
// pilCubicCoeffs: bicubic), computing only what that region needs: the rows
// the vertical pass reads and the columns of r. Each output pixel depends
// only on its own row of the horizontal pass, so the region equals the same
// region of the full resize.
func (m *RGBImage) resizeRegion(w, h int, r image.Rectangle, filter func(inSize, outSize int) resampleCoeffs) *RGBImage {
	cw, ch := r.Dx(), r.Dy()
	// PIL skips a pass whose size does not change.
	var vert resampleCoeffs
	y0, y1 := r.Min.Y, r.Max.Y
	if h != m.Height {
		vert = filter(m.Height, h)
		y0 = vert.bounds[2*r.Min.Y]
		y1 = vert.bounds[2*(r.Max.Y-1)] + vert.bounds[2*(r.Max.Y-1)+1]
	}
	// tmp: rows y0..y1 of the horizontally resized image, columns of r.
	tmp := newRGBImage(cw, y1-y0)
	if w != m.Width {
		horiz := filter(m.Width, w)
		for y := 0; y < tmp.Height; y++ {
			in := m.Pix[3*m.Width*(y+y0):]
			o := tmp.Pix[3*cw*y:]
			for x := 0; x < cw; x++ {
				xx := r.Min.X + x
				lo, n := horiz.bounds[2*xx], horiz.bounds[2*xx+1]
				k := horiz.k[xx*horiz.ksize:]
				s0, s1, s2 := int32(1<<(pilPrecision-1)), int32(1<<(pilPrecision-1)), int32(1<<(pilPrecision-1))
				for i := 0; i < n; i++ {
					p := in[3*(lo+i):]
					s0 += int32(p[0]) * k[i]
					s1 += int32(p[1]) * k[i]
					s2 += int32(p[2]) * k[i]
				}
				o[3*x], o[3*x+1], o[3*x+2] = pilClip8(s0), pilClip8(s1), pilClip8(s2)
			}
		}
	} else {
		for y := 0; y < tmp.Height; y++ {
			copy(tmp.Pix[3*cw*y:3*cw*(y+1)], m.Pix[3*(m.Width*(y+y0)+r.Min.X):])
		}
	}
	if h == m.Height {
		return tmp
	}
	out := newRGBImage(cw, ch)
	rw := 3 * cw
	acc := make([]int32, rw)
	for y := 0; y < ch; y++ {
		yy := r.Min.Y + y
		lo, n := vert.bounds[2*yy]-y0, vert.bounds[2*yy+1]
		k := vert.k[yy*vert.ksize:]
		for x := range acc {
			acc[x] = 1 << (pilPrecision - 1)
		}
		// Row by row: the same sums in the same order as PIL's, read
		// along rows rather than down columns.
		for i := 0; i < n; i++ {
			row := tmp.Pix[rw*(lo+i) : rw*(lo+i+1)]
			ki := k[i]
			for x, v := range row {
				acc[x] += int32(v) * ki
			}
		}
		o := out.Pix[rw*y : rw*(y+1)]
		for x, s := range acc {
			o[x] = pilClip8(s)
		}
	}
	return out
}

// pilPrecision is PIL's fixed-point precision for 8-bit resampling
// (Resample.c PRECISION_BITS: 32 - 8 - 2).
const pilPrecision = 22

func pilClip8(s int32) uint8 {
	return clampU8(int(s >> pilPrecision))
}

// resampleCoeffs holds, for each output position, the first input position
// and count it reads (bounds) and its fixed-point weights (ksize a row).
type resampleCoeffs struct {
	bounds []int
	k      []int32
	ksize  int
}

// pilCoeffs computes PIL's bilinear resampling weights from inSize to
// outSize over the whole input (Resample.c precompute_coeffs and
// normalize_coeffs_8bpc, box (0, inSize)).
func pilCoeffs(inSize, outSize int) resampleCoeffs {
	return pilResampleCoeffs(inSize, outSize, float64(inSize)/float64(outSize), pilTriangle, 1)
}

// pilTriangle is PIL's bilinear_filter (Resample.c), support 1.
func pilTriangle(x float64) float64 {
	if x < 0 {
		x = -x
	}
	if x < 1 {
		return 1 - x
	}
	return 0
}

// pilResampleCoeffs is PIL's precompute_coeffs and normalize_coeffs_8bpc
// for inSize input positions resampled to outSize with the given scale
// (inSize/outSize, which the caller passes so that an affine map can supply
// it) and filter of the given support: each output position's centre is
// (xx + 0.5) * scale, the support is widened by the scale when shrinking,
// the taps are clipped to [0, inSize) and their weights normalised, then
// rounded to PIL's 22-bit fixed point (negative weights rounded away from
// zero, as PIL does). The float operations follow PIL's order; the explicit
// conversions keep Go from fusing a multiply and an add, which C compiled
// for plain x86-64 does not do either. The bounds are relative to the
// first input position: a caller resampling a box of a larger image adds
// the box's offset, which gives PIL's result for the cropped image.
func pilResampleCoeffs(inSize, outSize int, scale float64, filter func(float64) float64, support float64) resampleCoeffs {
	filterscale := max(scale, 1.0)
	support *= filterscale
	ksize := int(math.Ceil(support))*2 + 1
	c := resampleCoeffs{bounds: make([]int, 2*outSize), k: make([]int32, outSize*ksize), ksize: ksize}
	w := make([]float64, ksize)
	for xx := 0; xx < outSize; xx++ {
		center := 0 + float64((float64(xx)+0.5)*scale)
		ss := 1.0 / filterscale
		xmin := max(int(center-support+0.5), 0)
		xmax := min(int(center+support+0.5), inSize) - xmin
		ww := 0.0
		for x := 0; x < xmax; x++ {
			f := filter(float64((float64(x+xmin) - center + 0.5) * ss))
			w[x] = f
			ww += f
		}
		for x := 0; x < xmax; x++ {
			if ww != 0.0 {
				w[x] /= ww
			}
			if w[x] < 0 {
				c.k[xx*ksize+x] = int32(-0.5 + float64(w[x]*(1<<pilPrecision)))
			} else {
				c.k[xx*ksize+x] = int32(0.5 + float64(w[x]*(1<<pilPrecision)))
			}
		}
		c.bounds[2*xx], c.bounds[2*xx+1] = xmin, xmax
	}
	return c
}

// Crop returns the w x h region whose top-left corner is (left, top); it
// must lie inside m.
func (m *RGBImage) Crop(left, top, w, h int) (*RGBImage, error) {
	if w <= 0 || h <= 0 || left < 0 || top < 0 || left+w > m.Width || top+h > m.Height {
		return nil, fmt.Errorf("crop %dx%d at (%d, %d) lies outside the %dx%d image", w, h, left, top, m.Width, m.Height)
	}
	out := newRGBImage(w, h)
	for y := 0; y < h; y++ {
		copy(out.Pix[3*w*y:3*w*(y+1)], m.Pix[3*(m.Width*(top+y)+left):])
	}
	return out, nil
}

// Normalize writes m as a CHW float32 tensor into dst (3 * Height * Width
// values): torchvision's ToTensor (value / 255) followed by Normalize with
// the ImageNet mean and standard deviation, in float32 and in the same
// order, so the values equal PyTorch's bit for bit.
func (m *RGBImage) Normalize(dst []float32) error {
	n := m.Width * m.Height
	if len(dst) != 3*n {
		return fmt.Errorf("normalize a %dx%d image into %d values, need %d", m.Width, m.Height, len(dst), 3*n)
	}
	lut := &normalizeLUT
	for c := 0; c < 3; c++ {
		d := dst[c*n : (c+1)*n]
		t := &lut[c]
		for i := range d {
			d[i] = t[m.Pix[3*i+c]]
		}
	}
	return nil
}

// normalizeLUT holds, for each channel and byte value v, torchvision's
// ToTensor + Normalize in float32: (v / 255 - mean) / std. A table of the
// same float32 operations gives the same bits without two divisions a
// value (a tenth of the augmentation pipeline's time). It is computed once
// and never written again.
var normalizeLUT = func() (t [3][256]float32) {
	mean := [3]float32{meanR, meanG, meanB}
	std := [3]float32{stdR, stdG, stdB}
	for c := range t {
		for v := range t[c] {
			t[c][v] = (float32(v)/255 - mean[c]) / std[c]
		}
	}
	return t
}()

// Preprocess is the evaluation transform of the SSL papers' linear probes,
// as torchvision composes it: Resize(Resize) (the shorter side to Resize,
// bilinear; 0 skips it), CenterCrop(Crop) (0 skips it), ToTensor, Normalize
// with the ImageNet statistics. ImageNet's is Preprocess{Resize: 256,
// Crop: 224}.
type Preprocess struct {
	Resize, Crop int
}

// OutputSize returns the width and height Apply gives an image of w x h
// pixels, or an error when the crop does not fit.
func (p Preprocess) OutputSize(w, h int) (int, int, error) {
	if p.Resize < 0 || p.Crop < 0 {
		return 0, 0, fmt.Errorf("preprocess: negative resize %d or crop %d", p.Resize, p.Crop)
	}
	if w <= 0 || h <= 0 {
		return 0, 0, fmt.Errorf("preprocess: empty %dx%d image", w, h)
	}
	if p.Resize > 0 {
		w, h = shorterSide(w, h, p.Resize)
		if int64(w)*int64(h) > MaxImagePixels {
			return 0, 0, fmt.Errorf("image resized to %dx%d exceeds the limit of %d pixels", w, h, MaxImagePixels)
		}
	}
	if p.Crop > 0 {
		if w < p.Crop || h < p.Crop {
			if p.Resize > 0 {
				return 0, 0, fmt.Errorf("image resized to %dx%d is smaller than the %dx%d crop", w, h, p.Crop, p.Crop)
			}
			return 0, 0, fmt.Errorf("image of %dx%d is smaller than the %dx%d crop", w, h, p.Crop, p.Crop)
		}
		w, h = p.Crop, p.Crop
	}
	return w, h, nil
}

// shorterSide returns the size torchvision's Resize(n) gives a w x h image:
// the shorter side becomes n, the longer n*long/short truncated (Python's
// int() of a true division, which float64 reproduces for any real size).
func shorterSide(w, h, n int) (int, int) {
	if w <= h {
		return n, int(float64(n) * float64(h) / float64(w))
	}
	return int(float64(n) * float64(w) / float64(h)), n
}

// Apply runs the transform on img and returns the CHW float32 RGB tensor,
// its height and its width. An image smaller than the crop is an error
// naming the sizes (torchvision would pad it with black).
func (p Preprocess) Apply(img image.Image) ([]float32, int, int, error) {
	b := img.Bounds()
	w, h, err := p.OutputSize(b.Dx(), b.Dy())
	if err != nil {
		return nil, 0, 0, err
	}
	out := make([]float32, 3*h*w)
	if err := p.applyInto(img, h, w, out); err != nil {
		return nil, 0, 0, err
	}
	return out, h, w, nil
}

// applyInto runs the transform on img into dst, which must hold an h x w
// result: a different size is an error (LoadBatch needs equal sizes).
func (p Preprocess) applyInto(img image.Image, h, w int, dst []float32) error {
	b := img.Bounds()
	gw, gh, err := p.OutputSize(b.Dx(), b.Dy())
	if err != nil {
		return err
	}
	if gh != h || gw != w {
		return &sizeError{want: [2]int{h, w}, got: [2]int{gh, gw}}
	}
	m, err := p.rgb(ToRGB(img))
	if err != nil {
		return err
	}
	return m.Normalize(dst)
}

// rgb is the transform's resize and centre crop of an RGB image, before
// ToTensor and Normalize. Its size must have been checked (OutputSize).
func (p Preprocess) rgb(m *RGBImage) (*RGBImage, error) {
	var err error
	rw, rh := m.Width, m.Height
	if p.Resize > 0 {
		rw, rh = shorterSide(m.Width, m.Height, p.Resize) // within MaxImagePixels: OutputSize checked
	}
	region := image.Rect(0, 0, rw, rh)
	if p.Crop > 0 {
		top, left := centerOffset(rh, p.Crop), centerOffset(rw, p.Crop)
		region = image.Rect(left, top, left+p.Crop, top+p.Crop)
	}
	switch {
	case rw != m.Width || rh != m.Height:
		// Resize only what the crop keeps.
		m = m.resizeRegion(rw, rh, region, pilCoeffs)
	case p.Crop > 0:
		if m, err = m.Crop(region.Min.X, region.Min.Y, p.Crop, p.Crop); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// centerOffset returns where torchvision's CenterCrop starts a crop of
// length crop in a side of length size: int(round((size - crop) / 2.0)),
// and Python rounds halves to even (an offset of 4.5 becomes 4, 5.5 becomes
// 6).
func centerOffset(size, crop int) int {
	return int(math.RoundToEven(float64(size-crop) / 2))
}

// sizeError reports a preprocessed image whose size differs from the
// batch's.
type sizeError struct {
	want, got [2]int // height, width
}

func (e *sizeError) Error() string {
	return fmt.Sprintf("preprocessed to 3x%dx%d, not 3x%dx%d like the batch's first image", e.got[0], e.got[1], e.want[0], e.want[1])
}
