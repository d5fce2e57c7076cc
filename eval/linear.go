package eval

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/e2mcvk/e2mcvk/loader"
)

// LinearConfig are the settings of the linear probe's training.
type LinearConfig struct {
	// Epochs over the training set; the learning rate follows a cosine
	// from LR at epoch 0 towards 0 at Epochs (CosineAnnealingLR stepped per
	// epoch, as VICReg's evaluate.py does).
	Epochs int
	LR     float64
	// WeightDecay is SGD's L2 penalty on every parameter.
	WeightDecay float64
	Momentum    float64
	BatchSize   int
	// BN puts a BatchNorm1d (affine, eps 1e-5, momentum 0.1) before the
	// Linear layer: the iNat18-style probe on 8192-d AvgPool(6, 1) features.
	BN bool
	// Seed chooses the initial weights and the order of the samples.
	Seed uint64
}

// DefaultLinearConfig is the linear probe of VICReg's evaluate.py: 100
// epochs, SGD with momentum 0.9, head learning rate 0.3, weight decay 1e-6,
// batch 256.
func DefaultLinearConfig() LinearConfig {
	return LinearConfig{Epochs: 100, LR: 0.3, WeightDecay: 1e-6, Momentum: 0.9, BatchSize: 256}
}

func (c LinearConfig) check() error {
	if c.Epochs < 1 || c.BatchSize < 1 || !(c.LR > 0) || c.WeightDecay < 0 || c.Momentum < 0 || c.Momentum >= 1 {
		return fmt.Errorf("linear probe: %d epochs, batch %d, lr %g, weight decay %g, momentum %g: want epochs and batch >= 1, lr > 0, weight decay >= 0, momentum in [0, 1)",
			c.Epochs, c.BatchSize, c.LR, c.WeightDecay, c.Momentum)
	}
	return nil
}

// EpochLR returns the learning rate of an epoch: LR * (1 + cos(pi *
// epoch / Epochs)) / 2.
func (c LinearConfig) EpochLR(epoch int) float64 {
	return c.LR * (1 + math.Cos(math.Pi*float64(epoch)/float64(c.Epochs))) / 2
}

// LinearProbe is a linear classifier (optionally after a batch norm) trained
// on the host in float32 by SGD with momentum, as torch.optim.SGD steps
// (dampening 0): the layer of the linear-probe protocol on frozen features.
type LinearProbe struct {
	D, Classes int
	// W is the Classes x D weight, B the Classes biases.
	W, B []float32
	// Gamma, Beta, RunningMean and RunningVar are the batch norm's (D
	// values each), nil without one.
	Gamma, Beta, RunningMean, RunningVar []float32

	cfg   LinearConfig
	bufs  [][]float32 // momentum buffers of params(), nil before the first step
	steps int
}

// NewLinearProbe returns a probe of d inputs and classes outputs initialised
// as VICReg's evaluate.py does: weights from N(0, 0.01^2) drawn from a
// generator seeded by cfg.Seed, zero biases; the batch norm, if any, at
// weight 1, bias 0 and running statistics 0 and 1.
func NewLinearProbe(d, classes int, cfg LinearConfig) (*LinearProbe, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if d < 1 || classes < 2 {
		return nil, fmt.Errorf("linear probe: %d features and %d classes: want at least 1 and 2", d, classes)
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x11ea))
	p := &LinearProbe{D: d, Classes: classes, W: make([]float32, classes*d), B: make([]float32, classes), cfg: cfg}
	for i := range p.W {
		p.W[i] = float32(0.01 * rng.NormFloat64())
	}
	if cfg.BN {
		p.Gamma, p.Beta = make([]float32, d), make([]float32, d)
		p.RunningMean, p.RunningVar = make([]float32, d), make([]float32, d)
		for j := range d {
			p.Gamma[j], p.RunningVar[j] = 1, 1
		}
	}
	return p, nil
}

// params lists the trainable parameters in a fixed order.
func (p *LinearProbe) params() [][]float32 {
	ps := [][]float32{p.W, p.B}
	if p.Gamma != nil {
		ps = append(ps, p.Gamma, p.Beta)
	}
	return ps
}

const bnEps = 1e-5

