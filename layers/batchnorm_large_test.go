package layers

import (
	"context"
	"fmt"
	"math"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
)

// bnTrainBackwardRef is the analytic gradient of training-mode batch
// normalisation in float64: dx = w*invstd*(dy - mean(dy) - xhat*mean(dy*xhat)),
// dw = sum(dy*xhat), db = sum(dy).
func bnTrainBackwardRef(x, dy []float64, shape []int, w []float64, eps float64) (dx, dw, db []float64) {
	n, c, s := bnDims(shape)
	mean, ssd := bnMoments(x, shape)
	m := float64(n * s)
	dx, dw, db = make([]float64, len(x)), make([]float64, c), make([]float64, c)
	for ch := 0; ch < c; ch++ {
		inv := 1 / math.Sqrt(ssd[ch]/m+eps)
		var sdy, sdyx float64
		for i := 0; i < n; i++ {
			for k := (i*c + ch) * s; k < (i*c+ch+1)*s; k++ {
				sdy += dy[k]
				sdyx += dy[k] * (x[k] - mean[ch]) * inv
			}
		}
		dw[ch], db[ch] = sdyx, sdy
		for i := 0; i < n; i++ {
			for k := (i*c + ch) * s; k < (i*c+ch+1)*s; k++ {
				xhat := (x[k] - mean[ch]) * inv
				dx[k] = w[ch] * inv * (dy[k] - sdy/m - xhat*sdyx/m)
			}
		}
	}
	return dx, dw, db
}

// affineBatchNorm makes a batch norm for shape's channels with weight and
// bias N(0, 1) (bnInit), released when the test ends, and returns the two
// as float64 too.
func affineBatchNorm(t *testing.T, d *vk.Device, shape []int) (*BatchNorm, []float64, []float64) {
	t.Helper()
	ctx := context.Background()
	_, c, _ := bnDims(shape)
	w64, b64 := make([]float64, c), make([]float64, c)
	bnInit(shape, -1)(1, w64)
	bnInit(shape, -1)(2, b64)
	bn, err := NewBatchNorm(ctx, d, c, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bn.Release)
	if err := bn.Weight.Value.Upload(ctx, toF32(w64)); err != nil {
		t.Fatal(err)
	}
	if err := bn.Bias.Value.Upload(ctx, toF32(b64)); err != nil {
		t.Fatal(err)
	}
	return bn, w64, b64
}

// TestBatchNormLargePlanes checks training-mode batch normalisation, forward
// and backward, at the sizes of real networks' layers (thousands to tens of
// thousands of values per channel, where the GPU tuning's chunks, slots and
// shared-memory sums all come into play, and the small planes of SwAV's
// small crops), under both tunings, against the analytic float64 gradient
// (finite differences would take too long here).
func TestBatchNormLargePlanes(t *testing.T) {
	shapes := [][]int{{16, 16, 12, 12}, {16, 8, 24, 24}, {32, 24, 28, 28}, {8, 64, 56, 56}, {512, 96},
		// SwAV's small crops deep in a ResNet: small planes, many rows.
		{16, 16, 6, 6}, {16, 32, 3, 3}, {16, 64, 2, 2}, {16, 64, 3, 3}, {16, 8, 12, 12}, {32, 64, 1, 1},
		{16, 32, 7, 7}, {16, 64, 4, 4}, {48, 32, 3, 3}, {48, 64, 2, 2}, {48, 16, 6, 6}}
	d := testDevices(t)[0].dev
	ctx := context.Background()
	for _, shape := range shapes {
		for _, tuning := range []string{"cpu", "gpu"} {
			t.Run(fmt.Sprintf("%v/%s", shape, tuning), func(t *testing.T) {
				t.Setenv(bnTuningEnv, tuning)
				size := 1
				for _, v := range shape {
					size *= v
				}
				x64, dy64 := make([]float64, size), make([]float64, size)
				bnInit(shape, -1)(0, x64)
				for i, v := range randn(77, size) {
					dy64[i] = float64(v)
				}
				bn, w64, b64 := affineBatchNorm(t, d, shape)
				s := stream(t, d)
				tp := NewTape(s)
				t.Cleanup(tp.Release)
				xv := Param(upload(t, d, toF32(x64), shape...))
				y := bn.Forward(tp, xv, true)
				tp.Keep(y)
				if err := tp.BackwardWith(y, upload(t, d, toF32(dy64), shape...)); err != nil {
					t.Fatal(err)
				}
				if err := s.Run(ctx); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(xv.ZeroGrad)
				t.Cleanup(bn.Weight.ZeroGrad)
				t.Cleanup(bn.Bias.ZeroGrad)
				download := func(x *Tensor) []float32 {
					v, err := x.Download(ctx)
					if err != nil {
						t.Fatal(err)
					}
					return v
				}
				dx, dw, db := bnTrainBackwardRef(x64, dy64, shape, w64, 1e-5)
				assertClose(t, "y", download(y.Value), bnTrainRef(x64, shape, w64, b64), bnFwdTol)
				assertClose(t, "dx", download(xv.Grad), dx, bnGradTol)
				assertClose(t, "dweight", download(bn.Weight.Grad), dw, bnGradTol)
				assertClose(t, "dbias", download(bn.Bias.Grad), db, bnGradTol)
			})
		}
	}
}

