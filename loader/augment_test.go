package loader

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/go-gl/mathgl/mgl64"
)

// rrcCase must match RRC_CASES in testdata/torch_augment.py.
type rrcCase struct {
	width, height int
	scale, ratio  [2]float64
}

var rrcCases = map[string]rrcCase{
	"wide": {500, 375, [2]float64{0.08, 1}, [2]float64{3.0 / 4, 4.0 / 3}},
	"tall": {60, 400, [2]float64{0.08, 1}, [2]float64{3.0 / 4, 4.0 / 3}},
	"swav": {320, 240, [2]float64{0.05, 0.14}, [2]float64{3.0 / 4, 4.0 / 3}},
}

const rrcDraws = 20000

// ksCritical is the two-sample Kolmogorov-Smirnov statistic's critical
// value at significance 0.001 for two samples of rrcDraws:
// 1.95 * sqrt(2 / n). A correct implementation fails once in a thousand
// seeds; the seeds are fixed, so the test is deterministic.
var ksCritical = 1.95 * math.Sqrt(2.0/rrcDraws)

// ksStatistic returns the largest distance between the empirical
// distribution functions of a and b.
func ksStatistic(a, b []float64) float64 {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	var i, j int
	d := 0.0
	for i < len(a) && j < len(b) {
		x := min(a[i], b[j])
		for i < len(a) && a[i] == x {
			i++
		}
		for j < len(b) && b[j] == x {
			j++
		}
		d = max(d, math.Abs(float64(i)/float64(len(a))-float64(j)/float64(len(b))))
	}
	return d
}

// meanVar returns a sample's mean and variance.
func meanVar(x []float64) (float64, float64) {
	var s, s2 float64
	for _, v := range x {
		s += v
	}
	m := s / float64(len(x))
	for _, v := range x {
		s2 += (v - m) * (v - m)
	}
	return m, s2 / float64(len(x)-1)
}

// cropFeatures returns each crop's area fraction, log aspect ratio and
// horizontal and vertical centre (as fractions of the image).
func cropFeatures(boxes []CropBox, width, height int) [4][]float64 {
	var f [4][]float64
	for _, b := range boxes {
		f[0] = append(f[0], float64(b.Width*b.Height)/float64(width*height))
		f[1] = append(f[1], math.Log(float64(b.Width)/float64(b.Height)))
		f[2] = append(f[2], (float64(b.Left)+float64(b.Width)/2)/float64(width))
		f[3] = append(f[3], (float64(b.Top)+float64(b.Height)/2)/float64(height))
	}
	return f
}

