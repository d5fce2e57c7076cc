package vk

import (
	"fmt"
	"slices"
	"unsafe"
)

// HostBuffer is host-visible memory of a device mapped for its whole life
// ("pinned" memory): the host reads and writes it as an ordinary slice, and
// the device copies between it and a Buffer directly (WriteFromHost,
// ReadToHost), without the copy into the device's staging area that Write
// and Read of other memory make. A data loader assembles batches in
// HostBuffers so that each batch crosses to the device in one copy.
//
// Write and Read recognise a slice of a live HostBuffer of the buffer's
// device and take the direct path for it too, so code that uploads through
// plain slices gains the single copy when it is handed pinned memory.
//
// The device's copy reads or writes the memory while WriteFromHost or
// ReadToHost runs; the host must not touch those bytes meanwhile. A
// HostBuffer may be used by several goroutines on disjoint ranges.
type HostBuffer struct {
	dev  *Device
	h    *hostBuffer // nil once released or once the device is closed
	size int64
}

// NewHostBuffer allocates size bytes of pinned memory on the device. Its
// contents are undefined until written. Release it when done; the device
// frees the ones left at its close.
func (d *Device) NewHostBuffer(size int64) (*HostBuffer, error) {
	if size <= 0 {
		return nil, fmt.Errorf("host buffer size %d: must be positive", size)
	}
	// One allocation holds it: unlike a Buffer it is never bound to a
	// kernel, so no segment limit applies, only the allocation limit.
	if size > d.Info.MaxAllocationBytes {
		return nil, fmt.Errorf("host buffer of %s: larger than %s's largest allocation of %s",
			FormatBytes(size), d.Info.Name, FormatBytes(d.Info.MaxAllocationBytes))
	}
	h, err := d.newHostBuffer(size)
	if err != nil {
		return nil, fmt.Errorf("host buffer: %w", err)
	}
	hb := &HostBuffer{dev: d, h: h, size: size}
	a := d.mem
	a.mu.Lock()
	a.pinned = append(a.pinned, hb)
	a.pinnedBytes += size
	a.mu.Unlock()
	return hb, nil
}

// Size returns the buffer's length in bytes.
func (hb *HostBuffer) Size() int64 { return hb.size }

// Device returns the device the memory belongs to.
func (hb *HostBuffer) Device() *Device { return hb.dev }

// Bytes returns the mapped memory; nil after Release.
func (hb *HostBuffer) Bytes() []byte {
	h := hb.live()
	if h == nil {
		return nil
	}
	return h.bytes()
}

// Float32s returns the mapped memory as Size()/4 float32 values in the
// host's byte order (kernels read little-endian values: on a big-endian
// host write Bytes instead); nil after Release. The mapping is aligned for
// any element type.
func (hb *HostBuffer) Float32s() []float32 {
	h := hb.live()
	if h == nil {
		return nil
	}
	return unsafe.Slice((*float32)(h.ptr), h.size/4)
}

// live returns the mapped memory, nil once released.
func (hb *HostBuffer) live() *hostBuffer {
	a := hb.dev.mem
	a.mu.Lock()
	defer a.mu.Unlock()
	return hb.h
}

// Release unmaps and frees the memory; slices from Bytes and Float32s must
// not be used after. It is safe to call more than once.
func (hb *HostBuffer) Release() {
	a := hb.dev.mem
	a.mu.Lock()
	h := hb.h
	if h != nil {
		hb.h = nil
		if i := slices.Index(a.pinned, hb); i >= 0 {
			a.pinned = slices.Delete(a.pinned, i, i+1)
		}
		a.pinnedBytes -= hb.size
	}
	a.mu.Unlock()
	if h != nil {
		h.free(hb.dev)
	}
}

// PinnedMemory returns the bytes held by live HostBuffers of the device.
func (d *Device) PinnedMemory() int64 {
	d.mem.mu.Lock()
	defer d.mem.mu.Unlock()
	return d.mem.pinnedBytes
}

// pinnedHolding finds the live HostBuffer whose memory holds all of p, and
// p's offset in it.
func (a *allocator) pinnedHolding(p []byte) (*hostBuffer, int64, bool) {
	if len(p) == 0 {
		return nil, 0, false
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, hb := range a.pinned {
		base := uintptr(hb.h.ptr)
		if start >= base && start-base+uintptr(len(p)) <= uintptr(hb.size) {
			return hb.h, int64(start - base), true
		}
	}
	return nil, 0, false
}
