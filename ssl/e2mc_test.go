package ssl

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/e2mcvk/e2mcvk/e2mc"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

func TestNewE2MCParams(t *testing.T) {
	d := vktest.Device(t)
	for method, want := range map[string]e2mc.Params{
		"vicreg":  {Bound: e2mc.BoundSigmoid, Eps: 1e-7},
		"swav":    {Bound: e2mc.BoundNormal, Eps: e2mc.Float32Eps},
		"simsiam": {Bound: e2mc.BoundNormal, Eps: e2mc.Float32Eps},
	} {
		r, err := NewE2MC(d, method, 10, 1)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Params(); got != want {
			t.Errorf("%s: params %+v, want %+v", method, got, want)
		}
		if r.Name() != "e2mc" {
			t.Errorf("name %q", r.Name())
		}
	}
	if _, err := NewE2MC(d, "byol", 10, 1); err == nil {
		t.Error("an unknown method was accepted")
	}
	if _, err := NewE2MC(nil, "vicreg", 10, 1); err == nil {
		t.Error("a nil device was accepted")
	}
}

// randViews returns two views [n, d] of N(mu, sigma) values as float32,
// with a per-call seed.
func randViews(seed uint64, n, d int, mu, sigma float64) [2][]float32 {
	rng := rand.New(rand.NewPCG(seed, 0xe2))
	var v [2][]float32
	for i := range v {
		v[i] = make([]float32, n*d)
		for j := range v[i] {
			v[i][j] = float32(mu + sigma*rng.NormFloat64())
		}
	}
	return v
}

func widen(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// regGrads applies reg to two views on the device and returns the penalty
// (after the stream ran) and the gradients of its Add with respect to the
// views.
func regGrads(t *testing.T, reg Regularizer, views [2][]float32, n, d int) (*Penalty, map[string]float64, [2][]float64) {
	t.Helper()
	ctx := context.Background()
	dev := vktest.Device(t)
	var ps []*layers.Var
	for _, v := range views {
		x, err := layers.FromHost(ctx, dev, v, n, d)
		if err != nil {
			t.Fatal(err)
		}
		p := layers.Param(x)
		defer x.Release()
		defer p.ZeroGrad()
		ps = append(ps, p)
	}
	s, err := dev.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tp := layers.NewTape(s)
	defer tp.Release()
	pen, err := reg.Apply(&Step{Ctx: ctx, Tape: tp, Comm: NewGroup(1).Comm(0)}, ps)
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]*layers.Var{}
	for k, v := range pen.Terms {
		kept[k] = v
	}
	if pen.ValueVar != nil {
		kept["value"] = pen.ValueVar
	}
	for _, v := range kept {
		tp.Keep(v)
	}
	if err := tp.Backward(pen.Add); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	terms := map[string]float64{}
	for k, v := range kept {
		x, err := v.Value.Download(ctx)
		if err != nil {
			t.Fatal(err)
		}
		v.Value.Release()
		terms[k] = float64(x[0])
	}
	var grads [2][]float64
	for i, p := range ps {
		g, err := p.Grad.Download(ctx)
		if err != nil {
			t.Fatal(err)
		}
		grads[i] = widen(g)
	}
	return pen, terms, grads
}

// relErr2 is ||got - want|| / ||want||; a zero reference fails the test.
func relErr2(t *testing.T, got, want []float64) float64 {
	t.Helper()
	var d, n float64
	for i := range want {
		d += (got[i] - want[i]) * (got[i] - want[i])
		n += want[i] * want[i]
	}
	if n == 0 {
		t.Fatal("the reference is all zeros")
	}
	return math.Sqrt(d / n)
}

// TestE2MCApply checks the regulariser's value, terms and gradients on
// random embeddings against the float64 reference of the e2mc package
// (e2mc.Reference, combined by e2mc.Combine): values to 1e-5 absolute and
// gradients to 1e-4 relative, the criterion's own tolerances.
func TestE2MCApply(t *testing.T) {
	cases := []struct {
		method    string
		n, d      int
		ent, cov  float64
		mu, sigma float64
	}{
		{"vicreg", 27, 13, 10, 1, 0.3, 1.5},
		{"swav", 30, 7, 10, 1, 0, 1},
		{"simsiam", 29, 5, 1, 25, -0.2, 0.7},
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("%s_n%d_d%d", c.method, c.n, c.d), func(t *testing.T) {
			reg, err := NewE2MC(vktest.Device(t), c.method, c.ent, c.cov)
			if err != nil {
				t.Fatal(err)
			}
			defer reg.Release()
			views := randViews(uint64(i+1), c.n, c.d, c.mu, c.sigma)
			pen, _, grads := regGrads(t, reg, views, c.n, c.d)
			p := reg.Params()
			p.M = e2mc.Window(c.n)
			var res [2]*e2mc.Result
			for v := range views {
				if res[v], err = e2mc.Reference(widen(views[v]), c.n, c.d, p, true); err != nil {
					t.Fatal(err)
				}
			}
			loss, ga, gb := e2mc.Combine(res[0], res[1], e2mc.Coefficients{Ent: c.ent, Cov: c.cov})
			ent := (res[0].MeanEntropy + res[1].MeanEntropy) / 2
			cov := res[0].CovLoss + res[1].CovLoss
			for _, x := range []struct {
				name      string
				got, want float64
			}{{"value", pen.Value, loss}, {"ent", pen.HostTerms["ent"], ent},
				{"entropy", pen.HostTerms["entropy"], ent}, {"cov_e2mc", pen.HostTerms["cov_e2mc"], cov}} {
				if math.Abs(x.got-x.want) > 1e-5*math.Max(1, math.Abs(x.want)) {
					t.Errorf("%s = %.8g, want %.8g", x.name, x.got, x.want)
				}
			}
			for v, want := range [][]float64{ga, gb} {
				if e := relErr2(t, grads[v], want); e > 1e-4 {
					t.Errorf("gradient of view %d: relative error %.3g > 1e-4", v, e)
				}
			}
		})
	}
}

func TestE2MCNeedsTwoViews(t *testing.T) {
	reg, err := NewE2MC(vktest.Device(t), "vicreg", 10, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Apply(&Step{Ctx: context.Background()}, []*layers.Var{nil}); err == nil {
		t.Error("one view was accepted")
	}
}

// TestE2MCApplyTwice runs two steps on one regulariser (the second frees
// the first's gradient buffers): both give the same gradients.
func TestE2MCApplyTwice(t *testing.T) {
	reg, err := NewE2MC(vktest.Device(t), "vicreg", 10, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Release()
	views := randViews(9, 27, 13, 0, 1)
	_, _, first := regGrads(t, reg, views, 27, 13)
	_, _, second := regGrads(t, reg, views, 27, 13)
	for v := range first {
		if e := relErr2(t, second[v], first[v]); e != 0 {
			t.Errorf("view %d: the second step's gradient differs by %.3g", v, e)
		}
	}
}
