package vk

import (
	"context"
	"fmt"

	vulkan "github.com/vulkan-go/vulkan"
)

// Buffer is device-local memory addressed as one byte range. A buffer larger
// than the device's segment limit (the least of maxStorageBufferRange,
// maxMemoryAllocationSize and E2MCVK_MAX_BUFFER_BYTES) is stored as several
// segments; uploads and downloads cross them transparently, and kernels are
// dispatched per piece of work that lies inside one segment (see Locate).
type Buffer struct {
	dev     *Device
	size    int64
	segSize int64 // size of every segment but the last
	segs    []segment
}

type segment struct {
	blk  *block
	off  int64
	size int64
}

// NewBuffer allocates size bytes. Segment boundaries fall on multiples of
// granule bytes (a row of a matrix, say) so that a granule never straddles
// two segments; granule 0 means 4 (one float32).
func (d *Device) NewBuffer(size, granule int64) (*Buffer, error) {
	if size <= 0 {
		return nil, fmt.Errorf("buffer size %d: must be positive", size)
	}
	if granule <= 0 {
		granule = 4
	}
	segSize := d.segLimit / granule * granule
	if segSize == 0 {
		return nil, fmt.Errorf("a granule of %s is larger than the device's buffer limit of %s", FormatBytes(granule), FormatBytes(d.segLimit))
	}
	b := &Buffer{dev: d, size: size, segSize: segSize}
	for off := int64(0); off < size; off += segSize {
		n := min(segSize, size-off)
		blk, at, err := d.mem.alloc(n)
		if err != nil {
			b.Release()
			return nil, fmt.Errorf("allocate buffer of %s: %w", FormatBytes(size), err)
		}
		b.segs = append(b.segs, segment{blk, at, n})
	}
	return b, nil
}

// Size returns the buffer's length in bytes.
func (b *Buffer) Size() int64 { return b.size }

// Device returns the device the buffer lives on.
func (b *Buffer) Device() *Device { return b.dev }

// Segments returns how many segments the buffer is stored in.
func (b *Buffer) Segments() int { return len(b.segs) }

// Release returns the buffer's memory; the buffer must not be used after.
func (b *Buffer) Release() {
	for _, s := range b.segs {
		b.dev.mem.release(s.blk, s.off, s.size)
	}
	b.segs = nil
}

// Arg is one buffer binding of a dispatch: a whole segment of a buffer, bound
// read-only or writable.
type Arg struct {
	buf   *Buffer
	seg   int
	write bool
	texel int // components of a texel view (1 or 4; see Arg.Texel), 0 for a storage buffer
}

// Locate finds the segment holding bytes [off, off+n) of the buffer. It
// returns the binding for that segment (writable if write) and off relative to
// the segment's start; ok is false when the range crosses a segment boundary,
// in which case the caller splits its work.
func (b *Buffer) Locate(off, n int64, write bool) (arg Arg, rel int64, ok bool) {
	if off < 0 || n < 0 || off+n > b.size {
		return Arg{}, 0, false
	}
	seg := off / b.segSize
	last := seg
	if n > 0 {
		last = (off + n - 1) / b.segSize
	}
	if seg != last {
		return Arg{}, 0, false
	}
	return Arg{buf: b, seg: int(seg), write: write}, off - seg*b.segSize, true
}

// region is the memory an Arg touches, for hazard tracking.
func (a Arg) region() (blk *block, off, size int64) {
	s := a.buf.segs[a.seg]
	return s.blk, s.off, s.size
}

// Write copies src into the buffer at byte offset off and waits for the
// copy to finish. It goes through the device's staging area, or straight
// from src when src lies in a live HostBuffer of the buffer's device.
func (b *Buffer) Write(ctx context.Context, off int64, src []byte) error {
	if h, hoff, ok := b.dev.mem.pinnedHolding(src); ok {
		return b.hostCopy(ctx, off, int64(len(src)), h, hoff, true)
	}
	return b.transfer(ctx, off, int64(len(src)), func(staging []byte, done int64) {
		copy(staging, src[done:])
	}, nil)
}

// Read copies bytes of the buffer from offset off into dst, through the
// staging area, or straight into dst when dst lies in a live HostBuffer of
// the buffer's device.
func (b *Buffer) Read(ctx context.Context, off int64, dst []byte) error {
	if h, hoff, ok := b.dev.mem.pinnedHolding(dst); ok {
		return b.hostCopy(ctx, off, int64(len(dst)), h, hoff, false)
	}
	return b.transfer(ctx, off, int64(len(dst)), nil, func(staging []byte, done int64) {
		copy(dst[done:], staging)
	})
}

