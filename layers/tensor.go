// Package layers holds float32 tensors on a Vulkan device and the kernels
// that compute with them. Ops record into a vk.Stream; nothing runs until the
// caller runs the stream, so many ops share one submission.
package layers

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"

	"github.com/e2mcvk/e2mcvk/vk"
)

// Tensor is a strided view of float32 elements in a device buffer. Several
// tensors may view one buffer (Transpose, Reshape); the buffer is released
// by Release on the tensor that allocated it.
type Tensor struct {
	buf     *vk.Buffer
	shape   []int
	strides []int // in elements
	offset  int   // in elements
	owner   bool
}

// New allocates an uninitialised contiguous tensor of the given shape.
func New(d *vk.Device, shape ...int) (*Tensor, error) {
	n := 1
	for _, s := range shape {
		if s <= 0 {
			return nil, fmt.Errorf("tensor shape %v: dimensions must be positive", shape)
		}
		n *= s
	}
	// Keep rows inside one buffer segment where a row fits, so row-wise
	// kernels rarely split.
	granule := int64(4)
	if len(shape) > 0 {
		if row := 4 * int64(shape[len(shape)-1]); row <= d.SegmentLimit() {
			granule = row
		}
	}
	buf, err := d.NewBuffer(4*int64(n), granule)
	if err != nil {
		return nil, fmt.Errorf("tensor %v: %w", shape, err)
	}
	return &Tensor{buf: buf, shape: append([]int(nil), shape...), strides: contiguousStrides(shape), owner: true}, nil
}

// FromHost uploads data as a contiguous tensor of the given shape.
func FromHost(ctx context.Context, d *vk.Device, data []float32, shape ...int) (*Tensor, error) {
	t, err := New(d, shape...)
	if err != nil {
		return nil, err
	}
	if len(data) != t.Len() {
		t.Release()
		return nil, fmt.Errorf("tensor %v holds %d values, got %d", shape, t.Len(), len(data))
	}
	if err := t.Upload(ctx, data); err != nil {
		t.Release()
		return nil, err
	}
	return t, nil
}

func contiguousStrides(shape []int) []int {
	st := make([]int, len(shape))
	acc := 1
	for i := len(shape) - 1; i >= 0; i-- {
		st[i] = acc
		acc *= shape[i]
	}
	return st
}

// Shape returns the tensor's dimensions.
func (t *Tensor) Shape() []int { return append([]int(nil), t.shape...) }

// Strides returns the element strides of each dimension.
func (t *Tensor) Strides() []int { return append([]int(nil), t.strides...) }

// Dim returns dimension i; negative i counts from the end.
func (t *Tensor) Dim(i int) int {
	if i < 0 {
		i += len(t.shape)
	}
	return t.shape[i]
}

// Len returns the number of elements.
func (t *Tensor) Len() int {
	n := 1
	for _, s := range t.shape {
		n *= s
	}
	return n
}

// Device returns the device holding the tensor.
func (t *Tensor) Device() *vk.Device { return t.buf.Device() }

// Contiguous reports whether the elements are dense in row-major order.
func (t *Tensor) Contiguous() bool {
	want := contiguousStrides(t.shape)
	for i := range want {
		if t.shape[i] != 1 && t.strides[i] != want[i] {
			return false
		}
	}
	return true
}

// Release frees the buffer if this tensor allocated it; views do nothing.
func (t *Tensor) Release() {
	if t.owner && t.buf != nil {
		t.buf.Release()
	}
	t.buf = nil
}

// Transpose returns a view with dimensions i and j swapped.
func (t *Tensor) Transpose(i, j int) *Tensor {
	v := t.view()
	v.shape[i], v.shape[j] = v.shape[j], v.shape[i]
	v.strides[i], v.strides[j] = v.strides[j], v.strides[i]
	return v
}

