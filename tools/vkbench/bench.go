package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/e2mcvk/e2mcvk/vk"
)

// benchCase is one row of the benchmark: one kernel at one shape. Each
// cases_*.go file contributes the cases of one kernel family.
type benchCase struct {
	name  string  // kernel family, e.g. "gemm"
	shape string  // dimensions, e.g. "1024x1024x1024"
	flops float64 // floating-point operations of one run; 0 if not counted
	bytes float64 // bytes read plus written by one run; 0 if not counted
	// prepare allocates and initialises the operands on d. Its workload
	// records one run of the kernel; it is recorded and run many times.
	prepare func(ctx context.Context, d *vk.Device) (*workload, error)
	// parts are extra rows timed inside the same runs: each sums the
	// intervals that end at the stream marks (vk.Stream.Mark) it names.
	parts []part
}

// part is a row of a case's phases, e.g. the sort inside a whole criterion.
type part struct {
	name   string   // row name, e.g. "e2mc_sort"
	labels []string // marks whose intervals it sums
}

// id is how --filter sees a case: "name/shape".
func (c benchCase) id() string { return c.name + "/" + c.shape }

// workload is a prepared case: its operands live on the device until release.
type workload struct {
	record  func(s *vk.Stream) error // records one run
	release func()                   // frees the operands; may be nil
}

// result is one measured case; its JSON form is one line of `vkbench --json`
// and the schema torch_bench.py writes too.
type result struct {
	Name    string  `json:"name"`
	Shape   string  `json:"shape"`
	Seconds float64 `json:"seconds"`          // median device time of one run
	GFLOPS  float64 `json:"gflops,omitempty"` // 1e9 floating-point operations per second
	GBps    float64 `json:"gbps,omitempty"`   // 1e9 bytes read plus written per second
	Device  string  `json:"device"`
	Driver  string  `json:"driver"`
	Impl    string  `json:"impl"`    // "e2mcvk"
	Timer   string  `json:"timer"`   // "gpu" (timestamp queries) or "host" (wall clock)
	Repeats int     `json:"repeats"` // timed runs the median is taken over
	// Kernels is, with --profile, each kernel's median device time in
	// seconds, keyed by shader name and specialization.
	Kernels map[string]float64 `json:"kernels,omitempty"`
	// Dispatches and Barriers count, with --profile, what one run
	// records: on GPUs every barrier leaves the device idle while the
	// work before it drains.
	Dispatches int `json:"dispatches,omitempty"`
	Barriers   int `json:"barriers,omitempty"`
	// Calls is, with --profile, each kernel's dispatches per run.
	Calls map[string]int `json:"calls,omitempty"`
}

// runStats is what one recorded run holds: its dispatches and barriers, and
// the dispatches of each timed kernel.
type runStats struct {
	dispatches, barriers int
	calls                map[string]int
}

// options are the measurement settings.
type options struct {
	warmup  int  // untimed runs first (pipeline builds, caches, clocks)
	repeat  int  // timed runs; the median is reported
	profile bool // time every kernel (Stream.TimeDispatches)
}