// Step trains on one batch x (n rows of D values) with labels at learning
// rate lr and returns the batch's mean cross-entropy (before the step).
// With a batch norm, a batch of one row is skipped (PyTorch refuses it).
func (p *LinearProbe) Step(x []float32, labels []int, lr float64) (float64, error) {
	n := len(labels)
	if n == 0 || len(x) != n*p.D {
		return 0, fmt.Errorf("linear probe step: %d values for %d rows of %d", len(x), n, p.D)
	}
	for _, l := range labels {
		if l < 0 || l >= p.Classes {
			return 0, fmt.Errorf("linear probe step: label %d outside [0, %d)", l, p.Classes)
		}
	}
	if p.Gamma != nil && n == 1 {
		return 0, nil
	}
	z := x
	var xhat, invStd []float32
	if p.Gamma != nil {
		z, xhat, invStd = p.bnTrain(x, n)
	}
	logits := p.logits(z, n)
	// logits becomes the gradient of the mean cross-entropy.
	loss := 0.0
	for i, l := range labels {
		row := logits[i*p.Classes : (i+1)*p.Classes]
		m := row[0]
		for _, v := range row {
			m = max(m, v)
		}
		var sum float64
		for _, v := range row {
			sum += math.Exp(float64(v - m))
		}
		loss += math.Log(sum) - float64(row[l]-m)
		for c, v := range row {
			g := math.Exp(float64(v-m)) / sum
			if c == l {
				g--
			}
			row[c] = float32(g / float64(n))
		}
	}
	gl := blas32.General{Rows: n, Cols: p.Classes, Stride: p.Classes, Data: logits}
	grads := make([][]float32, 0, 4)
	dW := make([]float32, len(p.W))
	blas32.Gemm(blas.Trans, blas.NoTrans, 1, gl, blas32.General{Rows: n, Cols: p.D, Stride: p.D, Data: z}, 0,
		blas32.General{Rows: p.Classes, Cols: p.D, Stride: p.D, Data: dW})
	dB := make([]float32, p.Classes)
	for i := range n {
		for c := range p.Classes {
			dB[c] += logits[i*p.Classes+c]
		}
	}
	grads = append(grads, dW, dB)
	if p.Gamma != nil {
		dz := make([]float32, n*p.D)
		blas32.Gemm(blas.NoTrans, blas.NoTrans, 1, gl, blas32.General{Rows: p.Classes, Cols: p.D, Stride: p.D, Data: p.W}, 0,
			blas32.General{Rows: n, Cols: p.D, Stride: p.D, Data: dz})
		dGamma, dBeta := p.bnBackward(dz, xhat, invStd, n)
		grads = append(grads, dGamma, dBeta)
	}
	p.sgd(grads, lr)
	return loss / float64(n), nil
}

// sgd applies torch.optim.SGD's update to every parameter.
func (p *LinearProbe) sgd(grads [][]float32, lr float64) {
	ps := p.params()
	first := p.bufs == nil
	if first {
		p.bufs = make([][]float32, len(ps))
		for i, q := range ps {
			p.bufs[i] = make([]float32, len(q))
		}
	}
	wd, mom := float32(p.cfg.WeightDecay), float32(p.cfg.Momentum)
	for i, q := range ps {
		g, buf := grads[i], p.bufs[i]
		for j := range q {
			d := g[j] + wd*q[j]
			if first {
				buf[j] = d
			} else {
				buf[j] = mom*buf[j] + d
			}
			q[j] -= float32(lr) * buf[j]
		}
	}
	p.steps++
}

// logits returns z W^T + b for n rows.
func (p *LinearProbe) logits(z []float32, n int) []float32 {
	out := make([]float32, n*p.Classes)
	for i := range n {
		copy(out[i*p.Classes:], p.B)
	}
	blas32.Gemm(blas.NoTrans, blas.Trans, 1, blas32.General{Rows: n, Cols: p.D, Stride: p.D, Data: z},
		blas32.General{Rows: p.Classes, Cols: p.D, Stride: p.D, Data: p.W}, 1,
		blas32.General{Rows: n, Cols: p.Classes, Stride: p.Classes, Data: out})
	return out
}

