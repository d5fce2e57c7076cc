// Command vkbench times e2mcvk's Vulkan kernels on one device with GPU
// timestamp queries and prints one row per case.
//
// Usage:
//
//	go run ./tools/vkbench [--device N] [--filter REGEX] [--repeat R] [--json]
//
// Each case is prepared once, run untimed (--warmup times), then run --repeat
// times, each run in a submission of its own between two timestamps; the
// median is reported with the GFLOP/s and/or GB/s it gives (1 GB = 1e9 bytes,
// reads plus writes). With --json each case is one line of JSON:
//
//	{"name":"gemm","shape":"1024x1024x1024","seconds":0.05,"gflops":42.9,
//	 "device":"...","driver":"...","impl":"e2mcvk","timer":"gpu","repeats":7}
//
// tools/vkbench/torch_bench.py times the same cases with PyTorch in the same
// schema, and tools/vkbench/compare.sh prints the two side by side.
//
// A case that fails (a kernel not implemented yet, say) is reported on
// standard error and the others still run; the exit status is then 1.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"

	"github.com/alecthomas/kong"

	"github.com/e2mcvk/e2mcvk/vk"
)

// allCases is every benchmark case, in the order they run. Each kernel
// family keeps its cases in a cases_<family>.go file of its own.
func allCases() []benchCase {
	var cs []benchCase
	cs = append(cs, gemmCases()...)
	cs = append(cs, copyCases()...)
	cs = append(cs, fmaCases()...)
	cs = append(cs, e2mcCases()...)
	cs = append(cs, convCases()...)
	cs = append(cs, bnCases()...)
	cs = append(cs, resnetCases()...)
	return cs
}

// cli is the command line.
type cli struct {
	Device  int    `short:"d" default:"0" help:"Index of the Vulkan device to use (see 'e2mcvk devices')."`
	Filter  string `short:"f" placeholder:"REGEX" help:"Run only the cases whose name/shape (e.g. gemm/1024x1024x1024) matches REGEX."`
	Repeat  int    `short:"r" default:"7" help:"Timed runs per case; the median is reported."`
	Warmup  int    `default:"1" help:"Untimed runs per case before the timed ones."`
	JSON    bool   `name:"json" help:"Print one JSON object per case and line instead of a table."`
	List    bool   `help:"List the cases (name/shape) that would run, and exit."`
	Profile bool   `help:"Also print each case's device time per kernel (median over the timed runs; each kernel is timed on its own, so the case runs slower)."`
}

const description = `Times e2mcvk's Vulkan kernels on one device with GPU timestamp queries
(warm-up, then --repeat runs; the median) and prints one row per case with its
GFLOP/s and/or GB/s (1 GB = 1e9 bytes read plus written).

Cases: gemm (layers.Gemm, MxNxK), copy (layers.Copy, rows x cols of float32),
fma (shaders/fma_peak.comp: invocations x iterations x FMAs per iteration).
tools/vkbench/compare.sh runs PyTorch on the same cases beside it.`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, allCases())
	stop()
	os.Exit(code)
}

// exitRequest is what kong's exit function panics with (after --help).
type exitRequest int

// run parses args and benchmarks cases, returning the exit status: 0 when
// every selected case ran, 1 when any failed, 2 for a bad command line.
// Errors are reported as one line each, "vkbench: <message>".
func run(ctx context.Context, args []string, stdout, stderr io.Writer, cases []benchCase) (code int) {
	defer func() {
		if r := recover(); r != nil {
			c, ok := r.(exitRequest)
			if !ok {
				panic(r)
			}
			code = int(c)
		}
	}()
	var c cli
	parser, err := kong.New(&c,
		kong.Name("vkbench"),
		kong.Description(description),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { panic(exitRequest(code)) }),
	)
	if err != nil {
		fmt.Fprintf(stderr, "vkbench: %v\n", err)
		return 2
	}
	if _, err := parser.Parse(args); err != nil {
		fmt.Fprintf(stderr, "vkbench: %v (see vkbench --help)\n", err)
		return 2
	}
	cases, err = selectCases(cases, c.Filter)
	if err != nil {
		fmt.Fprintf(stderr, "vkbench: %v\n", err)
		return 2
	}
	if c.List {
		for _, bc := range cases {
			fmt.Fprintln(stdout, bc.id())
		}
		return 0
	}
	if err := c.bench(ctx, stdout, stderr, cases); err != nil {
		fmt.Fprintf(stderr, "vkbench: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		return 1
	}
	return 0
}

// selectCases keeps the cases whose id matches the regular expression filter
// (all of them for an empty filter).
func selectCases(cases []benchCase, filter string) ([]benchCase, error) {
	re, err := regexp.Compile(filter)
	if err != nil {
		return nil, fmt.Errorf("--filter: %w", err)
	}
	var out []benchCase
	for _, bc := range cases {
		if re.MatchString(bc.id()) {
			out = append(out, bc)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no case matches --filter %q", filter)
	}
	return out, nil
}

// bench opens the device and measures every case, reporting failed cases on
// stderr as it goes.
func (c *cli) bench(ctx context.Context, stdout, stderr io.Writer, cases []benchCase) error {
	if c.Repeat < 1 || c.Warmup < 0 {
		return fmt.Errorf("--repeat must be at least 1 and --warmup at least 0")
	}
	in, err := vk.NewInstance()
	if err != nil {
		return err
	}
	defer in.Close()
	d, err := in.Open(c.Device)
	if err != nil {
		return err
	}
	if !c.JSON {
		fmt.Fprintf(stdout, "device %d: %s, %s; median of %d runs\n", c.Device, d.Info.Name, driverString(d.Info), c.Repeat)
		writeHeader(stdout)
	}
	failed := 0
	for _, bc := range cases {
		if err := ctx.Err(); err != nil {
			return err
		}
		rs, err := measure(ctx, d, bc, options{warmup: c.Warmup, repeat: c.Repeat, profile: c.Profile})
		if err != nil {
			failed++
			fmt.Fprintf(stderr, "vkbench: %s %s: %s\n", bc.name, bc.shape, strings.ReplaceAll(err.Error(), "\n", "; "))
			continue
		}
		for _, r := range rs {
			if c.Profile && len(r.Kernels) > 0 && !c.JSON {
				writeProfile(stderr, r)
			}
			if c.JSON {
				if err := writeJSON(stdout, r); err != nil {
					return err
				}
			} else {
				writeRow(stdout, r)
			}
		}
	}
	if n := in.ValidationMessages(); n > 0 {
		return fmt.Errorf("the Vulkan validation layer reported %d messages (above)", n)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d cases failed", failed, len(cases))
	}
	return nil
}
