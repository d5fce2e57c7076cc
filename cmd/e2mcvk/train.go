package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/ssl"
	"github.com/e2mcvk/e2mcvk/vk"
)

// defaultSteps is the length of a run given neither --steps nor --epochs:
// the default run's, a few minutes on a two-core CPU with lavapipe.
const defaultSteps = 100

// poisonEnv names a test hook: the step whose batch is filled with NaN,
// to exercise the non-finite-loss path end to end.
const poisonEnv = "E2MCVK_TRAIN_POISON_STEP"

// trainCmd is `e2mcvk train`. The JSON names are how a run's flags are
// kept in its checkpoint (loader.MetaArgs) for --resume.
type trainCmd struct {
	Method    string   `name:"method" enum:"vicreg,swav,simsiam" default:"vicreg" help:"Self-supervised method: vicreg, swav or simsiam."`
	Criterion string   `name:"criterion" enum:"e2mc,vcreg,mmcr,auh,none" default:"e2mc" help:"Criterion added to the method's loss: e2mc, vcreg, mmcr, auh or none."`
	EntCoeff  *float64 `name:"ent-coeff" placeholder:"X" help:"Weight of the criterion's entropy term (default: the method's: VICReg 10, SwAV 10, SimSiam 1)."`
	CovCoeff  *float64 `name:"cov-coeff" placeholder:"X" help:"Weight of the criterion's covariance term (default: the method's: VICReg 1, SwAV 1, SimSiam 25)."`

	From        string `name:"from" type:"existingfile" placeholder:"C" help:"Continue from this checkpoint (an official VICReg, SwAV or SimSiam .pth, a torchvision state dict or an e2mcvk .safetensors): backbone, heads, epoch and (e2mcvk files only) optimizer state. Without it, training starts from random weights."`
	Layout      string `name:"layout" default:"" placeholder:"L" help:"Layout of --from, detected when empty."`
	MLP         string `name:"mlp" default:"" placeholder:"A-B-C" help:"Sizes of the projector's (VICReg: expander's) layers where the checkpoint has none (default: the method's official ones, except 512-512-512 for VICReg from scratch)."`
	Dim         int    `name:"dim" default:"0" help:"Output size of the projector where the checkpoint has none (0: the method's)."`
	PredDim     int    `name:"pred-dim" default:"0" help:"Hidden size of SimSiam's predictor where the checkpoint has none (0: 512)."`
	Prototypes  int    `name:"prototypes" default:"0" help:"Number of SwAV's prototypes where the checkpoint has none (0: 3000)."`
	FreezeProto int    `name:"freeze-prototypes" default:"313" placeholder:"N" help:"SwAV: the prototypes stay fixed during the run's first N iterations, counted from the start of training as main_swav.py's freeze_prototypes_niters (0: never)."`

	LR        *float64 `name:"lr" placeholder:"X" help:"Base learning rate (default: the method's); VICReg and SimSiam scale it by --batch-size/256 as their scripts do."`
	PredLR    float64  `name:"pred-lr" default:"0.05" help:"SimSiam's predictor learning rate, scaled like --lr and held fixed."`
	WD        *float64 `name:"wd" placeholder:"X" help:"Weight decay (default: the method's)."`
	Schedule  string   `name:"schedule" enum:"constant,cosine" default:"constant" help:"Learning-rate schedule: constant, or a half cosine to 0 over the run's steps."`
	Epochs    int      `name:"epochs" default:"0" help:"Train until this epoch, counted as the official scripts count them (a checkpoint of epoch E continues with epoch E+1)."`
	Steps     int      `name:"steps" default:"0" help:"Train this many steps instead (default without --epochs: 100)."`
	BatchSize int      `name:"batch-size" default:"64" help:"Global batch size, split evenly over the devices."`
	Seed      uint64   `name:"seed" default:"0" help:"Seed of the initial weights, the data order and the augmentations."`
	Arch      string   `name:"arch" enum:"resnet18,resnet34,resnet50" default:"resnet18" help:"Backbone from scratch: resnet18, resnet34 or resnet50 (with --from: the checkpoint's)."`
	Width     int      `name:"width" default:"16" help:"Channels of the backbone's stem from scratch (torchvision: 64)."`
	Stem      string   `name:"stem" enum:"auto,small,imagenet" default:"auto" help:"Backbone stem from scratch: small (3x3 conv, no max pool), imagenet (7x7 stride 2 and max pool), or auto: small up to 64 px."`
	ImageSize int      `name:"image-size" default:"32" help:"Size of the large views; the methods' 224 px crops become this, SwAV's 96 px crops are scaled alike."`
	Data      string   `name:"data" default:"fashion-mnist:train" placeholder:"SPEC" help:"Training images: fashion-mnist:train, cifar10:DIR:train, an ImageFolder DIR or DIR@LIST.txt."`
	Out       string   `name:"out" default:"e2mcvk-run" placeholder:"DIR" help:"Run directory: last.safetensors (+ optimizer and method state), metrics.jsonl, loss.png, entropy.png."`
	Device    string   `name:"device" default:"" placeholder:"I,J" help:"Devices to train on, comma-separated (see e2mcvk devices); 0,0 makes two replicas on device 0 (default 0, or the resumed run's)."`
	Resume    bool     `name:"resume" help:"Continue the run in --out where its last checkpoint left it; the run's settings come from the checkpoint."`
	SaveEvery *int     `name:"save-every" placeholder:"N" help:"Also save the run state every N steps; 0: only each epoch and at the end (default 100, or the resumed run's)."`
	LogEvery  *int     `name:"log-every" placeholder:"N" help:"Log to metrics.jsonl and stderr every N steps, the first and last always (default 10, or the resumed run's)."`
	NoAugment bool     `name:"no-augment" help:"No augmentation: every view is the image resized (shorter side) and centre-cropped to its size, then normalised."`
	NoShuffle bool     `name:"no-shuffle" help:"Take the images in data-set order."`
	Workers   *int     `name:"workers" placeholder:"N" help:"Image-decoding goroutines; 0: one a CPU (default 0, or the resumed run's)."`
	Strict    bool     `name:"strict" help:"Stop at the first unreadable image, naming it, instead of skipping it (skipped images are logged and counted)."`
}

