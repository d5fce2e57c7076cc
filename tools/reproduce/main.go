// Command reproduce runs the small-scale reproduction of the E2MC paper's
// tables (issue 9): it pre-trains a small ResNet with VICReg, SwAV and
// SimSiam, continues each run for 10% more training two ways (plain
// "continued", and "+E2MC"), evaluates every checkpoint with the linear
// probe at 1%, 10% and 100% of the labels and with kNN, over several seeds,
// and writes RESULTS.md with the table, the exact commands and the time
// each took.
//
//	go run ./tools/reproduce [--setting quick|full] [--out DIR] [--results RESULTS.md] [--dry-run]
//
// Every step's output is kept in --out, and a step whose output exists is not
// run again: an interrupted reproduction resumes where it stopped.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
)

// options are the command line.
type options struct {
	Setting string   `default:"quick" enum:"smoke,quick,full" help:"quick: minutes per run on a CPU-only machine (steps, not epochs); full: epochs, for a GPU; smoke: a few steps, to check the tool itself."`
	Methods []string `default:"vicreg,swav,simsiam" help:"Methods to reproduce."`
	Seeds   int      `default:"3" help:"Evaluation seeds (label subsets and classifier initialisations)."`
	Out     string   `default:"reproduce-runs" help:"Directory for the runs, the evaluations and the log."`
	Results string   `default:"RESULTS.md" help:"Where to write the results table."`
	E2MCVK  string   `name:"e2mcvk" help:"The e2mcvk binary (default: built from this checkout into --out)."`
	Device  string   `default:"0" help:"Device(s) for training (e2mcvk train --device)."`
	DryRun  bool     `help:"Print the commands and exit."`
}

// setting is the size of a reproduction.
type setting struct {
	train      []string            // flags common to every training run
	base, more []string            // length of the pre-training and of the continuation
	eval       []string            // flags common to every evaluation
	linear     []string            // flags of the linear probes
	method     map[string][]string // flags of one method's training runs
	describe   string
}

// settings returns the sizes of reproduction by name.
func settings() map[string]setting {
	return map[string]setting{
		"smoke": {
			train: []string{"--data", "fashion-mnist:train", "--arch", "resnet18", "--width", "8", "--image-size", "32",
				"--batch-size", "16", "--log-every", "1"},
			base: []string{"--steps", "3"}, more: []string{"--steps", "1"},
			eval: []string{"--train-data", "fashion-mnist:test", "--val-data", "fashion-mnist:test", "--resize", "32",
				"--crop", "32"},
			linear:   []string{"--epochs", "2"},
			describe: "a smoke test of the tool (3 + 1 steps, width 8, evaluation on the test set itself)",
		},
		"quick": {
			train: []string{"--data", "fashion-mnist:train", "--arch", "resnet18", "--width", "8", "--image-size", "28",
				"--batch-size", "64", "--log-every", "20"},
			base: []string{"--steps", "200"}, more: []string{"--steps", "20"},
			eval: []string{"--train-data", "fashion-mnist:train", "--val-data", "fashion-mnist:test", "--resize", "0", "--crop", "0"},
			// main_swav.py freezes the prototypes for its first 313 iterations
			// (one ImageNet epoch at batch 4096): here, the first 10%.
			method: map[string][]string{"swav": {"--freeze-prototypes", "20"}},
			describe: "Fashion-MNIST (60000 training images, 10000 test, at their own 28 px), ResNet-18 of width 8 with the " +
				"small stem, batch 64; pre-training 200 steps (0.21 epochs), continuation 20 more steps (10%); SwAV's " +
				"prototypes frozen for the first 20 steps",
		},
		"full": {
			train: []string{"--data", "fashion-mnist:train", "--arch", "resnet18", "--width", "64", "--image-size", "32",
				"--batch-size", "256", "--log-every", "50"},
			base: []string{"--epochs", "100"}, more: []string{"--epochs", "110"},
			eval: []string{"--train-data", "fashion-mnist:train", "--val-data", "fashion-mnist:test", "--resize", "32", "--crop", "32"},
			describe: "Fashion-MNIST, ResNet-18 (width 64, small stem), 32 px views, batch 256; pre-training 100 epochs, " +
				"continuation to epoch 110",
		},
	}
}