// TestRandomResizedCropParamsMatchesTorchvision compares 20000 draws of
// RandomResizedCropParams with 20000 of torchvision's get_params for each
// case: the area fraction, log aspect ratio and centre distributions by a
// two-sample KS test at significance 0.001, their means within 4 standard
// errors, and the share of centre-crop fallbacks within 4 standard errors.
func TestRandomResizedCropParamsMatchesTorchvision(t *testing.T) {
	dir := torchAugment(t, "rrc")
	for name, c := range rrcCases {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(dir, "rrc."+name+".i32"))
			if err != nil {
				t.Fatal(err)
			}
			if len(raw) != 16*rrcDraws {
				t.Fatalf("%d bytes, want %d", len(raw), 16*rrcDraws)
			}
			want := make([]CropBox, rrcDraws)
			for k := range want {
				v := func(n int) int { return int(int32(binary.LittleEndian.Uint32(raw[16*k+4*n:]))) }
				want[k] = CropBox{Top: v(0), Left: v(1), Height: v(2), Width: v(3)}
			}
			rng := rand.New(rand.NewPCG(1, uint64(len(name))))
			got := make([]CropBox, rrcDraws)
			for k := range got {
				b, err := RandomResizedCropParams(rng, c.width, c.height, c.scale, c.ratio)
				if err != nil {
					t.Fatal(err)
				}
				if b.Top < 0 || b.Left < 0 || b.Width <= 0 || b.Height <= 0 || b.Top+b.Height > c.height || b.Left+b.Width > c.width {
					t.Fatalf("crop %+v outside the %dx%d image", b, c.width, c.height)
				}
				got[k] = b
			}
			gf, wf := cropFeatures(got, c.width, c.height), cropFeatures(want, c.width, c.height)
			for k, feature := range []string{"area fraction", "log aspect", "centre x", "centre y"} {
				if d := ksStatistic(gf[k], wf[k]); d > ksCritical {
					t.Errorf("%s: KS statistic %.4f > %.4f", feature, d, ksCritical)
				}
				gm, gv := meanVar(gf[k])
				wm, wv := meanVar(wf[k])
				if se := math.Sqrt((gv + wv) / rrcDraws); math.Abs(gm-wm) > 4*se {
					t.Errorf("%s: mean %.5f, torchvision %.5f (4 standard errors: %.5f)", feature, gm, wm, 4*se)
				}
			}
			fallback, err := RandomResizedCropParams(rand.New(rand.NewPCG(0, 0)), c.width, c.height, [2]float64{9, 10}, c.ratio)
			if err != nil {
				t.Fatal(err)
			}
			gp := float64(countBox(got, fallback)) / rrcDraws
			wp := float64(countBox(want, fallback)) / rrcDraws
			p := (gp + wp) / 2
			if se := math.Sqrt(2 * p * (1 - p) / rrcDraws); math.Abs(gp-wp) > 4*se {
				t.Errorf("fallback share %.4f, torchvision %.4f (4 standard errors: %.4f)", gp, wp, 4*se)
			}
			if name == "tall" && wp < 0.01 {
				t.Errorf("the tall case should exercise the fallback; torchvision's share is %.4f", wp)
			}
		})
	}
}

func countBox(boxes []CropBox, b CropBox) int {
	n := 0
	for _, x := range boxes {
		if x == b {
			n++
		}
	}
	return n
}

// TestRandomResizedCropFallback checks the central crop after ten misses,
// computed by hand from torchvision's code.
func TestRandomResizedCropFallback(t *testing.T) {
	ratio := [2]float64{3.0 / 4, 4.0 / 3}
	for _, tc := range []struct {
		w, h  int
		scale [2]float64
		want  CropBox
	}{
		// Too narrow: full width, height round(10 / 0.75) = 13.
		{10, 100, [2]float64{0.9, 1}, CropBox{Top: 43, Left: 0, Height: 13, Width: 10}},
		// Too wide: full height, width round(10 * 4/3) = 13.
		{100, 10, [2]float64{0.9, 1}, CropBox{Top: 0, Left: 43, Height: 10, Width: 13}},
		// Aspect in range, areas too large to fit: the whole image.
		{40, 37, [2]float64{1.5, 2}, CropBox{Top: 0, Left: 0, Height: 37, Width: 40}},
	} {
		rng := rand.New(rand.NewPCG(3, 4))
		for range 50 {
			got, err := RandomResizedCropParams(rng, tc.w, tc.h, tc.scale, ratio)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("%dx%d scale %v: %+v, want %+v", tc.w, tc.h, tc.scale, got, tc.want)
			}
		}
	}
	if _, err := RandomResizedCropParams(rand.New(rand.NewPCG(0, 0)), 0, 5, [2]float64{0.08, 1}, ratio); err == nil {
		t.Error("empty image: no error")
	}
	if _, err := RandomResizedCropParams(rand.New(rand.NewPCG(0, 0)), 5, 5, [2]float64{1, 0.08}, ratio); err == nil {
		t.Error("reversed scale: no error")
	}
	if _, err := RandomResizedCropParams(rand.New(rand.NewPCG(0, 0)), 5, 5, [2]float64{0.08, 1}, [2]float64{0.75, math.Inf(1)}); err == nil {
		t.Error("infinite ratio: no error")
	}
}

// withinSigmas reports whether k successes in n trials is within 4
// standard deviations of probability p.
func withinSigmas(k, n int, p float64) bool {
	return math.Abs(float64(k)-float64(n)*p) <= 4*math.Sqrt(float64(n)*p*(1-p))
}