// Help is the long help of `e2mcvk train --help`.
func (trainCmd) Help() string {
	return `Trains a self-supervised model (VICReg, SwAV or SimSiam) with an added
criterion (E2MC by default), from scratch or continuing a checkpoint, on one
or more Vulkan devices.

Without flags it runs a small job that shows the whole loop in a few minutes
on a CPU: VICReg + E2MC on Fashion-MNIST, a ResNet-18 of width 16 with the
small stem, 32 px views, a 512-512-512 expander, batch 64, ` + strconv.Itoa(defaultSteps) + ` steps, into
./e2mcvk-run.

The run directory (--out) receives last.safetensors (the model; e2mcvk embed,
eval and convert read it) with its optimizer and data-order state, written
atomically every epoch, every --save-every steps and at the end;
metrics.jsonl (one JSON object per logged step: step, epoch, lr, loss, each
loss term, the mean entropy where the criterion measures it, images_per_s);
loss.png and entropy.png at the end. --resume continues a run, killed or
interrupted, with the very batches and losses of an uninterrupted one.

A non-finite loss stops the run naming the step and the term, keeping the last
good checkpoint; running out of device memory suggests a batch size that fits.
An interrupt (Ctrl-C) saves the last completed step.

Official optimizer states in .pth files are not loaded (the optimizer starts
afresh); e2mcvk's own checkpoints carry theirs.`
}

// trainPlan is a run worked out from the flags, before any device work.
type trainPlan struct {
	data     loader.Dataset
	views    []loader.View // the method's views at the run's sizes
	backbone layers.ResNetConfig
	devices  []int
	// from is the model to start from (a checkpoint, or the run's own
	// state when resuming); nil starts from random weights.
	from      *loader.Parts
	optimizer *layers.OptimizerState       // from's optimizer state, nil for none
	method    map[string]layers.HostTensor // the method's saved state (resume)
	pos       runPosition                  // where the run starts
	resumed   bool
	notes     []string
	mlp       string // the projector's sizes where from has none
	args      string // the run's flags as JSON, for the checkpoint
	poison    int    // the test hook's step, -1 when off
}

// Run trains.
func (c *trainCmd) Run(e *env) error {
	p, err := c.plan(e)
	if err != nil {
		return err
	}
	return c.train(e, p)
}

// keepRuntimeFlags replaces c's flags by a resumed run's saved ones, except
// --out and the flags that do not change the run's results where the
// command line gives them: --device, --save-every, --log-every, --workers.
func (c *trainCmd) keepRuntimeFlags(saved *trainCmd) {
	saved.Out, saved.Resume = c.Out, c.Resume
	if c.Device != "" {
		saved.Device = c.Device
	}
	if c.SaveEvery != nil {
		saved.SaveEvery = c.SaveEvery
	}
	if c.LogEvery != nil {
		saved.LogEvery = c.LogEvery
	}
	if c.Workers != nil {
		saved.Workers = c.Workers
	}
	*c = *saved
}

