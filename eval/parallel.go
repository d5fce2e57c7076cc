package eval

import (
	"context"
	"runtime"
	"sync"
)

// parallelFor calls f(k) for every k < n on one goroutine a CPU (at most n
// of them), hands out no more work once ctx ends, and returns ctx's error
// after the calls under way have returned.
func parallelFor(ctx context.Context, n int, f func(k int)) error {
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(1, min(runtime.GOMAXPROCS(0), n)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				f(k)
			}
		}()
	}
	for k := range n {
		if ctx.Err() != nil {
			break
		}
		next <- k
	}
	close(next)
	wg.Wait()
	return ctx.Err()
}
