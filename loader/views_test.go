package loader

import (
	"bytes"
	"testing"
)

func TestViewsRecipes(t *testing.T) {
	tests := []struct {
		method   string
		sizes    []int
		flipLast bool
		bicubic  bool
		blurP    []float64
	}{
		{"vicreg", []int{224, 224}, false, true, []float64{1, 0.1}},
		{"simsiam", []int{224, 224}, true, false, []float64{0.5, 0.5}},
		{"swav", []int{224, 224, 96, 96, 96, 96, 96, 96}, false, false, []float64{0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5}},
	}
	for _, tc := range tests {
		t.Run(tc.method, func(t *testing.T) {
			vs, err := Views(tc.method)
			if err != nil {
				t.Fatal(err)
			}
			if len(vs) != len(tc.sizes) {
				t.Fatalf("%d views, want %d", len(vs), len(tc.sizes))
			}
			for i, v := range vs {
				if err := v.Check(); err != nil {
					t.Errorf("view %d: %v", i, err)
				}
				if v.Size != tc.sizes[i] || v.FlipLast != tc.flipLast || v.Bicubic != tc.bicubic || v.BlurP != tc.blurP[i] {
					t.Errorf("view %d: %+v", i, v)
				}
			}
		})
	}
	if _, err := Views("byol"); err == nil {
		t.Error("unknown method accepted")
	}
}

func TestViewCheckRefuses(t *testing.T) {
	good := View{ViewAugment: ViewAugment{Size: 8, Scale: [2]float64{0.2, 1}}}
	bad := []func(v *View){
		func(v *View) { v.Size = 0 },
		func(v *View) { v.Scale = [2]float64{0.5, 0.2} },
		func(v *View) { v.Scale = [2]float64{0.2, 1.5} },
		func(v *View) { v.BlurP = 1.5 },
		func(v *View) { v.JitterP, v.Jitter.Hue = 0.8, 0.7 },
	}
	if err := good.Check(); err != nil {
		t.Fatal(err)
	}
	for i, f := range bad {
		v := good
		f(&v)
		if err := v.Check(); err == nil {
			t.Errorf("case %d: %+v accepted", i, v)
		}
	}
}

// TestViewFlipLast checks SimSiam's order: with the flip certain, the view
// is the mirror image of the same transform without the flip, drawing the
// same numbers.
func TestViewFlipLast(t *testing.T) {
	m := newRGBImage(40, 30)
	for i := range m.Pix {
		m.Pix[i] = uint8(i*7 + i/90)
	}
	vs, err := Views("simsiam")
	if err != nil {
		t.Fatal(err)
	}
	flip := vs[0]
	flip.FlipP = 1
	flip.Size = 16
	noFlip := flip
	noFlip.FlipP = 0
	for sample := range 5 {
		a, err := flip.Apply(m, ViewRNG(1, 0, sample, 0))
		if err != nil {
			t.Fatal(err)
		}
		b, err := noFlip.Apply(m, ViewRNG(1, 0, sample, 0))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.Pix, b.HFlip().Pix) {
			t.Errorf("sample %d: flipped view is not the mirror of the unflipped one", sample)
		}
		if bytes.Equal(a.Pix, b.Pix) {
			t.Errorf("sample %d: flip changed nothing", sample)
		}
	}
}