// bnTrain normalises x by its batch statistics (biased variance), updates
// the running statistics (unbiased variance) and returns the output, the
// normalised input and each column's 1/sqrt(var+eps).
func (p *LinearProbe) bnTrain(x []float32, n int) (y, xhat, invStd []float32) {
	d := p.D
	mean := make([]float64, d)
	vr := make([]float64, d)
	for i := range n {
		for j, v := range x[i*d : (i+1)*d] {
			mean[j] += float64(v)
		}
	}
	for j := range mean {
		mean[j] /= float64(n)
	}
	for i := range n {
		for j, v := range x[i*d : (i+1)*d] {
			dv := float64(v) - mean[j]
			vr[j] += dv * dv
		}
	}
	invStd = make([]float32, d)
	for j := range d {
		biased := vr[j] / float64(n)
		invStd[j] = float32(1 / math.Sqrt(biased+bnEps))
		p.RunningMean[j] = float32(0.9*float64(p.RunningMean[j]) + 0.1*mean[j])
		p.RunningVar[j] = float32(0.9*float64(p.RunningVar[j]) + 0.1*vr[j]/float64(n-1))
	}
	y, xhat = make([]float32, n*d), make([]float32, n*d)
	for i := range n {
		for j := range d {
			h := float32(float64(x[i*d+j])-mean[j]) * invStd[j]
			xhat[i*d+j] = h
			y[i*d+j] = p.Gamma[j]*h + p.Beta[j]
		}
	}
	return y, xhat, invStd
}

// bnBackward returns the gradients of the batch norm's weight and bias from
// dy. (Its input is frozen features, so no gradient goes further.)
func (p *LinearProbe) bnBackward(dy, xhat, _ []float32, n int) (dGamma, dBeta []float32) {
	d := p.D
	dGamma, dBeta = make([]float32, d), make([]float32, d)
	for i := range n {
		for j := range d {
			dGamma[j] += dy[i*d+j] * xhat[i*d+j]
			dBeta[j] += dy[i*d+j]
		}
	}
	return dGamma, dBeta
}

// Scores returns the logits of n rows of features x in evaluation mode
// (the batch norm's running statistics).
func (p *LinearProbe) Scores(x []float32, n int) []float32 {
	z := x
	if p.Gamma != nil {
		d := p.D
		z = make([]float32, len(x))
		for i := range n {
			for j := range d {
				inv := float32(1 / math.Sqrt(float64(p.RunningVar[j])+bnEps))
				z[i*d+j] = (x[i*d+j]-p.RunningMean[j])*inv*p.Gamma[j] + p.Beta[j]
			}
		}
	}
	return p.logits(z, n)
}

// Evaluate returns the probe's top-1 and top-5 accuracy in percent on f.
func (p *LinearProbe) Evaluate(f *Features) (top1, top5 float64, err error) {
	if err := f.check("test"); err != nil {
		return 0, 0, err
	}
	if f.D != p.D || f.Classes > p.Classes {
		return 0, 0, fmt.Errorf("linear probe of %d features and %d classes on %d features of %d classes", p.D, p.Classes, f.D, f.Classes)
	}
	top1, top5 = TopK(p.Scores(f.X, f.N), p.Classes, f.Labels)
	return top1, top5, nil
}

// EpochFunc is told the end of each training epoch (from 1) and its mean
// training loss.
type EpochFunc func(epoch int, loss float64)

// TrainLinear trains a probe on fixed features (the fast mode of the linear
// protocol): each epoch visits the rows in a fresh order drawn from
// cfg.Seed, in batches of cfg.BatchSize (the last one smaller).
func TrainLinear(ctx context.Context, train *Features, cfg LinearConfig, epochDone EpochFunc) (*LinearProbe, error) {
	if err := train.check("training"); err != nil {
		return nil, err
	}
	p, err := NewLinearProbe(train.D, train.Classes, cfg)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5a3b1e))
	x := make([]float32, 0, cfg.BatchSize*train.D)
	labels := make([]int, 0, cfg.BatchSize)
	for epoch := range cfg.Epochs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		lr := cfg.EpochLR(epoch)
		perm := rng.Perm(train.N)
		var total float64
		for lo := 0; lo < train.N; lo += cfg.BatchSize {
			x, labels = x[:0], labels[:0]
			for _, i := range perm[lo:min(train.N, lo+cfg.BatchSize)] {
				x = append(x, train.Row(i)...)
				labels = append(labels, train.Labels[i])
			}
			loss, err := p.Step(x, labels, lr)
			if err != nil {
				return nil, err
			}
			total += loss * float64(len(labels))
		}
		if epochDone != nil {
			epochDone(epoch+1, total/float64(train.N))
		}
	}
	return p, nil
}

