package eval

import (
	"cmp"
	"container/heap"
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
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
// similar neighbours the earlier training row wins.
func KNNScores(ctx context.Context, train, test *Features, k int, temp float64) ([]float64, error) {
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
	classes := train.Classes
	scores := make([]float64, test.N*classes)
	const block = 64
	blocks := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range max(1, runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sims := make([]float32, block*train.N)
			nb := &neighbours{}
			for lo := range blocks {
				if err := ctx.Err(); err != nil {
					mu.Lock()
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
					continue
				}
				rows := min(block, test.N-lo)
				c := blas32.General{Rows: rows, Cols: train.N, Stride: train.N, Data: sims[:rows*train.N]}
				a := blas32.General{Rows: rows, Cols: test.D, Stride: test.D, Data: te[lo*test.D : (lo+rows)*test.D]}
				b := blas32.General{Rows: train.N, Cols: train.D, Stride: train.D, Data: tr}
				blas32.Gemm(blas.NoTrans, blas.Trans, 1, a, b, 0, c)
				for r := range rows {
					nb.top(sims[r*train.N:(r+1)*train.N], k)
					out := scores[(lo+r)*classes : (lo+r+1)*classes]
					for _, j := range nb.idx {
						out[train.Labels[j]] += math.Exp(float64(sims[r*train.N+j]) / temp)
					}
				}
			}
		}()
	}
	for lo := 0; lo < test.N; lo += block {
		blocks <- lo
	}
	close(blocks)
	wg.Wait()
	return scores, firstErr
}

// KNN evaluates the kNN classifier of train on test and returns its top-1
// and top-5 accuracy in percent.
func KNN(ctx context.Context, train, test *Features, k int, temp float64) (top1, top5 float64, err error) {
	scores, err := KNNScores(ctx, train, test, k, temp)
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
