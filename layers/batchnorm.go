package layers

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"os"
	"slices"

	"github.com/e2mcvk/e2mcvk/vk"
)

// BatchNorm is torch.nn.BatchNorm1d / BatchNorm2d: per-channel normalisation
// of x [N, C] (1d), [N, C, L] or [N, C, H, W] (2d) with the batch's
// statistics in training and the running ones in evaluation, then an affine
// map.
type BatchNorm struct {
	// Weight and Bias ([C]) are the affine map's scale and shift; both nil
	// when the layer is not affine.
	Weight, Bias *Var
	// RunningMean and RunningVar ([C]) are the statistics of evaluation mode,
	// updated by every training-mode Forward.
	RunningMean, RunningVar *Tensor
	// NumBatchesTracked counts the training-mode Forward calls (PyTorch's
	// num_batches_tracked buffer, kept for checkpoints).
	NumBatchesTracked int64
	// Momentum weighs the new batch in the running statistics; Eps is added
	// to the variance. PyTorch's defaults are 0.1 and 1e-5.
	Momentum, Eps float32
}

// NewBatchNorm makes a layer of the given channels as PyTorch initialises
// it: weight 1, bias 0 (when affine), running mean 0, running variance 1.
func NewBatchNorm(ctx context.Context, d *vk.Device, channels int, affine bool) (*BatchNorm, error) {
	if channels <= 0 {
		return nil, fmt.Errorf("batchnorm of %d channels", channels)
	}
	zeros, ones := make([]float32, channels), make([]float32, channels)
	for i := range ones {
		ones[i] = 1
	}
	bn := &BatchNorm{Momentum: 0.1, Eps: 1e-5}
	var err error
	make1 := func(v []float32) *Tensor {
		if err != nil {
			return nil
		}
		var t *Tensor
		t, err = FromHost(ctx, d, v, channels)
		return t
	}
	bn.RunningMean, bn.RunningVar = make1(zeros), make1(ones)
	if affine {
		w, b := make1(ones), make1(zeros)
		if err == nil {
			bn.Weight, bn.Bias = Param(w), Param(b)
		}
	}
	if err != nil {
		bn.Release()
		return nil, fmt.Errorf("batchnorm: %w", err)
	}
	return bn, nil
}

// Release frees the layer's tensors and the parameters' gradients.
func (bn *BatchNorm) Release() {
	for _, v := range []*Var{bn.Weight, bn.Bias} {
		if v != nil {
			v.ZeroGrad()
			if v.Value != nil {
				v.Value.Release()
			}
		}
	}
	for _, t := range []*Tensor{bn.RunningMean, bn.RunningVar} {
		if t != nil {
			t.Release()
		}
	}
}

// Forward records batch normalisation of x. In training it normalises with
// the batch mean and biased variance over (N, H, W), updates the running
// statistics on the device (running = (1 - m) * running + m * batch, with
// the unbiased variance, as PyTorch) and counts the batch; in evaluation it
// normalises with the running statistics. The backward pass gives x the full
// batch-statistics gradient in training (the affine one in evaluation) and
// the weight and bias their gradients.
//
// The work is three passes over x forward (partial sums, then normalise: a
// read and a read-write) and five backward (partial sums of dy and dy*xhat,
// then dx); the per-channel steps between them are one small dispatch each.
//
// On a tape with a data-parallel group (Tape.SetCollective), training is
// torch.nn.SyncBatchNorm: the mean and variance are those of the union of
// all replicas' batches (the running statistics take the global unbiased
// variance, so they stay the same on every replica), and the backward pass
// sums sum(dy) and sum(dy * xhat) over the replicas for the input gradient,
// while the weight and bias gradients are this replica's sums (see
// parallel.go for why that is the right scale). Each replica's per-channel
// count, mean and sum of squared deviations are merged on the host in
// float64 (Chan's rule, in rank order), so a channel with a large mean and a
// small spread keeps its digits as in the single-replica kernels. Either
// pass then runs the stream once and makes one AllReduce.
func (bn *BatchNorm) Forward(tp *Tape, x *Var, training bool) *Var {
	return bn.forward(tp, x, training, false)
}

// ForwardRelu records relu(batch normalisation of x), the pair that follows
// most convolutions of a ResNet and the hidden linears of an MLP head, as
// one op: the ReLU rides on the normalising pass forward, and backward the
// gradient is masked by the output inside batch normalisation's own passes
// (ReLU's gradient, like PyTorch's, is taken where the output is positive).
// That saves a pass over the activation and a dispatch each way.
func (bn *BatchNorm) ForwardRelu(tp *Tape, x *Var, training bool) *Var {
	return bn.forward(tp, x, training, true)
}