// TestChance checks the event frequencies of the pipelines' probabilities
// over 20000 draws, within 4 standard deviations.
func TestChance(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, p := range []float64{0.5, 0.8, 0.2, 0.1} {
		k := 0
		for range rrcDraws {
			if Chance(rng, p) {
				k++
			}
		}
		if !withinSigmas(k, rrcDraws, p) {
			t.Errorf("p=%v: %d of %d", p, k, rrcDraws)
		}
	}
	for _, p := range []float64{0, 1} {
		for range 1000 {
			if Chance(rng, p) != (p == 1) {
				t.Fatalf("p=%v gave the other outcome", p)
			}
		}
	}
}

// TestColorJitterSample checks ColorJitter's draws over 20000 samples: each
// of the 24 orders within 4 standard deviations of 1/24, each factor inside
// its range with the range's mean within 4 standard errors, and disabled
// adjustments left out.
func TestColorJitterSample(t *testing.T) {
	cj := ColorJitter{Brightness: 0.4, Contrast: 0.4, Saturation: 0.2, Hue: 0.1}
	lo := [4]float64{0.6, 0.6, 0.8, -0.1}
	hi := [4]float64{1.4, 1.4, 1.2, 0.1}
	rng := rand.New(rand.NewPCG(7, 8))
	orders := map[[4]int]int{}
	var sums [4]float64
	for range rrcDraws {
		p, err := cj.Sample(rng)
		if err != nil {
			t.Fatal(err)
		}
		orders[p.Order]++
		for k := range 4 {
			if !p.Enabled[k] || p.Factors[k] < lo[k] || p.Factors[k] > hi[k] {
				t.Fatalf("adjustment %d: enabled %v, factor %v outside [%v, %v]", k, p.Enabled[k], p.Factors[k], lo[k], hi[k])
			}
			sums[k] += p.Factors[k]
		}
	}
	if len(orders) != 24 {
		t.Errorf("%d distinct orders, want 24", len(orders))
	}
	for o, k := range orders {
		if !withinSigmas(k, rrcDraws, 1.0/24) {
			t.Errorf("order %v: %d of %d", o, k, rrcDraws)
		}
	}
	for k := range 4 {
		mean := sums[k] / rrcDraws
		se := (hi[k] - lo[k]) / math.Sqrt(12*rrcDraws)
		if math.Abs(mean-(lo[k]+hi[k])/2) > 4*se {
			t.Errorf("adjustment %d: mean factor %.5f, want %.5f within %.5f", k, mean, (lo[k]+hi[k])/2, 4*se)
		}
	}
	p, err := ColorJitter{Brightness: 0.4}.Sample(rng)
	if err != nil {
		t.Fatal(err)
	}
	if p.Enabled != [4]bool{true, false, false, false} {
		t.Errorf("brightness only: enabled %v", p.Enabled)
	}
	if _, err := (ColorJitter{Hue: 0.6}).Sample(rng); err == nil {
		t.Error("hue 0.6: no error")
	}
}

// TestJitterParamsApply checks that Apply composes the single adjustments
// in the drawn order (the adjustments do not commute, so the order shows).
func TestJitterParamsApply(t *testing.T) {
	c := augmentCases(t)[0]
	p := JitterParams{Order: [4]int{3, 1, 0, 2}, Factors: [4]float64{1.3, 0.7, 1.2, 0.08}, Enabled: [4]bool{true, true, true, true}}
	got, err := p.Apply(c.in)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := c.in.AdjustHue(0.08)
	want, _ = want.AdjustContrast(0.7)
	want, _ = want.AdjustBrightness(1.3)
	want, _ = want.AdjustSaturation(1.2)
	if d, n := maxLevelDiff(t, got, want); d != 0 {
		t.Errorf("differs from the composition by %d levels in %d values", d, n)
	}
	other := p
	other.Order = [4]int{0, 1, 2, 3}
	got2, err := other.Apply(c.in)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := maxLevelDiff(t, got, got2); d == 0 {
		t.Error("the order made no difference; the test image cannot show it")
	}
	none, err := JitterParams{Order: [4]int{0, 1, 2, 3}}.Apply(c.in)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := maxLevelDiff(t, none, c.in); d != 0 {
		t.Error("no adjustment enabled changed the image")
	}
}

