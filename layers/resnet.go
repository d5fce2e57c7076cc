package layers

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/e2mcvk/e2mcvk/vk"
)

// ResNetConfig chooses a torchvision ResNet and its adaptations to small
// images.
type ResNetConfig struct {
	// Depth is 18, 34 or 50.
	Depth int
	// Width is the channel count of the stem and of layer1's 3x3
	// convolutions; 64 in torchvision. Smaller widths make small tests.
	Width int
	// SmallStem replaces the 7x7 stride-2 convolution and the max pool by
	// one 3x3 stride-1 convolution, the usual adaptation to 32 px images.
	SmallStem bool
	// InChannels of the images: 3 (RGB), 1 (grey, Fashion-MNIST).
	InChannels int
	// Classes is the output size of the final fc layer; 0 drops fc, so the
	// network returns its pooled features (VICReg's backbone, fc = Identity).
	Classes int
}

// stages returns the block kind and the blocks per stage of a depth.
func (c ResNetConfig) stages() (bottleneck bool, blocks [4]int, err error) {
	switch c.Depth {
	case 18:
		return false, [4]int{2, 2, 2, 2}, nil
	case 34:
		return false, [4]int{3, 4, 6, 3}, nil
	case 50:
		return true, [4]int{3, 4, 6, 3}, nil
	}
	return false, blocks, fmt.Errorf("resnet depth %d: want 18, 34 or 50", c.Depth)
}

// ResNet is torchvision's ResNet (v1.5: the stride of a bottleneck is on its
// 3x3 convolution) with torchvision's parameter names.
type ResNet struct {
	Config ResNetConfig
	// Training selects batch statistics (true) or running statistics in
	// the batch norms.
	Training bool

	Conv1  *Conv2d
	BN1    *BatchNorm
	Layers [4][]*Block
	FC     *Linear // nil when Config.Classes is 0

	// Features is the size of the pooled feature vector (512 or 2048 at
	// width 64).
	Features int
}

// Block is a basic block (two 3x3 convolutions, ResNet-18/34) or a
// bottleneck (1x1, 3x3, 1x1; ResNet-50) with its optional downsampling
// projection.
type Block struct {
	Convs []*Conv2d
	BNs   []*BatchNorm
	// Down and DownBN project the identity when the stride or the width
	// changes; nil otherwise.
	Down   *Conv2d
	DownBN *BatchNorm
}

// NewResNet builds a ResNet initialised as torchvision does: convolutions
// from N(0, 2/fan_out) (Kaiming, fan_out, ReLU), batch norms at weight 1 and
// bias 0, fc with PyTorch's default uniform initialisation.
func NewResNet(ctx context.Context, d *vk.Device, c ResNetConfig, rng *rand.Rand) (*ResNet, error) {
	if c.Width == 0 {
		c.Width = 64
	}
	if c.InChannels == 0 {
		c.InChannels = 3
	}
	bottleneck, blocks, err := c.stages()
	if err != nil {
		return nil, err
	}
	r := &ResNet{Config: c, Training: true}
	b := &builder{ctx: ctx, d: d, rng: rng}
	if c.SmallStem {
		r.Conv1 = b.conv(c.InChannels, c.Width, 3, 1, 1)
	} else {
		r.Conv1 = b.conv(c.InChannels, c.Width, 7, 2, 3)
	}
	r.BN1 = b.bn(c.Width, false)
	expansion := 1
	if bottleneck {
		expansion = 4
	}
	in := c.Width
	for stage := range 4 {
		planes := c.Width << stage
		for i := range blocks[stage] {
			stride := 1
			if i == 0 && stage > 0 {
				stride = 2
			}
			blk := &Block{}
			if bottleneck {
				blk.Convs = []*Conv2d{b.conv(in, planes, 1, 1, 0), b.conv(planes, planes, 3, stride, 1), b.conv(planes, planes*4, 1, 1, 0)}
				// torchvision's zero_init_residual is False: every bn starts at 1.
				blk.BNs = []*BatchNorm{b.bn(planes, false), b.bn(planes, false), b.bn(planes*4, false)}
			} else {
				blk.Convs = []*Conv2d{b.conv(in, planes, 3, stride, 1), b.conv(planes, planes, 3, 1, 1)}
				blk.BNs = []*BatchNorm{b.bn(planes, false), b.bn(planes, false)}
			}
			if stride != 1 || in != planes*expansion {
				blk.Down = b.conv(in, planes*expansion, 1, stride, 0)
				blk.DownBN = b.bn(planes*expansion, false)
			}
			r.Layers[stage] = append(r.Layers[stage], blk)
			in = planes * expansion
		}
	}
	r.Features = in
	if c.Classes > 0 {
		r.FC = b.linear(in, c.Classes)
	}
	if b.err != nil {
		r.Release()
		return nil, fmt.Errorf("resnet-%d: %w", c.Depth, b.err)
	}
	return r, nil
}

