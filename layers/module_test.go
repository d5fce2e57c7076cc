package layers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// TestMLPState checks the nn.Sequential names of the SSL heads: VICReg's
// projector (Linear, BN, ReLU twice, then a Linear without bias) and
// SimSiam's (no hidden biases, a last BN without affine parameters).
func TestMLPState(t *testing.T) {
	ctx := context.Background()
	d := vktest.Device(t)
	for _, c := range []struct {
		name string
		in   int
		cfg  MLPConfig
		want string
	}{
		{"vicreg", 16, MLPConfig{Spec: "32-32-8", HiddenBias: true},
			"0.weight[32 16] 0.bias[32] 1.weight[32] 1.bias[32] 1.running_mean[32] 1.running_var[32] 1.num_batches_tracked[] " +
				"3.weight[32 32] 3.bias[32] 4.weight[32] 4.bias[32] 4.running_mean[32] 4.running_var[32] 4.num_batches_tracked[] 6.weight[8 32]"},
		{"simsiam", 16, MLPConfig{Spec: "16-8", LastBias: true, LastBN: true},
			"0.weight[16 16] 1.weight[16] 1.bias[16] 1.running_mean[16] 1.running_var[16] 1.num_batches_tracked[] " +
				"3.weight[8 16] 3.bias[8] 4.running_mean[8] 4.running_var[8] 4.num_batches_tracked[]"},
		{"swav", 4, MLPConfig{Spec: "8-3", HiddenBias: true, LastBias: true},
			"0.weight[8 4] 0.bias[8] 1.weight[8] 1.bias[8] 1.running_mean[8] 1.running_var[8] 1.num_batches_tracked[] 3.weight[3 8] 3.bias[3]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := NewMLP(ctx, d, c.in, c.cfg, rand.New(rand.NewPCG(1, 1)))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Release()
			if got := stateSummary(m); got != c.want {
				t.Errorf("state\n got %s\nwant %s", got, c.want)
			}
			// A forward and backward pass reaches every parameter.
			s := stream(t, d)
			tp := NewTape(s)
			y := m.Forward(tp, Constant(upload(t, d, randn(9, 5*c.in), 5, c.in)))
			if err := tp.Backward(tp.Sum(tp.Mul(y, y))); err != nil {
				t.Fatal(err)
			}
			tp.Release()
			if err := s.Run(ctx); err != nil {
				t.Fatal(err)
			}
			for _, p := range Parameters(m) {
				if p.Grad == nil {
					t.Errorf("a parameter of shape %v took no gradient", p.Shape())
				}
				p.ZeroGrad()
			}
		})
	}
}

func stateSummary(m Module) string {
	var parts []string
	for _, e := range m.State("") {
		var shape []int
		switch {
		case e.Param != nil:
			shape = e.Param.Shape()
		case e.Buffer != nil:
			shape = e.Buffer.Shape()
		}
		parts = append(parts, e.Name+fmt.Sprint(shape))
	}
	return strings.Join(parts, " ")
}

// TestStateDictRoundTrip saves a small ResNet's state, loads it into another
// and checks the errors of bad state dicts.
func TestStateDictRoundTrip(t *testing.T) {
	ctx := context.Background()
	d := vktest.Device(t)
	cfg := ResNetConfig{Depth: 18, Width: 4, SmallStem: true, Classes: 3}
	a, err := NewResNet(ctx, d, cfg, rand.New(rand.NewPCG(1, 1)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release()
	b, err := NewResNet(ctx, d, cfg, rand.New(rand.NewPCG(2, 2)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	a.BN1.NumBatchesTracked = 17
	sd, err := StateDict(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if err := LoadStateDict(ctx, b, sd, true); err != nil {
		t.Fatal(err)
	}
	back, err := StateDict(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	for name, h := range sd {
		g := back[name]
		if !slices.Equal(g.Shape, h.Shape) || g.Int64 != h.Int64 || fmt.Sprint(g.Data) != fmt.Sprint(h.Data) {
			t.Fatalf("%s differs after the round trip", name)
		}
	}
	if b.BN1.NumBatchesTracked != 17 {
		t.Errorf("num_batches_tracked %d, want 17", b.BN1.NumBatchesTracked)
	}

	bad := map[string]HostTensor{}
	for k, v := range sd {
		bad[k] = v
	}
	delete(bad, "fc.bias")
	bad["fc.weight"] = HostTensor{Shape: []int{4, 32}, Data: make([]float32, 128)}
	bad["head.weight"] = HostTensor{Shape: []int{1}, Data: []float32{1}}
	err = LoadStateDict(ctx, b, bad, true)
	for _, want := range []string{"missing fc.bias", "fc.weight has shape [4 32], want [3 32]", "unexpected head.weight"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to say %q", err, want)
		}
	}
	delete(bad, "fc.weight")
	bad["fc.weight"], bad["fc.bias"] = sd["fc.weight"], sd["fc.bias"]
	if err := LoadStateDict(ctx, b, bad, false); err != nil {
		t.Errorf("non-strict load with an extra entry: %v", err)
	}
}