// TestBlurSigma checks the blur radius draws: inside [0.1, 2.0), mean
// within 4 standard errors of 1.05.
func TestBlurSigma(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	sum := 0.0
	for range rrcDraws {
		s := BlurSigma(rng)
		if s < 0.1 || s >= 2.0 {
			t.Fatalf("sigma %v outside [0.1, 2.0)", s)
		}
		sum += s
	}
	if mean, se := sum/rrcDraws, 1.9/math.Sqrt(12*rrcDraws); math.Abs(mean-1.05) > 4*se {
		t.Errorf("mean sigma %.5f, want 1.05 within %.5f", mean, 4*se)
	}
}

// TestHFlip checks the mirror on an asymmetric image and that flipping
// twice restores it (the oracle comparison is in TestColorOpsMatchPIL).
func TestHFlip(t *testing.T) {
	m := &RGBImage{Width: 3, Height: 2, Pix: []uint8{
		1, 2, 3, 4, 5, 6, 7, 8, 9,
		10, 11, 12, 13, 14, 15, 16, 17, 18,
	}}
	want := []uint8{7, 8, 9, 4, 5, 6, 1, 2, 3, 16, 17, 18, 13, 14, 15, 10, 11, 12}
	if got := m.HFlip(); !slices.Equal(got.Pix, want) {
		t.Errorf("got %v, want %v", got.Pix, want)
	}
	if got := m.HFlip().HFlip(); !slices.Equal(got.Pix, m.Pix) {
		t.Error("flipping twice changed the image")
	}
}

// resizedCrops must match RESIZED_CROPS in testdata/torch_augment.py.
var resizedCrops = map[string][2]int{"rc40x32": {40, 32}, "rc16x16": {16, 16}, "rc8x6": {8, 6}}

// oracleBox is the box torch_augment.py crops from a w x h image.
func oracleBox(w, h int) CropBox {
	return CropBox{Top: h / 5, Left: w / 6, Height: h / 2, Width: w / 2}
}

// resizedCropReference is the composition ResizedCrop replaces, and the
// reference it is tested against: crop, PIL's resize of the cropped image
// (Resize or ResizeBicubic, each checked against torchvision), mirror.
func resizedCropReference(m *RGBImage, box CropBox, w, h int, interp Interpolation, flip bool) (*RGBImage, error) {
	c, err := m.Crop(box.Left, box.Top, box.Width, box.Height)
	if err != nil {
		return nil, err
	}
	var out *RGBImage
	switch interp {
	case Bilinear:
		out, err = c.Resize(w, h)
	case Bicubic:
		out, err = c.ResizeBicubic(w, h)
	default:
		return nil, fmt.Errorf("interpolation %d", interp)
	}
	if err != nil {
		return nil, err
	}
	if flip {
		out = out.HFlip()
	}
	return out, nil
}

// interpolations names the filters for the tests; the bicubic oracle
// outputs carry the suffix "bicubic".
var interpolations = []struct {
	name   string
	interp Interpolation
	suffix string
}{{"bilinear", Bilinear, ""}, {"bicubic", Bicubic, "bicubic"}}

// TestResizedCropMatchesTorchvision checks ResizedCrop against
// torchvision's resized_crop (and its mirror) byte for byte, bilinear and
// bicubic, on the test images and scikit-learn's two photographs, for
// crops enlarged and shrunk.
func TestResizedCropMatchesTorchvision(t *testing.T) {
	for _, c := range augmentCases(t) {
		for op, size := range resizedCrops {
			for _, f := range interpolations {
				t.Run(c.name+"/"+op+"/"+f.name, func(t *testing.T) {
					want, ok := c.want(t, op+f.suffix)
					if !ok {
						t.Fatal("no oracle output")
					}
					for _, flip := range []bool{false, true} {
						got, err := c.in.ResizedCrop(oracleBox(c.in.Width, c.in.Height), size[0], size[1], f.interp, flip)
						if err != nil {
							t.Fatal(err)
						}
						w := want
						if flip {
							w = want.HFlip()
						}
						if d, n := maxLevelDiff(t, got, w); d != 0 {
							t.Errorf("flip %v: max difference %d levels (%d values)", flip, d, n)
						}
					}
				})
			}
		}
	}
}

