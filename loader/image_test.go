package loader

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
)

const testImages = "testdata/images"

// jpegLevelBound is the largest difference, in 8-bit levels of one RGB
// channel, between Go's decoding of the test JPEGs and PIL's (libjpeg-turbo
// 2.1.5), measured on the committed JPEGs: 3 levels (about 4% of the values
// differ at all, by 1 to 3 levels; 0.052 after normalisation). ToRGB
// reproduces libjpeg's chroma upsampling and colour conversion; what is
// left comes from the inverse DCTs, which round differently (Go's is a
// Chen-Wang IDCT, libjpeg's the ISLOW one), amplified up to 1.77x by the
// colour conversion. For comparison, Go's own YCbCr conversion (nearest
// chroma sample) is 96 levels off on the 4:2:0 test JPEG.
const jpegLevelBound = 3

// testConfigs must match CONFIGS in testdata/torch_preprocess.py.
func testConfigs() map[string]Preprocess {
	return map[string]Preprocess{
		"none":   {},
		"r16":    {Resize: 16},
		"r7":     {Resize: 7},
		"r48":    {Resize: 48},
		"r20c16": {Resize: 20, Crop: 16},
		"c16":    {Crop: 16},
		"c11":    {Crop: 11},
	}
}

// testImageNames lists the committed test images.
func testImageNames(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(testImages)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if len(names) < 10 {
		t.Fatalf("only %d test images in %s", len(names), testImages)
	}
	return names
}

// torchPreprocess runs testdata/torch_preprocess.py on the test images
// (cached on the script and the images) and returns its output directory
// and manifest.
func torchPreprocess(t *testing.T) (string, map[string][]int) {
	t.Helper()
	script, err := os.ReadFile("testdata/torch_preprocess.py")
	if err != nil {
		t.Fatal(err)
	}
	parts := [][]byte{script, []byte("preprocess")}
	for _, name := range testImageNames(t) {
		data, err := os.ReadFile(filepath.Join(testImages, name))
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, []byte(name), data)
	}
	dir := oracle.Cached(t, []string{"torch", "torchvision", "numpy", "PIL"}, func(py, dir string) {
		oracle.RunFile(t, py, "testdata/torch_preprocess.py", "preprocess", dir, testImages)
	}, parts...)
	var manifest map[string][]int
	oracle.ReadJSON(t, filepath.Join(dir, "manifest.json"), &manifest)
	return dir, manifest
}

// TestToRGBMatchesPIL compares ToRGB of every decoded test image with PIL's
// Image.open(...).convert("RGB"): equal bytes for PNG and GIF, within
// jpegLevelBound for JPEG.
func TestToRGBMatchesPIL(t *testing.T) {
	dir, manifest := torchPreprocess(t)
	for _, name := range testImageNames(t) {
		t.Run(name, func(t *testing.T) {
			img, err := DecodeImage(filepath.Join(testImages, name))
			if err != nil {
				t.Fatal(err)
			}
			got := ToRGB(img)
			shape := manifest[name+".rgb"]
			if len(shape) != 3 || got.Height != shape[0] || got.Width != shape[1] {
				t.Fatalf("size %dx%d, PIL %v", got.Width, got.Height, shape)
			}
			want, err := os.ReadFile(filepath.Join(dir, name+".rgb"))
			if err != nil {
				t.Fatal(err)
			}
			maxDiff, count := 0, 0
			for i := range want {
				d := int(got.Pix[i]) - int(want[i])
				if d < 0 {
					d = -d
				}
				if d > 0 {
					count++
				}
				maxDiff = max(maxDiff, d)
			}
			bound := 0
			if isJPEG(name) {
				bound = jpegLevelBound
			}
			t.Logf("%s (%T): max difference %d levels, %d of %d bytes differ", name, img, maxDiff, count, len(want))
			if maxDiff > bound {
				t.Errorf("max difference %d levels from PIL (%d of %d bytes differ), bound %d", maxDiff, count, len(want), bound)
			}
		})
	}
}

