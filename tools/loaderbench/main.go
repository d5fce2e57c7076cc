// Command loaderbench measures the training pipeline's throughput:
// VICReg's two 224-pixel views of an image folder, in batches, on a number
// of worker goroutines. torch_loader.py times PyTorch's DataLoader with
// VICReg's own transforms on the same folder.
//
//	go run ./tools/loaderbench --data DIR [--batch 64] [--workers N] [--batches 10] [--cpuprofile FILE]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/e2mcvk/e2mcvk/loader"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loaderbench:", err)
		os.Exit(1)
	}
}

func run() error {
	data := flag.String("data", "", "image folder (root/<class>/<image>)")
	batch := flag.Int("batch", 64, "batch size")
	workers := flag.Int("workers", runtime.NumCPU(), "decoding goroutines")
	batches := flag.Int("batches", 10, "batches to time (at most an epoch's)")
	method := flag.String("method", "vicreg", "views: vicreg, simsiam or swav")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the timed run to this file")
	flag.Parse()
	if *data == "" {
		return fmt.Errorf("--data is required")
	}
	ds, err := loader.OpenImageFolder(*data)
	if err != nil {
		return err
	}
	views, err := loader.Views(*method)
	if err != nil {
		return err
	}
	p := &loader.Pipeline{Data: ds, Views: views, BatchSize: *batch, Seed: 1, Workers: *workers, Prefetch: 2, Log: os.Stderr}
	it, err := p.Epoch(context.Background(), 0, 0)
	if err != nil {
		return err
	}
	defer it.Close()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	var first time.Time
	n := 0
	for n < *batches && it.Next() {
		n++
		if n == 1 {
			first = time.Now()
		}
	}
	end := time.Now()
	if err := it.Err(); err != nil {
		return err
	}
	if n < 2 {
		return fmt.Errorf("only %d batches: need at least 2 to time", n)
	}
	cores := min(*workers, runtime.NumCPU())
	total := float64(n**batch) / end.Sub(start).Seconds()
	steady := float64((n-1)**batch) / end.Sub(first).Seconds()
	fmt.Printf("go loader: %s views, %d images, batch %d, %d batches, %d workers on %d CPUs\n", *method, ds.Len(), *batch, n, *workers, runtime.NumCPU())
	fmt.Printf("  all batches: %.1f images/s (%.1f images/s per core)\n", total, total/float64(cores))
	fmt.Printf("  after the first: %.1f images/s (%.1f images/s per core)\n", steady, steady/float64(cores))
	fmt.Printf("  skipped: %d\n", it.Skipped())
	return nil
}
