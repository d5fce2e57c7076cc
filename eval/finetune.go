package eval

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// FinetuneConfig are the settings of semi-supervised fine-tuning: the whole
// network (trunk and a new linear head) trained by SGD with momentum, the
// trunk and the head at their own learning rates, both decayed by Gamma at
// each of Milestones (epochs), as SwAV's eval_semisup.py does.
type FinetuneConfig struct {
	Epochs          int
	TrunkLR, HeadLR float64
	Milestones      []int
	Gamma           float64
	WeightDecay     float64
	Momentum        float64
	BatchSize       int
	// Augment is the training transform; Preprocess the evaluation one.
	Augment    loader.ViewAugment
	Preprocess loader.Preprocess
	// Seed chooses the head's initial weights, the order of the samples
	// and the augmentations.
	Seed uint64
}

// DefaultFinetuneConfig is SwAV's semi-supervised setting (10% labels): 20
// epochs, trunk lr 0.01, head lr 0.2, decay by 0.2 at epochs 12 and 16,
// no weight decay, momentum 0.9, batch 256, RandomResizedCrop(224) and flip
// for training, Resize 256 and CenterCrop 224 for evaluation.
func DefaultFinetuneConfig() FinetuneConfig {
	return FinetuneConfig{Epochs: 20, TrunkLR: 0.01, HeadLR: 0.2, Milestones: []int{12, 16}, Gamma: 0.2,
		Momentum: 0.9, BatchSize: 256, Augment: LinearAugment(224), Preprocess: loader.Preprocess{Resize: 256, Crop: 224}}
}

func (c FinetuneConfig) check() error {
	if c.Epochs < 1 || c.BatchSize < 2 || !(c.TrunkLR >= 0) || !(c.HeadLR > 0) || !(c.Gamma > 0) || c.WeightDecay < 0 || c.Momentum < 0 || c.Momentum >= 1 {
		return fmt.Errorf("fine-tuning: %d epochs, batch %d, lr %g / %g, gamma %g, weight decay %g, momentum %g: want epochs >= 1, batch >= 2, head lr > 0, trunk lr >= 0, gamma > 0, weight decay >= 0, momentum in [0, 1)",
			c.Epochs, c.BatchSize, c.TrunkLR, c.HeadLR, c.Gamma, c.WeightDecay, c.Momentum)
	}
	return nil
}

// FinetuneProgress is told about fine-tuning as it goes: after each batch
// the epoch (from 1) and the images done in it, and after each epoch its
// mean training loss (epochEnd true then).
type FinetuneProgress func(epoch, done int, loss float64, epochEnd bool)

// Finetune fine-tunes the backbone of parts with a new linear head on train
// (in training mode: batch statistics) and returns the top-1 and top-5
// accuracy in percent of the result on val (evaluation mode). A batch left
// with one image is skipped: batch norm needs two. Unreadable images of
// either set go to skips (passed over, or with Strict an error); all the
// images of a set unreadable is an error.
func Finetune(ctx context.Context, dev *vk.Device, parts *loader.Parts, train, val loader.Dataset, cfg FinetuneConfig, skips *Skips, progress FinetuneProgress) (top1, top5 float64, err error) {
	if err := cfg.check(); err != nil {
		return 0, 0, err
	}
	if train.Len() == 0 || val.Len() == 0 {
		return 0, 0, fmt.Errorf("fine-tuning: %d training and %d validation images", train.Len(), val.Len())
	}
	classes := len(train.Classes())
	if classes < 2 || len(val.Classes()) > classes {
		return 0, 0, fmt.Errorf("fine-tuning: %d training classes and %d validation classes", classes, len(val.Classes()))
	}
	ft, err := newFinetuner(ctx, dev, parts, classes, cfg)
	if err != nil {
		return 0, 0, err
	}
	defer ft.release()
	order := rand.New(rand.NewPCG(cfg.Seed, 0x5a3b1e))
	n := train.Len()
	for epoch := range cfg.Epochs {
		ft.net.Training = true
		perm := order.Perm(n)
		var total float64
		seen, read := 0, 0
		for lo := 0; lo < n; lo += cfg.BatchSize {
			data, idx, skipped, err := LoadAugmented(ctx, train, perm[lo:min(n, lo+cfg.BatchSize)], cfg.Augment, cfg.Seed, epoch)
			if err != nil {
				return 0, 0, err
			}
			if err := skips.add(skipped...); err != nil {
				return 0, 0, err
			}
			read += len(idx)
			if len(idx) >= 2 {
				labels := make([]int, len(idx))
				for k, i := range idx {
					labels[k] = train.Label(i)
				}
				loss, err := ft.step(ctx, data, labels, cfg.Augment.Size, epoch)
				ft.zeroGrad()
				if err != nil {
					return 0, 0, err
				}
				total += loss * float64(len(idx))
				seen += len(idx)
			}
			if progress != nil {
				progress(epoch+1, min(n, lo+cfg.BatchSize), 0, false)
			}
		}
		if read == 0 {
			return 0, 0, fmt.Errorf("fine-tuning: all %d training images are unreadable: nothing left to train on", n)
		}
		if progress != nil {
			progress(epoch+1, n, total/float64(max(1, seen)), true)
		}
	}
	ft.net.Training = false
	return classify(ctx, dev, val, cfg.Preprocess, cfg.BatchSize, skips, func(tp *layers.Tape, x *layers.Var) *layers.Var {
		return ft.head.Forward(tp, ft.net.Forward(tp, x))
	}, classes)
}

