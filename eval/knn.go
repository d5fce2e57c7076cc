package eval

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/vk"
)

// Defaults of the kNN protocol (InstDisc, DINO).
const (
	KNNDefaultK    = 200
	KNNDefaultTemp = 0.07
)

// KNNScores classifies each row of test by its k nearest rows of train in
// cosine similarity, with the weighted vote of InstDisc and DINO: a
// neighbour of similarity s adds exp(s/temp) to its class's score. It returns
// the scores, test.N rows of train.Classes values. Features are
// L2-normalised (float32) before the similarities are taken; among equally
// similar neighbours the earlier training row wins. The similarities are
// computed on dev (a GEMM per block of test rows) or, with dev nil, on the
// host; the neighbours are chosen on the host.
func KNNScores(ctx context.Context, dev *vk.Device, train, test *Features, k int, temp float64) ([]float64, error) {
	if err := train.check("training"); err != nil {
		return nil, err
	}
	if err := test.check("test"); err != nil {
		return nil, err
	}
	if train.D != test.D {
		return nil, fmt.Errorf("kNN: %d-d training features, %d-d test features", train.D, test.D)
	}
	if k < 1 || !(temp > 0) {
		return nil, fmt.Errorf("kNN: k %d and temperature %g: want k >= 1 and temperature > 0", k, temp)
	}
	k = min(k, train.N)
	tr := normalizedRows(train)
	te := normalizedRows(test)
	sims := hostSims(tr, te, train.N, test.D)
	block := 64
	if dev != nil {
		ds, err := newDeviceSims(ctx, dev, tr, train.N, train.D)
		if err != nil {
			return nil, err
		}
		defer ds.release()
		sims = func(lo, rows int, out []float32) error {
			return ds.block(ctx, te[lo*test.D:(lo+rows)*test.D], rows, out)
		}
		block = 512
	}
	// A block's similarities are held on the host (and the device) at
	// once: at most 256 MiB of them (about 50 rows against ImageNet).
	block = max(1, min(block, (256<<20)/(4*train.N)))
	classes := train.Classes
	scores := make([]float64, test.N*classes)
	buf := make([]float32, block*train.N)
	workers := max(1, runtime.GOMAXPROCS(0))
	heaps := make([]neighbours, workers)
	for lo := 0; lo < test.N; lo += block {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rows := min(block, test.N-lo)
		if err := sims(lo, rows, buf[:rows*train.N]); err != nil {
			return nil, err
		}
		// The vote of each row, rows shared among the workers.
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				nb := &heaps[w]
				for r := w; r < rows; r += workers {
					row := buf[r*train.N : (r+1)*train.N]
					nb.top(row, k)
					out := scores[(lo+r)*classes : (lo+r+1)*classes]
					for _, j := range nb.idx {
						out[train.Labels[j]] += math.Exp(float64(row[j]) / temp)
					}
				}
			}()
		}
		wg.Wait()
	}
	return scores, nil
}

// hostSims returns the function that writes the similarities of test rows
// [lo, lo+rows) (normalised, te) with every training row (tr) into out, by
// gonum's float32 GEMM on the host, split among the CPUs.
func hostSims(tr, te []float32, n, d int) func(lo, rows int, out []float32) error {
	return func(lo, rows int, out []float32) error {
		a := blas32.General{Rows: rows, Cols: d, Stride: d, Data: te[lo*d : (lo+rows)*d]}
		b := blas32.General{Rows: n, Cols: d, Stride: d, Data: tr}
		var wg sync.WaitGroup
		workers := max(1, runtime.GOMAXPROCS(0))
		per := (rows + workers - 1) / workers
		for r0 := 0; r0 < rows; r0 += per {
			r1 := min(rows, r0+per)
			wg.Add(1)
			go func() {
				defer wg.Done()
				sub := blas32.General{Rows: r1 - r0, Cols: d, Stride: d, Data: a.Data[r0*d : r1*d]}
				c := blas32.General{Rows: r1 - r0, Cols: n, Stride: n, Data: out[r0*n : r1*n]}
				blas32.Gemm(blas.NoTrans, blas.Trans, 1, sub, b, 0, c)
			}()
		}
		wg.Wait()
		return nil
	}
}

// deviceSims holds the normalised training rows on a device and computes
// blocks of similarities there.
type deviceSims struct {
	dev  *vk.Device
	tr   *layers.Tensor
	n, d int
}