// TestBatchNormTwoPasses runs one batch norm module over two inputs of
// different plane sizes in one recording before a single backward pass, as
// SwAV's forward does with its two crop resolutions: each pass normalises
// with its own batch statistics and the weight and bias gradients add up.
func TestBatchNormTwoPasses(t *testing.T) {
	d := testDevices(t)[0].dev
	ctx := context.Background()
	for _, tuning := range []string{"cpu", "gpu"} {
		for _, c := range []int{16, 64} {
			t.Run(fmt.Sprintf("%s/c%d", tuning, c), func(t *testing.T) {
				t.Setenv(bnTuningEnv, tuning)
				shapes := [][]int{{16, c, 12, 12}, {16, c, 6, 6}}
				bn, w64, _ := affineBatchNorm(t, d, shapes[0])
				s := stream(t, d)
				tp := NewTape(s)
				t.Cleanup(tp.Release)
				var xs, gs [][]float64
				var xvs []*Var
				var loss *Var
				for i, shape := range shapes {
					size := shape[0] * shape[1] * shape[2] * shape[3]
					x64, g64 := make([]float64, size), make([]float64, size)
					bnInit(shape, -1)(0, x64)
					for j, v := range randn(uint64(90+i), size) {
						g64[j] = float64(v)
					}
					xs, gs = append(xs, x64), append(gs, g64)
					xv := Param(upload(t, d, toF32(x64), shape...))
					xvs = append(xvs, xv)
					t.Cleanup(xv.ZeroGrad)
					term := tp.Sum(tp.Mul(bn.Forward(tp, xv, true), Constant(upload(t, d, toF32(g64), shape...))))
					if loss == nil {
						loss = term
					} else {
						loss = tp.Add(loss, term)
					}
				}
				if err := tp.Backward(loss); err != nil {
					t.Fatal(err)
				}
				if err := s.Run(ctx); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(bn.Weight.ZeroGrad)
				t.Cleanup(bn.Bias.ZeroGrad)
				download := func(x *Tensor) []float32 {
					v, err := x.Download(ctx)
					if err != nil {
						t.Fatal(err)
					}
					return v
				}
				dwSum, dbSum := make([]float64, c), make([]float64, c)
				for i, shape := range shapes {
					dx, dw, db := bnTrainBackwardRef(xs[i], gs[i], shape, w64, 1e-5)
					assertClose(t, fmt.Sprintf("dx of pass %d", i), download(xvs[i].Grad), dx, bnGradTol)
					for k := range dw {
						dwSum[k] += dw[k]
						dbSum[k] += db[k]
					}
				}
				assertClose(t, "dweight", download(bn.Weight.Grad), dwSum, bnGradTol)
				assertClose(t, "dbias", download(bn.Bias.Grad), dbSum, bnGradTol)
			})
		}
	}
}