// variants are the table's rows for each method.
func variants() []struct{ name, label string } {
	return []struct{ name, label string }{
		{"base", "base"},
		{"continued", "continued"},
		{"e2mc", "+E2MC"},
	}
}

// probe is a column of the table: an evaluation.
type probe struct {
	name, label string
	args        []string
}

// probes are the table's columns.
func probes() []probe {
	return []probe{
		{"linear1", "Linear 1%", []string{"linear", "--labels", "1%"}},
		{"linear10", "Linear 10%", []string{"linear", "--labels", "10%"}},
		{"linear100", "Linear 100%", []string{"linear", "--labels", "100%"}},
		{"knn", "kNN (k=200)", []string{"knn"}},
	}
}

func main() {
	var o options
	kong.Parse(&o, kong.Name("reproduce"), kong.Description("Small-scale reproduction of the E2MC paper's tables: pre-train, continue two ways, evaluate, write RESULTS.md."))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "reproduce:", err)
		os.Exit(1)
	}
}

// step is one command of the reproduction and the file that shows it done.
type step struct {
	args []string
	done string // exists once the step has finished
	json string // where the step's standard output (an eval's JSON) goes; empty for none
}

// plan lists the reproduction's commands (e2mcvk's arguments) in order.
func plan(o options, set setting) []step {
	var steps []step
	for _, m := range o.Methods {
		dir := func(v string) string { return filepath.Join(o.Out, m, v) }
		ckpt := func(v string) string { return filepath.Join(dir(v), "last.safetensors") }
		train := func(v string, extra ...string) step {
			args := append([]string{"train", "--method", m, "--out", dir(v), "--device", o.Device}, set.train...)
			args = append(args, set.method[m]...)
			return step{args: append(args, extra...), done: filepath.Join(dir(v), "done")}
		}
		steps = append(steps,
			train("base", append([]string{"--criterion", "none"}, set.base...)...),
			train("continued", append([]string{"--criterion", "none", "--from", ckpt("base")}, set.more...)...),
			train("e2mc", append([]string{"--criterion", "e2mc", "--from", ckpt("base")}, set.more...)...))
		for _, v := range variants() {
			for _, p := range probes() {
				args := append([]string{"eval"}, p.args...)
				args = append(args, "--checkpoint", ckpt(v.name), "--seeds", fmt.Sprint(o.Seeds), "--json")
				args = append(args, set.eval...)
				if p.args[0] == "linear" {
					args = append(args, set.linear...)
				}
				out := filepath.Join(dir(v.name), p.name+".json")
				steps = append(steps, step{args: args, done: out, json: out})
			}
		}
	}
	return steps
}