func (bn *BatchNorm) forward(tp *Tape, x *Var, training, relu bool) *Var {
	if !tp.ok(x) {
		return nil
	}
	const op = "batchnorm"
	affine := bn.Weight != nil
	if affine != (bn.Bias != nil) {
		tp.Fail(op, fmt.Errorf("weight and bias must both be set or both be nil"))
		return nil
	}
	var w, b *Tensor
	inputs := []*Var{x}
	if affine {
		if !tp.ok(bn.Weight, bn.Bias) {
			return nil
		}
		w, b = bn.Weight.Value, bn.Bias.Value
		inputs = append(inputs, bn.Weight, bn.Bias)
	}
	g, err := bnCheck(x.Value, w, b, bn.RunningMean, bn.RunningVar, training)
	if err != nil {
		tp.Fail(op, err)
		return nil
	}
	y := tp.alloc(op, x.Value.shape...)
	stats := tp.alloc(op, bnStatRows, g.c)
	if y == nil || stats == nil {
		return nil
	}
	// Synchronised over the replicas when training on a tape with a group;
	// global is then the number of values per channel in all their batches.
	sync := training && tp.parallel()
	var global int
	if sync {
		global, err = bnForwardSync(tp, g, y, x.Value, w, b, bn.RunningMean, bn.RunningVar, stats, relu, bn.Momentum, bn.Eps)
	} else {
		err = bnForward(tp.s, g, y, x.Value, w, b, bn.RunningMean, bn.RunningVar, stats, training, relu, bn.Momentum, bn.Eps)
	}
	if err != nil {
		tp.Fail(op, err)
		return nil
	}
	if training {
		bn.NumBatchesTracked++
	}
	needs := false
	for _, in := range inputs {
		needs = needs || in.requiresGrad
	}
	if !needs {
		// Released once the stream has run, not at once: a tensor the
		// caller allocates next could take its memory and be uploaded to
		// by the host before the recorded work has run.
		delete(tp.owned, stats)
		tp.s.AfterRun(stats.Release)
		return tp.record(y, inputs, nil)
	}
	xv := x.Value
	var mask *Tensor // the gradient counts where the fused ReLU's output is positive
	if relu {
		mask = y
	}
	return tp.record(y, inputs, func(gy *Tensor) []*Tensor {
		defer tp.release(stats)
		const op = "batchnorm backward"
		var dx, dw, db *Tensor
		if x.requiresGrad {
			if dx = tp.alloc(op, xv.shape...); dx == nil {
				return nil
			}
		}
		if affine && (bn.Weight.requiresGrad || bn.Bias.requiresGrad) {
			dw, db = tp.alloc(op, g.c), tp.alloc(op, g.c)
			if dw == nil || db == nil {
				return nil
			}
		}
		var err error
		if sync && dx != nil {
			err = bnBackwardSync(tp, g, global, dx, dw, db, gy, mask, xv, w, stats)
		} else {
			// Without dx nothing crosses replicas: the weight and bias
			// gradients are this replica's sums either way.
			err = bnBackward(tp.s, g, dx, dw, db, gy, mask, xv, w, stats, training)
		}
		if err != nil {
			tp.Fail(op, err)
			return nil
		}
		if !affine {
			return []*Tensor{dx}
		}
		return []*Tensor{dx, dw, db}
	})
}

// BatchNormForward records y = batch normalisation of x [N, C, ...] without
// autograd: with the batch statistics when training (then updating
// runningMean and runningVar as PyTorch does), else with the running ones.
// weight and bias ([C]) may both be nil for a layer without the affine map.
// Its temporary buffers are released once s has run.
func BatchNormForward(s *vk.Stream, y, x, weight, bias, runningMean, runningVar *Tensor, training bool, momentum, eps float32) error {
	if (weight == nil) != (bias == nil) {
		return fmt.Errorf("batchnorm: weight and bias must both be set or both be nil")
	}
	g, err := bnCheck(x, weight, bias, runningMean, runningVar, training)
	if err != nil {
		return fmt.Errorf("batchnorm: %w", err)
	}
	if !slices.Equal(y.shape, x.shape) {
		return fmt.Errorf("batchnorm: output %v for input %v", y.shape, x.shape)
	}
	stats, err := New(x.Device(), bnStatRows, g.c)
	if err != nil {
		return fmt.Errorf("batchnorm: %w", err)
	}
	s.AfterRun(stats.Release)
	if err := bnForward(s, g, y, x, weight, bias, runningMean, runningVar, stats, training, false, momentum, eps); err != nil {
		return fmt.Errorf("batchnorm: %w", err)
	}
	return nil
}