// setDefaults gives the flags that a resumed run may take from its
// checkpoint their defaults where neither gives them.
func (c *trainCmd) setDefaults() {
	if c.Device == "" {
		c.Device = "0"
	}
	setInt := func(p **int, v int) {
		if *p == nil {
			*p = &v
		}
	}
	setInt(&c.SaveEvery, 100)
	setInt(&c.LogEvery, 10)
	setInt(&c.Workers, 0)
}

// plan checks the flags and works out the run.
func (c *trainCmd) plan(e *env) (*trainPlan, error) {
	p := &trainPlan{poison: -1}
	if c.Resume && c.From != "" {
		return nil, usageError{errors.New("--resume and --from: a resumed run continues from its own checkpoint")}
	}
	ckpt := filepath.Join(c.Out, checkpointName)
	if c.Resume {
		st, notes, err := loadRunState(c.Out)
		if err != nil {
			return nil, err
		}
		var saved trainCmd
		if err := json.Unmarshal([]byte(st.Meta[loader.MetaArgs]), &saved); err != nil {
			return nil, fmt.Errorf("%s: the run's flags in its metadata: %w", ckpt, err)
		}
		c.keepRuntimeFlags(&saved)
		if st.Optimizer == nil {
			notes = append(notes, "resuming without optimizer state: the momentum starts afresh, so the losses will differ from an uninterrupted run's")
		}
		p.from, p.optimizer, p.method, p.pos, p.resumed, p.notes = st.Model, st.Optimizer, st.Method, st.Pos, true, notes
	} else if _, err := os.Stat(ckpt); err == nil {
		return nil, fmt.Errorf("%s already holds a run (%s): continue it with --resume, or choose another --out", c.Out, checkpointName)
	}
	c.setDefaults()
	if err := c.check(); err != nil {
		return nil, err
	}
	if s := os.Getenv(poisonEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%s=%q: want a step number", poisonEnv, s)
		}
		p.poison = n
	}
	devs, err := parseDevices(c.Device)
	if err != nil {
		return nil, err
	}
	if c.BatchSize%len(devs) != 0 {
		return nil, usageError{fmt.Errorf("--batch-size %d does not split evenly over %d devices", c.BatchSize, len(devs))}
	}
	p.devices = devs
	if p.data, err = loader.ParseDataSpec(c.Data); err != nil {
		return nil, err
	}
	nb := p.data.Len() / c.BatchSize
	if nb == 0 {
		return nil, fmt.Errorf("%s holds %d images, fewer than one batch of %d", c.Data, p.data.Len(), c.BatchSize)
	}
	if p.views, err = scaledViews(c.Method, c.ImageSize); err != nil {
		return nil, err
	}
	if !p.resumed && c.From != "" {
		if err := p.readFrom(c); err != nil {
			return nil, err
		}
	}
	if p.from != nil {
		if p.backbone, err = loader.ResNetConfigFor(p.from); err != nil {
			return nil, err
		}
		if p.backbone.InChannels != 3 {
			return nil, fmt.Errorf("the checkpoint's backbone takes %d-channel images; training feeds RGB", p.backbone.InChannels)
		}
		p.backbone.Classes = 0
	} else {
		depth, _ := strconv.Atoi(strings.TrimPrefix(c.Arch, "resnet"))
		small := c.Stem == "small" || (c.Stem == "auto" && c.ImageSize <= 64)
		p.backbone = layers.ResNetConfig{Depth: depth, Width: c.Width, SmallStem: small, InChannels: 3}
	}
	p.mlp = c.MLP
	if p.mlp == "" && c.Method == "vicreg" && c.From == "" {
		// The official 8192-8192-8192 expander has 200M weights: far
		// too many for a run from scratch on small images.
		p.mlp = "512-512-512"
	}
	if !p.resumed {
		// A checkpoint of epoch E continues with epoch E (counted from
		// 0), at the step the official scripts would be at.
		p.pos = runPosition{Seed: c.Seed}
		if p.from != nil && p.from.Epoch > 0 {
			p.pos.Epoch = p.from.Epoch
			p.pos.Step = p.from.Epoch * nb
		}
		if p.optimizer != nil {
			p.pos.Step = p.optimizer.Steps
		}
		p.pos.Start = p.pos.Step
		switch {
		case c.Epochs > 0:
			if c.Epochs <= p.pos.Epoch {
				return nil, fmt.Errorf("--epochs %d: the checkpoint has %d epochs already", c.Epochs, p.pos.Epoch)
			}
			p.pos.End = p.pos.Step + (c.Epochs-p.pos.Epoch)*nb
		case c.Steps > 0:
			p.pos.End = p.pos.Step + c.Steps
		default:
			p.pos.End = p.pos.Step + defaultSteps
		}
	}
	if p.pos.Batch >= nb {
		return nil, fmt.Errorf("%s: batch %d of an epoch of %d batches: the data set or the batch size changed", ckpt, p.pos.Batch, nb)
	}
	args, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode the flags: %w", err)
	}
	p.args = string(args)
	return p, nil
}

