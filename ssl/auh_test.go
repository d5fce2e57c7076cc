package ssl

import (
	"context"
	"math"
	"testing"

	"github.com/e2mcvk/e2mcvk/layers"
)

// The AUH checks against PyTorch, central differences and the device run
// share their case table with MMCR's in mmcr_test.go.

// TestAUHKnownValue checks a case with an exact answer: two antipodal
// points are at squared distance 4, so the uniformity is -4t.
func TestAUHKnownValue(t *testing.T) {
	const tw = 3
	views := [][]float64{{0, 2, 0, 0, -0.5, 0}, {1, 1, 1, -3, -3, -3}}
	loss, _ := auhHost(views, 2, 3, tw)
	if math.Abs(loss+4*tw) > 1e-12 {
		t.Errorf("loss %v, want %v", loss, -4.0*tw)
	}
}

// TestAUHNeedsPairs checks that a batch of one sample is refused (it has
// no pair, and PyTorch's mean over none is NaN).
func TestAUHNeedsPairs(t *testing.T) {
	d := testDevice(t)
	ctx := context.Background()
	zt, err := layers.FromHost(ctx, d, []float32{0.3, -1.2, 2.5}, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer zt.Release()
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tp := layers.NewTape(s)
	defer tp.Release()
	z := layers.Param(zt)
	if _, err := NewAUH(1, 3).Apply(&Step{Ctx: ctx, Tape: tp}, []*layers.Var{z, z}); err == nil {
		t.Fatal("AUH on one sample: no error")
	}
}