func isJPEG(name string) bool { return strings.HasSuffix(name, ".jpg") }

// TestPreprocessMatchesTorchvision runs every test transform on every test
// image and compares with torchvision's Compose([Resize, CenterCrop,
// ToTensor, Normalize]): bit-equal floats for PNG and GIF (PIL's resize is
// reproduced exactly), within jpegLevelBound levels for JPEG. A crop larger
// than the image must be an error naming the sizes (torchvision pads).
func TestPreprocessMatchesTorchvision(t *testing.T) {
	dir, manifest := torchPreprocess(t)
	configs := testConfigs()
	var cnames []string
	for c := range configs {
		cnames = append(cnames, c)
	}
	sort.Strings(cnames)
	compared := 0
	for _, name := range testImageNames(t) {
		img, err := DecodeImage(filepath.Join(testImages, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, cname := range cnames {
			p := configs[cname]
			t.Run(name+"/"+cname, func(t *testing.T) {
				got, h, w, err := p.Apply(img)
				shape := manifest[name+"."+cname+".f32"]
				b := img.Bounds()
				rw, rh := b.Dx(), b.Dy()
				if p.Resize > 0 {
					rw, rh = shorterSide(rw, rh, p.Resize)
				}
				if p.Crop > 0 && (rw < p.Crop || rh < p.Crop) {
					want := fmt.Sprintf("%dx%d is smaller than the %dx%d crop", rw, rh, p.Crop, p.Crop)
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Fatalf("error %v, want one saying %q", err, want)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if len(shape) != 3 || shape[0] != 3 || shape[1] != h || shape[2] != w {
					t.Fatalf("shape 3x%dx%d, torchvision %v", h, w, shape)
				}
				want := oracle.ReadFloat32s(t, filepath.Join(dir, name+"."+cname+".f32"))
				if len(want) != len(got) {
					t.Fatalf("%d values, torchvision %d", len(got), len(want))
				}
				std := [3]float64{stdR, stdG, stdB}
				maxLevels, differ := 0.0, 0
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						differ++
					}
					d := math.Abs(float64(got[i])-float64(want[i])) * std[i/(h*w)] * 255
					maxLevels = max(maxLevels, d)
				}
				if isJPEG(name) {
					if maxLevels > jpegLevelBound+1e-3 {
						t.Errorf("max difference %.3f levels from torchvision (%d of %d values differ), bound %d", maxLevels, differ, len(want), jpegLevelBound)
					}
					t.Logf("max difference %.3f levels, %d of %d values differ", maxLevels, differ, len(want))
					return
				}
				if differ > 0 {
					t.Errorf("%d of %d values differ from torchvision's (max %.3f levels)", differ, len(want), maxLevels)
				}
			})
			compared++
		}
	}
	if compared < 50 {
		t.Fatalf("only %d comparisons", compared)
	}
}

// pngWithSize returns a PNG header (signature, IHDR, IEND) claiming w x h
// 8-bit RGB pixels and no data.
func pngWithSize(w, h uint32) []byte {
	chunk := func(kind string, data []byte) []byte {
		var b bytes.Buffer
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		b.WriteString(kind)
		b.Write(data)
		binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(append([]byte(kind), data...)))
		return b.Bytes()
	}
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 2, 0, 0, 0)
	out := []byte("\x89PNG\r\n\x1a\n")
	out = append(out, chunk("IHDR", ihdr)...)
	return append(out, chunk("IEND", nil)...)
}