// readFrom reads the --from checkpoint: the model, and the optimizer state
// of an e2mcvk checkpoint of the same method (a .pth file's optimizer
// state, pickled PyTorch objects, is never loaded).
func (p *trainPlan) readFrom(c *trainCmd) error {
	if !strings.HasSuffix(c.From, ".safetensors") {
		parts, err := readCheckpoint(c.From, c.Layout)
		if err != nil {
			return err
		}
		p.from, p.notes = parts, parts.Notes
		if parts.Optimizer != nil {
			p.notes = append(p.notes, "the checkpoint's PyTorch optimizer state is not loaded: the optimizer starts afresh")
		}
		return nil
	}
	ck, err := loader.ReadCheckpoint(c.From)
	if err != nil {
		return err
	}
	p.from, p.notes = &ck.Parts, ck.Notes
	switch m := ck.Meta[loader.MetaMethod]; {
	case ck.OptState == nil:
	case m != c.Method:
		p.notes = append(p.notes, fmt.Sprintf("the checkpoint's optimizer state (of a %q run) is not loaded into a %s run: the optimizer starts afresh", m, c.Method))
	default:
		p.optimizer = ck.OptState
	}
	return nil
}

// check validates the flags' values beyond their types.
func (c *trainCmd) check() error {
	bad := func(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }
	switch {
	case c.Epochs < 0 || c.Steps < 0:
		return bad("--epochs and --steps must not be negative")
	case c.Epochs > 0 && c.Steps > 0:
		return bad("--epochs and --steps: give one of them")
	case c.BatchSize < 2:
		return bad("--batch-size %d: want at least 2 (batch statistics need two images)", c.BatchSize)
	case c.ImageSize < 8:
		return bad("--image-size %d: want at least 8", c.ImageSize)
	case c.Width < 1:
		return bad("--width %d: want at least 1", c.Width)
	case *c.SaveEvery < 0 || *c.LogEvery < 1:
		return bad("--save-every must not be negative and --log-every must be at least 1")
	case *c.Workers < 0:
		return bad("--workers %d must not be negative", *c.Workers)
	case c.Dim < 0 || c.PredDim < 0 || c.Prototypes < 0 || c.FreezeProto < 0:
		return bad("--dim, --pred-dim, --prototypes and --freeze-prototypes must not be negative")
	case c.PredLR < 0 || (c.LR != nil && *c.LR < 0) || (c.WD != nil && *c.WD < 0):
		return bad("learning rates and weight decay must not be negative")
	}
	return nil
}

// parseDevices parses --device: a comma-separated list of device indices.
func parseDevices(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		i, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || i < 0 {
			return nil, usageError{fmt.Errorf("--device %q: want device indices separated by commas, such as 0 or 0,1", s)}
		}
		out = append(out, i)
	}
	return out, nil
}

// scaledViews returns the method's training views with their sizes scaled
// from the official 224 px to size (SwAV's 96 px crops to round(96/224 *
// size)).
func scaledViews(method string, size int) ([]loader.View, error) {
	vs, err := loader.Views(method)
	if err != nil {
		return nil, err
	}
	for i := range vs {
		vs[i].Size = int(math.Round(float64(vs[i].Size) * float64(size) / 224))
		if vs[i].Size < 1 {
			return nil, fmt.Errorf("--image-size %d leaves view %d of %s empty", size, i, method)
		}
	}
	return vs, nil
}

// dataSource gives each epoch's batches, from any batch on: the pipeline,
// with plain views for --no-augment and data-set order for --no-shuffle.
type dataSource struct {
	pipe *loader.Pipeline
}

func newDataSource(c *trainCmd, p *trainPlan, log io.Writer) *dataSource {
	views := slices.Clone(p.views)
	for i := range views {
		views[i].Plain = c.NoAugment
	}
	return &dataSource{pipe: &loader.Pipeline{
		Data: p.data, Views: views, BatchSize: c.BatchSize, Seed: c.Seed,
		Workers: *c.Workers, Log: log, Strict: c.Strict, InOrder: c.NoShuffle,
	}}
}

