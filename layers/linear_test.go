package layers

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// linearRef is x w^T + b in float64 (b nil: no bias).
func linearRef(x, w, b []float64, n, in, out int) []float64 {
	y := make([]float64, n*out)
	for i := 0; i < n; i++ {
		for o := 0; o < out; o++ {
			var s float64
			for k := 0; k < in; k++ {
				s += x[i*in+k] * w[o*in+k]
			}
			if b != nil {
				s += b[o]
			}
			y[i*out+o] = s
		}
	}
	return y
}

func TestLinearGrad(t *testing.T) {
	cases := []struct {
		n, in, out int
		bias       bool
		frozenX    bool // a linear probe: the features take no gradient
	}{
		{1, 1, 1, true, false},
		{7, 13, 5, true, false},
		{3, 17, 11, false, false},
		{5, 9, 4, true, true},
		{25, 130, 7, true, false}, // x spans two 12 KiB segments
		{1, 3100, 2, true, false}, // rows of x and w are longer than a segment
	}
	for _, c := range cases {
		gc := gradCase{
			name:   fmt.Sprintf("%dx%d->%d/bias=%v/frozen=%v", c.n, c.in, c.out, c.bias, c.frozenX),
			inputs: [][]int{{c.n, c.in}, {c.out, c.in}},
			op: func(tp *Tape, in []*Var) *Var {
				var b *Var
				if c.bias {
					b = in[2]
				}
				return tp.Linear(in[0], in[1], b)
			},
			ref: func(in [][]float64) []float64 {
				var b []float64
				if c.bias {
					b = in[2]
				}
				return linearRef(in[0], in[1], b, c.n, c.in, c.out)
			},
			fwdTol: 1e-5, gradTol: 1e-4,
		}
		if c.bias {
			gc.inputs = append(gc.inputs, []int{c.out})
		}
		if c.frozenX {
			gc.noGrad = []int{0}
		}
		checkGrad(t, gc)
	}
}

// TestAddBias checks the bias kernel on its own, also on the [N, C, H, W]
// layout of a convolution and across buffer segments.
func TestAddBias(t *testing.T) {
	for _, dev := range testDevices(t) {
		for _, shape := range [][]int{{1, 1}, {7, 13}, {3, 5, 7, 11}, {2, 17, 300}, {41, 97}} {
			t.Run(fmt.Sprintf("%s/%v", dev.name, shape), func(t *testing.T) {
				n, c := elemCount(shape), shape[1]
				inner := n / (shape[0] * c)
				hy, hb := randn(uint64(n), n), randn(uint64(c), c)
				want := make([]float64, n)
				for i := range want {
					want[i] = float64(hy[i]) + float64(hb[(i/inner)%c])
				}
				y, b := upload(t, dev.dev, hy, shape...), upload(t, dev.dev, hb, c)
				s := stream(t, dev.dev)
				if err := AddBias(s, y, b); err != nil {
					t.Fatal(err)
				}
				assertClose(t, "add bias", run(t, s, y), want, elementTol)
			})
		}
	}
}

func TestLinearShapeErrors(t *testing.T) {
	d := vktest.Device(t)
	x := Constant(upload(t, d, randn(1, 12), 3, 4))
	w := Param(upload(t, d, randn(2, 15), 5, 3))
	b := Param(upload(t, d, randn(3, 4), 4))
	for name, op := range map[string]func(tp *Tape) *Var{
		"inner":  func(tp *Tape) *Var { return tp.Linear(x, w, nil) },
		"bias":   func(tp *Tape) *Var { return tp.Linear(x, Param(upload(t, d, randn(2, 20), 5, 4)), b) },
		"vector": func(tp *Tape) *Var { return tp.Linear(b, w, nil) },
	} {
		tp := NewTape(stream(t, d))
		if v := op(tp); v != nil || tp.Err() == nil {
			t.Errorf("%s: got a value and error %v; want an error", name, tp.Err())
		}
		tp.Release()
	}
}

// TestNewLinear checks the initialisation (the bound, the draw order from
// rng, the spread of U(-b, b)) and that Forward is the tape's Linear.
func TestNewLinear(t *testing.T) {
	ctx := context.Background()
	d := vktest.Device(t)
	const in, out = 50, 40
	l, err := NewLinear(ctx, d, in, out, true, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if got := l.Weight.Shape(); !slices.Equal(got, []int{out, in}) {
		t.Fatalf("weight %v", got)
	}
	if got := l.Bias.Shape(); !slices.Equal(got, []int{out}) {
		t.Fatalf("bias %v", got)
	}
	w, err := l.Weight.Value.Download(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Bias.Value.Download(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bound := 1 / math.Sqrt(in)
	rng := rand.New(rand.NewPCG(1, 2))
	var sq float64
	for i, v := range append(append([]float32(nil), w...), b...) {
		if want := float32((2*rng.Float64() - 1) * bound); v != want {
			t.Fatalf("parameter %d is %v; the generator's draw is %v", i, v, want)
		}
		if math.Abs(float64(v)) > bound {
			t.Fatalf("parameter %d is %v, outside +-%v", i, v, bound)
		}
		sq += float64(v) * float64(v)
	}
	// U(-b, b) has variance b^2/3; 2040 draws hold it to a few percent.
	if v, want := sq/float64(len(w)+len(b)), bound*bound/3; math.Abs(v-want) > 0.1*want {
		t.Errorf("mean square %v, want about %v", v, want)
	}
	if err := l.Weight.Value.Upload(ctx, w); err != nil {
		t.Fatal(err)
	}

	const n = 3
	hx := randn(5, n*in)
	x := Constant(upload(t, d, hx, n, in))
	s := stream(t, d)
	tp := NewTape(s)
	y := l.Forward(tp, x)
	if y == nil {
		t.Fatal(tp.Err())
	}
	tp.Keep(y)
	defer y.Value.Release()
	tp.Release()
	assertClose(t, "forward", run(t, s, y.Value), linearRef(opsWiden(hx), opsWiden(w), opsWiden(b), n, in, out), 1e-5)

	nb, err := NewLinear(ctx, d, 3, 2, false, rand.New(rand.NewPCG(3, 4)))
	if err != nil {
		t.Fatal(err)
	}
	if nb.Bias != nil {
		t.Error("a layer without bias has a bias")
	}
	nb.Release()
	if _, err := NewLinear(ctx, d, 0, 2, true, rand.New(rand.NewPCG(3, 4))); err == nil {
		t.Error("no error for 0 inputs")
	}
}

func opsWiden(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}
