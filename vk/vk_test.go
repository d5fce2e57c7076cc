package vk_test

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

func TestMain(m *testing.M) { vktest.Main(m) }

func TestDevicesDescribed(t *testing.T) {
	in := vktest.Instance(t)
	devs := in.Devices()
	if len(devs) == 0 {
		t.Fatal("no devices")
	}
	for i, d := range devs {
		if d.Index != i || d.Name == "" || d.APIVersion == "" || d.MemoryBytes <= 0 ||
			d.MaxStorageBufferRange <= 0 || d.MaxSharedMemory == 0 || d.SubgroupSize == 0 {
			t.Errorf("device %d described incompletely: %+v", i, d)
		}
		// Vulkan 1.1 requires basic subgroup operations in compute shaders.
		if !d.HasSubgroupOps("basic") || d.HasSubgroupOps("basic", "no-such-operation") {
			t.Errorf("device %d: subgroup operations %v", i, d.SubgroupOps)
		}
	}
}

func TestOpenOutOfRange(t *testing.T) {
	in := vktest.Instance(t)
	_, err := in.Open(len(in.Devices()) + 3)
	var ie *vk.DeviceIndexError
	if !errors.As(err, &ie) {
		t.Fatalf("got %v, want DeviceIndexError", err)
	}
	if !strings.Contains(err.Error(), in.Devices()[0].Name) || !strings.Contains(err.Error(), "e2mcvk devices") {
		t.Errorf("message does not list the devices: %v", err)
	}
}

func floats(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

func push(vals ...uint32) []byte {
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], v)
	}
	return b
}

// TestWriteReadRoundTrip moves random bytes of awkward lengths and offsets
// through buffers that are split into segments and through the staging area.
func TestWriteReadRoundTrip(t *testing.T) {
	d := vktest.Device(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int64{4, 1000, 3 << 20, d.SegmentLimit()*2 + 12} {
		if size > 256<<20 {
			continue // only with a forced small limit
		}
		b, err := d.NewBuffer(size, 0)
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.IntN(256))
		}
		if err := b.Write(ctx, 0, data); err != nil {
			t.Fatal(err)
		}
		off := size / 3
		got := make([]byte, size-off)
		if err := b.Read(ctx, off, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != string(data[off:]) {
			t.Errorf("size %d: read back differs", size)
		}
		b.Release()
	}
}