// TestDecodeImageErrors checks that unreadable, corrupt, unsupported and
// oversized files give errors naming the path.
func TestDecodeImageErrors(t *testing.T) {
	read := func(name string) []byte {
		data, err := os.ReadFile(filepath.Join(testImages, name))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	png, jpg, gif := read("rgb.png"), read("photo420.jpg"), read("frame.gif")
	tests := []struct {
		name string
		data []byte // nil: no file
		want string
	}{
		{"missing.png", nil, "no such file"},
		{"empty.png", []byte{}, "unsupported image format"},
		{"text.jpg", []byte("not an image at all"), "unsupported image format"},
		{"bitmap.bmp", append([]byte("BM"), make([]byte, 60)...), "unsupported image format"},
		{"truncated.png", png[:len(png)/2], ""},
		{"truncated.jpg", jpg[:len(jpg)/2], ""},
		{"truncated.gif", gif[:len(gif)-20], ""},
		{"header-only.jpg", jpg[:200], ""},
		{"huge.png", pngWithSize(100000, 100000), "exceeds the limit"},
		{"zero.png", pngWithSize(0, 5), ""},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name)
			if tt.data != nil {
				if err := os.WriteFile(path, tt.data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			img, err := DecodeImage(path)
			if err == nil {
				t.Fatalf("no error; decoded %T %v", img, img.Bounds())
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want the path and %q", err, tt.want)
			}
		})
	}
}

// TestDecodeCorruptNeverPanics decodes and preprocesses randomly damaged
// copies of the test images: each must give an image or an error, never a
// panic.
func TestDecodeCorruptNeverPanics(t *testing.T) {
	rng := uint64(12345)
	next := func(n int) int { // xorshift, deterministic
		rng ^= rng << 13
		rng ^= rng >> 7
		rng ^= rng << 17
		return int(rng % uint64(n))
	}
	decoded, failed := 0, 0
	for _, name := range testImageNames(t) {
		orig, err := os.ReadFile(filepath.Join(testImages, name))
		if err != nil {
			t.Fatal(err)
		}
		for trial := 0; trial < 40; trial++ {
			data := append([]byte(nil), orig...)
			for k := 0; k <= trial%4; k++ {
				data[next(len(data))] = byte(next(256))
			}
			if trial%5 == 4 {
				data = data[:next(len(data))]
			}
			img, err := decodeImageBytes(data)
			if err != nil {
				failed++
				continue
			}
			decoded++
			if _, _, _, err := (Preprocess{Resize: 9, Crop: 8}).Apply(img); err != nil {
				t.Errorf("%s trial %d: preprocess: %v", name, trial, err)
			}
		}
	}
	t.Logf("%d damaged files decoded, %d refused", decoded, failed)
	if decoded == 0 || failed == 0 {
		t.Fatalf("damage gave %d decoded and %d refused files: not a useful test", decoded, failed)
	}
}

// TestToRGBConversions checks PIL's conversion rules on images built in
// memory, for the cases the test files do not hold.
func TestToRGBConversions(t *testing.T) {
	rect := image.Rect(0, 0, 2, 1)
	g16 := image.NewGray16(rect)
	g16.SetGray16(0, 0, color.Gray16{Y: 1000})
	g16.SetGray16(1, 0, color.Gray16{Y: 200})
	nrgba := image.NewNRGBA(rect)
	nrgba.SetNRGBA(0, 0, color.NRGBA{200, 100, 50, 0})
	nrgba.SetNRGBA(1, 0, color.NRGBA{10, 20, 30, 128})
	rgba := image.NewRGBA(rect) // premultiplied: straight colour recovered
	rgba.SetRGBA(0, 0, color.RGBA{100, 50, 25, 128})
	rgba.SetRGBA(1, 0, color.RGBA{9, 8, 7, 255})
	rgba64 := image.NewRGBA64(rect)
	rgba64.SetRGBA64(0, 0, color.RGBA64{0x1234, 0x5678, 0x9abc, 0xffff})
	rgba64.SetRGBA64(1, 0, color.RGBA64{0x1000, 0x2000, 0x3000, 0x8000})
	pal := image.NewPaletted(rect, color.Palette{color.NRGBA{1, 2, 3, 0}})
	pal.Pix[1] = 7 // past the palette: black
	cmyk := image.NewCMYK(rect)
	cmyk.SetCMYK(0, 0, color.CMYK{100, 50, 0, 30})
	cmyk.SetCMYK(1, 0, color.CMYK{10, 200, 90, 128})
	gray := image.NewGray(image.Rect(0, 0, 4, 3))
	for i := range gray.Pix {
		gray.Pix[i] = uint8(20 * i)
	}
	sub := gray.SubImage(image.Rect(1, 1, 3, 2)) // offset bounds
	tests := []struct {
		name string
		img  image.Image
		want []uint8
	}{
		// PIL's I -> RGB clips at 255 rather than scaling.
		{"gray16", g16, []uint8{255, 255, 255, 200, 200, 200}},
		// Alpha is dropped, colour kept as stored.
		{"nrgba", nrgba, []uint8{200, 100, 50, 10, 20, 30}},
		{"rgba", rgba, []uint8{199, 99, 49, 9, 8, 7}},
		{"rgba64", rgba64, []uint8{0x12, 0x56, 0x9a, 0x1f, 0x3f, 0x5f}},
		{"paletted", pal, []uint8{1, 2, 3, 0, 0, 0}},
		// Values from PIL 9.4's Image.new("CMYK", ...).convert("RGB").
		{"cmyk", cmyk, []uint8{137, 181, 225, 122, 27, 82}},
		{"subimage", sub, []uint8{100, 100, 100, 120, 120, 120}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ToRGB(tt.img)
			if got.Width != 2 || got.Height != 1 || !bytes.Equal(got.Pix, tt.want) {
				t.Fatalf("got %dx%d %v, want 2x1 %v", got.Width, got.Height, got.Pix, tt.want)
			}
		})
	}
}