// Rows of the per-channel statistics tensor [bnStatRows, C], as
// shaders/include/batchnorm_common.glsl names them: y = (x - shift) * scale +
// offset, xhat = ((x - shift) - meanRel) * invStd, and dx = gDy * dy + gX *
// (x - shift) + gConst. The shift is a value of the channel itself, so x -
// shift loses nothing where the mean is large.
const (
	bnShift = iota
	bnMeanRel
	bnInvStd
	bnScale
	bnOffset
	bnGDy
	bnGX
	bnGConst
	bnStatRows
)

// Modes of the batch-normalisation kernels (their specialization constants).
const (
	bnReduceForward  = 0 // batchnorm_reduce.comp OP
	bnReduceBackward = 1
	bnFinalTrain     = 0 // batchnorm_finalize.comp MODE
	bnFinalEval      = 1
	bnFinalBackward  = 2
	bnApplyForward   = 0 // batchnorm_apply.comp MODE
	bnApplyBackward  = 1
)

// vec4 units of batchnorm_reduce.comp and batchnorm_apply.comp (VEC): none,
// four positions of a plane, four channels of a row of [N, C].
const (
	bnVecNone = iota
	bnVecPlane
	bnVecChannels
)

// Flags of batchnorm_finalize.comp.
const (
	bnFlagAffine   = 1
	bnFlagTraining = 2
	bnFlagParams   = 4
)

// Workgroup sizes of batchnorm_finalize.comp (up to bnTuning.finalTY
// invocations per channel, a power of 2 dividing it) and
// batchnorm_apply.comp (bnTuning.applyPer units per invocation);
// batchnorm_reduce.comp's is bnTuning.wg.
const (
	bnFinalGroup = 64
	bnApplyGroup = 256
	// bnMaxSlots bounds the Parts per channel that batchnorm_finalize.comp
	// combines (each invocation of a channel one by one).
	bnMaxSlots = 1024
)

// bnGeom is x viewed as [n, c, s]: batch, channels and the plane of each.
type bnGeom struct{ n, c, s int }

// bnCheck validates the operands and returns x's geometry.
func bnCheck(x, w, b, rm, rv *Tensor, training bool) (bnGeom, error) {
	r := len(x.shape)
	if r < 2 || r > 4 {
		return bnGeom{}, fmt.Errorf("input of shape %v: want [N, C], [N, C, L] or [N, C, H, W]", x.shape)
	}
	if !x.Contiguous() {
		return bnGeom{}, fmt.Errorf("input %v is a strided view: make it contiguous first", x.shape)
	}
	g := bnGeom{n: x.shape[0], c: x.shape[1], s: 1}
	for _, d := range x.shape[2:] {
		g.s *= d
	}
	for _, p := range []struct {
		name string
		t    *Tensor
	}{{"weight", w}, {"bias", b}, {"running mean", rm}, {"running var", rv}} {
		if p.t == nil {
			if p.name == "running mean" || p.name == "running var" {
				return bnGeom{}, fmt.Errorf("no %s", p.name)
			}
			continue
		}
		if len(p.t.shape) != 1 || p.t.shape[0] != g.c {
			return bnGeom{}, fmt.Errorf("%s of shape %v for an input %v of %d channels", p.name, p.t.shape, x.shape, g.c)
		}
	}
	if training && g.n*g.s < 2 {
		return bnGeom{}, fmt.Errorf("expected more than 1 value per channel when training, got input of shape %v", x.shape)
	}
	if x.Len() >= math.MaxUint32 {
		return bnGeom{}, fmt.Errorf("input %v has 2^32 elements or more", x.shape)
	}
	return g, nil
}

// bnForward records the forward pass: the statistics into stats, running
// statistics updated when training, y normalised (and passed through a ReLU
// with relu).
func bnForward(s *vk.Stream, g bnGeom, y, x, w, b, rm, rv, stats *Tensor, training, relu bool, momentum, eps float32) error {
	mode := bnFinalEval
	var parts *Tensor
	nparts := 0
	if training {
		var err error
		parts, nparts, err = bnReduce(s, g, bnReduceForward, x, nil, nil, nil)
		if err != nil {
			return err
		}
		mode = bnFinalTrain
	}
	if err := bnFinalize(s, g, mode, parts, nparts, stats, w, b, rm, rv, nil, nil, momentum, eps, 0); err != nil {
		return err
	}
	return bnApply(s, g, bnApplyForward, relu, y, x, nil, nil, stats)
}

