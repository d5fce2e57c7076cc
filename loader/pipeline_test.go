package loader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// writePNGFolder writes an image folder of n small PNGs spread over three
// classes, each a different smooth pattern and size, and returns it opened.
func writePNGFolder(t *testing.T, n int) *ImageFolder {
	t.Helper()
	root := t.TempDir()
	classes := []string{"ant", "bee", "cat"}
	for _, c := range classes {
		if err := os.Mkdir(filepath.Join(root, c), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		w, h := 24+i%5*4, 20+i%3*6
		m := image.NewNRGBA(image.Rect(0, 0, w, h))
		for y := range h {
			for x := range w {
				m.Set(x, y, color.NRGBA{
					R: uint8(128 + 120*math.Sin(float64(x*(i+1))/7)),
					G: uint8(128 + 120*math.Cos(float64(y*(i+2))/5)),
					B: uint8((x*y + 31*i) % 256),
					A: 255,
				})
			}
		}
		var buf bytes.Buffer
		if err := png.Encode(&buf, m); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(root, classes[i%3], fmt.Sprintf("img%03d.png", i))
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := OpenImageFolder(root)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// smallViews are VICReg's two views at 16 pixels, to keep the tests fast.
func smallViews() []View {
	v := VICRegViews()
	a, b := View{ViewAugment: v[0]}, View{ViewAugment: v[1]}
	a.Size, b.Size = 16, 12
	return []View{a, b}
}

// collect runs an epoch to its end and returns its batches.
func collect(t *testing.T, p *Pipeline, epoch, start int) ([]*Batch, *BatchIter) {
	t.Helper()
	it, err := p.Epoch(context.Background(), epoch, start)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out []*Batch
	for it.Next() {
		out = append(out, it.Batch())
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out, it
}

func sameBatch(a, b *Batch) bool {
	if a.Number != b.Number || fmt.Sprint(a.Samples, a.Labels, a.Sizes) != fmt.Sprint(b.Samples, b.Labels, b.Sizes) {
		return false
	}
	for v := range a.Views {
		if len(a.Views[v]) != len(b.Views[v]) {
			return false
		}
		for i := range a.Views[v] {
			if math.Float32bits(a.Views[v][i]) != math.Float32bits(b.Views[v][i]) {
				return false
			}
		}
	}
	return true
}

func TestPipelineShapesAndLabels(t *testing.T) {
	ds := writePNGFolder(t, 11)
	p := &Pipeline{Data: ds, Views: smallViews(), BatchSize: 4, Seed: 7, Workers: 3, Prefetch: 2}
	batches, it := collect(t, p, 0, 0)
	if len(batches) != 2 || p.NumBatches() != 2 {
		t.Fatalf("%d batches (NumBatches %d), want 2 (11 images, batch 4, last dropped)", len(batches), p.NumBatches())
	}
	if it.Skipped() != 0 {
		t.Errorf("skipped %d", it.Skipped())
	}
	order := p.Order(0)
	seen := map[int]bool{}
	for k, b := range batches {
		if b.Number != k {
			t.Errorf("batch %d numbered %d", k, b.Number)
		}
		if fmt.Sprint(b.Samples) != fmt.Sprint(order[4*k:4*k+4]) {
			t.Errorf("batch %d samples %v, want %v", k, b.Samples, order[4*k:4*k+4])
		}
		for j, s := range b.Samples {
			if seen[s] {
				t.Errorf("sample %d twice", s)
			}
			seen[s] = true
			if b.Labels[j] != ds.Label(s) {
				t.Errorf("sample %d label %d, want %d", s, b.Labels[j], ds.Label(s))
			}
		}
		for v, size := range []int{16, 12} {
			if b.Sizes[v] != size || len(b.Views[v]) != 4*3*size*size {
				t.Errorf("batch %d view %d: size %d, %d values", k, v, b.Sizes[v], len(b.Views[v]))
			}
			// Normalised ImageNet values lie in [-2.2, 2.7]; each sample's
			// slot was written (pattern images are not constant).
			per := 3 * size * size
			for j := range 4 {
				lo, hi := float32(10), float32(-10)
				for _, x := range b.Views[v][j*per : (j+1)*per] {
					lo, hi = min(lo, x), max(hi, x)
				}
				if lo < -2.2 || hi > 2.7 || hi-lo < 0.1 {
					t.Errorf("batch %d view %d slot %d: values in [%v, %v]", k, v, j, lo, hi)
				}
			}
		}
	}
	// The views are the views' transforms of the decoded samples.
	b := batches[1]
	img, err := ds.Image(b.Samples[2])
	if err != nil {
		t.Fatal(err)
	}
	want, err := p.Views[1].Apply(ToRGB(img), ViewRNG(7, 0, b.Samples[2], 1))
	if err != nil {
		t.Fatal(err)
	}
	wantT := make([]float32, 3*12*12)
	if err := want.Normalize(wantT); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(wantT) != fmt.Sprint(b.Views[1][2*len(wantT):3*len(wantT)]) {
		t.Error("batch 1 slot 2 view 1 differs from the view applied directly")
	}
}

func TestPipelineDeterminism(t *testing.T) {
	ds := writePNGFolder(t, 12)
	p := &Pipeline{Data: ds, Views: smallViews(), BatchSize: 3, Seed: 3, Workers: 4, Prefetch: 3}
	full, _ := collect(t, p, 1, 0)
	p2 := *p
	p2.Workers, p2.Prefetch = 1, 1
	again, _ := collect(t, &p2, 1, 0)
	if len(full) != 4 || len(again) != 4 {
		t.Fatalf("%d and %d batches, want 4", len(full), len(again))
	}
	for k := range full {
		if !sameBatch(full[k], again[k]) {
			t.Errorf("batch %d differs between runs with 4 and 1 workers", k)
		}
	}
	resumed, _ := collect(t, p, 1, 2)
	if len(resumed) != 2 {
		t.Fatalf("resumed at 2: %d batches", len(resumed))
	}
	for k, b := range resumed {
		if !sameBatch(b, full[2+k]) {
			t.Errorf("resumed batch %d differs from the full run's", 2+k)
		}
	}
	other, _ := collect(t, p, 2, 0)
	if fmt.Sprint(p.Order(1)) == fmt.Sprint(p.Order(2)) {
		t.Error("epochs 1 and 2 have the same order")
	}
	for k := range other {
		if sameBatch(other[k], full[k]) {
			t.Errorf("epoch 2 batch %d equals epoch 1's", k)
		}
	}
	end, _ := collect(t, p, 1, 4)
	if len(end) != 0 {
		t.Errorf("resumed at the end: %d batches", len(end))
	}
}

func TestPipelineCorruptImage(t *testing.T) {
	ds := writePNGFolder(t, 9)
	p := &Pipeline{Data: ds, Views: smallViews(), BatchSize: 3, Seed: 5, Workers: 2}
	clean, _ := collect(t, p, 0, 0)
	// Truncate the second image of batch 1.
	bad := clean[1].Samples[1]
	path := ds.Name(bad)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	p.Log = &log
	got, it := collect(t, p, 0, 0)
	if len(got) != 3 {
		t.Fatalf("%d batches, want 3", len(got))
	}
	if it.Skipped() != 1 || fmt.Sprint(got[1].Skipped) != fmt.Sprint([]int{bad}) {
		t.Errorf("skipped %d (%v), want 1 (%d)", it.Skipped(), got[1].Skipped, bad)
	}
	if !strings.Contains(log.String(), path) || strings.Count(log.String(), "\n") != 1 {
		t.Errorf("log %q does not name %s once", log.String(), path)
	}
	// Batch 1 is full: its readable images, then the next batch's first.
	order := p.Order(0)
	want := []int{order[3], order[5], order[6]}
	if fmt.Sprint(got[1].Samples) != fmt.Sprint(want) {
		t.Errorf("batch 1 samples %v, want %v", got[1].Samples, want)
	}
	if !sameBatch(got[0], clean[0]) || !sameBatch(got[2], clean[2]) {
		t.Error("batches without the corrupt image changed")
	}
	// Slot 1 holds sample order[5]'s views, moved from slot 2.
	per := 3 * 16 * 16
	if fmt.Sprint(got[1].Views[0][per:2*per]) != fmt.Sprint(clean[1].Views[0][2*per:3*per]) {
		t.Error("batch 1 slot 1 does not hold the next readable image's view")
	}
	// Resuming at the corrupt batch gives the same batch.
	resumed, _ := collect(t, p, 0, 1)
	if !sameBatch(resumed[0], got[1]) {
		t.Error("resumed batch 1 differs")
	}

	p.Strict = true
	it2, err := p.Epoch(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer it2.Close()
	n := 0
	for it2.Next() {
		n++
	}
	if it2.Err() == nil || !strings.Contains(it2.Err().Error(), path) || n != 1 {
		t.Errorf("strict: %d batches, error %v, want 1 and an error naming %s", n, it2.Err(), path)
	}
}

func TestPipelineErrors(t *testing.T) {
	ds := writePNGFolder(t, 4)
	tests := []struct {
		name  string
		p     Pipeline
		start int
		want  string
	}{
		{"empty", Pipeline{Data: Select(ds, nil), Views: smallViews(), BatchSize: 2}, 0, "empty"},
		{"batch too large", Pipeline{Data: ds, Views: smallViews(), BatchSize: 5}, 0, "larger than the data set"},
		{"zero batch", Pipeline{Data: ds, Views: smallViews()}, 0, "batch size 0"},
		{"no views", Pipeline{Data: ds, BatchSize: 2}, 0, "no views"},
		{"bad view", Pipeline{Data: ds, Views: []View{{}}, BatchSize: 2}, 0, "output size"},
		{"start past end", Pipeline{Data: ds, Views: smallViews(), BatchSize: 2}, 3, "start batch"},
		{"negative workers", Pipeline{Data: ds, Views: smallViews(), BatchSize: 2, Workers: -1}, 0, "workers"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.p.Epoch(context.Background(), 0, tc.start)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	// Every image unreadable: an error, not a hang.
	for i := range ds.Samples {
		if err := os.WriteFile(ds.Samples[i].Path, []byte("not a png"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := &Pipeline{Data: ds, Views: smallViews(), BatchSize: 2, Workers: 2}
	it, err := p.Epoch(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	if it.Next() || it.Err() == nil || !strings.Contains(it.Err().Error(), "readable") {
		t.Errorf("all unreadable: error %v", it.Err())
	}
}

func TestPipelineCancel(t *testing.T) {
	ds := writePNGFolder(t, 12)
	p := &Pipeline{Data: ds, Views: smallViews(), BatchSize: 2, Workers: 4, Prefetch: 2}
	before := runtime.NumGoroutine()
	for _, closeFirst := range []bool{true, false} {
		ctx, cancel := context.WithCancel(context.Background())
		it, err := p.Epoch(ctx, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !it.Next() {
			t.Fatal(it.Err())
		}
		if closeFirst {
			it.Close()
			cancel()
		} else {
			cancel()
			for it.Next() {
			}
			if !errors.Is(it.Err(), context.Canceled) {
				t.Errorf("after cancel: error %v", it.Err())
			}
			it.Close()
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after closing, %d before", n, before)
	}
}

// TestPipelinePlainInOrder checks the fidelity modes: InOrder takes the
// images in data-set order, and Plain views hold exactly what LoadBatch
// gives with the evaluation transform at the view's size.
func TestPipelinePlainInOrder(t *testing.T) {
	ds := writePNGFolder(t, 11)
	views := smallViews()
	for i := range views {
		views[i].Plain = true
	}
	p := &Pipeline{Data: ds, Views: views, BatchSize: 4, Seed: 7, Workers: 3, InOrder: true}
	batches, _ := collect(t, p, 2, 1)
	if len(batches) != 1 || batches[0].Number != 1 {
		t.Fatalf("%d batches from batch 1", len(batches))
	}
	b := batches[0]
	if fmt.Sprint(b.Samples) != "[4 5 6 7]" {
		t.Fatalf("samples %v, want [4 5 6 7] (data-set order)", b.Samples)
	}
	for v, view := range views {
		want, _, _, err := LoadBatch(context.Background(), ds, b.Samples, Preprocess{Resize: view.Size, Crop: view.Size}, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Views[v]) != len(want) {
			t.Fatalf("view %d: %d values, want %d", v, len(b.Views[v]), len(want))
		}
		for i := range want {
			if b.Views[v][i] != want[i] {
				t.Fatalf("view %d value %d: %v, LoadBatch %v", v, i, b.Views[v][i], want[i])
			}
		}
	}
}

// poolAlloc is a Pipeline.Alloc that recycles released memory, counts what
// it hands out, and fills every slice it hands out with NaN so that a value
// the pipeline did not write shows.
type poolAlloc struct {
	t      *testing.T
	mu     sync.Mutex
	free   map[int][][]float32 // by length
	fresh  int                 // slices allocated new
	out    int                 // batches handed out and not released
	peak   int
	calls  int
	failAt int                           // the call that fails, 0 for none
	edit   func([][]float32) [][]float32 // spoils the views, for the error tests
}

var errNoMemory = errors.New("no memory left")

func newPoolAlloc(t *testing.T) *poolAlloc {
	return &poolAlloc{t: t, free: map[int][][]float32{}}
}

func (a *poolAlloc) alloc(lens []int) ([][]float32, func(), error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	if a.calls == a.failAt {
		return nil, nil, errNoMemory
	}
	views := make([][]float32, len(lens))
	for v, n := range lens {
		if f := a.free[n]; len(f) > 0 {
			views[v], a.free[n] = f[len(f)-1], f[:len(f)-1]
		} else {
			views[v] = make([]float32, n)
			a.fresh++
		}
		for i := range views[v] {
			views[v][i] = float32(math.NaN())
		}
	}
	a.out++
	a.peak = max(a.peak, a.out)
	kept := slices.Clone(views)
	released := false
	release := func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if released {
			a.t.Error("a batch's memory released twice")
			return
		}
		released = true
		a.out--
		for _, s := range kept {
			a.free[len(s)] = append(a.free[len(s)], s)
		}
	}
	if a.edit != nil {
		views = a.edit(views)
	}
	return views, release, nil
}

func (a *poolAlloc) outstanding() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.out
}

// TestPipelineAlloc checks batches assembled in memory from Alloc: they are
// bit for bit the batches of Go slices (although the memory comes back
// holding NaN), Release hands it back and drops Views, and the memory in
// use stays within the prefetch bound and is reused from epoch to epoch.
func TestPipelineAlloc(t *testing.T) {
	ds := writePNGFolder(t, 14)
	base := Pipeline{Data: ds, Views: smallViews(), BatchSize: 3, Seed: 11, Workers: 3, Prefetch: 2}
	pool := newPoolAlloc(t)
	p := base
	p.Alloc = pool.alloc
	for epoch := range 2 {
		want, _ := collect(t, &base, epoch, 0)
		it, err := p.Epoch(context.Background(), epoch, 0)
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for it.Next() {
			b := it.Batch()
			if k >= len(want) || !sameBatch(b, want[k]) {
				t.Errorf("epoch %d batch %d differs from the batch in Go slices", epoch, k)
			}
			b.Release()
			if b.Views != nil {
				t.Error("Views kept after Release")
			}
			b.Release() // twice is harmless
			k++
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		it.Close()
		if k != len(want) {
			t.Errorf("epoch %d: %d batches, want %d", epoch, k, len(want))
		}
		if n := pool.outstanding(); n != 0 {
			t.Errorf("epoch %d: %d batches not handed back", epoch, n)
		}
	}
	// A batch held while the next Prefetch are built: at most Prefetch+1
	// batches' memory, allocated once for both epochs.
	bound := base.Prefetch + 1
	if pool.peak > bound || pool.fresh > bound*len(base.Views) {
		t.Errorf("%d batches at once, %d slices allocated; want at most %d and %d",
			pool.peak, pool.fresh, bound, bound*len(base.Views))
	}
	if pool.calls != 2*base.NumBatches() {
		t.Errorf("Alloc called %d times for %d batches", pool.calls, 2*base.NumBatches())
	}
}

// TestPipelineAllocClose checks that closing an epoch early, or cancelling
// it, hands back the memory of every batch built and not taken, and leaves
// the consumer's batches to it.
func TestPipelineAllocClose(t *testing.T) {
	ds := writePNGFolder(t, 12)
	for _, cancelFirst := range []bool{false, true} {
		pool := newPoolAlloc(t)
		p := &Pipeline{Data: ds, Views: smallViews(), BatchSize: 2, Workers: 2, Prefetch: 3, Alloc: pool.alloc}
		ctx, cancel := context.WithCancel(context.Background())
		it, err := p.Epoch(ctx, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !it.Next() {
			t.Fatal(it.Err())
		}
		held := it.Batch()
		// Let the prefetch fill up.
		deadline := time.Now().Add(5 * time.Second)
		for pool.outstanding() < 1+p.Prefetch && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if cancelFirst {
			cancel()
			// Next may still hand out batches that were ready (select
			// picks among ready cases at random); a consumer releases
			// what it takes.
			for it.Next() {
				it.Batch().Release()
			}
		}
		it.Close()
		cancel()
		if n := pool.outstanding(); n != 1 {
			t.Errorf("cancel first %v: %d batches out after Close, want 1 (the one held)", cancelFirst, n)
		}
		if len(held.Views) != 2 || len(held.Views[0]) != 2*3*16*16 {
			t.Errorf("the held batch lost its views at Close")
		}
		held.Release()
		if n := pool.outstanding(); n != 0 {
			t.Errorf("%d batches out after releasing the last", n)
		}
	}
}

// TestPipelineAllocErrors checks that Alloc's errors end the epoch with the
// error, that views Alloc gets wrong are refused, and that a batch that
// fails hands its memory back.
func TestPipelineAllocErrors(t *testing.T) {
	ds := writePNGFolder(t, 8)
	short := func(v [][]float32) [][]float32 { return [][]float32{v[0], v[1][:10]} }
	fewer := func(v [][]float32) [][]float32 { return v[:1] }
	tests := []struct {
		name    string
		failAt  int
		edit    func([][]float32) [][]float32
		batches int
		want    string
	}{
		{"fails at the third", 3, nil, 2, errNoMemory.Error()},
		{"short view", 0, short, 0, "Alloc returned views of [1536 10] values, want [1536 864]"},
		{"one view", 0, fewer, 0, "Alloc returned views of [1536] values, want [1536 864]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := newPoolAlloc(t)
			pool.failAt, pool.edit = tc.failAt, tc.edit
			// Prefetch 1 builds the batches one after another, so the
			// calls come in batch order.
			p := &Pipeline{Data: ds, Views: smallViews(), BatchSize: 2, Workers: 2, Prefetch: 1, Alloc: pool.alloc}
			it, err := p.Epoch(context.Background(), 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for it.Next() {
				it.Batch().Release()
				n++
			}
			it.Close()
			if n != tc.batches || it.Err() == nil || !strings.Contains(it.Err().Error(), tc.want) {
				t.Errorf("%d batches, error %v; want %d and an error containing %q", n, it.Err(), tc.batches, tc.want)
			}
			if tc.failAt > 0 && !errors.Is(it.Err(), errNoMemory) {
				t.Errorf("error %v does not wrap Alloc's", it.Err())
			}
			if out := pool.outstanding(); out != 0 {
				t.Errorf("%d batches not handed back", out)
			}
		})
	}

	// A batch that fails for its images hands its memory back too.
	for i := range ds.Samples {
		if err := os.WriteFile(ds.Samples[i].Path, []byte("not a png"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pool := newPoolAlloc(t)
	p := &Pipeline{Data: ds, Views: smallViews(), BatchSize: 2, Workers: 2, Alloc: pool.alloc}
	it, err := p.Epoch(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if it.Next() || it.Err() == nil || !strings.Contains(it.Err().Error(), "readable") {
		t.Errorf("all unreadable: error %v", it.Err())
	}
	it.Close()
	if out := pool.outstanding(); out != 0 || pool.calls == 0 {
		t.Errorf("%d batches not handed back after %d allocations", out, pool.calls)
	}
}