// resizedCropBoxes returns the crops TestResizedCropMatchesComposition
// tries on a w x h image, with their output sizes: boxes of one column,
// one row and one pixel, the whole image, boxes against each edge and
// corner, sides equal to the output's (where PIL skips a pass), enlarged,
// shrunk, and mixed; then n random boxes of random output sizes.
func resizedCropBoxes(rng *rand.Rand, w, h, n int) []struct {
	box        CropBox
	outW, outH int
} {
	type tc = struct {
		box        CropBox
		outW, outH int
	}
	cs := []tc{
		{CropBox{Top: 0, Left: 0, Height: h, Width: 1}, 7, 5},
		{CropBox{Top: h / 3, Left: w - 1, Height: h - h/3, Width: 1}, 3, 11},
		{CropBox{Top: 0, Left: w / 2, Height: 1, Width: w - w/2}, 9, 4},
		{CropBox{Top: h - 1, Left: 0, Height: 1, Width: w}, 5, 1},
		{CropBox{Top: h / 2, Left: w / 2, Height: 1, Width: 1}, 6, 3},
		{CropBox{Top: 0, Left: 0, Height: 1, Width: 1}, 1, 1},
		{CropBox{Top: 0, Left: 0, Height: h, Width: w}, 13, 9},
		{CropBox{Top: 0, Left: 0, Height: h, Width: w}, w, h},
		{CropBox{Top: 0, Left: 0, Height: h, Width: w}, 2*w + 1, h},
		{CropBox{Top: 0, Left: 0, Height: h, Width: w}, w, h/2 + 1},
		{CropBox{Top: 0, Left: 0, Height: h / 2, Width: w / 2}, 17, 19},
		{CropBox{Top: 0, Left: w - w/2, Height: h / 2, Width: w / 2}, 17, 19},
		{CropBox{Top: h - h/2, Left: 0, Height: h / 2, Width: w / 2}, 17, 19},
		{CropBox{Top: h - h/2, Left: w - w/2, Height: h / 2, Width: w / 2}, 17, 19},
		{CropBox{Top: 1, Left: 1, Height: h - 2, Width: w - 2}, w - 2, 23},
		{CropBox{Top: 1, Left: 1, Height: h - 2, Width: w - 2}, 29, h - 2},
		{CropBox{Top: h / 4, Left: w / 4, Height: 3, Width: 5}, 224, 224},
		{CropBox{Top: h / 4, Left: w / 4, Height: max(h/2, 1), Width: 2}, 3, 2},
	}
	for range n {
		bw, bh := 1+rng.IntN(w), 1+rng.IntN(h)
		b := CropBox{Top: rng.IntN(h - bh + 1), Left: rng.IntN(w - bw + 1), Height: bh, Width: bw}
		// Mostly small outputs, to keep the test quick; a fifth at the
		// training size.
		ow, oh := 1+rng.IntN(48), 1+rng.IntN(48)
		if rng.IntN(5) == 0 {
			ow, oh = 224, 224
		}
		cs = append(cs, tc{b, ow, oh})
	}
	return cs
}

// TestResizedCropMatchesComposition checks the one-pass ResizedCrop
// against the crop, PIL's resize and the mirror composed
// (resizedCropReference), byte for byte, on every test image and
// scikit-learn's two photographs: the boxes of resizedCropBoxes and 20
// random ones an image, both filters, flip on and off.
func TestResizedCropMatchesComposition(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 13))
	compared := 0
	for _, c := range augmentCases(t) {
		for _, tc := range resizedCropBoxes(rng, c.in.Width, c.in.Height, 20) {
			for _, f := range interpolations {
				for _, flip := range []bool{false, true} {
					want, err := resizedCropReference(c.in, tc.box, tc.outW, tc.outH, f.interp, flip)
					if err != nil {
						t.Fatalf("%s: reference of %+v: %v", c.name, tc.box, err)
					}
					got, err := c.in.ResizedCrop(tc.box, tc.outW, tc.outH, f.interp, flip)
					if err != nil {
						t.Fatalf("%s %+v to %dx%d: %v", c.name, tc.box, tc.outW, tc.outH, err)
					}
					if d, n := maxLevelDiff(t, got, want); d != 0 {
						t.Errorf("%s %+v to %dx%d, %s, flip %v: max difference %d levels (%d values)", c.name, tc.box, tc.outW, tc.outH, f.name, flip, d, n)
					}
					compared++
				}
			}
		}
	}
	t.Logf("%d crops compared", compared)
}

