package ssl

import (
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/e2mc"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

func TestNewMethod(t *testing.T) {
	for _, name := range []string{"vicreg", "swav", "simsiam"} {
		m, err := NewMethod(name, MethodOptions{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if m.Name() != name {
			t.Errorf("NewMethod(%q) is %q", name, m.Name())
		}
		m.Release()
	}
	// The options reach the constructors: each refuses a bad value of its own.
	for name, o := range map[string]MethodOptions{
		"vicreg":  {MLP: "8192-x"},
		"swav":    {Temperature: -1},
		"simsiam": {Dim: -1},
	} {
		if _, err := NewMethod(name, o); err == nil {
			t.Errorf("%s with %+v: no error", name, o)
		}
	}
	if _, err := NewMethod("byol", MethodOptions{}); err == nil || !strings.Contains(err.Error(), "vicreg, swav or simsiam") {
		t.Errorf("unknown method: error %v does not list the methods", err)
	}
}

func TestDefaults(t *testing.T) {
	// The official settings (DESIGN.md section 2 and the methods' scripts),
	// and the learning rates they give a global batch of 512.
	for _, c := range []struct {
		method       string
		want         MethodDefaults
		lr512, pr512 float64
	}{
		{"vicreg", MethodDefaults{LR: 0.2, ScaleLR: true, WeightDecay: 1e-6, Ent: 10, Cov: 1, Bound: e2mc.BoundSigmoid, Eps: 1e-7}, 0.4, 0},
		{"swav", MethodDefaults{LR: 0.6, WeightDecay: 1e-6, Ent: 10, Cov: 1, Bound: e2mc.BoundNormal, Eps: 1.1920928955078125e-07}, 0.6, 0},
		{"simsiam", MethodDefaults{LR: 0.05, ScaleLR: true, WeightDecay: 1e-4, PredLR: 0.05, Ent: 1, Cov: 25, Bound: e2mc.BoundNormal, Eps: 1.1920928955078125e-07}, 0.1, 0.1},
	} {
		got, err := Defaults(c.method)
		if err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("Defaults(%q) = %+v, want %+v", c.method, got, c.want)
		}
		if lr, pr := got.Scaled(512); lr != c.lr512 || pr != c.pr512 {
			t.Errorf("%s at batch 512: LR %g, predictor LR %g; want %g and %g", c.method, lr, pr, c.lr512, c.pr512)
		}
	}
	if _, err := Defaults("byol"); err == nil || !strings.Contains(err.Error(), "vicreg, swav or simsiam") {
		t.Errorf("unknown method: error %v does not list the methods", err)
	}
}

func TestNewRegularizer(t *testing.T) {
	d := vktest.Device(t)
	for _, method := range []string{"vicreg", "swav", "simsiam"} {
		def, err := Defaults(method)
		if err != nil {
			t.Fatal(err)
		}
		r, err := NewRegularizer("e2mc", method, d, -1, -1)
		if err != nil {
			t.Fatal(err)
		}
		e, ok := r.(*E2MC)
		if !ok {
			t.Fatalf("e2mc for %s is a %T", method, r)
		}
		if e.crit.Ent != def.Ent || e.crit.Cov != def.Cov {
			t.Errorf("e2mc for %s: ent %g cov %g, want the defaults %g and %g", method, e.crit.Ent, e.crit.Cov, def.Ent, def.Cov)
		}
		// The criterion's own choice of bound and eps agrees with Defaults.
		if p := e.Params(); p.Bound != def.Bound || p.Eps != def.Eps {
			t.Errorf("e2mc for %s: bound %v eps %g, Defaults say %v and %g", method, p.Bound, p.Eps, def.Bound, def.Eps)
		}
		r.Release()
	}
	r, err := NewRegularizer("e2mc", "simsiam", d, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	if e := r.(*E2MC); e.crit.Ent != 3 || e.crit.Cov != 0 {
		t.Errorf("e2mc with ent 3 cov 0: ent %g cov %g", e.crit.Ent, e.crit.Cov)
	}
	r.Release()

	vc, err := NewRegularizer("vcreg", "swav", d, -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := vc.(*VCReg); !ok || v.std != vcregStdCoef || v.cov != vcregCovCoef {
		t.Errorf("vcreg: %#v, want the default coefficients", vc)
	}
	mm, err := NewRegularizer("mmcr", "swav", d, -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := mm.(*MMCR); !ok || m.coeff != DefaultMMCRCoeff {
		t.Errorf("mmcr: %#v, want the default coefficient", mm)
	}
	au, err := NewRegularizer("auh", "swav", d, -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := au.(*AUH); !ok || a.coeff != DefaultAUHCoeff || a.t != DefaultAUHT {
		t.Errorf("auh: %#v, want the default coefficient and t", au)
	}
	none, err := NewRegularizer("none", "vicreg", d, -1, -1)
	if none != nil || err != nil {
		t.Errorf("none: %v, %v; want nil, nil", none, err)
	}
	if _, err := NewRegularizer("e2mc", "byol", d, -1, -1); err == nil {
		t.Error("e2mc for an unknown method: no error")
	}
	if _, err := NewRegularizer("barlow", "vicreg", d, -1, -1); err == nil || !strings.Contains(err.Error(), "e2mc, vcreg, mmcr, auh or none") {
		t.Errorf("unknown regularizer: error %v does not list the regularizers", err)
	}
}