func run(ctx context.Context, o options) error {
	set := settings()[o.Setting]
	steps := plan(o, set)
	if o.DryRun {
		bin := o.E2MCVK
		if bin == "" {
			bin = "e2mcvk"
		}
		for _, s := range steps {
			fmt.Println(bin, strings.Join(s.args, " "))
		}
		return nil
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}
	bin := o.E2MCVK
	if bin == "" {
		bin = filepath.Join(o.Out, "e2mcvk")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/e2mcvk")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build e2mcvk (run from the repository's root, or pass --e2mcvk): %w", err)
		}
	}
	logf, err := os.OpenFile(filepath.Join(o.Out, "log.txt"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	timings := map[string]time.Duration{}
	if b, err := os.ReadFile(filepath.Join(o.Out, "timings.json")); err == nil {
		_ = json.Unmarshal(b, &timings)
	}
	for i, s := range steps {
		key := strings.Join(s.args, " ")
		if _, err := os.Stat(s.done); err == nil {
			fmt.Fprintf(os.Stderr, "[%d/%d] done before: %s\n", i+1, len(steps), key)
			continue
		}
		fmt.Fprintf(os.Stderr, "[%d/%d] %s %s\n", i+1, len(steps), bin, key)
		fmt.Fprintf(logf, "$ %s %s\n", bin, key)
		start := time.Now()
		cmd := exec.CommandContext(ctx, bin, s.args...)
		var stdout bytes.Buffer
		cmd.Stdout = io.MultiWriter(&stdout, logf)
		cmd.Stderr = io.MultiWriter(os.Stderr, logf)
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %s: %w (log in %s)", bin, key, err, logf.Name())
		}
		timings[key] = time.Since(start)
		if s.json != "" {
			if !json.Valid(bytes.TrimSpace(stdout.Bytes())) {
				return fmt.Errorf("%s %s printed no JSON object", bin, key)
			}
			if err := os.WriteFile(s.json, stdout.Bytes(), 0o644); err != nil {
				return err
			}
		} else if err := os.WriteFile(s.done, []byte(time.Now().Format(time.RFC3339)+"\n"), 0o644); err != nil {
			return err
		}
		if b, err := json.MarshalIndent(timings, "", " "); err == nil {
			_ = os.WriteFile(filepath.Join(o.Out, "timings.json"), b, 0o644)
		}
	}
	return writeResults(o, set, bin, steps, timings)
}

// result is the part of an eval's JSON the table shows.
type result struct {
	Top1    float64   `json:"top1"`
	Top1Std float64   `json:"top1_std"`
	Runs    []float64 `json:"top1_runs"`
}

func readResult(path string) (*result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(r.Runs) == 0 {
		return nil, errors.New(path + ": no per-seed values")
	}
	return &r, nil
}

func writeResults(o options, set setting, bin string, steps []step, timings map[string]time.Duration) error {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "# Small-scale reproduction of the E2MC paper's tables\n\n")
	fmt.Fprintf(&b, "Written by `go run ./tools/reproduce --setting %s` on %s (%s, %d CPUs) on %s.\n\n",
		o.Setting, host, runtime.GOARCH, runtime.NumCPU(), time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "Setting: %s. Each method is pre-trained without an added criterion (\"base\"), then continued from that "+
		"checkpoint for 10%% more training without a criterion (\"continued\") and with E2MC at the method's default "+
		"coefficients (\"+E2MC\"). Top-1 accuracy (%%) on the test set, mean ± std over %d evaluation seeds (label subsets "+
		"and classifier initialisations; the training runs themselves are one seed each). kNN is deterministic (std 0).\n\n",
		set.describe, o.Seeds)
	fmt.Fprintf(&b, "| Method | Model |")
	for _, p := range probes() {
		fmt.Fprintf(&b, " %s |", p.label)
	}
	fmt.Fprintf(&b, "\n|---|---|")
	for range probes() {
		fmt.Fprintf(&b, "---|")
	}
	b.WriteString("\n")
	for _, m := range o.Methods {
		for _, v := range variants() {
			fmt.Fprintf(&b, "| %s | %s |", m, v.label)
			for _, p := range probes() {
				r, err := readResult(filepath.Join(o.Out, m, v.name, p.name+".json"))
				if err != nil {
					return err
				}
				fmt.Fprintf(&b, " %.2f ± %.2f |", r.Top1, r.Top1Std)
			}
			b.WriteString("\n")
		}
	}
	fmt.Fprintf(&b, "\n## Commands and time taken\n\n")
	var total time.Duration
	for _, s := range steps {
		key := strings.Join(s.args, " ")
		total += timings[key]
		fmt.Fprintf(&b, "- `e2mcvk %s` — %s\n", key, timings[key].Round(time.Second))
	}
	fmt.Fprintf(&b, "\nTotal: %s.\n", total.Round(time.Second))
	if err := os.WriteFile(o.Results, []byte(b.String()), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", o.Results)
	return nil
}