func newDeviceSims(ctx context.Context, dev *vk.Device, tr []float32, n, d int) (*deviceSims, error) {
	t, err := layers.FromHost(ctx, dev, tr, n, d)
	if err != nil {
		return nil, fmt.Errorf("kNN: training features on the device: %w", err)
	}
	return &deviceSims{dev: dev, tr: t, n: n, d: d}, nil
}

func (s *deviceSims) release() { s.tr.Release() }

// block writes te (rows x d) times the training rows transposed into out.
func (s *deviceSims) block(ctx context.Context, te []float32, rows int, out []float32) error {
	st, err := s.dev.NewStream()
	if err != nil {
		return err
	}
	defer st.Close()
	a, err := layers.FromHost(ctx, s.dev, te, rows, s.d)
	if err != nil {
		return err
	}
	defer a.Release()
	c, err := layers.New(s.dev, rows, s.n)
	if err != nil {
		return err
	}
	defer c.Release()
	if err := layers.Gemm(st, 1, a, false, s.tr, true, 0, c); err != nil {
		return fmt.Errorf("kNN similarities: %w", err)
	}
	if err := st.Run(ctx); err != nil {
		return err
	}
	got, err := c.Download(ctx)
	if err != nil {
		return err
	}
	copy(out, got)
	return nil
}

// KNN evaluates the kNN classifier of train on test (on dev, or on the host
// with dev nil) and returns its top-1 and top-5 accuracy in percent.
func KNN(ctx context.Context, dev *vk.Device, train, test *Features, k int, temp float64) (top1, top5 float64, err error) {
	scores, err := KNNScores(ctx, dev, train, test, k, temp)
	if err != nil {
		return 0, 0, err
	}
	top1, top5 = TopK(scores, train.Classes, test.Labels)
	return top1, top5, nil
}

// TopK returns the top-1 and top-5 accuracy in percent of class scores
// (len(labels) rows of classes values): a row counts for top-k when its
// label is among its k highest scores, ties going to the lower class index.
// With fewer than five classes top-5 is 100.
func TopK[T float32 | float64](scores []T, classes int, labels []int) (top1, top5 float64) {
	if len(labels) == 0 {
		return 0, 0
	}
	var hit1, hit5 int
	for i, l := range labels {
		row := scores[i*classes : (i+1)*classes]
		// The rank of the label: classes scoring higher, or as high with a
		// lower index.
		rank := 0
		for c, v := range row {
			if v > row[l] || (v == row[l] && c < l) {
				rank++
			}
		}
		if rank == 0 {
			hit1++
		}
		if rank < 5 {
			hit5++
		}
	}
	n := float64(len(labels))
	return 100 * float64(hit1) / n, 100 * float64(hit5) / n
}

// normalizedRows returns the rows of f scaled to unit L2 norm (a zero row
// stays zero), computed in float64 and stored as float32.
func normalizedRows(f *Features) []float32 {
	out := make([]float32, len(f.X))
	for i := range f.N {
		row := f.Row(i)
		var ss float64
		for _, v := range row {
			ss += float64(v) * float64(v)
		}
		if ss == 0 {
			continue
		}
		inv := 1 / math.Sqrt(ss)
		for j, v := range row {
			out[i*f.D+j] = float32(float64(v) * inv)
		}
	}
	return out
}

// neighbours selects the k largest similarities of a row with a min-heap,
// ordered so that the root is the neighbour to drop first: the smallest
// similarity, and among equals the later row.
type neighbours struct {
	idx  []int
	sims []float32
}

func (h *neighbours) Len() int { return len(h.idx) }
func (h *neighbours) Less(a, b int) bool {
	sa, sb := h.sims[h.idx[a]], h.sims[h.idx[b]]
	return sa < sb || (sa == sb && h.idx[a] > h.idx[b])
}
func (h *neighbours) Swap(a, b int) { h.idx[a], h.idx[b] = h.idx[b], h.idx[a] }
func (h *neighbours) Push(x any)    { h.idx = append(h.idx, x.(int)) }
func (h *neighbours) Pop() any {
	x := h.idx[len(h.idx)-1]
	h.idx = h.idx[:len(h.idx)-1]
	return x
}

// top leaves the indices of the k most similar rows in h.idx (in heap
// order).
func (h *neighbours) top(sims []float32, k int) {
	h.sims = sims
	h.idx = h.idx[:0]
	for j := range k {
		h.idx = append(h.idx, j)
	}
	heap.Init(h)
	for j := k; j < len(sims); j++ {
		root := h.idx[0]
		if s := sims[j]; s > sims[root] {
			h.idx[0] = j
			heap.Fix(h, 0)
		}
	}
}
