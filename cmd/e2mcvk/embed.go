package main

import (
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// embedCmd is `e2mcvk embed`.
type embedCmd struct {
	Checkpoint string `name:"checkpoint" required:"" type:"existingfile" placeholder:"C" help:"Model: a .pth (VICReg, SwAV, SimSiam, torchvision) or an e2mcvk .safetensors checkpoint."`
	Layout     string `name:"layout" default:"" placeholder:"L" help:"Checkpoint layout, detected when empty: vicreg, vicreg-backbone, swav, simsiam, torchvision, e2mcvk."`
	Data       string `name:"data" required:"" placeholder:"DIR" help:"Images: an ImageFolder directory (DIR/<class>/<image>), DIR@LIST.txt (the files of a SimCLR subset list), cifar10:DIR:train|test (CIFAR-10 binary batches), or fashion-mnist:train|test."`
	Out        string `name:"out" required:"" placeholder:"Z.npy" help:"Where to write the N x D float32 embeddings, one row per image in data-set order."`
	LabelsOut  string `name:"labels-out" placeholder:"L.npy" help:"Also write the N class indices (int64 .npy)."`
	Arch       string `name:"arch" enum:",resnet18,resnet34,resnet50" default:"" help:"Backbone architecture; taken from the checkpoint when empty, an error when it disagrees."`
	Head       string `name:"head" enum:"backbone,projector" default:"backbone" help:"Output: the pooled backbone features (2048-d for ResNet-50) or the projector's output."`
	Resize     int    `name:"resize" default:"256" help:"Resize the shorter side to this many pixels (bilinear) first; 0 keeps the size."`
	Crop       int    `name:"crop" default:"224" help:"Then take the centre crop of this size; 0 keeps the whole image."`
	BatchSize  int    `name:"batch-size" default:"64" help:"Images per forward pass."`
	Limit      int    `name:"limit" default:"0" help:"Embed only the first N images of the data set (0: all)."`
	Device     int    `name:"device" default:"0" help:"Index of the Vulkan device to run on (see e2mcvk devices)."`
}

// Help is the long help of `e2mcvk embed --help`.
func (embedCmd) Help() string {
	return `Computes the embeddings of a data set with a checkpoint's backbone (or its
projector), in evaluation mode (running batch-norm statistics), and writes them
as an N x D .npy array. Images are read as RGB (grey images replicated),
resized and centre-cropped as --resize and --crop say, scaled to [0, 1] and
normalised with the ImageNet mean and standard deviation; rows follow the
data set's order (ImageFolder: sorted class folders, then sorted file names).`
}

// Run computes and writes the embeddings.
func (c *embedCmd) Run(e *env) error {
	if c.BatchSize < 1 {
		return fmt.Errorf("--batch-size %d: want at least 1", c.BatchSize)
	}
	if c.Resize < 0 || c.Crop < 0 {
		return fmt.Errorf("--resize and --crop must not be negative")
	}
	parts, err := readCheckpoint(c.Checkpoint, c.Layout)
	if err != nil {
		return err
	}
	cfg, err := loader.ResNetConfigFor(parts)
	if err != nil {
		return fmt.Errorf("%s: %w", c.Checkpoint, err)
	}
	if c.Arch != "" && c.Arch != parts.Arch {
		return fmt.Errorf("--arch %s, but %s holds a %s backbone", c.Arch, c.Checkpoint, parts.Arch)
	}
	cfg.Classes = 0 // the pooled features; an fc layer is not used
	ds, err := loader.ParseDataSpec(c.Data)
	if err != nil {
		return err
	}
	if ds.Len() == 0 {
		return fmt.Errorf("%s holds no images", c.Data)
	}
	if c.Limit < 0 {
		return fmt.Errorf("--limit %d: want 0 (all) or more", c.Limit)
	}
	n := ds.Len()
	if c.Limit > 0 {
		n = min(n, c.Limit)
	}
	for _, n := range parts.Notes {
		fmt.Fprintf(e.stderr, "note: %s\n", n)
	}
	if unused := slices.DeleteFunc(parts.HeadNames(), func(h string) bool { return c.Head == h }); len(unused) > 0 {
		fmt.Fprintf(e.stderr, "note: not used by --head %s: %s\n", c.Head, strings.Join(unused, ", "))
	}
	var out []float32
	var dim int
	err = withInstance(func(in *vk.Instance) error {
		dev, err := in.Open(c.Device)
		if err != nil {
			return err
		}
		m, err := newEmbedder(e, dev, cfg, parts, c.Head)
		if err != nil {
			return err
		}
		defer m.release()
		out, dim, err = m.run(e, ds, n, loader.Preprocess{Resize: c.Resize, Crop: c.Crop}, c.BatchSize)
		return err
	})
	if err != nil {
		return err
	}
	if err := loader.WriteNpy(c.Out, []int{n, dim}, out); err != nil {
		return err
	}
	if c.LabelsOut != "" {
		labels := make([]int64, n)
		for i := range labels {
			labels[i] = int64(ds.Label(i))
		}
		if err := loader.WriteNpyInt64(c.LabelsOut, []int{n}, labels); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stderr, "wrote %d x %d embeddings to %s\n", n, dim, c.Out)
	return nil
}

// embedder is a frozen backbone, optionally followed by a head, in
// evaluation mode.
type embedder struct {
	dev  *vk.Device
	net  *layers.ResNet
	head *layers.MLP
}

func newEmbedder(e *env, dev *vk.Device, cfg layers.ResNetConfig, parts *loader.Parts, head string) (*embedder, error) {
	rng := rand.New(rand.NewPCG(0, 0)) // overwritten by the checkpoint
	net, err := layers.NewResNet(e.ctx, dev, cfg, rng)
	if err != nil {
		return nil, err
	}
	m := &embedder{dev: dev, net: net}
	if err := loader.LoadBackbone(e.ctx, net, parts); err != nil {
		m.release()
		return nil, err
	}
	net.Training = false
	if head == "projector" {
		hc, in, err := loader.InferHeadConfig(parts, loader.HeadProjector)
		if err != nil {
			m.release()
			return nil, err
		}
		if m.head, err = layers.NewMLP(e.ctx, dev, in, hc, rng); err != nil {
			m.release()
			return nil, err
		}
		if err := loader.LoadHead(e.ctx, m.head, parts, loader.HeadProjector); err != nil {
			m.release()
			return nil, err
		}
		m.head.Training = false
	}
	for _, p := range m.params() {
		p.SetRequiresGrad(false)
	}
	return m, nil
}

func (m *embedder) params() []*layers.Var {
	ps := layers.Parameters(m.net)
	if m.head != nil {
		ps = append(ps, layers.Parameters(m.head)...)
	}
	return ps
}

func (m *embedder) release() {
	m.net.Release()
	if m.head != nil {
		m.head.Release()
	}
}

// run embeds the first n images of ds, batch by batch, reporting progress.
func (m *embedder) run(e *env, ds loader.Dataset, n int, pre loader.Preprocess, batch int) ([]float32, int, error) {
	s, err := m.dev.NewStream()
	if err != nil {
		return nil, 0, err
	}
	defer s.Close()
	var out []float32
	dim := 0
	progress := newProgress(e.stderr, "embed", n)
	for lo := 0; lo < n; lo += batch {
		idx := make([]int, 0, batch)
		for i := lo; i < min(n, lo+batch); i++ {
			idx = append(idx, i)
		}
		data, h, w, err := loader.LoadBatch(e.ctx, ds, idx, pre, 0)
		if err != nil {
			return nil, 0, err
		}
		x, err := layers.FromHost(e.ctx, m.dev, data, len(idx), 3, h, w)
		if err != nil {
			return nil, 0, err
		}
		tp := layers.NewTape(s)
		z := m.net.Forward(tp, layers.Constant(x))
		if m.head != nil {
			z = m.head.Forward(tp, z)
		}
		tp.Keep(z)
		tp.Release()
		if err := tp.Err(); err != nil {
			x.Release()
			return nil, 0, err
		}
		err = s.Run(e.ctx)
		x.Release()
		var rows []float32
		if err == nil {
			rows, err = z.Value.Download(e.ctx)
		}
		dim = z.Value.Dim(1)
		z.Value.Release()
		if err != nil {
			return nil, 0, err
		}
		out = append(out, rows...)
		progress.add(len(idx))
	}
	progress.finish()
	return out, dim, nil
}

// progress prints a status line on long work: done / total, rate and the
// time left, at most every two seconds (and nothing on runs shorter than
// that).
type progress struct {
	w           io.Writer
	what        string
	total, done int
	start, last time.Time
	printed     bool
}

func newProgress(w io.Writer, what string, total int) *progress {
	now := time.Now()
	return &progress{w: w, what: what, total: total, start: now, last: now}
}

func (p *progress) add(n int) {
	p.done += n
	if now := time.Now(); now.Sub(p.last) >= 2*time.Second {
		p.last = now
		p.printed = true
		rate := float64(p.done) / now.Sub(p.start).Seconds()
		left := time.Duration(float64(p.total-p.done)/rate) * time.Second
		fmt.Fprintf(p.w, "%s: %d/%d (%.0f%%), %.1f/s, %s left\n", p.what, p.done, p.total, 100*float64(p.done)/float64(p.total), rate, left.Round(time.Second))
	}
}

func (p *progress) finish() {
	if p.printed {
		el := time.Since(p.start)
		fmt.Fprintf(p.w, "%s: %d in %s (%.1f/s)\n", p.what, p.done, el.Round(time.Second), float64(p.done)/el.Seconds())
	}
}