// bnBackward records the backward pass from dy: dx (unless nil), dw and db
// (unless nil), with the statistics the forward left in stats (whose
// gradient rows it fills). m is the output of a forward fused with its ReLU,
// whose positive elements select the dy that count, or nil.
func bnBackward(s *vk.Stream, g bnGeom, dx, dw, db, dy, m, x, w, stats *Tensor, training bool) error {
	var parts *Tensor
	nparts := 0
	flags := 0
	if training {
		flags |= bnFlagTraining
	}
	if dw != nil {
		flags |= bnFlagParams
	}
	// The sums over the batch are needed for dx in training and for the
	// parameters' gradients; the affine backward of evaluation needs none.
	if training || dw != nil {
		var err error
		parts, nparts, err = bnReduce(s, g, bnReduceBackward, x, dy, m, stats)
		if err != nil {
			return err
		}
	}
	if err := bnFinalize(s, g, bnFinalBackward, parts, nparts, stats, w, nil, nil, nil, dw, db, 0, 0, flags); err != nil {
		return err
	}
	if dx == nil {
		return nil
	}
	return bnApply(s, g, bnApplyBackward, m != nil, dx, x, dy, m, stats)
}

// bnPartFloats are the float32 words of one Part (batchnorm_common.glsl):
// shift, s1, s2 and the count n as uint32 bits.
const bnPartFloats = 4

// bnForwardSync records the training forward pass synchronised over the
// tape's replicas: partial sums, a run and download, the global statistics
// merged on the host, then the finalize and apply kernels from one uploaded
// Part per channel. It returns the values per channel over all replicas.
func bnForwardSync(tp *Tape, g bnGeom, y, x, w, b, rm, rv, stats *Tensor, relu bool, momentum, eps float32) (int, error) {
	s, ctx, coll := tp.s, tp.ctx, tp.coll
	parts, nparts, err := bnReduceParts(s, g, bnReduceForward, x, nil, nil, nil, true)
	if err != nil {
		return 0, err
	}
	host, err := tp.runDownload(parts)
	parts.Release() // the run is over, or failed and waited for the device
	if err != nil {
		return 0, err
	}
	// This replica's count, mean and sum of squared deviations per channel
	// (each Part's sums are about its own shift, a value of the channel),
	// in its rank's slots of the exchanged vector.
	rank, size := coll.Rank(), coll.Size()
	all := make([]float64, 3*size*g.c)
	for c := range g.c {
		var n, mean, m2 float64
		for p := range nparts {
			q := host[(p*g.c+c)*bnPartFloats:]
			nq := float64(math.Float32bits(q[3]))
			if nq == 0 {
				continue // a slot no workgroup wrote for this channel
			}
			s1, s2 := float64(q[1]), float64(q[2])
			n, mean, m2 = chanMerge(n, mean, m2, nq, float64(q[0])+s1/nq, max(s2-s1*s1/nq, 0))
		}
		at := 3 * (rank*g.c + c)
		all[at], all[at+1], all[at+2] = n, mean, m2
	}
	if err := coll.AllReduce(ctx, all); err != nil {
		return 0, err
	}
	// The global statistics as one Part per channel: shift the float32
	// nearest the mean, s1 the rest of the mean times n, so that the
	// finalize kernel's mean = shift + s1/n keeps the digits float32 can
	// hold of the large-mean channels too.
	one := make([]float32, g.c*bnPartFloats)
	global := 0
	for c := range g.c {
		var n, mean, m2 float64
		for r := range size {
			at := 3 * (r*g.c + c)
			n, mean, m2 = chanMerge(n, mean, m2, all[at], all[at+1], all[at+2])
		}
		if n < 2 || n >= math.MaxUint32 {
			return 0, fmt.Errorf("%v values per channel over the replicas", n)
		}
		global = int(n)
		shift := float32(mean)
		rest := mean - float64(shift)
		one[c*bnPartFloats] = shift
		one[c*bnPartFloats+1] = float32(n * rest)
		one[c*bnPartFloats+2] = float32(m2 + n*rest*rest)
		one[c*bnPartFloats+3] = math.Float32frombits(uint32(n))
	}
	gp, err := bnUploadParts(tp, one, g.c)
	if err != nil {
		return 0, err
	}
	if err := bnFinalize(s, g, bnFinalTrain, gp, 1, stats, w, b, rm, rv, nil, nil, momentum, eps, 0); err != nil {
		return 0, err
	}
	return global, bnApply(s, g, bnApplyForward, relu, y, x, nil, nil, stats)
}

