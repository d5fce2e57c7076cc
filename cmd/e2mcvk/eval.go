package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/e2mcvk/e2mcvk/eval"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// evalCmd is `e2mcvk eval`: the protocols of the papers' tables.
type evalCmd struct {
	Linear   evalLinearCmd   `cmd:"" help:"Linear probe on the frozen backbone: top-1 and top-5 with 1%, 10% or 100% of the labels."`
	KNN      evalKNNCmd      `cmd:"" name:"knn" help:"Cosine k-nearest-neighbour classifier on the frozen features (weighted vote): top-1 and top-5."`
	Finetune evalFinetuneCmd `cmd:"" help:"Semi-supervised fine-tuning of the whole network on a fraction of the labels: top-1 and top-5."`
	VOC07    evalVOC07Cmd    `cmd:"" name:"voc07" help:"VOC07 transfer: per-class linear SVMs on AvgPool(6,1) res5 features (VISSL protocol): mAP."`
}

// evalCommon are the flags every protocol takes.
type evalCommon struct {
	Checkpoint string `name:"checkpoint" required:"" type:"existingfile" placeholder:"C" help:"Model: a .pth (VICReg, SwAV, SimSiam, torchvision) or an e2mcvk .safetensors checkpoint."`
	Layout     string `name:"layout" default:"" placeholder:"L" help:"Checkpoint layout, detected when empty: vicreg, vicreg-backbone, swav, simsiam, torchvision, e2mcvk."`
	Arch       string `name:"arch" enum:",resnet18,resnet34,resnet50" default:"" help:"Backbone architecture; taken from the checkpoint when empty, an error when it disagrees."`
	TrainData  string `name:"train-data" required:"" placeholder:"DATA" help:"Training images, as embed's --data: an ImageFolder directory, DIR@LIST.txt, cifar10:DIR:train, fashion-mnist:train."`
	ValData    string `name:"val-data" required:"" placeholder:"DATA" help:"Evaluation images, as --train-data."`
	Resize     int    `name:"resize" default:"256" help:"Evaluation transform: resize the shorter side to this many pixels (bilinear) first; 0 keeps the size."`
	Crop       int    `name:"crop" default:"224" help:"Evaluation transform: then the centre crop of this size; 0 keeps the whole image."`
	BatchSize  int    `name:"batch-size" default:"256" help:"Images (or feature rows) per step."`
	Device     int    `name:"device" default:"0" help:"Index of the Vulkan device to run on (see e2mcvk devices)."`
	Seed       uint64 `name:"seed" default:"0" help:"Seed of the first run: the label subset, the initial weights, the sample order."`
	Seeds      int    `name:"seeds" default:"1" help:"Runs with seeds seed, seed+1, ...; the report gives mean ± std."`
	JSON       bool   `name:"json" help:"Print one JSON object (the metrics, their std and per-seed values, and the settings) instead of a line of text."`
	CacheDir   string `name:"cache-dir" default:"" placeholder:"DIR" help:"Where frozen features are cached (default: the user cache directory's e2mcvk/features)."`
	NoCache    bool   `name:"no-cache" help:"Compute the frozen features afresh and store nothing."`
	Strict     bool   `name:"strict" help:"Stop at the first unreadable image, naming it, instead of skipping it (skipped images are logged, counted and reported; labels-subset samples of a skipped image are dropped)."`
}

// evalLabels are the flags of the protocols that train on a labels fraction.
type evalLabels struct {
	Labels string `name:"labels" default:"100%" placeholder:"P%" help:"Fraction of the training labels: 1%, 10%, 100% (or any percentage), a seeded class-balanced subset."`
	Subset string `name:"subset" type:"existingfile" placeholder:"LIST.txt" help:"Use the SimCLR subset list (1percent.txt, 10percent.txt) of --train-data (an ImageFolder) instead of --labels."`
}

