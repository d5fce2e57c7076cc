package vk

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"unsafe"

	vulkan "github.com/vulkan-go/vulkan"
)

// blockBytes is the size of the device-memory blocks small buffers are
// sub-allocated from; a request over half of it gets a block of its own.
const blockBytes = 64 << 20

// allocAlign aligns every sub-allocation; it is at least any device's
// minStorageBufferOffsetAlignment, so a segment can be bound at its offset.
const allocAlign = 256

// allocator sub-allocates device-local memory: first fit from a free list per
// block, neighbours merged on release. Each block is one VkDeviceMemory with
// one VkBuffer over all of it, so a descriptor binds (block buffer, offset).
type allocator struct {
	dev      *Device
	memType  uint32
	heapSize int64
	// allowed are the memory types a storage buffer may live in; Vulkan
	// guarantees they are the same for every buffer of the same usage.
	allowed uint32

	mu     sync.Mutex
	blocks []*block
	inUse  int64
	peak   int64 // most inUse has been since the last ResetPeakMemory
	// spare are released dedicated blocks kept for reuse: a training or
	// embedding loop allocates the same large activations at every step,
	// and fresh memory is slow the first time it is touched (lavapipe's
	// device memory is host memory: every page faults in, at 1-2 GB/s,
	// which made a ResNet-50 forward twice as slow). They go back to the
	// driver at Trim, at Close, or when memory runs short.
	spare      []*block
	spareBytes int64

	// pinned are the live HostBuffers, for Buffer.Write and Read to
	// recognise a slice of one and copy straight from or into it; pinned
	// bytes count them.
	pinned      []*HostBuffer
	pinnedBytes int64
}

type block struct {
	mem       vulkan.DeviceMemory
	buf       vulkan.Buffer
	size      int64
	free      []span // sorted by offset, never adjacent
	dedicated bool
}

type span struct{ off, size int64 }

func newAllocator(d *Device) (*allocator, error) {
	a := &allocator{dev: d}
	// Learn the memory types a storage buffer may live in from a probe buffer.
	buf, req, err := a.createBuffer(allocAlign)
	if err != nil {
		return nil, err
	}
	vulkan.DestroyBuffer(d.handle, buf, nil)
	t, heap, ok := findMemoryType(d.physical, req.MemoryTypeBits, vulkan.MemoryPropertyDeviceLocalBit)
	if !ok {
		t, heap, ok = findMemoryType(d.physical, req.MemoryTypeBits, 0)
	}
	if !ok {
		return nil, fmt.Errorf("no memory type holds storage buffers")
	}
	a.memType, a.heapSize, a.allowed = t, heap, req.MemoryTypeBits
	return a, nil
}

func (a *allocator) createBuffer(size int64) (vulkan.Buffer, vulkan.MemoryRequirements, error) {
	var buf vulkan.Buffer
	// Uniform texel: kernels may read any buffer through a texel view (texel.go).
	usage := vulkan.BufferUsageStorageBufferBit | vulkan.BufferUsageUniformTexelBufferBit | vulkan.BufferUsageTransferSrcBit | vulkan.BufferUsageTransferDstBit
	if r := vulkan.CreateBuffer(a.dev.handle, &vulkan.BufferCreateInfo{
		SType:       vulkan.StructureTypeBufferCreateInfo,
		Size:        vulkan.DeviceSize(size),
		Usage:       vulkan.BufferUsageFlags(usage),
		SharingMode: vulkan.SharingModeExclusive,
	}, nil, &buf); r != vulkan.Success {
		return nil, vulkan.MemoryRequirements{}, fmt.Errorf("create buffer of %s: %w", FormatBytes(size), resultError(r))
	}
	var req vulkan.MemoryRequirements
	vulkan.GetBufferMemoryRequirements(a.dev.handle, buf, &req)
	req.Deref()
	return buf, req, nil
}

// findMemoryType returns the first allowed memory type with all of want, and
// the size of its heap.
func findMemoryType(pd vulkan.PhysicalDevice, allowed uint32, want vulkan.MemoryPropertyFlagBits) (uint32, int64, bool) {
	var mp vulkan.PhysicalDeviceMemoryProperties
	vulkan.GetPhysicalDeviceMemoryProperties(pd, &mp)
	mp.Deref()
	for i := uint32(0); i < mp.MemoryTypeCount; i++ {
		mt := mp.MemoryTypes[i]
		mt.Deref()
		if allowed&(1<<i) != 0 && vulkan.MemoryPropertyFlagBits(mt.PropertyFlags)&want == want {
			h := mp.MemoryHeaps[mt.HeapIndex]
			h.Deref()
			return i, int64(h.Size), true
		}
	}
	return 0, 0, false
}