// bnBackwardSync records the training backward pass synchronised over the
// tape's replicas: dw and db (unless nil) from this replica's sums, dx from
// the sums over all replicas' global values per channel.
func bnBackwardSync(tp *Tape, g bnGeom, global int, dx, dw, db, dy, m, x, w, stats *Tensor) error {
	s, ctx, coll := tp.s, tp.ctx, tp.coll
	parts, nparts, err := bnReduceParts(s, g, bnReduceBackward, x, dy, m, stats, true)
	if err != nil {
		return err
	}
	if dw != nil {
		// The local sums for the parameters' gradients; the coefficients of
		// dx it writes are overwritten below by the global ones.
		if err := bnFinalize(s, g, bnFinalBackward, parts, nparts, stats, w, nil, nil, nil, dw, db, 0, 0, bnFlagTraining|bnFlagParams); err != nil {
			s.AfterRun(parts.Release)
			return err
		}
	}
	host, err := tp.runDownload(parts)
	parts.Release()
	if err != nil {
		return err
	}
	sums := make([]float64, 2*g.c) // sum(dy), sum(dy * xhat) per channel
	for p := range nparts {
		for c := range g.c {
			q := host[(p*g.c+c)*bnPartFloats:]
			sums[2*c] += float64(q[1])
			sums[2*c+1] += float64(q[2])
		}
	}
	if err := coll.AllReduce(ctx, sums); err != nil {
		return err
	}
	one := make([]float32, g.c*bnPartFloats)
	for c := range g.c {
		one[c*bnPartFloats+1] = float32(sums[2*c])
		one[c*bnPartFloats+2] = float32(sums[2*c+1])
	}
	gp, err := bnUploadParts(tp, one, g.c)
	if err != nil {
		return err
	}
	// The finalize kernel reads only the channels and the values per
	// channel of the geometry: here those of the whole global batch.
	gg := bnGeom{n: global, c: g.c, s: 1}
	if err := bnFinalize(s, gg, bnFinalBackward, gp, 1, stats, w, nil, nil, nil, nil, nil, 0, 0, bnFlagTraining); err != nil {
		return err
	}
	return bnApply(s, g, bnApplyBackward, m != nil, dx, x, dy, m, stats)
}

// bnUploadParts uploads one Part per channel (values of [1, C, 4]) for the
// finalize kernel to read, released once the stream has run.
func bnUploadParts(tp *Tape, one []float32, c int) (*Tensor, error) {
	gp, err := FromHost(tp.ctx, tp.Device(), one, 1, c, bnPartFloats)
	if err != nil {
		return nil, err
	}
	tp.s.AfterRun(gp.Release)
	if _, off, err := Bind(gp, false); err != nil {
		return nil, err
	} else if off%4 != 0 {
		return nil, fmt.Errorf("uploaded partial sums at element %d of their segment, not a multiple of 4", off)
	}
	return gp, nil
}

// chanMerge combines the count, mean and sum of squared deviations of two
// sets of values (Chan, Golub and LeVeque's pairwise rule); an empty first
// set takes the second as it is.
func chanMerge(n, mean, m2, nq, meanq, m2q float64) (float64, float64, float64) {
	if nq == 0 {
		return n, mean, m2
	}
	if n == 0 {
		return nq, meanq, m2q
	}
	nt := n + nq
	delta := meanq - mean
	return nt, mean + delta*(nq/nt), m2 + m2q + delta*delta*(n*(nq/nt))
}

// bnPiece is one dispatch of batchnorm_reduce.comp: a box of x over (row,
// channel, plane position) lying in one segment of each operand, its
// workgroup shape and its chunks of rows.
type bnPiece struct {
	b                 box
	vec               int
	wg, ty            int
	chunk, chunks, cg int
	pbase             int
}

// span is the element range a box over (row, channel, position) of x
// viewed as [n, c, s] touches, from its first to its last element.
func (g bnGeom) span(b box) (first, count int) {
	first = (b.lo[0]*g.c+b.lo[1])*g.s + b.lo[2]
	last := ((b.hi[0]-1)*g.c+b.hi[1]-1)*g.s + b.hi[2] - 1
	return first, last - first + 1
}

// bnOuterMost picks the first dimension of a box that can still be halved:
// rows before channels before plane positions, which keeps whole rows (and
// then whole planes) together, as they lie in memory.
func bnOuterMost(b box) int {
	for d := 0; d < maxRank-1; d++ {
		if b.size(d) > 1 {
			return d
		}
	}
	return maxRank - 1
}

// bnTuning shapes the batch-norm kernels' work for a kind of device.
type bnTuning struct {
	wg        int // most invocations in a workgroup of batchnorm_reduce.comp
	maxTY     int // most invocations summing one channel of a chunk
	applyPer  int // units per invocation of batchnorm_apply.comp
	perLane   int // values an invocation sums, at least (where there are)
	minGroups int // workgroups to aim for, halving the chunks down to one row
	finalTY   int // most invocations combining one channel's Parts in batchnorm_finalize.comp
}

// bnTuningEnv names the environment variable that picks the tuning of
// another kind of device ("cpu" or "gpu"), so that tests run both on any.
const bnTuningEnv = "E2MCVK_BATCHNORM_TUNING"