// Help is the long help of `e2mcvk eval --help`.
func (evalCmd) Help() string {
	return `Evaluates a checkpoint's backbone by the protocols of the SSL papers (the
E2MC paper's tables): linear probe, kNN, semi-supervised fine-tuning and the
VOC07 linear SVMs. The backbone runs in evaluation mode (running batch-norm
statistics) except in fine-tuning. Frozen features are computed once on the
device and cached on disk, keyed by the checkpoint's hash, the data and the
preprocessing. With --seeds N the protocol runs N times (seeds --seed, +1,
...) and reports mean ± std (sample standard deviation). An image that cannot
be read (missing, truncated, corrupt) is logged with its path and skipped,
its labels-subset samples dropped, and the report gives the number skipped;
--strict makes it an error instead.`
}

// setup reads the checkpoint and checks the shared flags.
func (c *evalCommon) setup(e *env) (*loader.Parts, error) {
	if c.BatchSize < 1 || c.Seeds < 1 || c.Resize < 0 || c.Crop < 0 {
		return nil, fmt.Errorf("--batch-size %d, --seeds %d, --resize %d, --crop %d: want batch and seeds at least 1, sizes not negative", c.BatchSize, c.Seeds, c.Resize, c.Crop)
	}
	parts, err := readCheckpoint(c.Checkpoint, c.Layout)
	if err != nil {
		return nil, err
	}
	if c.Arch != "" && c.Arch != parts.Arch {
		return nil, fmt.Errorf("--arch %s, but %s holds a %s backbone", c.Arch, c.Checkpoint, parts.Arch)
	}
	c.Arch = parts.Arch // for the settings and the cache key
	for _, n := range parts.Notes {
		fmt.Fprintf(e.stderr, "note: %s\n", n)
	}
	return parts, nil
}

func (c *evalCommon) preprocess() loader.Preprocess {
	return loader.Preprocess{Resize: c.Resize, Crop: c.Crop}
}

func (c *evalCommon) settings(protocol string) map[string]any {
	return map[string]any{"protocol": protocol, "checkpoint": c.Checkpoint, "arch": c.Arch, "train_data": c.TrainData,
		"val_data": c.ValData, "resize": c.Resize, "crop": c.Crop, "batch_size": c.BatchSize, "seed": c.Seed, "seeds": c.Seeds, "strict": c.Strict}
}

// cacheDir is the feature cache's directory, "" when off.
func (c *evalCommon) cacheDir() string {
	if c.NoCache {
		return ""
	}
	if c.CacheDir != "" {
		return c.CacheDir
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "e2mcvk", "features")
}

// skips is the run's account of unreadable images: logged on stderr and
// skipped, or with --strict an error.
func (c *evalCommon) skips(e *env) *eval.Skips {
	return &eval.Skips{Strict: c.Strict, Log: e.stderr}
}