// epoch starts epoch's batches from batch start.
func (s *dataSource) epoch(ctx context.Context, epoch, start int) (*loader.BatchIter, error) {
	return s.pipe.Epoch(ctx, epoch, start)
}

// pinnedPool is the pipeline's batch memory (loader.Pipeline.Alloc): one
// vk.HostBuffer per view of a batch, on the device the batches upload to,
// recycled as batches are released. A view in a HostBuffer goes to the
// device in one copy, from the memory the workers wrote it in: the
// trainer's upload (layers.Tensor.Upload, through vk.Buffer.Write) copies
// straight from a HostBuffer of its device. The pipeline bounds the
// batches out at once, so the pool stays at a few batches.
type pinnedPool struct {
	dev *vk.Device
	log io.Writer // takes the one note on falling back to ordinary memory

	mu    sync.Mutex
	free  map[int][]poolView // released views by length
	all   []*vk.HostBuffer
	noted bool
}

// poolView is one view's memory: in hb, or ordinary memory where the
// device could not give pinned memory (hb nil).
type poolView struct {
	hb   *vk.HostBuffer
	vals []float32
}

// alloc is the pipeline's Alloc: memory of lens[v] values for each view,
// released memory first. Pinned memory is a speed-up only: where the device
// refuses it (a view over its allocation limit, say) the view is ordinary
// memory, as without the pool, with one note.
func (p *pinnedPool) alloc(lens []int) ([][]float32, func(), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.free == nil {
		p.free = map[int][]poolView{}
	}
	got := make([]poolView, len(lens))
	views := make([][]float32, len(lens))
	for v, n := range lens {
		if f := p.free[n]; len(f) > 0 {
			got[v], p.free[n] = f[len(f)-1], f[:len(f)-1]
		} else {
			hb, err := p.dev.NewHostBuffer(4 * int64(n))
			if err != nil {
				if !p.noted {
					fmt.Fprintf(p.log, "note: batches in ordinary memory, each copied once more on its way to the device: %v\n", err)
					p.noted = true
				}
				got[v] = poolView{vals: make([]float32, n)}
			} else {
				p.all = append(p.all, hb)
				got[v] = poolView{hb: hb, vals: hb.Float32s()[:n]}
			}
		}
		views[v] = got[v].vals
	}
	release := func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for v, pv := range got {
			p.free[lens[v]] = append(p.free[lens[v]], pv)
		}
	}
	return views, release, nil
}

// close frees the pool's pinned memory, once no batch of it is in use.
func (p *pinnedPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, hb := range p.all {
		hb.Release()
	}
	p.all, p.free = nil, nil
}

// schedule returns the run's per-step learning rate: lr throughout, or a
// half cosine from lr at the run's first step to 0 at its last.
func (c *trainCmd) schedule(lr float64, pos runPosition) layers.Schedule {
	if c.Schedule == "cosine" {
		return shiftedSchedule{layers.WarmupCosine{Base: lr, Start: lr, Total: pos.End - pos.Start}, pos.Start}
	}
	return layers.ConstantLR(lr)
}

// shiftedSchedule runs s from step from on: a continued run's schedule
// starts where the checkpoint's step count stands.
type shiftedSchedule struct {
	s    layers.Schedule
	from int
}

func (s shiftedSchedule) LR(step int) float64 { return s.s.LR(step - s.from) }

