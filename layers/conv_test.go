package layers

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
)

// convCase is one convolution of the tests: x [n, cin, h, w], weights [cout,
// cin, kh, kw], with or without bias.
type convCase struct {
	n, cin, h, w int
	cout, kh, kw int
	p            ConvParams
	bias         bool
}

func (c convCase) String() string {
	s := fmt.Sprintf("%dx%dx%dx%d-%dx%dx%d-s%dx%dp%dx%dd%dx%d", c.n, c.cin, c.h, c.w, c.cout, c.kh, c.kw,
		c.p.Stride[0], c.p.Stride[1], c.p.Padding[0], c.p.Padding[1], c.p.Dilation[0], c.p.Dilation[1])
	if c.bias {
		s += "-bias"
	}
	return s
}

func (c convCase) geom(t testing.TB) convGeom {
	t.Helper()
	g, err := newConvGeom("test", []int{c.n, c.cin, c.h, c.w}, []int{c.cout, c.cin, c.kh, c.kw}, c.p)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// convTaps calls f for every (output pixel, input pixel, tap) triple of a
// convolution where the tap reads a real input element (not padding), with
// the flat indices of y (without channel), x (without channel) and w's tap.
func convTaps(g convGeom, f func(n, oy, ix, tap int)) {
	st, pad, dil := g.p.Stride, g.p.Padding, g.p.Dilation
	for n := 0; n < g.n; n++ {
		for oh := 0; oh < g.ho; oh++ {
			for ow := 0; ow < g.wo; ow++ {
				for kh := 0; kh < g.kh; kh++ {
					ih := oh*st[0] - pad[0] + kh*dil[0]
					if ih < 0 || ih >= g.h {
						continue
					}
					for kw := 0; kw < g.kw; kw++ {
						iw := ow*st[1] - pad[1] + kw*dil[1]
						if iw < 0 || iw >= g.w {
							continue
						}
						f(n, oh*g.wo+ow, ih*g.w+iw, kh*g.kw+kw)
					}
				}
			}
		}
	}
}

// convReference is y = conv2d(x, w) + b in float64 (b may be nil).
func convReference(g convGeom, x, w, b []float64) []float64 {
	hw, ohw, kk := g.h*g.w, g.ho*g.wo, g.kh*g.kw
	y := make([]float64, g.n*g.cout*ohw)
	if b != nil {
		for i := range y {
			y[i] = b[i/ohw%g.cout]
		}
	}
	convTaps(g, func(n, oy, ix, tap int) {
		for co := 0; co < g.cout; co++ {
			var sum float64
			for ci := 0; ci < g.cin; ci++ {
				sum += x[(n*g.cin+ci)*hw+ix] * w[(co*g.cin+ci)*kk+tap]
			}
			y[(n*g.cout+co)*ohw+oy] += sum
		}
	})
	return y
}

// convDataReference is the gradient of x for output gradient gy.
func convDataReference(g convGeom, gy, w []float64) []float64 {
	hw, ohw, kk := g.h*g.w, g.ho*g.wo, g.kh*g.kw
	dx := make([]float64, g.n*g.cin*hw)
	convTaps(g, func(n, oy, ix, tap int) {
		for ci := 0; ci < g.cin; ci++ {
			var sum float64
			for co := 0; co < g.cout; co++ {
				sum += gy[(n*g.cout+co)*ohw+oy] * w[(co*g.cin+ci)*kk+tap]
			}
			dx[(n*g.cin+ci)*hw+ix] += sum
		}
	})
	return dx
}

// convWeightReference is the gradients of w and b for output gradient gy.
func convWeightReference(g convGeom, x, gy []float64) (dw, db []float64) {
	hw, ohw, kk := g.h*g.w, g.ho*g.wo, g.kh*g.kw
	dw = make([]float64, g.cout*g.cin*kk)
	convTaps(g, func(n, oy, ix, tap int) {
		for co := 0; co < g.cout; co++ {
			gv := gy[(n*g.cout+co)*ohw+oy]
			for ci := 0; ci < g.cin; ci++ {
				dw[(co*g.cin+ci)*kk+tap] += gv * x[(n*g.cin+ci)*hw+ix]
			}
		}
	})
	db = make([]float64, g.cout)
	for i, v := range gy {
		db[i/ohw%g.cout] += v
	}
	return dw, db
}

func convWiden(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// convCases are the shapes of the kernel tests: batch 1 and 3, prime
// channel counts and sizes, every kind of kernel, stride, padding and
// dilation, the 1x1 GEMM path, and tensors that cross the split device's
// 12 KiB segments (the last ones: a single image larger than a segment,
// weights larger than one, and output channels past one tile).
func convCases() []convCase {
	p := func(s0, s1, p0, p1, d0, d1 int) ConvParams {
		return ConvParams{Stride: [2]int{s0, s1}, Padding: [2]int{p0, p1}, Dilation: [2]int{d0, d1}}
	}
	return []convCase{
		{n: 1, cin: 1, h: 1, w: 1, cout: 1, kh: 1, kw: 1, bias: true},
		{n: 3, cin: 7, h: 5, w: 3, cout: 5, kh: 1, kw: 1},
		{n: 3, cin: 17, h: 13, w: 13, cout: 7, kh: 1, kw: 1, bias: true},
		// Enough pixels that the GPU weight gradient splits each image's
		// sum in two with the default configuration (slices of 128).
		{n: 2, cin: 3, h: 16, w: 16, cout: 5, kh: 1, kw: 1},
		{n: 3, cin: 3, h: 7, w: 5, cout: 5, kh: 3, kw: 3, p: p(1, 1, 1, 1, 1, 1), bias: true},
		{n: 1, cin: 17, h: 13, w: 11, cout: 7, kh: 3, kw: 3, p: p(2, 2, 1, 1, 1, 1)},
		{n: 3, cin: 5, h: 11, w: 13, cout: 37, kh: 7, kw: 7, p: p(2, 2, 3, 3, 1, 1), bias: true},
		{n: 1, cin: 3, h: 13, w: 7, cout: 5, kh: 2, kw: 3, p: p(3, 1, 0, 1, 2, 1)},
		{n: 3, cin: 7, h: 9, w: 9, cout: 5, kh: 1, kw: 1, p: p(2, 2, 0, 0, 1, 1), bias: true},
		{n: 1, cin: 3, h: 13, w: 13, cout: 3, kh: 3, kw: 3, p: p(1, 1, 2, 2, 2, 2)},
		// Taps that read only padding, left out of the sum: one pixel
		// (ResNet's last stage at 32 px: 8 of 9 taps), 2x2 to 1x1 at
		// stride 2, a column (TestConv2dAllPadding: every tap).
		{n: 5, cin: 19, h: 1, w: 1, cout: 9, kh: 3, kw: 3, p: p(1, 1, 1, 1, 1, 1), bias: true},
		{n: 3, cin: 6, h: 2, w: 2, cout: 5, kh: 3, kw: 3, p: p(2, 2, 1, 1, 1, 1)},
		{n: 2, cin: 4, h: 3, w: 1, cout: 3, kh: 5, kw: 3, p: p(1, 1, 2, 1, 1, 1), bias: true},
		{n: 3, cin: 5, h: 1, w: 17, cout: 3, kh: 1, kw: 3, p: p(1, 1, 0, 1, 1, 1), bias: true},
		{n: 3, cin: 1, h: 11, w: 11, cout: 1, kh: 3, kw: 3, p: p(3, 3, 0, 0, 1, 1)},
		{n: 1, cin: 5, h: 5, w: 7, cout: 3, kh: 1, kw: 1, p: p(1, 1, 3, 1, 1, 1), bias: true},
		{n: 3, cin: 3, h: 7, w: 7, cout: 5, kh: 3, kw: 2, p: p(2, 3, 3, 1, 1, 2)},
		{n: 1, cin: 3, h: 37, w: 37, cout: 7, kh: 3, kw: 3, p: p(1, 1, 1, 1, 1, 1)},
		{n: 3, cin: 17, h: 9, w: 9, cout: 67, kh: 3, kw: 3, p: p(1, 1, 1, 1, 1, 1), bias: true},
		{n: 3, cin: 67, h: 8, w: 8, cout: 5, kh: 3, kw: 3, p: p(2, 2, 1, 1, 1, 1)},
	}
}

// runConvCase checks the forward pass, both backward passes and the bias
// gradient of c on d with the kernels of cfg, against float64 references.
func runConvCase(t *testing.T, d *vk.Device, c convCase, cfg convConfig) {
	t.Helper()
	g := c.geom(t)
	seed := uint64(g.n*1000003 + g.cin*10007 + g.h*101 + g.cout*13 + g.kh)
	hx, hw, hg := randn(seed, g.n*g.cin*g.h*g.w), randn(seed+1, g.cout*g.cin*g.kh*g.kw), randn(seed+2, g.n*g.cout*g.ho*g.wo)
	x, w, gy := upload(t, d, hx, g.xShape()...), upload(t, d, hw, g.wShape()...), upload(t, d, hg, g.yShape()...)
	var b *Tensor
	var hb []float64
	if c.bias {
		hb32 := randn(seed+3, g.cout)
		b, hb = upload(t, d, hb32, g.cout), convWiden(hb32)
	}
	y, dx, dw, db := empty(t, d, g.yShape()...), empty(t, d, g.xShape()...), empty(t, d, g.wShape()...), empty(t, d, g.cout)
	s := stream(t, d)
	cfg.tmp = streamScratch(s)
	if err := conv2dForward(s, y, x, w, b, c.p, cfg); err != nil {
		t.Fatal(err)
	}
	if err := conv2dBackwardData(s, dx, gy, w, c.p, cfg); err != nil {
		t.Fatal(err)
	}
	var dbArg *Tensor
	if c.bias {
		dbArg = db
	}
	if err := conv2dBackwardWeight(s, dw, dbArg, x, gy, c.p, cfg); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "forward", run(t, s, y), convReference(g, convWiden(hx), convWiden(hw), hb), 1e-5)
	ctx := context.Background()
	got, err := dx.Download(ctx)
	if err != nil {
		t.Fatal(err)
	}
	assertClose(t, "input gradient", got, convDataReference(g, convWiden(hg), convWiden(hw)), 1e-5)
	wantW, wantB := convWeightReference(g, convWiden(hx), convWiden(hg))
	if got, err = dw.Download(ctx); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "weight gradient", got, wantW, 1e-5)
	if c.bias {
		if got, err = db.Download(ctx); err != nil {
			t.Fatal(err)
		}
		assertClose(t, "bias gradient", got, wantB, 1e-5)
	}
}