// bnTuningFor returns the tuning for device d. A GPU wants many invocations
// reading neighbouring addresses: up to 256 per channel, partial sums
// combined in shared memory, and over a thousand workgroups. lavapipe runs
// a workgroup as a loop over 8-wide vectors in which every load is a
// gather and every barrier a switch between them: there, one invocation per
// channel summing thousands of values, with no barrier, was 3 to 10 times
// faster at ResNet-50's shapes, and runs of 16 vec4s per invocation of
// batchnorm_apply.comp halved its time.
func bnTuningFor(d *vk.Device) bnTuning {
	cpu := d.Info.Type == "cpu"
	switch os.Getenv(bnTuningEnv) {
	case "cpu":
		cpu = true
	case "gpu":
		cpu = false
	}
	if cpu {
		return bnTuning{wg: 64, maxTY: 1, applyPer: 16, perLane: 4096, minGroups: 32, finalTY: 1}
	}
	return bnTuning{wg: 256, maxTY: 256, applyPer: 2, perLane: 64, minGroups: 1024, finalTY: 32}
}

// bnShape chooses the workgroup of batchnorm_reduce.comp for a box of rows x
// cb channels x sb positions: ty invocations per channel, so that each takes
// at least 16 values where there are enough, the rest of the workgroup on
// neighbouring channels; then chunks of rows of about perLane values per
// invocation, halved while there would be under minGroups workgroups.
func bnShape(tu bnTuning, rows, cb, sb int) (wg, ty, chunk int) {
	per := rows * sb
	ty = min(tu.maxTY, pow2AtMost(max(1, per/16)))
	tx := min(tu.wg/ty, pow2AtLeast(cb))
	wg = tx * ty
	chunk = min(rows, max(1, ceilDiv(tu.perLane*ty, sb)))
	for chunk > 1 && ceilDiv(cb, tx)*ceilDiv(rows, chunk) < tu.minGroups {
		chunk = ceilDiv(chunk, 2)
	}
	return wg, ty, chunk
}

// bnReduce records the partial sums of op over x (and dy) into a fresh
// tensor of Parts [slots, C, 4], released once the stream has run (a
// temporary released while recording could be handed to a tensor the caller
// uploads to from the host before the recorded work has run). Backward, dy
// counts only where m (unless nil: the output of a forward fused with its
// ReLU) is positive.
func bnReduce(s *vk.Stream, g bnGeom, op int, x, dy, m, stats *Tensor) (*Tensor, int, error) {
	return bnReduceParts(s, g, op, x, dy, m, stats, false)
}