// train runs the planned training.
func (c *trainCmd) train(e *env, p *trainPlan) error {
	def, err := ssl.Defaults(c.Method)
	if err != nil {
		return err
	}
	lr, wd, ent, cov := def.LR, def.WeightDecay, def.Ent, def.Cov
	if c.LR != nil {
		lr = *c.LR
	}
	if c.WD != nil {
		wd = *c.WD
	}
	if c.EntCoeff != nil {
		ent = *c.EntCoeff
	}
	if c.CovCoeff != nil {
		cov = *c.CovCoeff
	}
	predLR := 0.0
	if c.Method == "simsiam" {
		predLR = c.PredLR
	}
	baseLR := lr
	if def.ScaleLR {
		scale := float64(c.BatchSize) / 256
		lr *= scale
		predLR *= scale
	}
	for _, n := range p.notes {
		fmt.Fprintf(e.stderr, "note: %s\n", n)
	}
	if err := os.MkdirAll(c.Out, 0o755); err != nil {
		return err
	}
	r := &trainRun{
		c: c, p: p, e: e, lrText: lrText(baseLR, lr, def.ScaleLR, c),
		critText: criterionText(c.Criterion, ent, cov),
	}
	opts := ssl.MethodOptions{MLP: p.mlp, Dim: c.Dim, PredDim: c.PredDim, Prototypes: c.Prototypes,
		FreezePrototypesIters: c.FreezeProto}
	if c.FreezeProto == 0 {
		opts.FreezePrototypesIters = -1 // ssl's "never"; its 0 means the official 313
	}
	r.cfg = ssl.TrainerConfig{
		NewMethod:   func() (ssl.Method, error) { return ssl.NewMethod(c.Method, opts) },
		Backbone:    p.backbone,
		From:        p.from,
		Seed:        c.Seed,
		LR:          c.schedule(lr, p.pos),
		WeightDecay: wd,
		PredLR:      predLR,
	}
	if c.Criterion != "none" {
		r.cfg.NewRegularizer = func(d *vk.Device) (ssl.Regularizer, error) {
			return ssl.NewRegularizer(c.Criterion, c.Method, d, ent, cov)
		}
	}
	return withInstance(func(in *vk.Instance) error {
		for _, i := range p.devices {
			d, err := in.Open(i)
			if err != nil {
				return err
			}
			r.cfg.Devices = append(r.cfg.Devices, d)
		}
		return r.run()
	})
}

// trainRun is one training run on opened devices.
type trainRun struct {
	c        *trainCmd
	p        *trainPlan
	e        *env
	cfg      ssl.TrainerConfig
	lrText   string
	critText string
	saved    int // the step of the last checkpoint written, -1 for none
}

func lrText(base, lr float64, scaled bool, c *trainCmd) string {
	s := fmt.Sprintf("lr %g", lr)
	if scaled {
		s = fmt.Sprintf("lr %g (%g x %d/256)", lr, base, c.BatchSize)
	}
	return s + ", " + c.Schedule
}

func criterionText(name string, ent, cov float64) string {
	switch name {
	case "none":
		return "no added criterion"
	case "e2mc":
		return fmt.Sprintf("e2mc (ent %g, cov %g)", ent, cov)
	}
	return name + " (its default coefficients)"
}

// run trains from p.pos to p.pos.End.
func (r *trainRun) run() error {
	p, e := r.p, r.e
	r.saved = -1
	if p.resumed {
		r.saved = p.pos.Step
	}
	r.describe()
	// A step always runs to its end: an interrupt is taken between steps,
	// so the state saved is always a completed step's.
	stepCtx := context.WithoutCancel(e.ctx)
	tr, err := ssl.NewTrainer(stepCtx, r.cfg)
	if err != nil {
		return r.failed(err)
	}
	err = r.loop(tr, stepCtx)
	tr.Release()
	return r.failed(err)
}

// describe prints what the run does.
func (r *trainRun) describe() {
	c, p, e := r.c, r.p, r.e
	nb := p.data.Len() / c.BatchSize
	sizes := make([]string, len(p.views))
	for i, v := range p.views {
		sizes[i] = fmt.Sprint(v.Size)
	}
	stem := "imagenet stem"
	if p.backbone.SmallStem {
		stem = "small stem"
	}
	start := fmt.Sprintf("from scratch (seed %d)", c.Seed)
	switch {
	case p.resumed:
		start = fmt.Sprintf("resuming %s at step %d (epoch %d, batch %d)", c.Out, p.pos.Step, p.pos.Epoch, p.pos.Batch)
	case c.From != "":
		start = fmt.Sprintf("continuing %s at epoch %d", c.From, p.pos.Epoch)
	}
	aug := "augmented"
	if c.NoAugment {
		aug = "not augmented"
	}
	if c.NoShuffle {
		aug += ", in data-set order"
	}
	fmt.Fprintf(e.stderr, "train: %s + %s, %s\n", c.Method, r.critText, start)
	fmt.Fprintf(e.stderr, "train: resnet%d width %d, %s; views %s px (%s)\n", p.backbone.Depth, p.backbone.Width, stem, strings.Join(sizes, ","), aug)
	fmt.Fprintf(e.stderr, "train: %s: %d images, %d batches of %d an epoch; steps %d to %d (%.2f epochs); %s\n",
		c.Data, p.data.Len(), nb, c.BatchSize, p.pos.Step, p.pos.End, float64(p.pos.End-p.pos.Step)/float64(nb), r.lrText)
	names := make([]string, len(r.cfg.Devices))
	for i, d := range r.cfg.Devices {
		names[i] = fmt.Sprintf("%d (%s)", p.devices[i], d.Info.Name)
	}
	fmt.Fprintf(e.stderr, "train: devices %s; run directory %s\n", strings.Join(names, ", "), c.Out)
}