// TestToRGBSubImageYCbCr checks that a YCbCr image whose bounds do not start
// at the origin (libjpeg's upsampling is not defined for it) converts
// through its colour model, pixel for pixel equal to the same region's
// conversion with Go's YCbCr model.
func TestToRGBSubImageYCbCr(t *testing.T) {
	img, err := DecodeImage(filepath.Join(testImages, "photo420.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	r := image.Rect(3, 2, 20, 15)
	sub := img.(*image.YCbCr).SubImage(r)
	got := ToRGB(sub)
	if got.Width != r.Dx() || got.Height != r.Dy() {
		t.Fatalf("size %dx%d, want %v", got.Width, got.Height, r.Size())
	}
	for y := 0; y < r.Dy(); y++ {
		for x := 0; x < r.Dx(); x++ {
			c := color.NRGBAModel.Convert(img.At(r.Min.X+x, r.Min.Y+y)).(color.NRGBA)
			o := got.Pix[3*(y*got.Width+x):]
			if o[0] != c.R || o[1] != c.G || o[2] != c.B {
				t.Fatalf("pixel (%d, %d) = %v, want %v", x, y, o[:3], c)
			}
		}
	}
}

// referenceResize is an independent float64 version of antialiased
// bilinear (triangle filter) resampling: each output pixel averages the
// input pixels whose centres lie within the filter's support, weighted by
// the triangle scaled to the downscale factor, with no intermediate
// rounding. PIL's result rounds its intermediate image to 8 bits, so it may
// differ from this by one level.
func referenceResize(m *RGBImage, w, h int) []float64 {
	weights := func(in, out int) [][]float64 {
		scale := float64(in) / float64(out)
		fs := max(scale, 1)
		ws := make([][]float64, out)
		for o := range out {
			center := (float64(o) + 0.5) * scale
			ws[o] = make([]float64, in)
			sum := 0.0
			for i := range in {
				d := math.Abs(float64(i)+0.5-center) / fs
				if d < 1 {
					ws[o][i] = 1 - d
					sum += 1 - d
				}
			}
			for i := range in {
				ws[o][i] /= sum
			}
		}
		return ws
	}
	wx, wy := weights(m.Width, w), weights(m.Height, h)
	out := make([]float64, 3*w*h)
	for y := range h {
		for x := range w {
			for c := range 3 {
				s := 0.0
				for iy := range m.Height {
					if wy[y][iy] == 0 {
						continue
					}
					for ix := range m.Width {
						s += wy[y][iy] * wx[x][ix] * float64(m.Pix[3*(iy*m.Width+ix)+c])
					}
				}
				out[3*(y*w+x)+c] = s
			}
		}
	}
	return out
}

// TestResizeMatchesReference resizes random images to sizes the oracle does
// not cover (down by large and fractional factors, up, one axis only) and
// compares with referenceResize: within one level.
func TestResizeMatchesReference(t *testing.T) {
	rng := uint32(99)
	next := func() uint8 {
		rng = rng*1664525 + 1013904223
		return uint8(rng >> 24)
	}
	tests := []struct{ inW, inH, w, h int }{
		{40, 30, 9, 7},   // factor 4.4
		{17, 23, 5, 11},  // fractional, different per axis
		{13, 9, 29, 20},  // up
		{20, 20, 20, 7},  // vertical only
		{31, 12, 8, 12},  // horizontal only
		{50, 3, 1, 1},    // to a single pixel
		{1, 1, 6, 4},     // from a single pixel
		{64, 48, 63, 47}, // barely down
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%dx%d-%dx%d", tt.inW, tt.inH, tt.w, tt.h), func(t *testing.T) {
			m := newRGBImage(tt.inW, tt.inH)
			for i := range m.Pix {
				m.Pix[i] = next()
			}
			got, err := m.Resize(tt.w, tt.h)
			if err != nil {
				t.Fatal(err)
			}
			if got.Width != tt.w || got.Height != tt.h {
				t.Fatalf("size %dx%d", got.Width, got.Height)
			}
			want := referenceResize(m, tt.w, tt.h)
			worst := 0.0
			for i, v := range want {
				worst = max(worst, math.Abs(float64(got.Pix[i])-v))
			}
			if worst > 1 {
				t.Fatalf("max difference %.3f levels from the float64 reference", worst)
			}
		})
	}
}