// WriteFromHost copies n bytes of src from byte srcOff into the buffer at
// byte offset off, in one device copy from the pinned memory, and waits for
// it to finish. The buffer may span several segments.
func (b *Buffer) WriteFromHost(ctx context.Context, off int64, src *HostBuffer, srcOff, n int64) error {
	h, err := b.pinnedRange(src, srcOff, n)
	if err != nil {
		return fmt.Errorf("write from host: %w", err)
	}
	return b.hostCopy(ctx, off, n, h, srcOff, true)
}

// ReadToHost copies n bytes of the buffer from byte offset off into dst at
// byte dstOff, in one device copy into the pinned memory, and waits for it
// to finish.
func (b *Buffer) ReadToHost(ctx context.Context, off int64, dst *HostBuffer, dstOff, n int64) error {
	h, err := b.pinnedRange(dst, dstOff, n)
	if err != nil {
		return fmt.Errorf("read to host: %w", err)
	}
	return b.hostCopy(ctx, off, n, h, dstOff, false)
}

// pinnedRange checks that hb is a live HostBuffer of b's device holding
// bytes [off, off+n).
func (b *Buffer) pinnedRange(hb *HostBuffer, off, n int64) (*hostBuffer, error) {
	if hb == nil {
		return nil, fmt.Errorf("no host buffer")
	}
	if hb.dev != b.dev {
		return nil, fmt.Errorf("host buffer of another device (%s) than the buffer's (%s)", hb.dev.Info.Name, b.dev.Info.Name)
	}
	h := hb.live()
	if h == nil {
		return nil, fmt.Errorf("host buffer used after Release")
	}
	if off < 0 || n < 0 || off+n > hb.size {
		return nil, fmt.Errorf("%d bytes at %d: outside host buffer of %d bytes", n, off, hb.size)
	}
	return h, nil
}

// hostCopy copies n bytes between host memory h at hoff and the buffer at
// off, toward the device if up, in one submission.
func (b *Buffer) hostCopy(ctx context.Context, off, n int64, h *hostBuffer, hoff int64, up bool) error {
	if off < 0 || n < 0 || off+n > b.size {
		return fmt.Errorf("transfer of %d bytes at %d: outside buffer of %d bytes", n, off, b.size)
	}
	if n == 0 {
		return nil
	}
	d := b.dev
	d.transferMu.Lock()
	defer d.transferMu.Unlock()
	s := d.transfer
	if err := s.begin(); err != nil {
		return err
	}
	b.recordCopies(s, off, n, h, hoff, up)
	if err := s.Run(ctx); err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	return nil
}

// recordCopies records copies of n bytes between host memory h at hoff and
// the buffer at off, split at segment boundaries.
func (b *Buffer) recordCopies(s *Stream, off, n int64, h *hostBuffer, hoff int64, up bool) {
	for c := int64(0); c < n; {
		pos := off + c
		seg := pos / b.segSize
		rel := pos - seg*b.segSize
		dev := b.segs[seg]
		m := min(n-c, dev.size-rel)
		if up {
			vulkan.CmdCopyBuffer(s.cmd, h.buf, dev.blk.buf, 1, []vulkan.BufferCopy{{
				SrcOffset: vulkan.DeviceSize(hoff + c), DstOffset: vulkan.DeviceSize(dev.off + rel), Size: vulkan.DeviceSize(m)}})
		} else {
			vulkan.CmdCopyBuffer(s.cmd, dev.blk.buf, h.buf, 1, []vulkan.BufferCopy{{
				SrcOffset: vulkan.DeviceSize(dev.off + rel), DstOffset: vulkan.DeviceSize(hoff + c), Size: vulkan.DeviceSize(m)}})
		}
		c += m
	}
}

// stagingBytes bounds the host-visible staging area of a device.
const stagingBytes = 32 << 20

// transfer moves n bytes at off between the buffer and the host in chunks of
// the staging area: fill (upload) writes a chunk into staging before the copy
// to the device, drain (download) reads it after the copy back.
func (b *Buffer) transfer(ctx context.Context, off, n int64, fill, drain func(staging []byte, done int64)) error {
	if off < 0 || off+n > b.size {
		return fmt.Errorf("transfer of %d bytes at %d: outside buffer of %d bytes", n, off, b.size)
	}
	d := b.dev
	d.transferMu.Lock()
	defer d.transferMu.Unlock()
	if d.staging == nil {
		h, err := d.newHostBuffer(stagingBytes)
		if err != nil {
			return fmt.Errorf("staging area: %w", err)
		}
		d.staging = h
	}
	st := d.staging
	for done := int64(0); done < n; {
		chunk := min(n-done, st.size)
		if fill != nil {
			fill(st.bytes()[:chunk], done)
		}
		s := d.transfer
		if err := s.begin(); err != nil {
			return err
		}
		b.recordCopies(s, off+done, chunk, st, 0, fill != nil)
		if err := s.Run(ctx); err != nil {
			return fmt.Errorf("transfer: %w", err)
		}
		if drain != nil {
			drain(st.bytes()[:chunk], done)
		}
		done += chunk
	}
	return nil
}