// loop takes the steps, logging and saving.
func (r *trainRun) loop(tr *ssl.Trainer, stepCtx context.Context) error {
	c, p, e := r.c, r.p, r.e
	if p.optimizer != nil || p.method != nil || p.pos.Step > 0 {
		st := &ssl.TrainState{Optimizer: p.optimizer, Method: p.method, Iteration: p.pos.Step}
		if err := tr.Restore(stepCtx, st); err != nil {
			return err
		}
	}
	keep := 0 // a new run starts a new log
	if p.resumed {
		keep = p.pos.Step
	}
	log, err := openMetricsLog(filepath.Join(c.Out, metricsName), keep)
	if err != nil {
		return err
	}
	defer log.close()
	src := newDataSource(c, p, e.stderr)
	// Batches are assembled in pinned memory of the first device and go
	// to it in one copy each. The pool outlives the epochs' iterators
	// (each is closed before loop returns).
	pool := &pinnedPool{dev: r.cfg.Devices[0], log: e.stderr}
	defer pool.close()
	src.pipe.Alloc = pool.alloc
	nb := src.pipe.NumBatches()
	prog := newTrainProgress(e.stderr, p.pos.Step, p.pos.End)
	defer prog.finish()
	lastLog, lastStep := time.Now(), p.pos.Step
	pos := &p.pos
	for pos.Step < pos.End {
		it, err := src.epoch(e.ctx, pos.Epoch, pos.Batch)
		if err != nil {
			return err
		}
		for pos.Step < pos.End && it.Next() {
			b := it.Batch()
			if pos.Step == p.poison {
				for _, v := range b.Views {
					v[0] = float32(math.NaN())
				}
			}
			res, err := tr.Step(stepCtx, b, pos.Epoch)
			// The step has uploaded the views: their memory can take a
			// later batch.
			b.Release()
			if err != nil {
				it.Close()
				return err
			}
			epoch := pos.Epoch
			pos.Step++
			if pos.Batch++; pos.Batch == nb {
				pos.Epoch, pos.Batch = pos.Epoch+1, 0
			}
			step := pos.Step - 1
			logged := (step-pos.Start)%*c.LogEvery == 0 || pos.Step == pos.End
			now := time.Now()
			rate := float64((pos.Step-lastStep)*c.BatchSize) / now.Sub(lastLog).Seconds()
			if logged {
				rec := metricsRecord{Step: step, Epoch: epoch, LR: res.LR, Loss: res.Loss, Terms: res.Terms, Rate: rate}
				if err := log.write(rec); err != nil {
					it.Close()
					return err
				}
				lastLog, lastStep = now, pos.Step
			}
			prog.update(step, res.Loss, rate, logged)
			if pos.Batch == 0 || (*c.SaveEvery > 0 && pos.Step%*c.SaveEvery == 0) {
				if err := r.save(tr, stepCtx); err != nil {
					it.Close()
					return err
				}
			}
		}
		it.Close()
		if err := it.Err(); err != nil {
			if e.ctx.Err() != nil {
				return r.interrupted(tr, stepCtx)
			}
			return err
		}
		if e.ctx.Err() != nil {
			return r.interrupted(tr, stepCtx)
		}
	}
	if r.saved != pos.Step {
		if err := r.save(tr, stepCtx); err != nil {
			return err
		}
	}
	prog.finish()
	if err := log.close(); err != nil {
		return err
	}
	return r.plots()
}

// errInterrupted ends an interrupted run.
var errInterrupted = errors.New("interrupted")

// interrupted saves the last completed step and returns the message.
func (r *trainRun) interrupted(tr *ssl.Trainer, ctx context.Context) error {
	if r.saved != r.p.pos.Step {
		if err := r.save(tr, ctx); err != nil {
			return fmt.Errorf("%w; saving the run state failed: %v", errInterrupted, err)
		}
	}
	return fmt.Errorf("%w at step %d; resume with --resume --out %s", errInterrupted, r.p.pos.Step, r.c.Out)
}

// save writes the run state of the steps taken so far.
func (r *trainRun) save(tr *ssl.Trainer, ctx context.Context) error {
	snap, err := tr.Snapshot(ctx)
	if err != nil {
		return err
	}
	if snap.Iteration != r.p.pos.Step {
		return fmt.Errorf("internal error: the trainer is at step %d, the run at %d", snap.Iteration, r.p.pos.Step)
	}
	meta := map[string]string{
		loader.MetaMethod:  r.c.Method,
		metaCriterion:      r.c.Criterion,
		loader.MetaArgs:    r.p.args,
		loader.MetaVersion: version(),
	}
	st := &runState{Model: snap.Model, Optimizer: snap.Optimizer, Method: snap.Method, Pos: r.p.pos, Meta: meta}
	if err := saveRunState(r.c.Out, st); err != nil {
		return err
	}
	r.saved = r.p.pos.Step
	return nil
}

