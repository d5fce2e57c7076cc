// Command e2mcvk continues the self-supervised pre-training of image models
// with the E2MC criterion, and evaluates them, on Vulkan compute shaders.
//
// Usage:
//
//	e2mcvk <command> [flags]
//
// The commands are:
//
//	devices   list the Vulkan devices (--json for a machine-readable list)
//	version   print the version, the Go version and the Vulkan loader
//	train     (continued) pre-training with VICReg, SwAV or SimSiam + E2MC
//	eval      linear probe, kNN, fine-tuning and VOC07 SVMs of a checkpoint
//	entropy   measure an N x D .npy array of embeddings as E2MC does
//	embed     embeddings of a data set with a checkpoint's backbone
//	convert   convert a checkpoint between .pth and .safetensors
//
// Run `e2mcvk <command> --help` for a command's flags.
//
// Every error is reported as one line, "e2mcvk: <message>", on standard
// error, and the exit status is non-zero: 1 when a command fails, 2 for a
// command line that does not parse, 3 for an internal error (a bug).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"

	"github.com/e2mcvk/e2mcvk/vk"
)

// Exit statuses of the program.
const (
	exitOK       = 0
	exitFailure  = 1 // a command failed
	exitUsage    = 2 // the command line does not parse
	exitInternal = 3 // a panic: a bug in e2mcvk
)

// cli is the command line. Each command is a struct with a Run method in a
// file of its own (devices.go, version.go, ...); flags shared by every
// command, such as the device selection, are fields of cli itself.
type cli struct {
	Devices devicesCmd `cmd:"" help:"List the Vulkan devices e2mcvk can use."`
	Version versionCmd `cmd:"" help:"Print the version of e2mcvk, Go and the Vulkan loader."`
	Entropy entropyCmd `cmd:"" help:"Per-dimension m-spacing entropy, covariance loss and effective rank of an N x D .npy array."`
	Embed   embedCmd   `cmd:"" help:"Embeddings of a data set with a checkpoint's backbone or projector, as an N x D .npy array."`
	Convert convertCmd `cmd:"" help:"Convert a checkpoint between PyTorch .pth and e2mcvk .safetensors."`
	Train   trainCmd   `cmd:"" help:"Train a self-supervised model (VICReg, SwAV, SimSiam) with E2MC or another criterion, from scratch or from a checkpoint."`
	Eval    evalCmd    `cmd:"" help:"Evaluate a checkpoint: linear probe, kNN, semi-supervised fine-tuning, VOC07 SVMs."`
}

// description is the top-level help text.
const description = `e2mcvk improves pre-trained self-supervised image models (VICReg, SwAV,
SimSiam; ResNet-50) with the E2MC criterion, and evaluates them, on Vulkan
compute shaders: NVIDIA, AMD, Intel and integrated GPUs, or Mesa's lavapipe
on the CPU.

Environment: E2MCVK_VALIDATE=1 turns on the Vulkan validation layer;
E2MCVK_VULKAN_LIBRARY names the Vulkan loader to open (default
libvulkan.so.1); E2MCVK_MAX_BUFFER_BYTES caps the size of one device buffer.`

// env is what every command's Run method receives: the context that ends on
// an interrupt, and where to write. Commands write nothing to os.Stdout or
// os.Stderr directly, so that tests can run them in-process.
type env struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// exitRequest is what kong's exit function panics with (kong exits after
// printing --help); run turns it back into an exit status.
type exitRequest int

// usageError marks a command line that does not parse.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() + " (see e2mcvk --help)" }
func (e usageError) Unwrap() error { return e.err }

// run parses args, runs the chosen command and returns the exit status. It is
// the one place where errors and panics become the one-line message.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return guard(stderr, func() error { return execute(ctx, args, stdout, stderr) })
}

// guard calls fn and turns what it returns or panics with into an exit
// status, reporting errors and panics on stderr in one line each.
func guard(stderr io.Writer, fn func() error) (code int) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		if c, ok := r.(exitRequest); ok {
			code = int(c)
			return
		}
		code = exitInternal
		report(stderr, panicError(r, debug.Stack()))
	}()
	err := fn()
	if err == nil {
		return exitOK
	}
	report(stderr, err)
	if errors.As(err, new(usageError)) {
		return exitUsage
	}
	return exitFailure
}

// execute parses args and runs the command.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c cli
	parser, err := kong.New(&c,
		kong.Name("e2mcvk"),
		kong.Description(description),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { panic(exitRequest(code)) }),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
	)
	if err != nil {
		return fmt.Errorf("build the command line: %w", err) // a bug in cli's tags
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		return usageError{err}
	}
	return kctx.Run(&env{ctx: ctx, stdout: stdout, stderr: stderr})
}

// report writes err as the one line "e2mcvk: <message>".
func report(w io.Writer, err error) {
	msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
	fmt.Fprintf(w, "e2mcvk: %s\n", msg)
}

// panicError describes a recovered panic in one line. The stack, which a bug
// report needs, goes to a file whose name the message gives.
func panicError(v any, stack []byte) error {
	where := ""
	name := fmt.Sprintf("e2mcvk-crash-%s-%d.txt", time.Now().Format("20060102-150405"), os.Getpid())
	path := filepath.Join(os.TempDir(), name)
	body := fmt.Sprintf("e2mcvk %s: panic: %v\n\n%s", version(), v, stack)
	if err := os.WriteFile(path, []byte(body), 0o644); err == nil {
		where = ", details in " + path
	}
	return fmt.Errorf("internal error, this is a bug in e2mcvk (please report it%s): %v", where, v)
}

// withInstance runs fn with a Vulkan instance and closes it after. When the
// validation layer is on, messages it reported make the command fail.
func withInstance(fn func(in *vk.Instance) error) error {
	in, err := vk.NewInstance()
	if err != nil {
		return err
	}
	err = fn(in)
	in.Close()
	if n := in.ValidationMessages(); err == nil && n > 0 {
		err = fmt.Errorf("the Vulkan validation layer reported %d messages (above)", n)
	}
	return err
}
