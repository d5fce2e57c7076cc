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

// Write copies src into the buffer at byte offset off, through the staging
// area, and waits for the copy to finish.
func (b *Buffer) Write(ctx context.Context, off int64, src []byte) error {
	return b.transfer(ctx, off, int64(len(src)), func(staging []byte, done int64) {
		copy(staging, src[done:])
	}, nil)
}

// Read copies bytes of the buffer from offset off into dst, through the
// staging area.
func (b *Buffer) Read(ctx context.Context, off int64, dst []byte) error {
	return b.transfer(ctx, off, int64(len(dst)), nil, func(staging []byte, done int64) {
		copy(dst[done:], staging)
	})
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
			return err
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
		// Split the chunk at segment boundaries.
		for c := int64(0); c < chunk; {
			pos := off + done + c
			seg := pos / b.segSize
			rel := pos - seg*b.segSize
			m := min(chunk-c, b.segs[seg].size-rel)
			dev := b.segs[seg]
			if fill != nil {
				vulkan.CmdCopyBuffer(s.cmd, st.buf, dev.blk.buf, 1, []vulkan.BufferCopy{{
					SrcOffset: vulkan.DeviceSize(c), DstOffset: vulkan.DeviceSize(dev.off + rel), Size: vulkan.DeviceSize(m)}})
			} else {
				vulkan.CmdCopyBuffer(s.cmd, dev.blk.buf, st.buf, 1, []vulkan.BufferCopy{{
					SrcOffset: vulkan.DeviceSize(dev.off + rel), DstOffset: vulkan.DeviceSize(c), Size: vulkan.DeviceSize(m)}})
			}
			c += m
		}
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