// newBlock allocates a block of at least size bytes in memory type memType.
func (a *allocator) newBlock(size int64, memType uint32) (*block, error) {
	buf, req, err := a.createBuffer(size)
	if err != nil {
		return nil, err
	}
	var mem vulkan.DeviceMemory
	r := vulkan.AllocateMemory(a.dev.handle, &vulkan.MemoryAllocateInfo{
		SType:           vulkan.StructureTypeMemoryAllocateInfo,
		AllocationSize:  req.Size,
		MemoryTypeIndex: memType,
	}, nil, &mem)
	if r != vulkan.Success {
		vulkan.DestroyBuffer(a.dev.handle, buf, nil)
		if r == vulkan.ErrorOutOfDeviceMemory || r == vulkan.ErrorOutOfHostMemory {
			return nil, a.oom(size)
		}
		return nil, fmt.Errorf("allocate %s of device memory: %w", FormatBytes(size), resultError(r))
	}
	if r := vulkan.BindBufferMemory(a.dev.handle, buf, mem, 0); r != vulkan.Success {
		vulkan.DestroyBuffer(a.dev.handle, buf, nil)
		vulkan.FreeMemory(a.dev.handle, mem, nil)
		return nil, fmt.Errorf("bind buffer memory: %w", resultError(r))
	}
	return &block{mem: mem, buf: buf, size: size, free: []span{{0, size}}}, nil
}

func (a *allocator) oom(size int64) error {
	return &OutOfMemoryError{Device: a.dev.Info.Name, Requested: size, InUse: a.inUse, Budget: a.heapSize}
}

// alloc returns size bytes (rounded up to allocAlign) from some block.
func (a *allocator) alloc(size int64) (*block, int64, error) {
	size = alignUp(size, allocAlign)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inUse+size > a.heapSize {
		return nil, 0, a.oom(size)
	}
	if size > blockBytes/2 {
		b, err := a.dedicatedBlock(size)
		if err != nil {
			return nil, 0, err
		}
		a.used(b.size)
		return b, 0, nil
	}
	for _, b := range a.blocks {
		if off, ok := b.take(size); ok {
			a.used(size)
			return b, off, nil
		}
	}
	b, err := a.newBlock(blockBytes, a.memType)
	if err != nil {
		return nil, 0, err
	}
	a.blocks = append(a.blocks, b)
	off, _ := b.take(size)
	a.used(size)
	return b, off, nil
}

// used counts size more bytes in use; a.mu is held.
func (a *allocator) used(size int64) {
	a.inUse += size
	a.peak = max(a.peak, a.inUse)
}

// dedicatedBlock returns a block of its own for size bytes: a spare one
// of at least size and at most a quarter more, or a new one (after freeing
// the spares when they would not leave room). a.mu is held.
func (a *allocator) dedicatedBlock(size int64) (*block, error) {
	best := -1
	for i, b := range a.spare {
		if b.size >= size && b.size <= size+size/4 && (best < 0 || b.size < a.spare[best].size) {
			best = i
		}
	}
	if best >= 0 {
		b := a.spare[best]
		a.spare = append(a.spare[:best], a.spare[best+1:]...)
		a.spareBytes -= b.size
		return b, nil
	}
	if a.inUse+a.spareBytes+size > a.heapSize {
		a.dropSpares()
	}
	b, err := a.newBlock(size, a.memType)
	if err != nil && len(a.spare) > 0 {
		a.dropSpares()
		b, err = a.newBlock(size, a.memType)
	}
	if err != nil {
		return nil, err
	}
	b.dedicated, b.free = true, nil
	a.blocks = append(a.blocks, b)
	return b, nil
}

// dropSpares returns the spare dedicated blocks to the driver; a.mu is held.
func (a *allocator) dropSpares() {
	for _, b := range a.spare {
		a.destroyBlock(b)
	}
	a.spare, a.spareBytes = nil, 0
}

// release returns a range obtained from alloc. Dedicated blocks become
// spares; shared blocks stay for reuse until Trim.
func (a *allocator) release(b *block, off, size int64) {
	size = alignUp(size, allocAlign)
	a.mu.Lock()
	defer a.mu.Unlock()
	if b.dedicated {
		a.inUse -= b.size
		a.spare = append(a.spare, b)
		a.spareBytes += b.size
		return
	}
	a.inUse -= size
	b.give(off, size)
}

func (a *allocator) destroyBlock(b *block) {
	for i, x := range a.blocks {
		if x == b {
			a.blocks = append(a.blocks[:i], a.blocks[i+1:]...)
			break
		}
	}
	vulkan.DestroyBuffer(a.dev.handle, b.buf, nil)
	vulkan.FreeMemory(a.dev.handle, b.mem, nil)
}

// trim frees the shared blocks that hold nothing and the spare dedicated
// blocks.
func (a *allocator) trim() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dropSpares()
	for _, b := range append([]*block(nil), a.blocks...) {
		if !b.dedicated && len(b.free) == 1 && b.free[0].size == b.size {
			a.destroyBlock(b)
		}
	}
}

func (a *allocator) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	// HostBuffers the caller did not release go with the device; their
	// Bytes are nil from now on.
	for _, hb := range a.pinned {
		hb.h.free(a.dev)
		hb.h = nil
	}
	a.pinned, a.pinnedBytes = nil, 0
	for _, b := range append([]*block(nil), a.blocks...) {
		a.destroyBlock(b)
	}
}