// LinearAugment is the training transform of the linear probe with
// --augment: RandomResizedCrop(size) (scale 0.08 to 1, bilinear) and a
// horizontal flip with probability 1/2.
func LinearAugment(size int) loader.ViewAugment {
	return loader.ViewAugment{Size: size, Scale: [2]float64{0.08, 1}, FlipP: 0.5}
}

// LoadAugmented decodes the images idx of ds and transforms each by aug with
// the generator loader.ViewRNG(seed, epoch, image, 0), on one goroutine a
// CPU, and returns the readable ones as one [len(kept), 3, aug.Size,
// aug.Size] tensor with their data-set indices kept (in idx order), and
// the images that could not be read (not an error: the caller's Skips
// decides).
func LoadAugmented(ctx context.Context, ds loader.Dataset, idx []int, aug loader.ViewAugment, seed uint64, epoch int) (data []float32, kept []int, skipped []Skip, err error) {
	plane := 3 * aug.Size * aug.Size
	out := make([]float32, len(idx)*plane)
	errs := make([]error, len(idx))
	bad := make([]*Skip, len(idx))
	err = parallelFor(ctx, len(idx), func(k int) {
		i := idx[k]
		img, skip := readImage(ds, i)
		if skip != nil {
			bad[k] = skip
			return
		}
		m, err := aug.Apply(loader.ToRGB(img), loader.ViewRNG(seed, epoch, i, 0))
		if err == nil {
			err = m.Normalize(out[k*plane : (k+1)*plane])
		}
		if err != nil {
			errs[k] = fmt.Errorf("%s: %w", ds.Name(i), err)
		}
	})
	if err != nil {
		return nil, nil, nil, err
	}
	for _, err := range errs {
		if err != nil {
			return nil, nil, nil, err
		}
	}
	// Pack the readable images to the front, in idx order.
	kept = make([]int, 0, len(idx))
	for k, i := range idx {
		if bad[k] != nil {
			skipped = append(skipped, *bad[k])
			continue
		}
		if to := len(kept); to != k {
			copy(out[to*plane:(to+1)*plane], out[k*plane:(k+1)*plane])
		}
		kept = append(kept, i)
	}
	return out[:len(kept)*plane], kept, skipped, nil
}

// TrainLinearAugmented trains a probe through the frozen backbone with
// fresh augmentations every epoch (the paper's protocol): each batch of ds
// is augmented by aug, goes through ex, and its features train the probe.
// Unreadable images go to skips (passed over, or with Strict an error);
// all of them unreadable is an error. batchDone, when not nil, is told the
// images done in the epoch after each batch.
func TrainLinearAugmented(ctx context.Context, ex *Extractor, ds loader.Dataset, aug loader.ViewAugment, cfg LinearConfig, skips *Skips, epochDone EpochFunc, batchDone func(done int)) (*LinearProbe, error) {
	n := ds.Len()
	if n == 0 {
		return nil, fmt.Errorf("no training images")
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	classes := len(ds.Classes())
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5a3b1e))
	var p *LinearProbe
	for epoch := range cfg.Epochs {
		lr := cfg.EpochLR(epoch)
		perm := rng.Perm(n)
		var total float64
		seen := 0
		for lo := 0; lo < n; lo += cfg.BatchSize {
			data, idx, skipped, err := LoadAugmented(ctx, ds, perm[lo:min(n, lo+cfg.BatchSize)], aug, cfg.Seed, epoch)
			if err != nil {
				return nil, err
			}
			if err := skips.add(skipped...); err != nil {
				return nil, err
			}
			if len(idx) > 0 {
				rows, dim, err := ex.Batch(ctx, data, len(idx), aug.Size, aug.Size)
				if err != nil {
					return nil, err
				}
				if p == nil {
					if p, err = NewLinearProbe(dim, classes, cfg); err != nil {
						return nil, err
					}
				}
				labels := make([]int, len(idx))
				for k, i := range idx {
					labels[k] = ds.Label(i)
				}
				loss, err := p.Step(rows, labels, lr)
				if err != nil {
					return nil, err
				}
				total += loss * float64(len(idx))
				seen += len(idx)
			}
			if batchDone != nil {
				batchDone(min(n, lo+cfg.BatchSize))
			}
		}
		if p == nil {
			return nil, fmt.Errorf("all %d training images are unreadable: nothing left to train on", n)
		}
		if epochDone != nil {
			epochDone(epoch+1, total/float64(max(1, seen)))
		}
	}
	return p, nil
}