// TestCropAffine checks the map ResizedCrop is built on: it sends the
// output's corners to the box's (the left and right ones exchanged when
// mirrored), and each output pixel's centre to the centre of the taps
// ResizedCrop computes for it, the box's corner plus PIL's (k + 0.5) *
// scale for the column k of the unmirrored output.
func TestCropAffine(t *testing.T) {
	for _, tc := range []struct {
		box  CropBox
		w, h int
	}{
		{CropBox{Top: 50, Left: 100, Height: 250, Width: 300}, 224, 224},
		{CropBox{Top: 3, Left: 7, Height: 5, Width: 1}, 96, 96},
		{CropBox{Top: 0, Left: 0, Height: 427, Width: 640}, 17, 640},
	} {
		for _, flip := range []bool{false, true} {
			a := cropAffine(tc.box, tc.w, tc.h, flip)
			at := func(x, y float64) mgl64.Vec2 { return a.Mul3x1(mgl64.Vec3{x, y, 1}).Vec2() }
			left, right := float64(tc.box.Left), float64(tc.box.Left+tc.box.Width)
			if flip {
				left, right = right, left
			}
			if p := at(0, 0); p != (mgl64.Vec2{left, float64(tc.box.Top)}) {
				t.Errorf("%+v flip %v: (0, 0) -> %v", tc.box, flip, p)
			}
			if p := at(float64(tc.w), float64(tc.h)); !p.ApproxEqualThreshold(mgl64.Vec2{right, float64(tc.box.Top + tc.box.Height)}, 1e-9) {
				t.Errorf("%+v flip %v: (%d, %d) -> %v", tc.box, flip, tc.w, tc.h, p)
			}
			sx, sy := a.At(0, 0), a.At(1, 1)
			if math.Abs(sx) != float64(tc.box.Width)/float64(tc.w) || sy != float64(tc.box.Height)/float64(tc.h) || (sx < 0) != flip {
				t.Errorf("%+v flip %v: scales %v, %v", tc.box, flip, sx, sy)
			}
			for x := range tc.w {
				k := x
				if flip {
					k = tc.w - 1 - x
				}
				want := float64(tc.box.Left) + (float64(k)+0.5)*math.Abs(sx)
				if got := at(float64(x)+0.5, 0.5)[0]; math.Abs(got-want) > 1e-9 {
					t.Fatalf("%+v flip %v: column %d's centre %v, taps' %v", tc.box, flip, x, got, want)
				}
			}
		}
	}
}