// finetuner is the network being fine-tuned: the checkpoint's backbone, a
// new head, and an optimizer for each with its schedule.
type finetuner struct {
	dev               *vk.Device
	net               *layers.ResNet
	head              *layers.Linear
	trunkOpt, headOpt *layers.Optimizer
	trunkLR, headLR   layers.MultiStep
}

func newFinetuner(ctx context.Context, dev *vk.Device, parts *loader.Parts, classes int, cfg FinetuneConfig) (ft *finetuner, err error) {
	rng := rand.New(rand.NewPCG(cfg.Seed, 0xf1e7))
	ft = &finetuner{dev: dev,
		trunkLR: layers.MultiStep{Base: cfg.TrunkLR, Gamma: cfg.Gamma, Milestones: cfg.Milestones},
		headLR:  layers.MultiStep{Base: cfg.HeadLR, Gamma: cfg.Gamma, Milestones: cfg.Milestones}}
	defer func() {
		if err != nil {
			ft.release()
		}
	}()
	// The backbone's draws come first: the head's initialisation follows.
	if ft.net, err = loadBackbone(ctx, dev, parts, rng, "fine-tuning"); err != nil {
		return nil, err
	}
	if ft.head, err = newHead(ctx, dev, ft.net.Features, classes, rng); err != nil {
		return nil, err
	}
	if ft.trunkOpt, err = layers.NewSGD([]layers.Group{{Params: layers.Parameters(ft.net), WeightDecay: cfg.WeightDecay}}, cfg.Momentum); err != nil {
		return nil, err
	}
	if ft.headOpt, err = layers.NewSGD([]layers.Group{{Params: layers.Parameters(ft.head), WeightDecay: cfg.WeightDecay}}, cfg.Momentum); err != nil {
		return nil, err
	}
	return ft, nil
}

func (ft *finetuner) release() {
	for _, o := range []*layers.Optimizer{ft.trunkOpt, ft.headOpt} {
		if o != nil {
			o.Release()
		}
	}
	if ft.head != nil {
		ft.head.Release()
	}
	if ft.net != nil {
		ft.net.Release()
	}
}

func (ft *finetuner) params() []*layers.Var {
	return append(layers.Parameters(ft.net), layers.Parameters(ft.head)...)
}

func (ft *finetuner) zeroGrad() {
	for _, p := range ft.params() {
		p.ZeroGrad()
	}
}

// step trains on one batch in an epoch's learning rates and returns the
// loss; the gradients stay until zeroGrad.
func (ft *finetuner) step(ctx context.Context, data []float32, labels []int, size, epoch int) (float64, error) {
	return finetuneStep(ctx, ft.dev, ft.net, ft.head, data, labels, size, func(s *vk.Stream) error {
		if lr := ft.trunkLR.LR(epoch); lr > 0 {
			if err := ft.trunkOpt.Step(s, lr); err != nil {
				return err
			}
		}
		return ft.headOpt.Step(s, ft.headLR.LR(epoch))
	})
}