// plots draws loss.png and entropy.png from the run's metrics.
func (r *trainRun) plots() error {
	out := r.c.Out
	recs, err := readMetrics(filepath.Join(out, metricsName))
	if err != nil {
		return err
	}
	if err := writeLossPlot(filepath.Join(out, lossPlotName), recs); err != nil {
		return err
	}
	ok, err := writeEntropyPlot(filepath.Join(out, entropyPlotName), recs)
	if err != nil {
		return err
	}
	wrote := lossPlotName
	if ok {
		wrote += ", " + entropyPlotName
	} else {
		fmt.Fprintf(r.e.stderr, "note: --criterion %s reports no entropy: no %s\n", r.c.Criterion, entropyPlotName)
	}
	fmt.Fprintf(r.e.stderr, "train: done at step %d; wrote %s, %s, %s in %s\n", r.p.pos.Step, checkpointName, metricsName, wrote, out)
	return nil
}

// failed turns the run's error into the user's message: a non-finite
// loss names its step and term, running out of memory suggests a batch
// size that fits.
func (r *trainRun) failed(err error) error {
	if err == nil || errors.Is(err, errInterrupted) {
		return err
	}
	var nf *ssl.NonFiniteLossError
	if errors.As(err, &nf) {
		kept := "no checkpoint had been written yet"
		if r.saved >= 0 {
			kept = fmt.Sprintf("the last good checkpoint, %s (after %d steps), is kept", filepath.Join(r.c.Out, checkpointName), r.saved)
		}
		return fmt.Errorf("step %d: the loss term %q is %v; training stopped; %s; try a lower --lr", nf.Iteration, nf.Term, nf.Value, kept)
	}
	if isOutOfMemory(err) {
		return fmt.Errorf("%w; %s", err, r.fittingBatch())
	}
	return err
}

// isOutOfMemory reports whether err comes from the device running out of
// memory.
func isOutOfMemory(err error) bool {
	var oom *vk.OutOfMemoryError
	return errors.As(err, &oom) || errors.Is(err, vk.ErrOutOfDeviceMemory)
}

// fittingBatch probes for the largest batch size, halving from the run's,
// whose step fits: one step on a fresh model with random images.
func (r *trainRun) fittingBatch() string {
	ctx := context.WithoutCancel(r.e.ctx)
	return largestFittingBatch(r.c.BatchSize, len(r.cfg.Devices), func(b int) error { return r.probe(ctx, b) })
}

// largestFittingBatch halves batch (kept a multiple of the replicas, at
// least two images each) until probe(b) succeeds, and says what it found.
func largestFittingBatch(batch, replicas int, probe func(b int) error) string {
	tried := 0
	for b := batch / 2; b >= 2*replicas; b /= 2 {
		b -= b % replicas
		err := probe(b)
		if err == nil {
			return fmt.Sprintf("--batch-size %d fits (probed: one step of a fresh model)", b)
		}
		if !isOutOfMemory(err) {
			return fmt.Sprintf("probing a smaller batch failed: %v", err)
		}
		tried = b
	}
	if tried == 0 {
		return "use a smaller --image-size or model"
	}
	return fmt.Sprintf("not even --batch-size %d fits: use a smaller --image-size or model", tried)
}

// probe takes one step of batch size b on a fresh trainer.
func (r *trainRun) probe(ctx context.Context, b int) error {
	tr, err := ssl.NewTrainer(ctx, r.cfg)
	if err != nil {
		return err
	}
	defer tr.Release()
	rng := rand.New(rand.NewPCG(1, 2))
	batch := &loader.Batch{Views: make([][]float32, len(r.p.views)), Sizes: make([]int, len(r.p.views))}
	for v, view := range r.p.views {
		batch.Sizes[v] = view.Size
		batch.Views[v] = make([]float32, b*3*view.Size*view.Size)
		for i := range batch.Views[v] {
			batch.Views[v][i] = float32(rng.NormFloat64())
		}
	}
	for i := range b {
		batch.Samples = append(batch.Samples, i)
		batch.Labels = append(batch.Labels, 0)
	}
	_, err = tr.Step(ctx, batch, 0)
	return err
}
