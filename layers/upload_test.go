package layers

import (
	"context"
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// TestUploadFrom checks that UploadFrom of values in pinned memory, and
// Upload of a slice of that memory, give the tensor Upload of a Go slice
// gives: on the whole device and on the split one (the tensor crossing
// segments), at an odd offset into the host buffer, into a tensor that
// is a view at an offset of its buffer.
func TestUploadFrom(t *testing.T) {
	ctx := context.Background()
	for _, td := range testDevices(t) {
		t.Run(td.name, func(t *testing.T) {
			d := td.dev
			shape := []int{5, 3, 17, 19} // 19380 bytes: several 12 KiB segments
			want := randn(3, 5*3*17*19)
			n := len(want)
			const hoff = 4*7 + 1 // an odd byte offset
			hb, err := d.NewHostBuffer(int64(4*n + hoff + 3))
			if err != nil {
				t.Fatal(err)
			}
			defer hb.Release()
			raw := hb.Bytes()[hoff:]
			for i, v := range want {
				binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
			}
			ref, err := FromHost(ctx, d, want, shape...)
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Release()
			x, err := New(d, shape...)
			if err != nil {
				t.Fatal(err)
			}
			defer x.Release()
			if err := x.UploadFrom(ctx, hb, hoff); err != nil {
				t.Fatal(err)
			}
			checkSame(t, "UploadFrom", x, ref)

			// A slice of pinned memory through Upload, into a view
			// that starts inside its buffer.
			whole, err := New(d, 2*n)
			if err != nil {
				t.Fatal(err)
			}
			defer whole.Release()
			if err := whole.Upload(ctx, randn(4, 2*n)); err != nil {
				t.Fatal(err)
			}
			flat, err := whole.Reshape(2, n)
			if err != nil {
				t.Fatal(err)
			}
			row := rowView(flat, 1)
			pinned := hb.Float32s()[1 : 1+n]
			copy(pinned, want)
			if err := row.Upload(ctx, pinned); err != nil {
				t.Fatal(err)
			}
			got, err := whole.Download(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range got[n:] {
				if math.Float32bits(v) != math.Float32bits(want[i]) {
					t.Fatalf("pinned Upload into the second row: element %d = %v, want %v", i, v, want[i])
				}
			}
			first := randn(4, 2*n)[:n]
			for i, v := range got[:n] {
				if math.Float32bits(v) != math.Float32bits(first[i]) {
					t.Fatalf("pinned Upload into the second row changed the first: element %d", i)
				}
			}
		})
	}
}

// rowView is row r of a contiguous [R, C] tensor as a [C] view.
func rowView(x *Tensor, r int) *Tensor {
	v := x.view()
	v.offset += r * x.shape[1]
	v.shape, v.strides = []int{x.shape[1]}, []int{1}
	return v
}

func checkSame(t *testing.T, what string, got, want *Tensor) {
	t.Helper()
	ctx := context.Background()
	g, err := got.Download(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w, err := want.Download(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range w {
		if math.Float32bits(g[i]) != math.Float32bits(w[i]) {
			t.Fatalf("%s: element %d = %v, want %v", what, i, g[i], w[i])
		}
	}
}

func TestUploadFromErrors(t *testing.T) {
	ctx := context.Background()
	d := vktest.Device(t)
	x, err := New(d, 4, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Release()
	hb, err := d.NewHostBuffer(4 * 32)
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Release()
	foreign, err := vktest.SplitDevice(t, splitBytes).NewHostBuffer(4 * 32)
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Release()
	tests := []struct {
		name string
		x    *Tensor
		hb   *vk.HostBuffer
		off  int64
		want string
	}{
		{"strided view", x.Transpose(0, 1), hb, 0, "contiguous"},
		{"past the end", x, hb, 4, "outside the host buffer"},
		{"negative offset", x, hb, -4, "outside the host buffer"},
		{"no host buffer", x, nil, 0, "no host buffer"},
		{"another device", x, foreign, 0, "another device"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.x.UploadFrom(ctx, tc.hb, tc.off)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// benchShape is one view of a 64-image batch at 224 px.
var benchShape = []int{64, 3, 224, 224}

// BenchmarkUpload times one view of a 64 x 224 px batch to the device:
// "convert" is Upload as it was (the values converted into a new byte
// slice, then copied into staging), "slice" is Upload of a Go slice now
// (its own bytes copied into staging), "pinned" is UploadFrom a HostBuffer
// (one device copy).
func BenchmarkUpload(b *testing.B) {
	d := vktest.Device(b)
	ctx := context.Background()
	x, err := New(d, benchShape...)
	if err != nil {
		b.Fatal(err)
	}
	defer x.Release()
	data := randn(1, x.Len())
	hb, err := d.NewHostBuffer(4 * int64(len(data)))
	if err != nil {
		b.Fatal(err)
	}
	defer hb.Release()
	copy(hb.Float32s(), data)
	bytes := 4 * int64(len(data))
	b.Run("convert", func(b *testing.B) {
		b.SetBytes(bytes)
		for b.Loop() {
			raw := make([]byte, 4*len(data))
			for i, v := range data {
				binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
			}
			if err := x.buf.Write(ctx, 0, raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("slice", func(b *testing.B) {
		b.SetBytes(bytes)
		for b.Loop() {
			if err := x.Upload(ctx, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pinned", func(b *testing.B) {
		b.SetBytes(bytes)
		for b.Loop() {
			if err := x.UploadFrom(ctx, hb, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