// newHead is a Linear layer initialised as SwAV's semi-supervised head:
// weights from N(0, 0.01^2), zero bias.
func newHead(ctx context.Context, dev *vk.Device, in, classes int, rng *rand.Rand) (*layers.Linear, error) {
	head, err := layers.NewLinear(ctx, dev, in, classes, true, rng)
	if err != nil {
		return nil, err
	}
	w := make([]float32, in*classes)
	for i := range w {
		w[i] = float32(0.01 * rng.NormFloat64())
	}
	err = head.Weight.Value.Upload(ctx, w)
	if err == nil {
		err = head.Bias.Value.Upload(ctx, make([]float32, classes))
	}
	if err != nil {
		head.Release()
		return nil, err
	}
	return head, nil
}

// finetuneStep runs one forward and backward pass of a batch, records the
// optimizers' steps with step and runs it all, and returns the loss.
func finetuneStep(ctx context.Context, dev *vk.Device, net *layers.ResNet, head *layers.Linear, data []float32, labels []int, size int, step func(*vk.Stream) error) (float64, error) {
	s, err := dev.NewStream()
	if err != nil {
		return 0, err
	}
	defer s.Close()
	x, err := layers.FromHost(ctx, dev, data, len(labels), 3, size, size)
	if err != nil {
		return 0, err
	}
	defer x.Release()
	tp := layers.NewTape(s)
	loss := tp.CrossEntropy(head.Forward(tp, net.Forward(tp, layers.Constant(x))), labels)
	tp.Keep(loss)
	err = tp.Backward(loss)
	tp.Release()
	if err != nil {
		return 0, fmt.Errorf("fine-tuning step: %w", err)
	}
	defer loss.Value.Release()
	if err := step(s); err != nil {
		return 0, err
	}
	if err := s.Run(ctx); err != nil {
		return 0, err
	}
	v, err := loss.Value.Download(ctx)
	if err != nil {
		return 0, err
	}
	return float64(v[0]), nil
}

// classify runs forward on every readable image of ds (preprocessed by
// pre; unreadable ones go to skips) and returns the top-1 and top-5
// accuracy in percent of its classes scores.
func classify(ctx context.Context, dev *vk.Device, ds loader.Dataset, pre loader.Preprocess, batch int, skips *Skips, forward func(*layers.Tape, *layers.Var) *layers.Var, classes int) (top1, top5 float64, err error) {
	n := ds.Len()
	scores := make([]float32, 0, n*classes)
	labels := make([]int, 0, n)
	for lo := 0; lo < n; lo += batch {
		idx := make([]int, 0, batch)
		for i := lo; i < min(n, lo+batch); i++ {
			idx = append(idx, i)
		}
		data, kept, h, w, skipped, err := loadBatch(ctx, ds, idx, pre)
		if err != nil {
			return 0, 0, err
		}
		if err := skips.add(skipped...); err != nil {
			return 0, 0, err
		}
		if len(kept) == 0 {
			continue
		}
		rows, err := forwardBatch(ctx, dev, data, len(kept), h, w, forward)
		if err != nil {
			return 0, 0, err
		}
		scores = append(scores, rows...)
		for _, i := range kept {
			labels = append(labels, ds.Label(i))
		}
	}
	if len(labels) == 0 {
		return 0, 0, fmt.Errorf("all %d evaluation images are unreadable: nothing left to evaluate", n)
	}
	top1, top5 = TopK(scores, classes, labels)
	return top1, top5, nil
}

// forwardBatch runs forward on n images data [n, 3, h, w] and downloads the
// result.
func forwardBatch(ctx context.Context, dev *vk.Device, data []float32, n, h, w int, forward func(*layers.Tape, *layers.Var) *layers.Var) ([]float32, error) {
	s, err := dev.NewStream()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	x, err := layers.FromHost(ctx, dev, data, n, 3, h, w)
	if err != nil {
		return nil, err
	}
	defer x.Release()
	tp := layers.NewTape(s)
	z := forward(tp, layers.Constant(x))
	tp.Keep(z)
	tp.Release()
	if err := tp.Err(); err != nil {
		return nil, err
	}
	defer z.Value.Release()
	if err := s.Run(ctx); err != nil {
		return nil, err
	}
	return z.Value.Download(ctx)
}