// Reshape returns a view of a contiguous tensor with another shape of the
// same number of elements.
func (t *Tensor) Reshape(shape ...int) (*Tensor, error) {
	n := 1
	for _, s := range shape {
		n *= s
	}
	if n != t.Len() || !t.Contiguous() {
		return nil, fmt.Errorf("reshape %v to %v: needs a contiguous tensor of the same size", t.shape, shape)
	}
	v := t.view()
	v.shape, v.strides = append([]int(nil), shape...), contiguousStrides(shape)
	return v, nil
}

func (t *Tensor) view() *Tensor {
	return &Tensor{buf: t.buf, shape: append([]int(nil), t.shape...), strides: append([]int(nil), t.strides...), offset: t.offset}
}

// Upload copies data (row-major, Len values) into a contiguous tensor. data
// goes to the device without an intermediate host copy where it can: as
// its own bytes on a little-endian host, and straight from the memory when
// it lies in a vk.HostBuffer of the tensor's device (see vk.Buffer.Write).
func (t *Tensor) Upload(ctx context.Context, data []float32) error {
	if !t.Contiguous() {
		return fmt.Errorf("upload into a strided view: make it contiguous first")
	}
	if len(data) != t.Len() {
		return fmt.Errorf("upload %d values into tensor %v of %d", len(data), t.shape, t.Len())
	}
	raw, ok := floatBytes(data)
	if !ok {
		raw = make([]byte, 4*len(data))
		for i, v := range data {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
	}
	return t.buf.Write(ctx, 4*int64(t.offset), raw)
}

// UploadFrom copies Len float32 values (row-major, little-endian: what
// vk.HostBuffer.Float32s holds on a little-endian host) from byte off of
// hb into a contiguous tensor, in one device copy from the pinned memory.
func (t *Tensor) UploadFrom(ctx context.Context, hb *vk.HostBuffer, off int64) error {
	if !t.Contiguous() {
		return fmt.Errorf("upload into a strided view: make it contiguous first")
	}
	if hb == nil {
		return fmt.Errorf("upload into tensor %v: no host buffer", t.shape)
	}
	n := 4 * int64(t.Len())
	if off < 0 || off+n > hb.Size() {
		return fmt.Errorf("upload %d values at byte %d of a host buffer of %d bytes into tensor %v: outside the host buffer",
			t.Len(), off, hb.Size(), t.shape)
	}
	if err := t.buf.WriteFromHost(ctx, 4*int64(t.offset), hb, off, n); err != nil {
		return fmt.Errorf("upload into tensor %v: %w", t.shape, err)
	}
	return nil
}

// Download returns the elements of a contiguous tensor in row-major order.
func (t *Tensor) Download(ctx context.Context) ([]float32, error) {
	if !t.Contiguous() {
		return nil, fmt.Errorf("download a strided view: make it contiguous first")
	}
	out := make([]float32, t.Len())
	if raw, ok := floatBytes(out); ok {
		if err := t.buf.Read(ctx, 4*int64(t.offset), raw); err != nil {
			return nil, err
		}
		return out, nil
	}
	raw := make([]byte, 4*t.Len())
	if err := t.buf.Read(ctx, 4*int64(t.offset), raw); err != nil {
		return nil, err
	}
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return out, nil
}

// floatBytes returns the memory of data as bytes when the host is
// little-endian, the byte order of the kernels' float32 (every Vulkan host
// in practice); ok is false on a big-endian host, which must convert.
func floatBytes(data []float32) (raw []byte, ok bool) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		return nil, false
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(data))), 4*len(data)), true
}

// locate binds the elements [first, first+count) of the tensor's buffer; ok
// is false when they cross a segment boundary. rel is first relative to the
// bound segment, in elements.
func (t *Tensor) locate(first, count int, write bool) (arg vk.Arg, rel uint32, ok bool) {
	a, r, ok := t.buf.Locate(4*int64(t.offset+first), 4*int64(count), write)
	return a, uint32(r / 4), ok
}
