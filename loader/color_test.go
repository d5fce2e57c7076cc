package loader

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
)

// torchAugment runs testdata/torch_augment.py's command cmd (cached on the
// script, the script it imports and the test images) and returns its output
// directory.
func torchAugment(t *testing.T, cmd string) string {
	t.Helper()
	var parts [][]byte
	for _, f := range []string{"testdata/torch_augment.py", "testdata/torch_preprocess.py"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, data)
	}
	parts = append(parts, []byte(cmd))
	args := []string{cmd}
	if cmd == "ops" {
		for _, name := range testImageNames(t) {
			data, err := os.ReadFile(filepath.Join(testImages, name))
			if err != nil {
				t.Fatal(err)
			}
			parts = append(parts, []byte(name), data)
		}
	}
	return oracle.Cached(t, []string{"torch", "torchvision", "numpy", "PIL"}, func(py, dir string) {
		args = append(args, dir)
		if cmd == "ops" {
			args = append(args, testImages)
		}
		oracle.RunFile(t, py, "testdata/torch_augment.py", args...)
	}, parts...)
}

// augmentCase is one image of the "ops" oracle output: its RGB input and
// the outputs of the ops torchvision ran on it.
type augmentCase struct {
	name string
	in   *RGBImage
	dir  string
	ops  map[string]bool
	// manifest is the oracle's {file: [h, w, 3]}.
	manifest map[string][]int
}

// augmentCases reads the "ops" oracle output.
func augmentCases(t *testing.T) []augmentCase {
	t.Helper()
	dir := torchAugment(t, "ops")
	var manifest map[string][]int
	oracle.ReadJSON(t, filepath.Join(dir, "manifest.json"), &manifest)
	names := append([]string{"generated"}, testImageNames(t)...)
	// scikit-learn's sample photos, where the oracle had them.
	for _, photo := range []string{"photo-china.jpg", "photo-flower.jpg"} {
		if _, ok := manifest[photo+".rgb"]; ok {
			names = append(names, photo)
		} else if os.Getenv("CI") != "" {
			t.Fatalf("no %s in the oracle output in CI: tools/setup.sh installs python3-sklearn", photo)
		}
	}
	var cases []augmentCase
	for _, name := range names {
		c := augmentCase{name: name, in: readOracleRGB(t, dir, name+".rgb", manifest), dir: dir, ops: map[string]bool{}, manifest: manifest}
		for f := range manifest {
			if op, ok := strings.CutPrefix(f, name+"."); ok && op != "rgb" {
				c.ops[strings.TrimSuffix(op, ".rgb")] = true
			}
		}
		cases = append(cases, c)
	}
	if len(cases) < 10 {
		t.Fatalf("only %d images in the oracle output", len(cases))
	}
	return cases
}

// readOracleRGB reads one RGB image the oracle wrote.
func readOracleRGB(t *testing.T, dir, file string, manifest map[string][]int) *RGBImage {
	t.Helper()
	shape, ok := manifest[file]
	if !ok || len(shape) != 3 || shape[2] != 3 {
		t.Fatalf("%s: shape %v in the manifest", file, shape)
	}
	data, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != shape[0]*shape[1]*3 {
		t.Fatalf("%s: %d bytes for shape %v", file, len(data), shape)
	}
	return &RGBImage{Width: shape[1], Height: shape[0], Pix: data}
}

// want reads the oracle's output of op for c, or reports false when
// torchvision refused the op for this image.
func (c augmentCase) want(t *testing.T, op string) (*RGBImage, bool) {
	t.Helper()
	if !c.ops[op] {
		return nil, false
	}
	return readOracleRGB(t, c.dir, c.name+"."+op+".rgb", c.manifest), true
}