// TestConv2dKernels runs the three convolution kernels, as the device
// chooses them, on every test shape.
func TestConv2dKernels(t *testing.T) {
	for _, dev := range testDevices(t) {
		cfg := convConfigFor(dev.dev.Info)
		for _, c := range convCases() {
			t.Run(dev.name+"/"+c.String(), func(t *testing.T) { runConvCase(t, dev.dev, c, cfg) })
		}
	}
}

// TestConv2dVariants runs the kernels the test device would not choose: the
// GPU kernels (im2col and GEMM, both tile sizes; the weight gradient also cut
// into many chunks of pixels, whose partial sums Sum adds; the GEMM
// convolutions one image at a time with split sums; the gather kernel that
// they fall back to where an operand crosses a buffer segment), the CPU kernel
// without the subgroup broadcast (subgroups other than 8 wide), and 1x1
// convolutions through the gather kernel instead of Gemm.
func TestConv2dVariants(t *testing.T) {
	gpu := vk.DeviceInfo{Type: "discrete-gpu", MaxWorkgroupSize: 1024, MaxSharedMemory: 48 << 10, SubgroupSize: 32}
	small := gpu
	small.MaxWorkgroupSize = 128
	narrow := vk.DeviceInfo{Type: "cpu", SubgroupSize: 4}
	chunks := convConfigFor(gpu)
	k := *chunks.wgrad
	k.minChunk, k.targetGroups = 8, 1<<16
	chunks.wgrad = &k
	// The GEMM convolutions with a column matrix of one image at most and
	// every sum split into as many slices as it has divisors up to 16.
	split := convConfigFor(gpu)
	ic := *split.im2col
	ic.colCap, ic.targetGroups, ic.minSlice = 1, 1<<20, 1
	split.im2col = &ic
	gather := convConfigFor(gpu)
	gather.im2col = nil
	variants := []struct {
		name string
		cfg  func(info vk.DeviceInfo) convConfig
	}{
		{"gpu", func(vk.DeviceInfo) convConfig { return convConfigFor(gpu) }},
		{"gpu-small", func(vk.DeviceInfo) convConfig { return convConfigFor(small) }},
		{"gpu-chunks", func(vk.DeviceInfo) convConfig { return chunks }},
		{"gpu-split", func(vk.DeviceInfo) convConfig { return split }},
		{"gpu-gather", func(vk.DeviceInfo) convConfig { return gather }},
		{"no-broadcast", func(vk.DeviceInfo) convConfig { return convConfigFor(narrow) }},
		{"gather-1x1", func(info vk.DeviceInfo) convConfig {
			cfg := convConfigFor(info)
			cfg.pointwise = false
			return cfg
		}},
	}
	cases := convCases()
	for _, dev := range testDevices(t) {
		for _, v := range variants {
			cfg := v.cfg(dev.dev.Info)
			for i, c := range cases {
				// The two largest shapes only where they exercise the
				// variant's splitting: they take most of the time.
				if i >= len(cases)-2 && dev.name == "whole" {
					continue
				}
				if v.name == "gather-1x1" && (c.kh != 1 || c.kw != 1) {
					continue
				}
				t.Run(dev.name+"/"+v.name+"/"+c.String(), func(t *testing.T) { runConvCase(t, dev.dev, c, cfg) })
			}
		}
	}
}

