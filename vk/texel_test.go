package vk_test

import (
	"math"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// TestTexelArgs checks the dispatch rules of texel args: each kind of
// binding is counted against its own limit, only 1- and 4-component views
// exist, and a texel arg is a read (a later write to it needs a barrier).
// Reading through texel views is tested by the kernels that do it
// (layers: gemm.comp and conv_gather.comp on whole and split devices).
func TestTexelArgs(t *testing.T) {
	d := vktest.Device(t)
	k, err := d.Kernel("fill", 64)
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.NewBuffer(1024, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	out, _, _ := b.Locate(0, 256, true)
	in, _, _ := b.Locate(512, 256, false)
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := push(64, 0, math.Float32bits(1))
	for _, c := range []struct {
		name string
		args []vk.Arg
		want string // error text, "" for none
	}{
		{"one of each", []vk.Arg{out, in.Texel(1)}, ""},
		{"vec4 texels", []vk.Arg{out, in.Texel(4)}, ""},
		{"texels first", []vk.Arg{in.Texel(4), out}, ""},
		{"all texel bindings", []vk.Arg{out, in.Texel(1), in.Texel(4), in.Texel(1), in.Texel(4)}, ""},
		{"too many texels", []vk.Arg{out, in.Texel(1), in.Texel(1), in.Texel(1), in.Texel(1), in.Texel(1)}, "texel bindings"},
		{"three components", []vk.Arg{out, in.Texel(3)}, "want 1 or 4"},
	} {
		err := s.Dispatch(k, [3]uint32{1, 1, 1}, p, c.args...)
		if c.want == "" && err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	if err := s.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	// A texel arg is never a write, even from a writable Locate.
	w, _, _ := b.Locate(512, 256, true)
	if err := s.Dispatch(k, [3]uint32{1, 1, 1}, p, out, w.Texel(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Dispatch(k, [3]uint32{1, 1, 1}, p, out, w.Texel(1)); err != nil {
		t.Fatal(err)
	}
	if _, got := s.Stats(); got != 2 { // the opening barrier, then out written twice
		t.Errorf("barriers = %d, want 2", got)
	}
	if err := s.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
}