// bnReduceParts is bnReduce; with keep, the Parts are the caller's to
// release (after running the stream: the synchronised batch norm downloads
// them), except on error.
func bnReduceParts(s *vk.Stream, g bnGeom, op int, x, dy, m, stats *Tensor, keep bool) (*Tensor, int, error) {
	ops := []*Tensor{x}
	for _, t := range []*Tensor{dy, m} {
		if t == nil {
			continue
		}
		if !slices.Equal(t.shape, x.shape) || !t.Contiguous() {
			return nil, 0, fmt.Errorf("gradient or mask %v for an input %v (all contiguous)", t.shape, x.shape)
		}
		ops = append(ops, t)
	}
	whole := box{hi: [maxRank]int{g.n, g.c, g.s}}
	boxes, err := split(whole, bnOuterMost, func(b box) bool {
		first, count := g.span(b)
		for _, t := range ops {
			if _, _, ok := t.locate(first, count, false); !ok {
				return false
			}
		}
		return true
	})
	if err != nil {
		return nil, 0, err
	}
	// The Parts are bound whole: at most slots of them per channel fit one
	// segment, and more than bnMaxSlots would slow the finalizing loop
	// down. Chunks beyond the slots share them round-robin (ACC).
	maxSlots := min(bnMaxSlots, int(x.Device().SegmentLimit()/int64(16*g.c)))
	if maxSlots < 1 {
		return nil, 0, fmt.Errorf("the partial sums of %d channels do not fit one buffer segment (%s)",
			g.c, vk.FormatBytes(x.Device().SegmentLimit()))
	}
	tune := bnTuningFor(x.Device())
	pieces := make([]bnPiece, len(boxes))
	chunks := 0
	covered := true // every slot is written for every channel
	for i, b := range boxes {
		p := bnPiece{b: b, pbase: chunks % maxSlots}
		first, count := g.span(b)
		aligned := true
		for _, t := range ops {
			_, off, _ := t.locate(first, count, false)
			aligned = aligned && off%4 == 0
		}
		rows, cb, sb := b.size(0), b.size(1), b.size(2)
		switch {
		case aligned && g.s%4 == 0 && b.lo[2]%4 == 0 && sb%4 == 0:
			p.vec, sb = bnVecPlane, sb/4
		case aligned && g.s == 1 && g.c%4 == 0 && b.lo[1]%4 == 0 && cb%4 == 0:
			p.vec, cb = bnVecChannels, cb/4
		}
		p.wg, p.ty, p.chunk = bnShape(tune, rows, cb, sb)
		p.chunk = max(p.chunk, ceilDiv(rows, maxSlots))
		p.chunks = ceilDiv(rows, p.chunk)
		p.cg = ceilDiv(cb, p.wg/p.ty)
		chunks += p.chunks
		covered = covered && b.size(1) == g.c
		pieces[i] = p
	}
	slots := min(chunks, maxSlots)
	acc := !covered || chunks > slots
	parts, err := New(x.Device(), slots, g.c, 4)
	if err != nil {
		return nil, 0, err
	}
	if !keep {
		s.AfterRun(parts.Release)
	}
	fail := func(err error) (*Tensor, int, error) {
		if keep {
			s.AfterRun(parts.Release)
		}
		return nil, 0, err
	}
	pArg, pOff, err := Bind(parts, true)
	if err != nil {
		return fail(fmt.Errorf("partial sums: %w", err))
	}
	if pOff%4 != 0 {
		return fail(fmt.Errorf("partial sums at element %d of their segment, not a multiple of 4", pOff))
	}
	if acc {
		// Slots start empty (n = 0) for the workgroups to add to.
		if err := Fill(s, parts, 0); err != nil {
			return fail(err)
		}
	}
	var sArg vk.Arg
	var sOff uint32
	if stats != nil {
		if sArg, sOff, err = Bind(stats, false); err != nil {
			return fail(fmt.Errorf("statistics: %w", err))
		}
	}
	for _, p := range pieces {
		first, count := g.span(p.b)
		xArg, xOff, _ := x.locate(first, count, false)
		dyArg, dyOff := xArg, xOff
		if dy != nil {
			dyArg, dyOff, _ = dy.locate(first, count, false)
		}
		mArg, mOff := xArg, xOff
		if m != nil {
			mArg, mOff, _ = m.locate(first, count, false)
		}
		st := sArg
		if stats == nil {
			st = xArg
		}
		// Sizes and offsets in units of the vec4 reads.
		c, sz, cb, sb := g.c, g.s, p.b.size(1), p.b.size(2)
		switch p.vec {
		case bnVecPlane:
			sz, sb, xOff, dyOff, mOff = sz/4, sb/4, xOff/4, dyOff/4, mOff/4
		case bnVecChannels:
			c, cb, xOff, dyOff, mOff = c/4, cb/4, xOff/4, dyOff/4, mOff/4
		}
		push := Push{}.U32(uint32(c), uint32(sz), uint32(p.b.size(0)), uint32(cb), uint32(sb),
			uint32(p.chunk), uint32(p.cg), xOff, dyOff, uint32(p.b.lo[1]), uint32(p.pbase), uint32(slots), sOff, pOff/4, uint32(g.c), mOff)
		if err := Launch(s, "batchnorm_reduce", []uint32{uint32(p.wg), uint32(p.ty), uint32(op), specFlag(acc), uint32(p.vec), specFlag(m != nil)},
			Grid(p.cg*p.chunks), push, xArg, dyArg, st, pArg, mArg); err != nil {
			return fail(err)
		}
	}
	return parts, slots, nil
}

// bnFinalize records batchnorm_finalize.comp in mode. Operands a mode does
// not use may be nil.
func bnFinalize(s *vk.Stream, g bnGeom, mode int, parts *Tensor, nparts int, stats, w, b, rm, rv, dw, db *Tensor, momentum, eps float32, flags int) error {
	sArg, sOff, err := Bind(stats, true)
	if err != nil {
		return fmt.Errorf("statistics: %w", err)
	}
	dummy, _, _ := Bind(stats, false)
	args := make([]vk.Arg, 8)
	offs := make([]uint32, 8)
	for i, o := range []struct {
		t     *Tensor
		write bool
	}{{parts, false}, {stats, true}, {w, false}, {b, false}, {rm, mode == bnFinalTrain}, {rv, mode == bnFinalTrain}, {dw, true}, {db, true}} {
		if i == 1 {
			args[i], offs[i] = sArg, sOff
			continue
		}
		if o.t == nil {
			args[i] = dummy
			continue
		}
		if args[i], offs[i], err = Bind(o.t, o.write); err != nil {
			return err
		}
	}
	if w != nil {
		flags |= bnFlagAffine
	}
	push := Push{}.U32(uint32(g.c), uint32(nparts), offs[0]/4, offs[1], offs[2], offs[3], offs[4], offs[5], offs[6], offs[7], uint32(flags)).
		F32(momentum, eps, float32(g.n*g.s))
	// ty invocations per channel share its Parts (up to one each).
	ty := min(bnTuningFor(s.Device()).finalTY, pow2AtLeast(max(nparts, 1)))
	return Launch(s, "batchnorm_finalize", []uint32{bnFinalGroup, uint32(mode), uint32(ty)}, Grid(ceilDiv(g.c, bnFinalGroup/ty)), push, args...)
}