// TestConv2dGrad checks the tape op: its forward pass against the float64
// reference and the gradients of x, w and b against finite differences.
func TestConv2dGrad(t *testing.T) {
	p := func(s, pad, d int) ConvParams {
		return ConvParams{Stride: [2]int{s, s}, Padding: [2]int{pad, pad}, Dilation: [2]int{d, d}}
	}
	for _, c := range []convCase{
		{n: 1, cin: 3, h: 5, w: 7, cout: 5, kh: 3, kw: 3, p: p(1, 1, 1), bias: true},
		{n: 3, cin: 2, h: 7, w: 5, cout: 3, kh: 3, kw: 2, p: p(2, 1, 1)},
		{n: 3, cin: 5, h: 3, w: 3, cout: 7, kh: 1, kw: 1, bias: true},
		{n: 1, cin: 1, h: 7, w: 7, cout: 2, kh: 3, kw: 3, p: p(3, 3, 2), bias: true},
	} {
		g := c.geom(t)
		inputs := [][]int{g.xShape(), g.wShape()}
		if c.bias {
			inputs = append(inputs, []int{g.cout})
		}
		checkGrad(t, gradCase{
			name:   c.String(),
			inputs: inputs,
			op: func(tp *Tape, in []*Var) *Var {
				var b *Var
				if len(in) > 2 {
					b = in[2]
				}
				return tp.Conv2d(in[0], in[1], b, c.p)
			},
			ref: func(in [][]float64) []float64 {
				var b []float64
				if len(in) > 2 {
					b = in[2]
				}
				return convReference(g, in[0], in[1], b)
			},
			fwdTol: 1e-5, gradTol: 1e-4,
		})
	}
}

