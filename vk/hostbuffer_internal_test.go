package vk

import (
	"testing"
	"unsafe"
)

// TestPinnedHolding checks the lookup Write and Read use to recognise
// pinned memory: a slice counts only when it lies wholly inside one live
// HostBuffer, at the right offset. Plain Go memory stands in for the
// mappings.
func TestPinnedHolding(t *testing.T) {
	mem := make([]byte, 300)
	a := &allocator{}
	for _, r := range []struct{ at, size int64 }{{0, 100}, {100, 50}, {200, 100}} {
		h := &hostBuffer{ptr: unsafe.Pointer(&mem[r.at]), size: r.size}
		a.pinned = append(a.pinned, &HostBuffer{h: h, size: r.size})
	}
	tests := []struct {
		name     string
		lo, hi   int
		ok       bool
		buf, off int64
	}{
		{"whole first", 0, 100, true, 0, 0},
		{"inside second", 110, 140, true, 1, 10},
		{"last byte", 299, 300, true, 2, 99},
		{"crosses two buffers", 90, 110, false, 0, 0},
		{"in the gap", 160, 170, false, 0, 0},
		{"runs into the gap", 140, 151, false, 0, 0},
		{"empty", 10, 10, false, 0, 0},
	}
	for _, tc := range tests {
		h, off, ok := a.pinnedHolding(mem[tc.lo:tc.hi])
		if ok != tc.ok {
			t.Errorf("%s: found %v, want %v", tc.name, ok, tc.ok)
			continue
		}
		if ok && (h != a.pinned[tc.buf].h || off != tc.off) {
			t.Errorf("%s: offset %d in %p, want %d in buffer %d", tc.name, off, h, tc.off, tc.buf)
		}
	}
	if _, _, ok := a.pinnedHolding(make([]byte, 10)); ok {
		t.Error("other memory taken for pinned")
	}
}
