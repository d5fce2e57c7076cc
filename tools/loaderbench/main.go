// Command loaderbench measures the training pipeline's throughput:
// VICReg's two 224-pixel views of an image folder, in batches, on a number
// of worker goroutines. torch_loader.py times PyTorch's DataLoader with
// VICReg's own transforms on the same folder.
//
//	go run ./tools/loaderbench --data DIR [--batch 64] [--workers N] [--batches 10] [--cpuprofile FILE]
package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/alecthomas/kong"

	"github.com/e2mcvk/e2mcvk/loader"
)

// options are loaderbench's flags.
type options struct {
	Data       string `required:"" placeholder:"DIR" help:"Image folder (DIR/<class>/<image>)."`
	Batch      int    `default:"64" help:"Batch size."`
	Workers    int    `default:"0" help:"Decoding goroutines (0: one a CPU)."`
	Batches    int    `default:"10" help:"Batches to time (at most an epoch's)."`
	Method     string `default:"vicreg" enum:"vicreg,simsiam,swav" help:"Views: vicreg, simsiam or swav."`
	CPUProfile string `name:"cpuprofile" placeholder:"FILE" help:"Write a CPU profile of the timed run to FILE."`
}

func main() {
	var o options
	kong.Parse(&o, kong.Name("loaderbench"), kong.Description("Times the training pipeline: the views of an image folder in batches."))
	if o.Workers == 0 {
		o.Workers = runtime.NumCPU()
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "loaderbench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	ds, err := loader.OpenImageFolder(o.Data)
	if err != nil {
		return err
	}
	views, err := loader.Views(o.Method)
	if err != nil {
		return err
	}
	p := &loader.Pipeline{Data: ds, Views: views, BatchSize: o.Batch, Seed: 1, Workers: o.Workers, Prefetch: 2, Log: os.Stderr}
	it, err := p.Epoch(context.Background(), 0, 0)
	if err != nil {
		return err
	}
	defer it.Close()
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
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
	for n < o.Batches && it.Next() {
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
	cores := min(o.Workers, runtime.NumCPU())
	total := float64(n*o.Batch) / end.Sub(start).Seconds()
	steady := float64((n-1)*o.Batch) / end.Sub(first).Seconds()
	fmt.Printf("go loader: %s views, %d images, batch %d, %d batches, %d workers on %d CPUs\n", o.Method, ds.Len(), o.Batch, n, o.Workers, runtime.NumCPU())
	fmt.Printf("  all batches: %.1f images/s (%.1f images/s per core)\n", total, total/float64(cores))
	fmt.Printf("  after the first: %.1f images/s (%.1f images/s per core)\n", steady, steady/float64(cores))
	fmt.Printf("  skipped: %d\n", it.Skipped())
	return nil
}