// TestConv2dFrozen checks that inputs that take no gradient get none: a
// constant input (only the weights' gradient is computed) and frozen
// weights with a bias (the bias gradient alone, without dw).
func TestConv2dFrozen(t *testing.T) {
	p := ConvParams{Stride: [2]int{2, 2}, Padding: [2]int{1, 1}}
	g, err := newConvGeom("test", []int{3, 3, 5, 5}, []int{4, 3, 3, 3}, p)
	if err != nil {
		t.Fatal(err)
	}
	for _, frozen := range []int{0, 1} {
		checkGrad(t, gradCase{
			name:   fmt.Sprintf("frozen-%d", frozen),
			inputs: [][]int{g.xShape(), g.wShape(), {g.cout}},
			noGrad: []int{frozen},
			op: func(tp *Tape, in []*Var) *Var {
				return tp.Conv2d(in[0], in[1], in[2], p)
			},
			ref: func(in [][]float64) []float64 {
				return convReference(g, in[0], in[1], in[2])
			},
			fwdTol: 1e-5, gradTol: 1e-4,
		})
	}
}

// TestConv2dErrors checks that misshapen operands are refused with errors
// that name the problem.
func TestConv2dErrors(t *testing.T) {
	d := testDevices(t)[0].dev
	s := stream(t, d)
	x := empty(t, d, 2, 3, 8, 8)
	w := empty(t, d, 4, 3, 3, 3)
	y := empty(t, d, 2, 4, 6, 6)
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"channels", Conv2dForward(s, y, x, empty(t, d, 4, 5, 3, 3), nil, ConvParams{}), "channels"},
		{"output shape", Conv2dForward(s, empty(t, d, 2, 4, 8, 8), x, w, nil, ConvParams{}), "want [2 4 6 6]"},
		{"bias shape", Conv2dForward(s, y, x, w, empty(t, d, 3), ConvParams{}), "bias has shape"},
		{"rank", Conv2dForward(s, y, empty(t, d, 3, 8, 8), w, nil, ConvParams{}), "want [batch"},
		{"kernel too big", Conv2dForward(s, y, empty(t, d, 2, 3, 2, 2), w, nil, ConvParams{}), "does not fit"},
		{"negative", Conv2dForward(s, y, x, w, nil, ConvParams{Padding: [2]int{-1, 0}}), "negative"},
		{"overlap", Conv2dForward(s, x, x, empty(t, d, 3, 3, 1, 1), nil, ConvParams{}), "overlaps"},
		{"data shape", Conv2dBackwardData(s, x, empty(t, d, 2, 4, 5, 6), w, ConvParams{}), "output gradient has shape"},
		{"weight grad shape", Conv2dBackwardWeight(s, w, empty(t, d, 5), x, y, ConvParams{}), "bias gradient has shape"},
		{"nothing asked", Conv2dBackwardWeight(s, nil, nil, x, y, ConvParams{}), "neither"},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, c.err, c.want)
		}
	}
}

