package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// childEnv makes the test binary run the command line instead of the tests,
// so that tests can run e2mcvk in a process of its own (the Vulkan loader is
// opened once per process).
const childEnv = "E2MCVK_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		main()
	}
	vktest.Main(m)
}

// runCLI runs e2mcvk in-process.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// runChild runs e2mcvk in a child process with extra environment variables.
func runChild(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), childEnv+"=1"), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("run %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

// assertOneLineError checks the error contract: a non-zero status and
// exactly one line "e2mcvk: ..." on stderr, without a Go stack trace.
func assertOneLineError(t *testing.T, code int, stderr string) {
	t.Helper()
	if code == 0 {
		t.Errorf("exit status 0, want non-zero")
	}
	if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "e2mcvk: ") {
		t.Errorf("stderr is not one line \"e2mcvk: ...\":\n%s", stderr)
	}
	for _, bad := range []string{"goroutine", "panic", ".go:"} {
		if strings.Contains(stderr, bad) {
			t.Errorf("stderr contains %q:\n%s", bad, stderr)
		}
	}
}

func TestDevicesJSON(t *testing.T) {
	want := vktest.Instance(t).Devices()
	code, out, errOut := runCLI(t, "devices", "--json")
	if code != 0 {
		t.Fatalf("exit status %d: %s", code, errOut)
	}
	var devs []map[string]any
	if err := json.Unmarshal([]byte(out), &devs); err != nil {
		t.Fatalf("devices --json is not a JSON array of objects: %v\n%s", err, out)
	}
	if len(devs) != len(want) || len(devs) == 0 {
		t.Fatalf("%d devices listed, want %d (and at least 1)", len(devs), len(want))
	}
	numbers := []string{"index", "memory_bytes", "subgroup_size", "max_storage_buffer_range", "max_shared_memory"}
	strs := []string{"name", "type", "driver", "api_version"}
	for i, d := range devs {
		for _, k := range numbers {
			v, ok := d[k].(float64)
			if !ok {
				t.Errorf("device %d: field %q = %v, want a number", i, k, d[k])
			} else if k != "index" && v <= 0 {
				t.Errorf("device %d: field %q = %v, want > 0", i, k, v)
			}
		}
		for _, k := range strs {
			if v, ok := d[k].(string); !ok || v == "" {
				t.Errorf("device %d: field %q = %v, want a non-empty string", i, k, d[k])
			}
		}
		if d["index"] != float64(i) {
			t.Errorf("device %d has index %v", i, d["index"])
		}
		if d["name"] != want[i].Name {
			t.Errorf("device %d is named %v, want %q", i, d["name"], want[i].Name)
		}
	}
}

func TestDevicesTable(t *testing.T) {
	code, out, errOut := runCLI(t, "devices")
	if code != 0 {
		t.Fatalf("exit status %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	devs := vktest.Instance(t).Devices()
	if len(lines) != 1+len(devs) {
		t.Fatalf("%d lines, want a header and %d devices:\n%s", len(lines), len(devs), out)
	}
	for _, col := range []string{"INDEX", "NAME", "TYPE", "DRIVER", "API", "MEMORY", "SUBGROUP", "MAX STORAGE BUFFER", "MAX SHARED"} {
		if !strings.Contains(lines[0], col) {
			t.Errorf("header lacks %s: %s", col, lines[0])
		}
	}
	for i, d := range devs {
		if !strings.Contains(lines[1+i], d.Name) || !strings.Contains(lines[1+i], d.APIVersion) {
			t.Errorf("row %d does not show %s, %s: %s", i, d.Name, d.APIVersion, lines[1+i])
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, errOut := runCLI(t, "version")
	if code != 0 {
		t.Fatalf("exit status %d: %s", code, errOut)
	}
	for _, want := range []string{"e2mcvk " + version(), runtime.Version(), "vulkan ", "libvulkan"} {
		if !strings.Contains(out, want) {
			t.Errorf("version output lacks %q:\n%s", want, out)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"devices", "--help"}, {"version", "--help"}} {
		code, out, errOut := runCLI(t, args...)
		if code != 0 || errOut != "" {
			t.Errorf("%v: exit status %d, stderr %q", args, code, errOut)
		}
		if !strings.Contains(out, "Usage: e2mcvk") {
			t.Errorf("%v: no usage in help:\n%s", args, out)
		}
	}
	_, out, _ := runCLI(t, "--help")
	for _, cmd := range []string{"devices", "version"} {
		if !strings.Contains(out, cmd) {
			t.Errorf("--help does not list %s:\n%s", cmd, out)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"no-such-command"}, {"devices", "--no-such-flag"}} {
		code, out, errOut := runCLI(t, args...)
		assertOneLineError(t, code, errOut)
		if code != exitUsage {
			t.Errorf("%v: exit status %d, want %d", args, code, exitUsage)
		}
		if out != "" {
			t.Errorf("%v: wrote to stdout: %q", args, out)
		}
	}
}

// TestNoVulkanLoader runs e2mcvk where the Vulkan loader cannot be opened.
func TestNoVulkanLoader(t *testing.T) {
	env := []string{"E2MCVK_VULKAN_LIBRARY=/nonexistent/libvulkan.so.1"}
	for _, args := range [][]string{{"devices"}, {"devices", "--json"}} {
		code, out, errOut := runChild(t, env, args...)
		assertOneLineError(t, code, errOut)
		if !strings.Contains(errOut, "no Vulkan driver found") {
			t.Errorf("%v: stderr does not give the no-driver message: %s", args, errOut)
		}
		if out != "" {
			t.Errorf("%v: wrote to stdout: %q", args, out)
		}
	}
	// version still works and says why Vulkan is unavailable.
	code, out, errOut := runChild(t, env, "version")
	if code != 0 || !strings.Contains(out, "vulkan unavailable: no Vulkan driver found") {
		t.Errorf("version without a loader: status %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestChildProcess checks that the real main works end to end.
func TestChildProcess(t *testing.T) {
	code, out, errOut := runChild(t, nil, "devices", "--json")
	if code != 0 || !json.Valid([]byte(out)) {
		t.Errorf("devices --json in a child: status %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestGuard(t *testing.T) {
	var stderr bytes.Buffer
	code := guard(&stderr, func() error { panic("boom") })
	assertOneLineError(t, code, stderr.String())
	if code != exitInternal || !strings.Contains(stderr.String(), "bug") || !strings.Contains(stderr.String(), "boom") {
		t.Errorf("panic: status %d, stderr %q", code, stderr.String())
	}
	if i := strings.Index(stderr.String(), "details in "); i >= 0 {
		path := strings.TrimSpace(stderr.String()[i+len("details in "):])
		path = path[:strings.IndexByte(path, ')')]
		os.Remove(path)
	}

	stderr.Reset()
	code = guard(&stderr, func() error { return errors.New("line one\nline two") })
	assertOneLineError(t, code, stderr.String())
	if code != exitFailure || stderr.String() != "e2mcvk: line one; line two\n" {
		t.Errorf("error: status %d, stderr %q", code, stderr.String())
	}

	stderr.Reset()
	if code = guard(&stderr, func() error { panic(exitRequest(0)) }); code != 0 || stderr.Len() != 0 {
		t.Errorf("exit request: status %d, stderr %q", code, stderr.String())
	}
}