// maxLevelDiff returns the largest difference between two images' bytes,
// and how many bytes differ.
func maxLevelDiff(t *testing.T, got, want *RGBImage) (maxDiff, count int) {
	t.Helper()
	if got.Width != want.Width || got.Height != want.Height || len(got.Pix) != len(want.Pix) {
		t.Fatalf("got a %dx%d image, want %dx%d", got.Width, got.Height, want.Width, want.Height)
	}
	for i := range got.Pix {
		d := int(got.Pix[i]) - int(want.Pix[i])
		if d < 0 {
			d = -d
		}
		if d > 0 {
			count++
		}
		maxDiff = max(maxDiff, d)
	}
	return maxDiff, count
}

// TestColorOpsMatchPIL compares the colour operations with torchvision's
// functional transforms on PIL images, for every test image and a generated
// photo. Measured: all equal PIL's bytes exactly (max difference 0), so the
// bound is 0.
func TestColorOpsMatchPIL(t *testing.T) {
	ops := map[string]func(m *RGBImage) (*RGBImage, error){
		"hflip":       func(m *RGBImage) (*RGBImage, error) { return m.HFlip(), nil },
		"gray":        func(m *RGBImage) (*RGBImage, error) { return m.Grayscale(), nil },
		"solarize128": func(m *RGBImage) (*RGBImage, error) { return m.Solarize(128), nil },
	}
	for _, f := range []float64{0, 0.6, 1.37} {
		ops["bright"+fmtFactor(f)] = func(m *RGBImage) (*RGBImage, error) { return m.AdjustBrightness(f) }
	}
	for _, f := range []float64{0, 0.6, 1.4} {
		ops["contrast"+fmtFactor(f)] = func(m *RGBImage) (*RGBImage, error) { return m.AdjustContrast(f) }
	}
	for _, f := range []float64{0, 0.8, 1.2} {
		ops["sat"+fmtFactor(f)] = func(m *RGBImage) (*RGBImage, error) { return m.AdjustSaturation(f) }
	}
	for _, f := range []float64{0.1, -0.1, 0.0371, -0.0371, 0.5, -0.5} {
		ops["hue"+fmtFactor(f)] = func(m *RGBImage) (*RGBImage, error) { return m.AdjustHue(f) }
	}
	checkOps(t, ops, 0)
}

// fmtFactor formats a factor as the oracle script's op names do.
func fmtFactor(f float64) string {
	if f == 0 {
		return "0"
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return s
}

// checkOps runs every op on every oracle image and compares it with
// torchvision's output, within bound levels.
func checkOps(t *testing.T, ops map[string]func(m *RGBImage) (*RGBImage, error), bound int) {
	t.Helper()
	for _, c := range augmentCases(t) {
		for op, fn := range ops {
			t.Run(c.name+"/"+op, func(t *testing.T) {
				want, ok := c.want(t, op)
				got, err := fn(c.in)
				if !ok {
					if err == nil {
						t.Fatalf("torchvision refuses %s on a %dx%d image; got no error", op, c.in.Width, c.in.Height)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				d, n := maxLevelDiff(t, got, want)
				if n > 0 {
					t.Logf("max difference %d levels (%d of %d values differ)", d, n, len(want.Pix))
				}
				if d > bound {
					t.Errorf("max difference %d levels (%d of %d values differ), want <= %d", d, n, len(want.Pix), bound)
				}
			})
		}
	}
}

// TestColorOpsRejectBadFactors checks the factors torchvision refuses.
func TestColorOpsRejectBadFactors(t *testing.T) {
	m := &RGBImage{Width: 1, Height: 1, Pix: []uint8{10, 20, 30}}
	for name, fn := range map[string]func() (*RGBImage, error){
		"brightness -0.1": func() (*RGBImage, error) { return m.AdjustBrightness(-0.1) },
		"contrast NaN":    func() (*RGBImage, error) { return m.AdjustContrast(math.NaN()) },
		"saturation -1":   func() (*RGBImage, error) { return m.AdjustSaturation(-1) },
		"hue 0.51":        func() (*RGBImage, error) { return m.AdjustHue(0.51) },
		"hue NaN":         func() (*RGBImage, error) { return m.AdjustHue(math.NaN()) },
	} {
		if _, err := fn(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