// TestConvOutputSize checks the output length formula against PyTorch's
// documented one, including kernels that do not fit.
func TestConvOutputSize(t *testing.T) {
	for _, c := range []struct{ in, k, s, p, d, want int }{
		{224, 7, 2, 3, 1, 112}, {56, 3, 1, 1, 1, 56}, {56, 3, 2, 1, 1, 28}, {56, 1, 2, 0, 1, 28},
		{7, 3, 1, 0, 2, 3}, {1, 1, 0, 0, 0, 1}, {2, 3, 1, 0, 1, 0}, {1, 3, 2, 0, 1, 0}, {5, 3, 3, 3, 1, 3},
	} {
		if got := ConvOutputSize(c.in, c.k, c.s, c.p, c.d); got != c.want {
			t.Errorf("ConvOutputSize(%d, %d, %d, %d, %d) = %d, want %d", c.in, c.k, c.s, c.p, c.d, got, c.want)
		}
	}
}

// TestNewConv2d checks the layer's initialisation bounds (PyTorch's default)
// and that its Forward is the tape op.
func TestNewConv2d(t *testing.T) {
	d := testDevices(t)[0].dev
	ctx := context.Background()
	c, err := NewConv2d(ctx, d, 3, 5, [2]int{3, 3}, ConvParams{Padding: [2]int{1, 1}}, true, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	bound := 1 / math.Sqrt(27)
	for i, v := range []*Var{c.Weight, c.Bias} {
		got, err := v.Value.Download(ctx)
		if err != nil {
			t.Fatal(err)
		}
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, x := range got {
			lo, hi = min(lo, float64(x)), max(hi, float64(x))
		}
		// 135 uniform weights spread over most of the range; 5 biases
		// at least differ.
		if lo < -bound || hi > bound || (i == 0 && hi-lo < bound) || hi == lo {
			t.Errorf("%v: values in [%g, %g], want them spread over [-%g, %g]", v.Shape(), lo, hi, bound, bound)
		}
	}
	hx := randn(5, 2*3*4*4)
	x := upload(t, d, hx, 2, 3, 4, 4)
	s := stream(t, d)
	tp := NewTape(s)
	y := c.Forward(tp, Constant(x))
	if y == nil {
		t.Fatal(tp.Err())
	}
	tp.Keep(y)
	defer y.Value.Release()
	tp.Release()
	hw, _ := c.Weight.Value.Download(ctx)
	hb, _ := c.Bias.Value.Download(ctx)
	g, _ := newConvGeom("test", []int{2, 3, 4, 4}, []int{5, 3, 3, 3}, c.Params)
	assertClose(t, "forward", run(t, s, y.Value), convReference(g, convWiden(hx), convWiden(hw), convWiden(hb)), 1e-5)
	if _, err := NewConv2d(ctx, d, 0, 5, [2]int{3, 3}, ConvParams{}, false, rand.New(rand.NewPCG(1, 2))); err == nil {
		t.Error("NewConv2d with 0 input channels: no error")
	}
}

// TestConv2dAllPadding is a convolution whose every tap reads padding (one
// pixel, a 1x1 kernel, stride 2 and padding 1: outputs at rows and columns
// -1 and 1): the forward pass writes the bias alone, the input and weight
// gradients are zeros (written over what the tensors held), and the bias
// gradient is the output gradient's sum.
func TestConv2dAllPadding(t *testing.T) {
	p := ConvParams{Stride: [2]int{2, 2}, Padding: [2]int{1, 1}, Dilation: [2]int{1, 1}}
	for _, dev := range testDevices(t) {
		t.Run(dev.name, func(t *testing.T) {
			d := dev.dev
			hb, hg := randn(3, 5), randn(4, 2*5*2*2)
			x, w, b := upload(t, d, randn(1, 2*3), 2, 3, 1, 1), upload(t, d, randn(2, 5*3), 5, 3, 1, 1), upload(t, d, hb, 5)
			g := upload(t, d, hg, 2, 5, 2, 2)
			y, dx, dw, db := empty(t, d, 2, 5, 2, 2), empty(t, d, 2, 3, 1, 1), empty(t, d, 5, 3, 1, 1), empty(t, d, 5)
			s := stream(t, d)
			for _, z := range []*Tensor{y, dx, dw} {
				if err := Fill(s, z, 7); err != nil {
					t.Fatal(err)
				}
			}
			if err := Conv2dForward(s, y, x, w, b, p); err != nil {
				t.Fatal(err)
			}
			if err := Conv2dBackwardData(s, dx, g, w, p); err != nil {
				t.Fatal(err)
			}
			if err := Conv2dBackwardWeight(s, dw, db, x, g, p); err != nil {
				t.Fatal(err)
			}
			wantY := make([]float64, 2*5*4)
			wantDB := make([]float64, 5)
			for i := range wantY {
				m := i / 4 % 5
				wantY[i] = float64(hb[m])
				wantDB[m] += float64(hg[i])
			}
			assertClose(t, "output", run(t, s, y), wantY, 0)
			assertClose(t, "bias gradient", run(t, s, db), wantDB, 1e-6)
			for name, z := range map[string]*Tensor{"input gradient": dx, "weight gradient": dw} {
				for i, v := range run(t, s, z) {
					if v != 0 {
						t.Fatalf("%s[%d] = %g, want 0 (every tap reads padding)", name, i, v)
					}
				}
			}
		})
	}
}

// TestConvIm2colChoice checks where the GEMM convolutions run and how they
// split a sum: GPUs only, into equal slices (a divisor of the sum) of at
// least minSlice terms, no more than the device needs or the caller allows.
func TestConvIm2colChoice(t *testing.T) {
	if v := os.Getenv(kernelsEnv); v != "" {
		t.Skipf("%s=%s: the kernels do not follow the device", kernelsEnv, v)
	}
	if c := chooseConvIm2col(vk.DeviceInfo{Type: "cpu", MaxTexelElements: 1 << 27, MaxStorageBufferRange: 1 << 29}); c != nil {
		t.Errorf("cpu device: %+v, want the gather kernels", c)
	}
	c := chooseConvIm2col(vk.DeviceInfo{Type: "discrete-gpu", MaxWorkgroupSize: 1024, MaxSharedMemory: 48 << 10})
	if c == nil {
		t.Fatal("gpu: no GEMM convolutions")
	}
	for _, tc := range []struct{ k, groups, most, want int }{
		{4608, 56, 16, 9},  // ResNet-50's 3x3 at 512 channels, 7x7: 9 slices of 512
		{2304, 100, 16, 6}, // 256 channels, 14x14
		{576, 392, 16, 2},  // 64 channels, 56x56: 392 groups want 2
		{147, 1568, 16, 1}, // the stem fills the device
		{4608, 56, 4, 4},   // the caller's bound
		{127, 1, 16, 1},    // a prime: no equal slices
		{256, 1, 16, 2},    // slices of at least minSlice (128)
		{1, 1, 16, 1},
	} {
		if got := c.slices(tc.k, tc.groups, tc.most); got != tc.want {
			t.Errorf("slices(%d, %d, %d) = %d, want %d", tc.k, tc.groups, tc.most, got, tc.want)
		}
	}
}