// measure prepares c on d and times it: opts.warmup untimed runs, then
// opts.repeat runs, each in a submission of its own between two timestamps.
// Devices without timestamp queries on their compute queue are timed with the
// host clock around the submission, which includes its overhead.
func measure(ctx context.Context, d *vk.Device, c benchCase, opts options) ([]result, error) {
	if opts.repeat < 1 {
		return nil, errors.New("repeat must be at least 1")
	}
	w, err := c.prepare(ctx, d)
	if err != nil {
		return nil, err
	}
	if w.release != nil {
		defer w.release()
	}
	s, err := d.NewStream()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	timer := "gpu"
	if s.EnableTimestamps() != nil {
		if len(c.parts) > 0 || opts.profile {
			return nil, fmt.Errorf("%s has no timestamps: its parts or kernels cannot be timed", d.Info.Name)
		}
		timer = "host"
	}
	if opts.profile {
		if err := s.TimeDispatches(true); err != nil {
			return nil, err
		}
	}
	for range opts.warmup {
		if err := w.record(s); err != nil {
			return nil, err
		}
		if err := s.Run(ctx); err != nil {
			return nil, fmt.Errorf("warm-up run: %w", err)
		}
	}
	times := make([][]float64, 1+len(c.parts)) // the whole, then each part
	kernels := map[string][]float64{}
	var stats runStats
	for range opts.repeat {
		total, byLabel, err := timeRun(ctx, s, w, timer == "gpu", &stats)
		if err != nil {
			return nil, err
		}
		times[0] = append(times[0], total)
		if opts.profile {
			for l, t := range byLabel {
				if l != "start" && l != "end" {
					kernels[l] = append(kernels[l], t)
				}
			}
		}
		for i, p := range c.parts {
			var sum float64
			for _, l := range p.labels {
				sum += byLabel[l]
			}
			times[i+1] = append(times[i+1], sum)
		}
	}
	r := result{
		Name:    c.name,
		Shape:   c.shape,
		Seconds: median(times[0]),
		Device:  d.Info.Name,
		Driver:  driverString(d.Info),
		Impl:    "e2mcvk",
		Timer:   timer,
		Repeats: opts.repeat,
	}
	if r.Seconds <= 0 {
		return nil, fmt.Errorf("timer reported %g s", r.Seconds)
	}
	if c.flops > 0 {
		r.GFLOPS = c.flops / r.Seconds / 1e9
	}
	if opts.profile {
		r.Dispatches, r.Barriers, r.Calls = stats.dispatches, stats.barriers, stats.calls
	}
	if len(kernels) > 0 {
		r.Kernels = map[string]float64{}
		for l, ts := range kernels {
			r.Kernels[l] = median(ts)
		}
	}
	if c.bytes > 0 {
		r.GBps = c.bytes / r.Seconds / 1e9
	}
	out := []result{r}
	if opts.profile {
		return out, nil // the kernels' timestamps cut the parts' intervals
	}
	for i, p := range c.parts {
		pr := r
		pr.Name, pr.Seconds = p.name, median(times[i+1])
		if pr.Seconds <= 0 {
			return nil, fmt.Errorf("part %s: timer reported %g s", p.name, pr.Seconds)
		}
		pr.GFLOPS, pr.GBps = c.flops/pr.Seconds/1e9, c.bytes/pr.Seconds/1e9
		out = append(out, pr)
	}
	return out, nil
}

// timeRun records and runs one run of w, returning its duration and, with
// GPU timestamps, the time of each interval that ends at a labelled mark;
// stats receives the run's counts.
func timeRun(ctx context.Context, s *vk.Stream, w *workload, gpu bool, stats *runStats) (float64, map[string]float64, error) {
	if gpu {
		if err := s.Mark("start"); err != nil {
			return 0, nil, err
		}
	}
	if err := w.record(s); err != nil {
		return 0, nil, err
	}
	stats.dispatches, stats.barriers = s.Stats()
	if !gpu {
		start := time.Now()
		if err := s.Run(ctx); err != nil {
			return 0, nil, err
		}
		return time.Since(start).Seconds(), nil, nil
	}
	if err := s.Mark("end"); err != nil {
		return 0, nil, err
	}
	if err := s.Run(ctx); err != nil {
		return 0, nil, err
	}
	var total float64
	byLabel := map[string]float64{}
	calls := map[string]int{}
	for _, t := range s.Timings() {
		total += t.Seconds
		byLabel[t.Label] += t.Seconds
		calls[t.Label]++
	}
	stats.calls = calls
	return total, byLabel, nil
}

// median returns the median of xs (the mean of the middle two for an even
// count); xs is reordered.
func median(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// driverString is the driver's name and version, e.g.
// "llvmpipe Mesa 22.3.6 (LLVM 15.0.6)".
func driverString(info vk.DeviceInfo) string {
	if info.DriverVersion == "" {
		return info.Driver
	}
	return info.Driver + " " + info.DriverVersion
}

// writeJSON writes r as one line of JSON.
func writeJSON(w io.Writer, r result) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// tableHeader and writeRow print the human-readable table one row at a time,
// so that long runs show progress.
const rowFormat = "%-13s %-18s %12s %10s %10s\n"

func writeHeader(w io.Writer) {
	fmt.Fprintf(w, rowFormat, "CASE", "SHAPE", "SECONDS", "GFLOP/S", "GB/S")
}

func writeRow(w io.Writer, r result) {
	fmt.Fprintf(w, rowFormat, r.Name, r.Shape, fmt.Sprintf("%.6f", r.Seconds), figure(r.GFLOPS), figure(r.GBps))
}

func figure(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

// writeProfile prints r's kernels, slowest first, with their share of the
// case's time.
func writeProfile(w io.Writer, r result) {
	names := make([]string, 0, len(r.Kernels))
	for k := range r.Kernels {
		names = append(names, k)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(r.Kernels[b], r.Kernels[a]) })
	fmt.Fprintf(w, "%s %s: device time per kernel (median of %d profiled runs; %d dispatches, %d barriers a run)\n",
		r.Name, r.Shape, r.Repeats, r.Dispatches, r.Barriers)
	for _, k := range names {
		fmt.Fprintf(w, "  %-36s %10.3f ms %5.1f%% %5dx\n", k, r.Kernels[k]*1e3, 100*r.Kernels[k]/r.Seconds, r.Calls[k])
	}
}
