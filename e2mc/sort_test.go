package e2mc

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"sort"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// TestSortColumns checks the batched column sort and its permutation against
// a stable sort on the CPU, for sizes that fit one shared-memory block and
// sizes that take the multi-pass path, with ties.
func TestSortColumns(t *testing.T) {
	dev := vktest.Device(t)
	for _, sh := range [][2]int{{1, 3}, {7, 5}, {256, 3}, {1000, 2}, {5003, 3}} {
		n, d := sh[0], sh[1]
		t.Run(fmt.Sprintf("%dx%d", n, d), func(t *testing.T) {
			z := caseInput(torchCase{n: n, d: d, ties: true})
			zt := toDevice(t, dev, z, n, d)
			npad := 1 << bits.Len32(uint32(n-1))
			keys, rows := newTensor(t, dev, d, npad), newTensor(t, dev, d, npad)
			s := newStream(t, dev)
			if err := SortColumns(s, zt, keys, rows); err != nil {
				t.Fatal(err)
			}
			if err := s.Run(context.Background()); err != nil {
				t.Fatal(err)
			}
			gotK, _ := keys.Download(context.Background())
			gotR, _ := rows.Download(context.Background())
			for j := 0; j < d; j++ {
				perm := make([]int, n)
				for i := range perm {
					perm[i] = i
				}
				sort.SliceStable(perm, func(a, b int) bool { return z[perm[a]*d+j] < z[perm[b]*d+j] })
				for i := 0; i < npad; i++ {
					k, r := gotK[j*npad+i], math.Float32bits(gotR[j*npad+i])
					if i >= n {
						if !math.IsInf(float64(k), 1) {
							t.Fatalf("column %d padding %d = %v, want +Inf", j, i, k)
						}
						continue
					}
					if int(r) != perm[i] || k != z[perm[i]*d+j] {
						t.Fatalf("column %d position %d: (%v, row %d), want (%v, row %d)", j, i, k, r, z[perm[i]*d+j], perm[i])
					}
				}
			}
		})
	}
}