// builder makes the modules of a network, keeping the first error.
type builder struct {
	ctx context.Context
	d   *vk.Device
	rng *rand.Rand
	err error
}

// conv makes a bias-free k x k convolution with torchvision's ResNet
// initialisation (kaiming_normal_, mode fan_out, ReLU gain).
func (b *builder) conv(in, out, k, stride, pad int) *Conv2d {
	if b.err != nil {
		return nil
	}
	c, err := NewConv2d(b.ctx, b.d, in, out, [2]int{k, k}, ConvParams{Stride: [2]int{stride, stride}, Padding: [2]int{pad, pad}}, false, b.rng)
	if err != nil {
		b.err = err
		return nil
	}
	std := math.Sqrt(2 / float64(out*k*k))
	w := make([]float32, c.Weight.Value.Len())
	for i := range w {
		w[i] = float32(b.rng.NormFloat64() * std)
	}
	if err := c.Weight.Value.Upload(b.ctx, w); err != nil {
		b.err = err
	}
	return c
}

func (b *builder) bn(c int, noAffine bool) *BatchNorm {
	if b.err != nil {
		return nil
	}
	bn, err := NewBatchNorm(b.ctx, b.d, c, !noAffine)
	b.err = err
	return bn
}

func (b *builder) linear(in, out int) *Linear {
	return b.linearBias(in, out, true)
}

func (b *builder) linearBias(in, out int, bias bool) *Linear {
	if b.err != nil {
		return nil
	}
	l, err := NewLinear(b.ctx, b.d, in, out, bias, b.rng)
	b.err = err
	return l
}

// Forward runs the network on images x [N, C, H, W] and returns the logits
// [N, Classes], or the pooled features [N, Features] without fc.
func (r *ResNet) Forward(tp *Tape, x *Var) *Var {
	h := tp.GlobalAvgPool(r.FeatureMap(tp, x))
	if r.FC != nil {
		h = r.FC.Forward(tp, h)
	}
	return h
}

// FeatureMap runs the network on images x [N, C, H, W] up to the last
// stage's output [N, Features, H', W'] (res5 for the deep ones), before the
// global pooling: the map the transfer evaluations pool their own way.
func (r *ResNet) FeatureMap(tp *Tape, x *Var) *Var {
	h := r.BN1.ForwardRelu(tp, r.Conv1.Forward(tp, x), r.Training)
	if !r.Config.SmallStem {
		h = tp.MaxPool2d(h, PoolParams{Kernel: [2]int{3, 3}, Stride: [2]int{2, 2}, Padding: [2]int{1, 1}})
	}
	for _, stage := range r.Layers {
		for _, blk := range stage {
			h = blk.forward(tp, h, r.Training)
		}
	}
	return h
}

func (blk *Block) forward(tp *Tape, x *Var, training bool) *Var {
	h := x
	last := len(blk.Convs) - 1
	for i, c := range blk.Convs {
		if i < last {
			h = blk.BNs[i].ForwardRelu(tp, c.Forward(tp, h), training)
		} else {
			h = blk.BNs[i].Forward(tp, c.Forward(tp, h), training)
		}
	}
	id := x
	if blk.Down != nil {
		id = blk.DownBN.Forward(tp, blk.Down.Forward(tp, x), training)
	}
	return tp.AddRelu(h, id)
}