// features returns the frozen features of ds (named spec) through ex, from
// the cache when there; unreadable images go to skips.
func (c *evalCommon) features(e *env, ex *eval.Extractor, ckptHash, spec string, ds loader.Dataset, pool int, skips *eval.Skips) (*eval.Features, error) {
	pre := c.preprocess()
	key := eval.FeatureKey(ckptHash, c.Layout+"/"+c.Arch, spec, ds, pre, pool)
	f, hit, err := eval.Cached(c.cacheDir(), key, len(ds.Classes()), skips, func() (*eval.Features, error) {
		p := newProgress(e.stderr, "features of "+spec, ds.Len())
		f, err := ex.Dataset(e.ctx, ds, pre, c.BatchSize, skips, func(done int) { p.add(done - p.done) })
		p.finish()
		return f, err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", spec, err)
	}
	if hit {
		fmt.Fprintf(e.stderr, "features of %s: %d x %d from the cache\n", spec, f.N, f.D)
	}
	if len(f.Skipped) > 0 {
		fmt.Fprintf(e.stderr, "features of %s: %d of %d images skipped as unreadable\n", spec, len(f.Skipped), ds.Len())
	}
	return f, nil
}

// selectRows returns the rows of f of the data-set images rows (a labels
// subset; nil: all of f), logging the samples dropped because their images
// were skipped.
func selectRows(f *eval.Features, rows []int, skips *eval.Skips, what string) (*eval.Features, error) {
	if rows == nil {
		return f, nil
	}
	sel, err := f.Select(rows)
	if err != nil {
		return nil, fmt.Errorf("%s: labels subset: %w", what, err)
	}
	if err := skips.Dropped(what+": labels subset", sel.Skipped); err != nil {
		return nil, err
	}
	return sel, nil
}

// withDevice opens the device and runs fn on it.
func (c *evalCommon) withDevice(fn func(dev *vk.Device) error) error {
	return withInstance(func(in *vk.Instance) error {
		dev, err := in.Open(c.Device)
		if err != nil {
			return err
		}
		return fn(dev)
	})
}

// printTop prints the report of a protocol that classifies into the
// labels' classes: its settings (the common ones, the labels' and the
// protocol's own), the images skips passed over, and top-1 and top-5 over
// the seeds.
func (c *evalCommon) printTop(e *env, protocol string, l *evalLabels, skips *eval.Skips, top1, top5 []float64, own map[string]any) error {
	set := c.settings(protocol)
	l.addSettings(set)
	maps.Copy(set, own)
	r := eval.NewReport(protocol, set)
	r.SetSkipped(skips)
	r.Add("top1", top1)
	r.Add("top5", top5)
	return c.print(e, r)
}

// print writes the report as JSON or as a line of text.
func (c *evalCommon) print(e *env, r *eval.Report) error {
	if c.JSON {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(e.stdout, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintln(e.stdout, r.Text())
	return err
}

// openData opens a --train-data or --val-data spec.
func openData(flag, spec string) (loader.Dataset, error) {
	ds, err := loader.ParseDataSpec(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	if ds.Len() == 0 {
		return nil, fmt.Errorf("%s %s holds no images", flag, spec)
	}
	return ds, nil
}

// sameClasses checks that the training and evaluation data name the same
// classes in the same order, so that a label means one class in both.
func sameClasses(train, val loader.Dataset) error {
	a, b := train.Classes(), val.Classes()
	if !slices.Equal(a, b) {
		return fmt.Errorf("--train-data has %d classes and --val-data %d, or they differ in names or order: a label would not mean the same class in both", len(a), len(b))
	}
	return nil
}

// parseFraction reads "10%" (or "0.1") as 0.1.
func parseFraction(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(s, "%")), 64)
	if err == nil && strings.HasSuffix(s, "%") {
		v /= 100
	}
	if err != nil || !(v > 0 && v <= 1) {
		return 0, fmt.Errorf("--labels %q: want a percentage in (0%%, 100%%], such as 1%%, 10%% or 100%%", s)
	}
	return v, nil
}

// trainSet opens the training data and, per seed, the rows of it to train
// on: all of them, a SimCLR subset list (the same for every seed) or a
// seeded class-balanced fraction. spec names what ds holds (for the cache).
type trainSet struct {
	ds       loader.Dataset
	spec     string
	fraction float64 // 1: all (or the subset list)
}

// openSplits opens the training set (with the labels fraction) and the
// evaluation set, and checks that they share their classes.
func (l *evalLabels) openSplits(trainData, valData string) (*trainSet, loader.Dataset, error) {
	train, err := l.open(trainData)
	if err != nil {
		return nil, nil, err
	}
	val, err := openData("--val-data", valData)
	if err != nil {
		return nil, nil, err
	}
	if err := sameClasses(train.ds, val); err != nil {
		return nil, nil, err
	}
	return train, val, nil
}

func (l *evalLabels) open(trainData string) (*trainSet, error) {
	if l.Subset != "" {
		spec := trainData + "@" + l.Subset
		ds, err := loader.ParseSubsetSpec(spec)
		if err != nil {
			return nil, fmt.Errorf("--subset: %w", err)
		}
		return &trainSet{ds: ds, spec: spec, fraction: 1}, nil
	}
	frac, err := parseFraction(l.Labels)
	if err != nil {
		return nil, err
	}
	ds, err := openData("--train-data", trainData)
	if err != nil {
		return nil, err
	}
	return &trainSet{ds: ds, spec: trainData, fraction: frac}, nil
}

// rows returns the training rows of a seed (nil: all).
func (t *trainSet) rows(seed uint64) ([]int, error) {
	if t.fraction == 1 {
		return nil, nil
	}
	return loader.BalancedSubset(t.ds, t.fraction, seed)
}

func (l *evalLabels) addSettings(m map[string]any) {
	if l.Subset != "" {
		m["subset"] = l.Subset
	} else {
		m["labels"] = l.Labels
	}
}

// epochProgress prints "what: epoch e/n, loss l" at most every two seconds.
type epochProgress struct {
	e      *env
	what   string
	epochs int
	last   time.Time
}

func newEpochProgress(e *env, what string, epochs int) *epochProgress {
	return &epochProgress{e: e, what: what, epochs: epochs, last: time.Now()}
}

func (p *epochProgress) epoch(epoch int, loss float64) {
	if now := time.Now(); now.Sub(p.last) >= 2*time.Second || epoch == p.epochs {
		p.last = now
		fmt.Fprintf(p.e.stderr, "%s: epoch %d/%d, training loss %.4f\n", p.what, epoch, p.epochs, loss)
	}
}

// evalLinearCmd is `e2mcvk eval linear`.
type evalLinearCmd struct {
	evalCommon `embed:""`
	evalLabels `embed:""`
	Epochs     int     `name:"epochs" default:"100" help:"Training epochs (cosine schedule)."`
	LR         float64 `name:"lr" default:"0.3" help:"Learning rate at epoch 0."`
	WD         float64 `name:"wd" default:"1e-6" help:"Weight decay."`
	Pool       int     `name:"pool" default:"0" help:"0: global average pooling; k > 0: res5 AvgPool(k, stride 1), flattened, then BatchNorm (the iNat18 probe: --pool 6)."`
	Augment    bool    `name:"augment" help:"Train through the backbone on RandomResizedCrop(--crop) + flip each epoch (the paper's protocol) instead of on cached features of the evaluation transform."`
}

// Help is the long help of `e2mcvk eval linear --help`.
func (evalLinearCmd) Help() string {
	return `Trains a linear classifier on the frozen backbone's features (SGD, momentum
0.9, cosine schedule; defaults of VICReg's evaluate.py) and reports top-1 and
top-5 on --val-data. Without --augment (fast mode) the features of the
evaluation transform are computed once, cached, and the classifier trains on
them on the host.`
}

// Run trains and evaluates the probe.
func (c *evalLinearCmd) Run(e *env) error {
	parts, err := c.setup(e)
	if err != nil {
		return err
	}
	cfg := eval.DefaultLinearConfig()
	cfg.Epochs, cfg.LR, cfg.WeightDecay, cfg.BatchSize, cfg.BN = c.Epochs, c.LR, c.WD, c.BatchSize, c.Pool > 0
	if c.Augment && c.Crop == 0 {
		return fmt.Errorf("--augment needs --crop, the size of the training crops")
	}
	train, val, err := c.evalLabels.openSplits(c.TrainData, c.ValData)
	if err != nil {
		return err
	}
	hash, err := eval.FileHash(c.Checkpoint)
	if err != nil {
		return err
	}
	var top1, top5 []float64
	skips := c.skips(e)
	err = c.withDevice(func(dev *vk.Device) error {
		ex, err := eval.NewExtractor(e.ctx, dev, parts, c.Pool)
		if err != nil {
			return err
		}
		defer ex.Release()
		vf, err := c.features(e, ex, hash, c.ValData, val, c.Pool, skips)
		if err != nil {
			return err
		}
		var tf *eval.Features
		if !c.Augment {
			if tf, err = c.features(e, ex, hash, train.spec, train.ds, c.Pool, skips); err != nil {
				return err
			}
		}
		for s := range c.Seeds {
			seed := c.Seed + uint64(s)
			cfg.Seed = seed
			rows, err := train.rows(seed)
			if err != nil {
				return err
			}
			what := fmt.Sprintf("linear (seed %d)", seed)
			ep := newEpochProgress(e, what, cfg.Epochs)
			var p *eval.LinearProbe
			if c.Augment {
				ds := train.ds
				if rows != nil {
					ds = loader.Select(ds, rows)
				}
				p, err = eval.TrainLinearAugmented(e.ctx, ex, ds, eval.LinearAugment(c.Crop), cfg, skips, ep.epoch, nil)
			} else {
				var f *eval.Features
				if f, err = selectRows(tf, rows, skips, what); err != nil {
					return err
				}
				p, err = eval.TrainLinear(e.ctx, f, cfg, ep.epoch)
			}
			if err != nil {
				return err
			}
			t1, t5, err := p.Evaluate(vf)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "%s: top1 %.2f, top5 %.2f\n", what, t1, t5)
			top1, top5 = append(top1, t1), append(top5, t5)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return c.printTop(e, "linear", &c.evalLabels, skips, top1, top5,
		map[string]any{"epochs": c.Epochs, "lr": c.LR, "wd": c.WD, "pool": c.Pool, "augment": c.Augment})
}

// evalKNNCmd is `e2mcvk eval knn`.
type evalKNNCmd struct {
	evalCommon `embed:""`
	evalLabels `embed:""`
	K          int     `name:"k" default:"200" help:"Neighbours that vote."`
	Temp       float64 `name:"temperature" default:"0.07" help:"A neighbour of cosine similarity s votes exp(s/T) for its class."`
}

// Help is the long help of `e2mcvk eval knn --help`.
func (evalKNNCmd) Help() string {
	return `Classifies each --val-data image by its k most cosine-similar training images
(globally pooled frozen features, L2-normalised), each voting exp(s/T) for its
class (InstDisc, DINO), and reports top-1 and top-5.`
}

// Run evaluates the kNN classifier.
func (c *evalKNNCmd) Run(e *env) error {
	parts, err := c.setup(e)
	if err != nil {
		return err
	}
	train, val, err := c.evalLabels.openSplits(c.TrainData, c.ValData)
	if err != nil {
		return err
	}
	hash, err := eval.FileHash(c.Checkpoint)
	if err != nil {
		return err
	}
	var top1, top5 []float64
	skips := c.skips(e)
	err = c.withDevice(func(dev *vk.Device) error {
		ex, err := eval.NewExtractor(e.ctx, dev, parts, 0)
		if err != nil {
			return err
		}
		defer ex.Release()
		vf, err := c.features(e, ex, hash, c.ValData, val, 0, skips)
		if err != nil {
			return err
		}
		tf, err := c.features(e, ex, hash, train.spec, train.ds, 0, skips)
		if err != nil {
			return err
		}
		// The similarities are a GEMM: on a GPU the device's is far
		// faster; on a CPU device (lavapipe) the host's GEMM was measured
		// 3x faster (BenchmarkKNN).
		simDev := dev
		if dev.Info.Type == "cpu" {
			simDev = nil
		}
		for s := range c.Seeds {
			seed := c.Seed + uint64(s)
			rows, err := train.rows(seed)
			if err != nil {
				return err
			}
			f, err := selectRows(tf, rows, skips, fmt.Sprintf("knn (seed %d)", seed))
			if err != nil {
				return err
			}
			t1, t5, err := eval.KNN(e.ctx, simDev, f, vf, c.K, c.Temp)
			if err != nil {
				return err
			}
			top1, top5 = append(top1, t1), append(top5, t5)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return c.printTop(e, "knn", &c.evalLabels, skips, top1, top5, map[string]any{"k": c.K, "temperature": c.Temp})
}

// evalFinetuneCmd is `e2mcvk eval finetune`.
type evalFinetuneCmd struct {
	evalCommon `embed:""`
	evalLabels `embed:""`
	Epochs     int     `name:"epochs" default:"20" help:"Training epochs."`
	TrunkLR    float64 `name:"trunk-lr" default:"0.01" help:"Learning rate of the backbone."`
	HeadLR     float64 `name:"head-lr" default:"0.2" help:"Learning rate of the new linear head."`
	Milestones []int   `name:"milestones" default:"12,16" help:"Epochs at which both learning rates are multiplied by --gamma."`
	Gamma      float64 `name:"gamma" default:"0.2" help:"Step decay factor."`
	WD         float64 `name:"wd" default:"0" help:"Weight decay."`
}

// Help is the long help of `e2mcvk eval finetune --help`.
func (evalFinetuneCmd) Help() string {
	return `Fine-tunes the whole network with a new linear head on a fraction of the
training labels (SwAV's semi-supervised protocol: SGD momentum 0.9, trunk and
head learning rates, step decay), training on RandomResizedCrop(--crop) + flip,
and reports top-1 and top-5 on --val-data.`
}

// Run fine-tunes and evaluates.
func (c *evalFinetuneCmd) Run(e *env) error {
	parts, err := c.setup(e)
	if err != nil {
		return err
	}
	if c.Crop == 0 {
		return fmt.Errorf("fine-tuning needs --crop, the size of the training crops")
	}
	train, val, err := c.evalLabels.openSplits(c.TrainData, c.ValData)
	if err != nil {
		return err
	}
	cfg := eval.DefaultFinetuneConfig()
	cfg.Epochs, cfg.TrunkLR, cfg.HeadLR, cfg.Milestones, cfg.Gamma, cfg.WeightDecay, cfg.BatchSize =
		c.Epochs, c.TrunkLR, c.HeadLR, c.Milestones, c.Gamma, c.WD, c.BatchSize
	cfg.Augment, cfg.Preprocess = eval.LinearAugment(c.Crop), c.preprocess()
	var top1, top5 []float64
	skips := c.skips(e)
	err = c.withDevice(func(dev *vk.Device) error {
		for s := range c.Seeds {
			seed := c.Seed + uint64(s)
			cfg.Seed = seed
			rows, err := train.rows(seed)
			if err != nil {
				return err
			}
			ds := train.ds
			if rows != nil {
				ds = loader.Select(ds, rows)
			}
			what := fmt.Sprintf("finetune (seed %d)", seed)
			ep := newEpochProgress(e, what, cfg.Epochs)
			t1, t5, err := eval.Finetune(e.ctx, dev, parts, ds, val, cfg, skips, func(epoch, done int, loss float64, end bool) {
				if end {
					ep.epoch(epoch, loss)
				}
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "%s: top1 %.2f, top5 %.2f\n", what, t1, t5)
			top1, top5 = append(top1, t1), append(top5, t5)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return c.printTop(e, "finetune", &c.evalLabels, skips, top1, top5, map[string]any{"epochs": c.Epochs, "trunk_lr": c.TrunkLR,
		"head_lr": c.HeadLR, "milestones": c.Milestones, "gamma": c.Gamma, "wd": c.WD})
}

// evalVOC07Cmd is `e2mcvk eval voc07`.
type evalVOC07Cmd struct {
	evalCommon `embed:""`
	TrainSplit string    `name:"train-split" default:"trainval" help:"VOC2007 split of --train-data to train the SVMs on."`
	ValSplit   string    `name:"val-split" default:"test" help:"VOC2007 split of --val-data to report the mAP on."`
	Pool       int       `name:"pool" default:"6" help:"res5 AvgPool(k, stride 1) window (VISSL: 6, 8192-d for ResNet-50 at 224 px); 0: global average pooling."`
	Costs      []float64 `name:"costs" default:"0.01,0.1,1,2,5,10,15,20,50,100,1000" help:"SVM costs to choose from by 3-fold cross-validated AP."`
}

// Help is the long help of `e2mcvk eval voc07 --help`.
func (evalVOC07Cmd) Help() string {
	return `VISSL's VOC07 protocol: frozen res5 features, AvgPool(6, 1), flattened and
L2-normalised; for each of the 20 classes a linear SVM (squared hinge, L2,
liblinear's dual coordinate descent, class weights 2 for positives and 1 for
negatives, difficult images as negatives) with the cost of the best 3-fold
cross-validated AP; reported: the mean over classes of the all-point AP on
the test split, difficult images left out. --train-data and --val-data are
VOC2007 folders (holding ImageSets and JPEGImages).`
}

// unlabelled shows a multi-label data set to the extractor as one class.
type unlabelled struct{ loader.Dataset }

func (unlabelled) Label(int) int     { return 0 }
func (unlabelled) Classes() []string { return []string{"image"} }

// Run trains the SVMs and reports the mAP.
func (c *evalVOC07Cmd) Run(e *env) error {
	parts, err := c.setup(e)
	if err != nil {
		return err
	}
	if len(c.Costs) == 0 || slices.ContainsFunc(c.Costs, func(v float64) bool { return !(v > 0) }) {
		return fmt.Errorf("--costs %v: want positive costs", c.Costs)
	}
	trainVOC, err := loader.OpenVOC07(c.TrainData, c.TrainSplit)
	if err != nil {
		return fmt.Errorf("--train-data: %w", err)
	}
	valVOC, err := loader.OpenVOC07(c.ValData, c.ValSplit)
	if err != nil {
		return fmt.Errorf("--val-data: %w", err)
	}
	hash, err := eval.FileHash(c.Checkpoint)
	if err != nil {
		return err
	}
	var train, val *eval.MultiLabel
	skips := c.skips(e)
	err = c.withDevice(func(dev *vk.Device) error {
		ex, err := eval.NewExtractor(e.ctx, dev, parts, c.Pool)
		if err != nil {
			return err
		}
		defer ex.Release()
		for _, s := range []struct {
			v     *loader.VOC07
			spec  string
			split string
			out   **eval.MultiLabel
		}{{trainVOC, c.TrainData, c.TrainSplit, &train}, {valVOC, c.ValData, c.ValSplit, &val}} {
			f, err := c.features(e, ex, hash, "voc07:"+s.spec+":"+s.split, unlabelled{s.v}, c.Pool, skips)
			if err != nil {
				return err
			}
			if *s.out, err = eval.NewMultiLabel(f, s.v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	cfg := eval.DefaultSVMConfig()
	cfg.Costs = c.Costs
	var maps []float64
	for s := range c.Seeds {
		cfg.Seed = c.Seed + uint64(s)
		p := newProgress(e.stderr, fmt.Sprintf("voc07 SVMs (seed %d)", cfg.Seed), len(train.Classes))
		res, err := eval.VOC07(e.ctx, train, val, cfg, func(done int) { p.add(done - p.done) })
		p.finish()
		if err != nil {
			return err
		}
		for k, ok := range res.Converged {
			if !ok {
				fmt.Fprintf(e.stderr, "note: the SVM of %s stopped at %d sweeps before converging (cost %g)\n", train.Classes[k], cfg.MaxIter, res.Cost[k])
			}
		}
		maps = append(maps, res.MAP)
	}
	set := c.evalCommon.settings("voc07")
	set["train_split"], set["val_split"], set["pool"], set["costs"] = c.TrainSplit, c.ValSplit, c.Pool, c.Costs
	r := eval.NewReport("voc07", set)
	r.SetSkipped(skips)
	r.Add("map", maps)
	return c.print(e, r)
}