// TestResizeRegion checks that resizing only a region, as Apply does for
// its crop, gives the same bytes as cropping the full resize.
func TestResizeRegion(t *testing.T) {
	m := newRGBImage(37, 29)
	for i := range m.Pix {
		m.Pix[i] = uint8(i*37 + i/7)
	}
	tests := []struct {
		w, h int
		r    image.Rectangle
	}{
		{16, 12, image.Rect(2, 1, 14, 11)}, // down both ways
		{50, 40, image.Rect(0, 7, 50, 30)}, // up
		{37, 20, image.Rect(5, 3, 30, 19)}, // vertical pass only
		{20, 29, image.Rect(4, 4, 17, 28)}, // horizontal pass only
		{9, 7, image.Rect(8, 6, 9, 7)},     // one pixel
	}
	for _, tt := range tests {
		full, err := m.Resize(tt.w, tt.h)
		if err != nil {
			t.Fatal(err)
		}
		want, err := full.Crop(tt.r.Min.X, tt.r.Min.Y, tt.r.Dx(), tt.r.Dy())
		if err != nil {
			t.Fatal(err)
		}
		got := m.resizeRegion(tt.w, tt.h, tt.r, pilCoeffs)
		if got.Width != want.Width || got.Height != want.Height || !bytes.Equal(got.Pix, want.Pix) {
			t.Errorf("%dx%d region %v differs from the cropped full resize", tt.w, tt.h, tt.r)
		}
	}
}

