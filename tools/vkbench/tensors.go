package main

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
)

// tensors collects the operands of a case so that they are released together.
type tensors []*layers.Tensor

// upload makes a tensor of the given shape holding uniform random values in
// [-1, 1) drawn from a generator seeded with seed.
func (ts *tensors) upload(ctx context.Context, d *vk.Device, seed uint64, shape ...int) (*layers.Tensor, error) {
	n := 1
	for _, s := range shape {
		n *= s
	}
	rng := rand.New(rand.NewPCG(seed, 0xbe7c4))
	data := make([]float32, n)
	for i := range data {
		data[i] = 2*rng.Float32() - 1
	}
	t, err := layers.FromHost(ctx, d, data, shape...)
	if err != nil {
		return nil, fmt.Errorf("upload operand %v: %w", shape, err)
	}
	*ts = append(*ts, t)
	return t, nil
}

// zeros makes a tensor of the given shape filled with zeros.
func (ts *tensors) zeros(ctx context.Context, d *vk.Device, shape ...int) (*layers.Tensor, error) {
	t, err := layers.New(d, shape...)
	if err != nil {
		return nil, fmt.Errorf("allocate operand %v: %w", shape, err)
	}
	*ts = append(*ts, t)
	s, err := d.NewStream()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if err := layers.Fill(s, t, 0); err != nil {
		return nil, fmt.Errorf("zero operand %v: %w", shape, err)
	}
	if err := s.Run(ctx); err != nil {
		return nil, fmt.Errorf("zero operand %v: %w", shape, err)
	}
	return t, nil
}

// release frees every tensor.
func (ts *tensors) release() {
	for _, t := range *ts {
		t.Release()
	}
	*ts = nil
}