// take carves size bytes from the first free span that holds them.
func (b *block) take(size int64) (int64, bool) {
	for i, s := range b.free {
		if s.size >= size {
			if s.size == size {
				b.free = append(b.free[:i], b.free[i+1:]...)
			} else {
				b.free[i] = span{s.off + size, s.size - size}
			}
			return s.off, true
		}
	}
	return 0, false
}

// give returns a span to the free list, merging it with its neighbours.
func (b *block) give(off, size int64) {
	i := sort.Search(len(b.free), func(i int) bool { return b.free[i].off > off })
	b.free = append(b.free, span{})
	copy(b.free[i+1:], b.free[i:])
	b.free[i] = span{off, size}
	if i+1 < len(b.free) && b.free[i].off+b.free[i].size == b.free[i+1].off {
		b.free[i].size += b.free[i+1].size
		b.free = append(b.free[:i+1], b.free[i+2:]...)
	}
	if i > 0 && b.free[i-1].off+b.free[i-1].size == b.free[i].off {
		b.free[i-1].size += b.free[i].size
		b.free = append(b.free[:i], b.free[i+1:]...)
	}
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// MemoryInUse returns the bytes of device memory held by live buffers.
func (d *Device) MemoryInUse() int64 {
	d.mem.mu.Lock()
	defer d.mem.mu.Unlock()
	return d.mem.inUse
}

// PeakMemory returns the most device memory live buffers have held at once
// since the device was opened or ResetPeakMemory was last called.
func (d *Device) PeakMemory() int64 {
	d.mem.mu.Lock()
	defer d.mem.mu.Unlock()
	return d.mem.peak
}

// ResetPeakMemory starts a new peak measurement from the memory in use now.
func (d *Device) ResetPeakMemory() {
	d.mem.mu.Lock()
	defer d.mem.mu.Unlock()
	d.mem.peak = d.mem.inUse
}

// Trim returns the memory of empty sub-allocation blocks and of released
// large buffers kept for reuse to the driver.
func (d *Device) Trim() { d.mem.trim() }

// hostBuffer is host-visible, coherent memory mapped for the whole of its
// life: the staging area of uploads and downloads, and the memory of a
// HostBuffer.
type hostBuffer struct {
	mem  vulkan.DeviceMemory
	buf  vulkan.Buffer
	size int64
	ptr  unsafe.Pointer
}

// newHostBuffer allocates and maps size bytes of host-visible coherent
// memory, host-cached where the device has it: the CPU writes batches into
// it and reads results back, which uncached (write-combined) memory makes
// slow for reads.
func (d *Device) newHostBuffer(size int64) (*hostBuffer, error) {
	a := d.mem
	want := vulkan.MemoryPropertyHostVisibleBit | vulkan.MemoryPropertyHostCoherentBit
	t, heap, ok := findMemoryType(d.physical, a.allowed, want|vulkan.MemoryPropertyHostCachedBit)
	if !ok {
		t, heap, ok = findMemoryType(d.physical, a.allowed, want)
	}
	if !ok {
		return nil, fmt.Errorf("%s has no host-visible coherent memory", d.Info.Name)
	}
	a.mu.Lock()
	pinned := a.pinnedBytes
	if size > heap {
		a.mu.Unlock()
		return nil, a.hostOOM(size, pinned, heap)
	}
	// Under a.mu: newBlock reads inUse for its out-of-memory error.
	b, err := a.newBlock(size, t)
	a.mu.Unlock()
	if errors.Is(err, ErrOutOfDeviceMemory) {
		return nil, a.hostOOM(size, pinned, heap)
	}
	if err != nil {
		return nil, err
	}
	h := &hostBuffer{mem: b.mem, buf: b.buf, size: size}
	var ptr unsafe.Pointer
	if r := vulkan.MapMemory(d.handle, b.mem, 0, vulkan.DeviceSize(size), 0, &ptr); r != vulkan.Success {
		h.free(d)
		return nil, fmt.Errorf("map %s of host-visible memory: %w", FormatBytes(size), resultError(r))
	}
	h.ptr = ptr
	return h, nil
}

// hostOOM is the error of a host-visible allocation the device refused.
func (a *allocator) hostOOM(size, pinned, heap int64) error {
	return fmt.Errorf("allocate %s of host-visible memory on %s (%s pinned already, heap of %s): %w",
		FormatBytes(size), a.dev.Info.Name, FormatBytes(pinned), FormatBytes(heap), ErrOutOfDeviceMemory)
}

func (h *hostBuffer) bytes() []byte { return unsafe.Slice((*byte)(h.ptr), h.size) }

func (h *hostBuffer) free(d *Device) {
	if h.ptr != nil {
		vulkan.UnmapMemory(d.handle, h.mem)
	}
	vulkan.DestroyBuffer(d.handle, h.buf, nil)
	vulkan.FreeMemory(d.handle, h.mem, nil)
}