// TestSegmentsSplit checks that a buffer larger than the segment limit is
// split on granule boundaries and that kernels see every segment.
func TestSegmentsSplit(t *testing.T) {
	t.Setenv("E2MCVK_MAX_BUFFER_BYTES", "4096")
	in := vktest.Instance(t)
	d, err := in.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	if d.SegmentLimit() != 4096 {
		t.Fatalf("segment limit %d, want 4096", d.SegmentLimit())
	}
	const n = 2500 // floats: 10000 bytes, 3 segments of 12-byte granules
	b, err := d.NewBuffer(4*n, 12)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	if b.Segments() != 3 {
		t.Errorf("%d segments, want 3", b.Segments())
	}
	if _, _, ok := b.Locate(4092, 8, false); !ok {
		t.Errorf("range inside the first segment (granule 12 -> 4092 bytes) not located")
	}
	if _, _, ok := b.Locate(4088, 12, false); ok {
		t.Errorf("range crossing segments located")
	}
	k, err := d.Kernel("fill", 64)
	if err != nil {
		t.Fatal(err)
	}
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Fill element i with float(i / 100) by pieces of 100 floats.
	for lo := 0; lo < n; lo += 100 {
		arg, rel, ok := b.Locate(int64(4*lo), 400, true)
		if !ok {
			for e := lo; e < lo+100; e++ {
				a1, r1, _ := b.Locate(int64(4*e), 4, true)
				if err := s.Dispatch(k, [3]uint32{1, 1, 1}, push(1, uint32(r1/4), math.Float32bits(float32(lo/100))), a1); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		if err := s.Dispatch(k, [3]uint32{2, 1, 1}, push(100, uint32(rel/4), math.Float32bits(float32(lo/100))), arg); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 4*n)
	if err := b.Read(context.Background(), 0, raw); err != nil {
		t.Fatal(err)
	}
	for i, v := range floats(raw) {
		if v != float32(i/100) {
			t.Fatalf("element %d = %v, want %v", i, v, float32(i/100))
		}
	}
}

func TestOutOfMemory(t *testing.T) {
	d := vktest.Device(t)
	_, err := d.NewBuffer(d.Info.MemoryBytes*4, 0)
	if !errors.Is(err, vk.ErrOutOfDeviceMemory) {
		t.Fatalf("got %v, want out of device memory", err)
	}
	if !strings.Contains(err.Error(), "asked for") {
		t.Errorf("message lacks the sizes: %v", err)
	}
}

func TestTimestamps(t *testing.T) {
	d := vktest.Device(t)
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.EnableTimestamps(); err != nil {
		t.Skip(err)
	}
	b, _ := d.NewBuffer(4<<20, 0)
	defer b.Release()
	k, _ := d.Kernel("fill", 256)
	arg, _, _ := b.Locate(0, 4<<20, true)
	s.Mark("start")
	for i := 0; i < 10; i++ {
		s.Dispatch(k, [3]uint32{4096, 1, 1}, push(1<<20, 0, math.Float32bits(1)), arg)
	}
	s.Mark("fill")
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	tm := s.Timings()
	if len(tm) != 1 || tm[0].Label != "fill" || tm[0].Seconds <= 0 {
		t.Fatalf("timings %+v", tm)
	}
}

// TestBarriersOnlyOnHazards checks the stream's hazard tracking: independent
// dispatches share one barrier-free stretch, and a dispatch touching what an
// earlier one wrote (or writing what one read) gets a barrier. The validation
// run's synchronization validation checks that none is missing.
func TestBarriersOnlyOnHazards(t *testing.T) {
	d := vktest.Device(t)
	k, err := d.Kernel("fill", 64)
	if err != nil {
		t.Fatal(err)
	}
	var args [3]vk.Arg
	for i := range args {
		b, err := d.NewBuffer(256, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Release()
		args[i], _, _ = b.Locate(0, 256, true)
	}
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := push(64, 0, math.Float32bits(1))
	steps := []struct {
		arg      vk.Arg
		barriers int // after this dispatch, counting the stream's opening one
	}{
		{args[0], 1}, {args[1], 1}, {args[2], 1}, // independent
		{args[1], 2}, // writes what the second wrote
		{args[0], 2}, // independent of the last stretch
		{args[0], 3}, // again
	}
	for i, st := range steps {
		if err := s.Dispatch(k, [3]uint32{1, 1, 1}, p, st.arg); err != nil {
			t.Fatal(err)
		}
		if _, got := s.Stats(); got != st.barriers {
			t.Errorf("after dispatch %d: %d barriers, want %d", i, got, st.barriers)
		}
	}
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestAfterRun(t *testing.T) {
	d := vktest.Device(t)
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b, err := d.NewBuffer(1024, 0)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := d.Kernel("fill", 64)
	arg, _, _ := b.Locate(0, 1024, true)
	if err := s.Dispatch(k, [3]uint32{4, 1, 1}, push(256, 0, math.Float32bits(3)), arg); err != nil {
		t.Fatal(err)
	}
	released := false
	s.AfterRun(func() { b.Release(); released = true })
	if released {
		t.Fatal("released before the run")
	}
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !released {
		t.Fatal("not released after the run")
	}
}

// TestLargeBufferReuse checks that a large released buffer's memory is kept
// and handed to the next buffer of about its size (seen through its stale
// contents), is not counted as in use, and goes back to the driver at Trim.
func TestLargeBufferReuse(t *testing.T) {
	ctx := context.Background()
	d := vktest.Device(t)
	const size = 40 << 20 // above half a 64 MiB block: a block of its own
	if d.SegmentLimit() < size {
		t.Skipf("segments of %d bytes", d.SegmentLimit())
	}
	base := d.MemoryInUse()
	a, err := d.NewBuffer(size, 0)
	if err != nil {
		t.Fatal(err)
	}
	pattern := make([]byte, 4096)
	for i := range pattern {
		pattern[i] = byte(i*7 + 1)
	}
	if err := a.Write(ctx, 0, pattern); err != nil {
		t.Fatal(err)
	}
	a.Release()
	if got := d.MemoryInUse(); got != base {
		t.Errorf("%d bytes in use after the release, want %d", got, base)
	}
	b, err := d.NewBuffer(size-4096, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(pattern))
	if err := b.Read(ctx, 0, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(pattern) {
		t.Errorf("the second buffer did not reuse the first one's memory")
	}
	b.Release()
	d.Trim()
	if got := d.MemoryInUse(); got != base {
		t.Errorf("%d bytes in use after Trim, want %d", got, base)
	}
}