// TestResizeErrors checks sizes Resize refuses, and that resizing to the
// same size copies.
func TestResizeErrors(t *testing.T) {
	m := newRGBImage(4, 3)
	for i := range m.Pix {
		m.Pix[i] = uint8(i + 1)
	}
	for _, sz := range [][2]int{{0, 3}, {4, -1}, {1 << 20, 1 << 20}} {
		if _, err := m.Resize(sz[0], sz[1]); err == nil {
			t.Errorf("resize to %v: no error", sz)
		}
	}
	same, err := m.Resize(4, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(same.Pix, m.Pix) {
		t.Fatal("resize to the same size changed the pixels")
	}
	same.Pix[0] = 99
	if m.Pix[0] == 99 {
		t.Fatal("resize to the same size shares the pixels")
	}
	if _, err := (&RGBImage{}).Resize(2, 2); err == nil {
		t.Error("resizing an empty image: no error")
	}
}

// TestCenterOffset checks torchvision's crop position, halves rounded to
// even as Python's round does.
func TestCenterOffset(t *testing.T) {
	tests := []struct{ size, crop, want int }{
		{16, 16, 0},
		{17, 16, 0}, // 0.5
		{19, 16, 2}, // 1.5
		{21, 16, 2}, // 2.5
		{24, 16, 4},
		{25, 16, 4}, // 4.5
		{27, 16, 6}, // 5.5
		{256, 224, 16},
		{293, 224, 34}, // 34.5
	}
	for _, tt := range tests {
		if got := centerOffset(tt.size, tt.crop); got != tt.want {
			t.Errorf("centerOffset(%d, %d) = %d, want %d", tt.size, tt.crop, got, tt.want)
		}
	}
}

// TestPreprocessOutputSize checks the output sizes, torchvision's shorter-side
// arithmetic and the errors.
func TestPreprocessOutputSize(t *testing.T) {
	tests := []struct {
		p          Preprocess
		w, h       int
		outW, outH int
		err        string
	}{
		{Preprocess{}, 37, 29, 37, 29, ""},
		{Preprocess{Resize: 256}, 500, 375, 341, 256, ""}, // 256*500/375 = 341.33
		{Preprocess{Resize: 256}, 375, 500, 256, 341, ""},
		{Preprocess{Resize: 256}, 300, 300, 256, 256, ""},
		{Preprocess{Resize: 10}, 3, 1000, 10, 3333, ""},
		{Preprocess{Resize: 256, Crop: 224}, 500, 375, 224, 224, ""},
		{Preprocess{Crop: 224}, 500, 375, 224, 224, ""},
		{Preprocess{Crop: 224}, 200, 375, 0, 0, "image of 200x375 is smaller than the 224x224 crop"},
		{Preprocess{Resize: 200, Crop: 224}, 500, 375, 0, 0, "image resized to 266x200 is smaller than the 224x224 crop"},
		{Preprocess{Resize: -1}, 5, 5, 0, 0, "negative"},
		{Preprocess{Resize: 300}, 1, 200000, 0, 0, "image resized to 300x60000000 exceeds the limit"},
		{Preprocess{}, 0, 5, 0, 0, "empty"},
	}
	for _, tt := range tests {
		w, h, err := tt.p.OutputSize(tt.w, tt.h)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%+v on %dx%d: error %v, want %q", tt.p, tt.w, tt.h, err, tt.err)
			}
			continue
		}
		if err != nil || h != tt.outH || w != tt.outW {
			t.Errorf("%+v on %dx%d: %dx%d, %v; want %dx%d", tt.p, tt.w, tt.h, w, h, err, tt.outW, tt.outH)
		}
	}
}

// TestNormalizeLayout checks the CHW layout and channel statistics on a
// two-pixel image, against values computed here in float64 (within float32
// rounding; the oracle test checks bit equality).
func TestNormalizeLayout(t *testing.T) {
	m := &RGBImage{Width: 2, Height: 1, Pix: []uint8{0, 128, 255, 10, 20, 30}}
	got := make([]float32, 6)
	if err := m.Normalize(got); err != nil {
		t.Fatal(err)
	}
	mean := []float64{0.485, 0.456, 0.406}
	std := []float64{0.229, 0.224, 0.225}
	for c := range 3 {
		for x := range 2 {
			want := (float64(m.Pix[3*x+c])/255 - mean[c]) / std[c]
			if g := float64(got[2*c+x]); math.Abs(g-want) > 1e-6*max(1, math.Abs(want)) {
				t.Errorf("channel %d pixel %d: %v, want %v", c, x, g, want)
			}
		}
	}
	if err := m.Normalize(make([]float32, 5)); err == nil {
		t.Error("short destination: no error")
	}
}

