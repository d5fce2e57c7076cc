// Command trainbench times whole E2MC training steps of e2mcvk on random
// images: VICReg (+ E2MC) on a ResNet, both views' forward passes, the
// losses, backward and the LARS update, as ssl.Trainer takes them.
// torch_train.py times the same step with PyTorch; compare.sh runs both.
//
//	go run ./tools/trainbench [--device 0] [--arch resnet50] [--image-size 224] [--batch-size 8] ...
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/alecthomas/kong"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/ssl"
	"github.com/e2mcvk/e2mcvk/vk"
)

// options are trainbench's flags; the defaults are the ResNet-50
// case (224 px, batch 8, VICReg's 8192-8192-8192 expander, E2MC).
type options struct {
	Device    []int  `default:"0" help:"Vulkan device index, or a comma list for data-parallel replicas."`
	Method    string `default:"vicreg" enum:"vicreg,simsiam,swav" help:"SSL method."`
	Criterion string `default:"e2mc" help:"Add-on criterion: e2mc, vcreg, mmcr, auh or none."`
	Arch      string `default:"resnet50" enum:"resnet18,resnet34,resnet50" help:"Backbone."`
	Width     int    `default:"64" help:"ResNet width (64 is torchvision's)."`
	SmallStem bool   `help:"3x3 stride-1 stem without max pool (small images)."`
	ImageSize int    `default:"224" help:"Image size in pixels."`
	BatchSize int    `default:"8" help:"Global batch size."`
	MLP       string `default:"8192-8192-8192" help:"Expander / projector widths."`
	Steps     int    `default:"5" help:"Timed steps (the median is reported)."`
	Warmup    int    `default:"2" help:"Untimed steps first."`
	JSON      bool   `name:"json" help:"Print one JSON object."`
}

func main() {
	var o options
	kong.Parse(&o, kong.Name("trainbench"), kong.Description("Times whole training steps of e2mcvk on random images."))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "trainbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	in, err := vk.NewInstance()
	if err != nil {
		return err
	}
	defer in.Close()
	var devs []*vk.Device
	for _, i := range o.Device {
		d, err := in.Open(i)
		if err != nil {
			return err
		}
		devs = append(devs, d)
	}
	depth := map[string]int{"resnet18": 18, "resnet34": 34, "resnet50": 50}[o.Arch]
	def, err := ssl.Defaults(o.Method)
	if err != nil {
		return err
	}
	lr := def.LR
	if def.ScaleLR {
		lr *= float64(o.BatchSize) / 256
	}
	cfg := ssl.TrainerConfig{
		Devices:     devs,
		NewMethod:   func() (ssl.Method, error) { return ssl.NewMethod(o.Method, ssl.MethodOptions{MLP: o.MLP}) },
		Backbone:    layers.ResNetConfig{Depth: depth, Width: o.Width, SmallStem: o.SmallStem, InChannels: 3},
		Seed:        1,
		LR:          layers.ConstantLR(lr),
		WeightDecay: def.WeightDecay,
	}
	if o.Criterion != "none" {
		cfg.NewRegularizer = func(d *vk.Device) (ssl.Regularizer, error) {
			return ssl.NewRegularizer(o.Criterion, o.Method, d, -1, -1)
		}
	}
	tr, err := ssl.NewTrainer(ctx, cfg)
	if err != nil {
		return err
	}
	defer tr.Release()
	views, err := loader.Views(o.Method)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	b := &loader.Batch{}
	for _, v := range views {
		s := v.Size * o.ImageSize / 224
		x := make([]float32, o.BatchSize*3*s*s)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		b.Views = append(b.Views, x)
		b.Sizes = append(b.Sizes, s)
	}
	var times []float64
	var last *ssl.StepResult
	for i := range o.Warmup + o.Steps {
		t0 := time.Now()
		r, err := tr.Step(ctx, b, 0)
		if err != nil {
			return err
		}
		if i >= o.Warmup {
			times = append(times, time.Since(t0).Seconds())
		}
		last = r
	}
	slices.Sort(times)
	sec := times[len(times)/2]
	info := devs[0].Info
	row := map[string]any{"impl": "e2mcvk", "device": info.Name, "driver": info.Driver, "replicas": len(devs),
		"method": o.Method, "criterion": o.Criterion, "arch": o.Arch, "width": o.Width, "image_size": o.ImageSize,
		"batch_size": o.BatchSize, "mlp": o.MLP, "seconds_per_step": sec, "images_per_s": float64(o.BatchSize) / sec,
		"steps": o.Steps, "loss": last.Loss}
	if o.JSON {
		return json.NewEncoder(os.Stdout).Encode(row)
	}
	fmt.Printf("e2mcvk (%s, %s): %s %s %dpx batch %d, %s+%s: %.4f s/step, %.2f images/s (median of %d)\n",
		info.Name, info.Driver, o.Arch, o.MLP, o.ImageSize, o.BatchSize, o.Method, o.Criterion, sec, float64(o.BatchSize)/sec, o.Steps)
	return nil
}