// State lists the parameters and buffers under torchvision's names.
func (r *ResNet) State(prefix string) []StateEntry {
	out := append(r.Conv1.State(prefix+"conv1."), r.BN1.State(prefix+"bn1.")...)
	for s, stage := range r.Layers {
		for i, blk := range stage {
			p := fmt.Sprintf("%slayer%d.%d.", prefix, s+1, i)
			for j := range blk.Convs {
				out = append(out, blk.Convs[j].State(fmt.Sprintf("%sconv%d.", p, j+1))...)
				out = append(out, blk.BNs[j].State(fmt.Sprintf("%sbn%d.", p, j+1))...)
			}
			if blk.Down != nil {
				out = append(out, blk.Down.State(p+"downsample.0.")...)
				out = append(out, blk.DownBN.State(p+"downsample.1.")...)
			}
		}
	}
	if r.FC != nil {
		out = append(out, r.FC.State(prefix+"fc.")...)
	}
	return out
}

// Release frees the network's device memory.
func (r *ResNet) Release() {
	release := func(m interface{ Release() }) {
		if m != nil {
			m.Release()
		}
	}
	for _, m := range r.modules() {
		release(m)
	}
}

// modules lists the network's layers (nil entries included).
func (r *ResNet) modules() []interface{ Release() } {
	var ms []interface{ Release() }
	add := func(c *Conv2d, bn *BatchNorm) {
		if c != nil {
			ms = append(ms, c)
		}
		if bn != nil {
			ms = append(ms, bn)
		}
	}
	add(r.Conv1, r.BN1)
	for _, stage := range r.Layers {
		for _, blk := range stage {
			for i := range blk.Convs {
				add(blk.Convs[i], blk.BNs[i])
			}
			add(blk.Down, blk.DownBN)
		}
	}
	if r.FC != nil {
		ms = append(ms, r.FC)
	}
	return ms
}

// ForwardFlops returns the floating-point operations of the convolutions
// and the fc layer of one forward pass over a batch of n images of h x w
// pixels (2 per multiply-add; the batch norms, ReLUs and pools, a few
// percent more, are not counted). A training step does about three times
// as many: backward-data and backward-weight each cost what the forward
// does.
func (c ResNetConfig) ForwardFlops(n, h, w int) (float64, error) {
	bottleneck, blocks, err := c.stages()
	if err != nil {
		return 0, err
	}
	width, in := c.Width, c.InChannels
	if width == 0 {
		width = 64
	}
	if in == 0 {
		in = 3
	}
	var total float64
	// conv counts a k x k convolution to out channels and returns the
	// output size.
	conv := func(h, w, cin, out, k, stride, pad int) (int, int) {
		ho, wo := ConvOutputSize(h, k, stride, pad, 1), ConvOutputSize(w, k, stride, pad, 1)
		total += 2 * float64(n) * float64(out*ho*wo) * float64(cin*k*k)
		return ho, wo
	}
	if c.SmallStem {
		h, w = conv(h, w, in, width, 3, 1, 1)
	} else {
		h, w = conv(h, w, in, width, 7, 2, 3)
		h, w = ConvOutputSize(h, 3, 2, 1, 1), ConvOutputSize(w, 3, 2, 1, 1)
	}
	if h <= 0 || w <= 0 {
		return 0, fmt.Errorf("resnet-%d: images too small for the stem", c.Depth)
	}
	in = width
	for stage := range 4 {
		planes := width << stage
		for i := range blocks[stage] {
			stride := 1
			if i == 0 && stage > 0 {
				stride = 2
			}
			out := planes
			var bh, bw int
			if bottleneck {
				out = 4 * planes
				bh, bw = conv(h, w, in, planes, 1, 1, 0)
				bh, bw = conv(bh, bw, planes, planes, 3, stride, 1)
				bh, bw = conv(bh, bw, planes, out, 1, 1, 0)
			} else {
				bh, bw = conv(h, w, in, planes, 3, stride, 1)
				bh, bw = conv(bh, bw, planes, planes, 3, 1, 1)
			}
			if stride != 1 || in != out {
				conv(h, w, in, out, 1, stride, 0)
			}
			h, w, in = bh, bw, out
		}
	}
	total += 2 * float64(n) * float64(in) * float64(c.Classes)
	return total, nil
}