// BenchmarkPreprocessImageNet decodes a 500x375 4:2:0 JPEG (ImageNet's
// typical size) and runs the ImageNet evaluation transform on it.
func BenchmarkPreprocessImageNet(b *testing.B) {
	src := image.NewYCbCr(image.Rect(0, 0, 500, 375), image.YCbCrSubsampleRatio420)
	for i := range src.Y {
		src.Y[i] = uint8(i * 7 % 251)
	}
	for i := range src.Cb {
		src.Cb[i], src.Cr[i] = uint8(i*3%256), uint8(i*5%256)
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, src, &jpeg.Options{Quality: 90}); err != nil {
		b.Fatal(err)
	}
	p := Preprocess{Resize: 256, Crop: 224}
	b.SetBytes(int64(buf.Len()))
	for b.Loop() {
		img, err := decodeImageBytes(buf.Bytes())
		if err != nil {
			b.Fatal(err)
		}
		if _, _, _, err := p.Apply(img); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPreprocessRealPhotos compares the evaluation transform (Resize,
// CenterCrop, ToTensor, Normalize) with torchvision's on scikit-learn's two
// sample photos, 640x427 real photographs, starting from the same decoded
// pixels: the outputs must be bit-identical. Without scikit-learn the test
// is skipped, except in CI (oracle.Cached; tools/setup.sh installs it).
func TestPreprocessRealPhotos(t *testing.T) {
	script, err := os.ReadFile("testdata/torch_preprocess.py")
	if err != nil {
		t.Fatal(err)
	}
	dir := oracle.Cached(t, []string{"torch", "torchvision", "numpy", "PIL", "sklearn"}, func(py, dir string) {
		oracle.RunFile(t, py, "testdata/torch_preprocess.py", "preprocess-photos", dir)
	}, script, []byte("preprocess-photos"))
	var manifest map[string][]int
	oracle.ReadJSON(t, filepath.Join(dir, "manifest.json"), &manifest)
	configs := map[string]Preprocess{"r256c224": {Resize: 256, Crop: 224}, "r93c91": {Resize: 93, Crop: 91}}
	compared := 0
	for _, name := range []string{"photo-china.jpg", "photo-flower.jpg"} {
		shape := manifest[name+".rgb"]
		if len(shape) != 3 || shape[2] != 3 {
			t.Fatalf("%s: shape %v in the oracle's manifest", name, shape)
		}
		h, w := shape[0], shape[1]
		raw, err := os.ReadFile(filepath.Join(dir, name+".rgb"))
		if err != nil {
			t.Fatal(err)
		}
		img := image.NewRGBA(image.Rect(0, 0, w, h))
		for i := 0; i < w*h; i++ {
			copy(img.Pix[4*i:4*i+3], raw[3*i:3*i+3])
			img.Pix[4*i+3] = 255
		}
		for cname, p := range configs {
			got, oh, ow, err := p.Apply(img)
			if err != nil {
				t.Fatalf("%s %s: %v", name, cname, err)
			}
			want := oracle.ReadFloat32s(t, filepath.Join(dir, name+"."+cname+".f32"))
			if ws := manifest[name+"."+cname+".f32"]; len(ws) != 3 || ws[1] != oh || ws[2] != ow || len(got) != len(want) {
				t.Fatalf("%s %s: shape 3x%dx%d, torchvision %v", name, cname, oh, ow, ws)
			}
			differ, maxDiff := 0, 0.0
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					differ++
					maxDiff = max(maxDiff, math.Abs(float64(got[i]-want[i])))
				}
			}
			if differ > 0 {
				t.Errorf("%s %s: %d of %d values differ from torchvision's (max %g)", name, cname, differ, len(want), maxDiff)
			}
			compared++
		}
	}
	if compared != 4 {
		t.Fatalf("%d comparisons, want 4", compared)
	}
}