// TestResizedCropErrors checks that impossible crops are errors, not
// panics.
func TestResizedCropErrors(t *testing.T) {
	m := newRGBImage(6, 4)
	good := CropBox{Top: 1, Left: 2, Height: 3, Width: 4}
	if _, err := m.ResizedCrop(good, 5, 5, Bicubic, true); err != nil {
		t.Fatalf("a valid crop: %v", err)
	}
	for _, tc := range []struct {
		name   string
		m      *RGBImage
		box    CropBox
		w, h   int
		interp Interpolation
	}{
		{"box right of the image", m, CropBox{Top: 0, Left: 3, Height: 2, Width: 4}, 5, 5, Bilinear},
		{"box below the image", m, CropBox{Top: 2, Left: 0, Height: 3, Width: 2}, 5, 5, Bilinear},
		{"negative left", m, CropBox{Top: 0, Left: -1, Height: 2, Width: 2}, 5, 5, Bilinear},
		{"negative top", m, CropBox{Top: -1, Left: 0, Height: 2, Width: 2}, 5, 5, Bicubic},
		{"empty box", m, CropBox{Top: 0, Left: 0, Height: 2, Width: 0}, 5, 5, Bilinear},
		{"negative height", m, CropBox{Top: 3, Left: 0, Height: -2, Width: 2}, 5, 5, Bilinear},
		{"overflowing box", m, CropBox{Top: 0, Left: math.MaxInt, Height: 2, Width: 2}, 5, 5, Bilinear},
		{"zero width", m, good, 0, 5, Bilinear},
		{"negative height", m, good, 5, -1, Bicubic},
		{"too many pixels", m, good, 1 << 20, 1 << 20, Bilinear},
		{"unknown filter", m, good, 5, 5, Interpolation(7)},
		{"short pixel buffer", &RGBImage{Width: 6, Height: 4, Pix: make([]uint8, 71)}, good, 5, 5, Bilinear},
		{"empty image", &RGBImage{}, CropBox{Height: 1, Width: 1}, 5, 5, Bilinear},
	} {
		if _, err := tc.m.ResizedCrop(tc.box, tc.w, tc.h, tc.interp, false); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

// TestResizeBicubicMatchesTorchvision checks crop + ResizeBicubic against
// torchvision's resized_crop with InterpolationMode.BICUBIC (PIL's
// bicubic) byte for byte, upscaling and downscaling.
func TestResizeBicubicMatchesTorchvision(t *testing.T) {
	for _, c := range augmentCases(t) {
		for op, size := range resizedCrops {
			t.Run(c.name+"/"+op, func(t *testing.T) {
				want, ok := c.want(t, op+"bicubic")
				if !ok {
					t.Fatal("no oracle output")
				}
				b := oracleBox(c.in.Width, c.in.Height)
				crop, err := c.in.Crop(b.Left, b.Top, b.Width, b.Height)
				if err != nil {
					t.Fatal(err)
				}
				got, err := crop.ResizeBicubic(size[0], size[1])
				if err != nil {
					t.Fatal(err)
				}
				if d, n := maxLevelDiff(t, got, want); d != 0 {
					t.Errorf("max difference %d levels (%d values)", d, n)
				}
			})
		}
	}
}

// TestViewAugmentOrder replays Apply's draws by hand, with every random
// transform switched on, and checks the result equals the transforms
// composed in VICReg's order.
func TestViewAugmentOrder(t *testing.T) {
	c := augmentCases(t)[0]
	a := VICRegViews()[1]
	a.Size = 48
	a.FlipP, a.JitterP, a.GrayP, a.BlurP, a.SolarizeP = 1, 1, 1, 1, 1
	got, err := a.Apply(c.in, ViewRNG(11, 2, 3, 1))
	if err != nil {
		t.Fatal(err)
	}
	rng := ViewRNG(11, 2, 3, 1)
	box, err := RandomResizedCropParams(rng, c.in.Width, c.in.Height, a.Scale, [2]float64{3.0 / 4, 4.0 / 3})
	if err != nil {
		t.Fatal(err)
	}
	crop, _ := c.in.Crop(box.Left, box.Top, box.Width, box.Height)
	want, _ := crop.ResizeBicubic(48, 48)
	Chance(rng, 1)
	want = want.HFlip()
	Chance(rng, 1)
	p, _ := a.Jitter.Sample(rng)
	want, _ = p.Apply(want)
	Chance(rng, 1)
	want = want.Grayscale()
	Chance(rng, 1)
	want, _ = want.PILGaussianBlur(BlurSigma(rng))
	Chance(rng, 1)
	want = want.Solarize(128)
	if d, n := maxLevelDiff(t, got, want); d != 0 {
		t.Errorf("differs from the hand composition by %d levels in %d values", d, n)
	}
}

// TestViewAugmentDeterministic checks that a view depends only on (seed,
// epoch, sample, view): the same key gives the same bytes, another view,
// sample, epoch or seed other bytes.
func TestViewAugmentDeterministic(t *testing.T) {
	c := augmentCases(t)[0]
	views := VICRegViews()
	run := func(seed uint64, epoch, sample, view int) *RGBImage {
		a := views[view]
		a.Size = 32
		m, err := a.Apply(c.in, ViewRNG(seed, epoch, sample, view))
		if err != nil {
			t.Fatal(err)
		}
		if m.Width != 32 || m.Height != 32 {
			t.Fatalf("view of %dx%d, want 32x32", m.Width, m.Height)
		}
		return m
	}
	base := run(1, 2, 3, 0)
	if d, _ := maxLevelDiff(t, run(1, 2, 3, 0), base); d != 0 {
		t.Error("the same key gave another view")
	}
	for _, k := range [][4]int{{1, 2, 3, 1}, {1, 2, 4, 0}, {1, 3, 3, 0}, {2, 2, 3, 0}} {
		if d, _ := maxLevelDiff(t, run(uint64(k[0]), k[1], k[2], k[3]), base); d == 0 {
			t.Errorf("key %v gave the same view as (1, 2, 3, 0)", k)
		}
	}
}

// TestViewAugmentGrayscaleRate checks one of the pipeline's event rates
// end to end: the share of grey views over 2000 samples of VICReg's first
// view (at 8x8) within 4 standard deviations of RandomGrayscale's 0.2 (the
// test photo has colour, and ColorJitter's saturation factor is at least
// 0.8, so only RandomGrayscale makes a view grey).
func TestViewAugmentGrayscaleRate(t *testing.T) {
	var in *RGBImage
	for _, c := range augmentCases(t) {
		if c.name == "generated" {
			in = c.in
		}
	}
	a := VICRegViews()[0]
	a.Size = 8
	const n = 2000
	grey := 0
	for s := range n {
		m, err := a.Apply(in, ViewRNG(5, 0, s, 0))
		if err != nil {
			t.Fatal(err)
		}
		isGrey := true
		for i := 0; i < len(m.Pix); i += 3 {
			if m.Pix[i] != m.Pix[i+1] || m.Pix[i] != m.Pix[i+2] {
				isGrey = false
				break
			}
		}
		if isGrey {
			grey++
		}
	}
	if !withinSigmas(grey, n, 0.2) {
		t.Errorf("%d grey views of %d, want 0.2 of them within 4 standard deviations", grey, n)
	}
}

// benchImage is a 500x375 image of varied bytes, ImageNet's typical size.
func benchImage() *RGBImage {
	m := newRGBImage(500, 375)
	for i := range m.Pix {
		m.Pix[i] = uint8(i*7 + i/1500)
	}
	return m
}

// BenchmarkResizedCrop times ResizedCrop against the composition it
// replaces (crop, PIL's resize, mirror) for typical RandomResizedCrops of
// a 500x375 image to 224x224, mirrored: a 300x250 box (shrunk) and a
// 150x120 box (enlarged), with both filters.
func BenchmarkResizedCrop(b *testing.B) {
	m := benchImage()
	boxes := []struct {
		name string
		box  CropBox
	}{
		{"300x250", CropBox{Top: 50, Left: 100, Height: 250, Width: 300}},
		{"150x120", CropBox{Top: 200, Left: 300, Height: 120, Width: 150}},
	}
	for _, f := range interpolations {
		for _, bx := range boxes {
			b.Run(f.name+"/"+bx.name+"/composition", func(b *testing.B) {
				for b.Loop() {
					if _, err := resizedCropReference(m, bx.box, 224, 224, f.interp, true); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(f.name+"/"+bx.name+"/affine", func(b *testing.B) {
				for b.Loop() {
					if _, err := m.ResizedCrop(bx.box, 224, 224, f.interp, true); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkVICRegView times one view of VICReg's first transform on a
// 500x375 image.
func BenchmarkVICRegView(b *testing.B) {
	m := benchImage()
	a := VICRegViews()[0]
	s := 0
	for b.Loop() {
		if _, err := a.Apply(m, ViewRNG(1, 0, s, 0)); err != nil {
			b.Fatal(err)
		}
		s++
	}
}
