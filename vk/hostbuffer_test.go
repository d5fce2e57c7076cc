package vk_test

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// randomBytes returns n bytes from a generator seeded with seed.
func randomBytes(seed uint64, n int64) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.IntN(256))
	}
	return b
}

// TestHostBufferCopies moves random bytes of odd lengths at odd offsets
// from pinned memory into device buffers and back, on the whole device and
// on one whose buffers are split into 4 KiB segments (so that one copy
// crosses several), and checks them against the staging path.
func TestHostBufferCopies(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name         string
		dev          *vk.Device
		size         int64 // of the device buffer
		off, n, hoff int64
		minSegments  int
	}{
		{"whole small", vktest.Device(t), 1000, 0, 1000, 0, 1},
		{"whole odd", vktest.Device(t), 12345, 7, 12001, 13, 1},
		{"whole large", vktest.Device(t), 3<<20 + 12, 5, 3<<20 + 3, 1, 1},
		{"split one segment", vktest.SplitDevice(t, 4096), 12000, 100, 3000, 3, 3},
		{"split across", vktest.SplitDevice(t, 4096), 12000, 4090, 7000, 9, 3},
		{"split all", vktest.SplitDevice(t, 4096), 40961, 0, 40961, 0, 11},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.dev
			b, err := d.NewBuffer(tc.size, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Release()
			if b.Segments() < tc.minSegments {
				t.Fatalf("%d segments, want at least %d", b.Segments(), tc.minSegments)
			}
			// Fill the device buffer through staging so that the bytes
			// outside the copied range are known.
			base := randomBytes(uint64(2*i), tc.size)
			if err := b.Write(ctx, 0, base); err != nil {
				t.Fatal(err)
			}
			hb, err := d.NewHostBuffer(tc.hoff + tc.n + 5)
			if err != nil {
				t.Fatal(err)
			}
			defer hb.Release()
			data := randomBytes(uint64(2*i+1), tc.n)
			copy(hb.Bytes()[tc.hoff:], data)
			if err := b.WriteFromHost(ctx, tc.off, hb, tc.hoff, tc.n); err != nil {
				t.Fatal(err)
			}
			want := append([]byte(nil), base...)
			copy(want[tc.off:], data)
			got := make([]byte, tc.size)
			if err := b.Read(ctx, 0, got); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("after WriteFromHost byte %d = %d, want %d", i, got[i], want[i])
			}

			// Back into a second pinned buffer at another offset.
			back, err := d.NewHostBuffer(tc.size + 3)
			if err != nil {
				t.Fatal(err)
			}
			defer back.Release()
			if err := b.ReadToHost(ctx, 0, back, 3, tc.size); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(back.Bytes()[3:], want); i >= 0 {
				t.Fatalf("ReadToHost byte %d = %d, want %d", i, back.Bytes()[3+i], want[i])
			}

			// Write and Read of slices of pinned memory take the direct
			// path and agree with it.
			data2 := randomBytes(uint64(100+i), tc.n)
			copy(hb.Bytes()[tc.hoff:], data2)
			if err := b.Write(ctx, tc.off, hb.Bytes()[tc.hoff:tc.hoff+tc.n]); err != nil {
				t.Fatal(err)
			}
			clear(back.Bytes())
			if err := b.Read(ctx, tc.off, back.Bytes()[1:1+tc.n]); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(back.Bytes()[1:1+tc.n], data2); i >= 0 {
				t.Fatalf("pinned Write/Read byte %d = %d, want %d", i, back.Bytes()[1+i], data2[i])
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestHostBufferFloat32s checks the float32 view of the mapping against
// its bytes and a device round trip.
func TestHostBufferFloat32s(t *testing.T) {
	ctx := context.Background()
	d := vktest.Device(t)
	hb, err := d.NewHostBuffer(4*1001 + 2)
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Release()
	f := hb.Float32s()
	if len(f) != 1001 {
		t.Fatalf("%d floats, want 1001", len(f))
	}
	for i := range f {
		f[i] = float32(i)*0.25 - 100
	}
	b, err := d.NewBuffer(4*1001, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	if err := b.WriteFromHost(ctx, 0, hb, 0, 4*1001); err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 4*1001)
	if err := b.Read(ctx, 0, raw); err != nil {
		t.Fatal(err)
	}
	for i, v := range floats(raw) {
		if v != float32(i)*0.25-100 {
			t.Fatalf("element %d = %v, want %v", i, v, float32(i)*0.25-100)
		}
	}
}

func TestHostBufferErrors(t *testing.T) {
	ctx := context.Background()
	d := vktest.Device(t)
	other := vktest.SplitDevice(t, 4096)
	b, err := d.NewBuffer(1024, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	before := d.PinnedMemory()
	hb, err := d.NewHostBuffer(512)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.PinnedMemory() - before; got != 512 {
		t.Errorf("%d bytes pinned, want 512", got)
	}
	foreign, err := other.NewHostBuffer(512)
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Release()

	for _, tc := range []struct {
		name string
		err  func() error
		want string
	}{
		{"zero size", func() error { _, err := d.NewHostBuffer(0); return err }, "must be positive"},
		{"negative size", func() error { _, err := d.NewHostBuffer(-4); return err }, "must be positive"},
		{"over the allocation limit", func() error { _, err := d.NewHostBuffer(d.Info.MaxAllocationBytes + 1); return err }, "largest allocation"},
		{"past the host buffer", func() error { return b.WriteFromHost(ctx, 0, hb, 256, 257) }, "outside host buffer"},
		{"negative host offset", func() error { return b.WriteFromHost(ctx, 0, hb, -1, 4) }, "outside host buffer"},
		{"past the device buffer", func() error { return b.WriteFromHost(ctx, 1000, hb, 0, 25) }, "outside buffer"},
		{"read past the host buffer", func() error { return b.ReadToHost(ctx, 0, hb, 500, 13) }, "outside host buffer"},
		{"another device", func() error { return b.WriteFromHost(ctx, 0, foreign, 0, 4) }, "another device"},
		{"nil", func() error { return b.WriteFromHost(ctx, 0, nil, 0, 4) }, "no host buffer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.err()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}

	hb.Release()
	hb.Release() // twice is harmless
	if got := d.PinnedMemory(); got != before {
		t.Errorf("%d bytes pinned after Release, want %d", got, before)
	}
	if hb.Bytes() != nil || hb.Float32s() != nil {
		t.Error("memory still visible after Release")
	}
	if err := b.WriteFromHost(ctx, 0, hb, 0, 4); err == nil || !strings.Contains(err.Error(), "after Release") {
		t.Errorf("use after Release: error %v", err)
	}
}