// bnApply records batchnorm_apply.comp in mode over x (and dy) into y:
// in vec4 units where the planes (or, for [N, C], the rows) and each piece's
// offsets allow, else element by element. With relu the forward is fused
// with a ReLU, and the backward takes dy where m, that forward's output, is
// positive.
func bnApply(s *vk.Stream, g bnGeom, mode int, relu bool, y, x, dy, m, stats *Tensor) error {
	sArg, sOff, err := Bind(stats, false)
	if err != nil {
		return fmt.Errorf("statistics: %w", err)
	}
	if relu && mode == bnApplyBackward && m == nil {
		return fmt.Errorf("the backward of a batch norm fused with its ReLU needs the forward's output")
	}
	ops := []operand{{x, false}, {y, true}}
	for _, t := range []*Tensor{dy, m} {
		if t != nil {
			ops = append(ops, operand{t, false})
		}
	}
	for _, o := range ops {
		if !slices.Equal(o.t.shape, x.shape) || !o.t.Contiguous() {
			return fmt.Errorf("tensor %v for an input %v (all contiguous)", o.t.shape, x.shape)
		}
	}
	vec, unit := bnVecNone, 1
	switch {
	case g.s%4 == 0:
		vec, unit = bnVecPlane, 4
	case g.s == 1 && g.c%4 == 0 && sOff%4 == 0:
		vec, unit = bnVecChannels, 4
	}
	pieces, err := split(box{hi: [maxRank]int{x.Len() / unit}}, longest, func(b box) bool {
		for _, o := range ops {
			if _, _, ok := o.t.locate(unit*b.lo[0], unit*b.size(0), o.write); !ok {
				return false
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	sm, sl := divMagic(uint32(g.s))
	cm, cl := divMagic(uint32(g.c))
	per := bnTuningFor(x.Device()).applyPer
	for _, p := range pieces {
		lo, n := unit*p.lo[0], unit*p.size(0)
		xArg, xOff, _ := x.locate(lo, n, false)
		yArg, yOff, _ := y.locate(lo, n, true)
		dyArg, dyOff := xArg, xOff
		if dy != nil {
			dyArg, dyOff, _ = dy.locate(lo, n, false)
		}
		mArg, mOff := xArg, xOff
		if m != nil {
			mArg, mOff, _ = m.locate(lo, n, false)
		}
		v, u := vec, uint32(unit)
		if (xOff|yOff|dyOff|mOff)%4 != 0 {
			v, u = bnVecNone, 1 // a segment that starts off the vec4 grid
		}
		push := Push{}.U32(uint32(n)/u, uint32(lo)/u, xOff/u, dyOff/u, yOff/u, sOff, uint32(g.c), uint32(g.s), sm, sl, cm, cl, mOff/u)
		invocations := ceilDiv(n/int(u), per)
		if v == bnVecChannels {
			// Blocks of per rows, one invocation per four channels.
			c4 := g.c / 4
			invocations = ceilDiv(n/int(u), per*c4) * c4
		}
		if err := Launch(s, "batchnorm_apply", []uint32{bnApplyGroup, uint32(per), uint32(mode), uint32(v), specFlag(relu)},
			Grid(ceilDiv(invocations, bnApplyGroup)), push, xArg, dyArg, sArg, yArg, mArg); err != nil {
			return err
		}
	}
	return nil
}

// divMagic returns the magic number m and shift l with which fastdiv
// (shaders/include/batchnorm_common.glsl) divides any 32-bit n by d:
// with t = the high word of n * m, floor(n / d) = (t + ((n - t) >> 1)) >>
// (l - 1), where l = ceil(log2 d) and m = floor(2^32 (2^l - d) / d) + 1
// (Granlund and Montgomery's round-up method, whose 33-bit multiplier
// 2^32 + m is applied as t + n without overflowing). l = 0 stands for d = 1.
func divMagic(d uint32) (m, l uint32) {
	if d <= 1 {
		return 0, 0
	}
	l = uint32(bits.Len32(d - 1))
	m = uint32((uint64(1)<<32)*((uint64(1)<<l)-uint64(d))/uint64(d) + 1)
	return m, l
}

func specFlag(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
