package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

func TestMain(m *testing.M) { vktest.Main(m) }

// smallFMA is a fast fma case for tests.
func smallFMA() benchCase { return fmaCase(4*fmaGroup, 8) }

// failing is a case whose preparation fails, like a kernel not written yet.
func failing() benchCase {
	return benchCase{name: "broken", shape: "1", flops: 1,
		prepare: func(context.Context, *vk.Device) (*workload, error) {
			return nil, errors.New("broken: not implemented yet")
		}}
}

// checkSchema checks one line of vkbench --json.
func checkSchema(t *testing.T, line string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("not a JSON object: %v: %s", err, line)
	}
	for _, k := range []string{"name", "shape", "device", "driver", "impl", "timer"} {
		if s, ok := m[k].(string); !ok || s == "" {
			t.Errorf("field %q = %v, want a non-empty string: %s", k, m[k], line)
		}
	}
	if s, ok := m["seconds"].(float64); !ok || s <= 0 {
		t.Errorf("seconds = %v, want > 0: %s", m["seconds"], line)
	}
	_, hasFlops := m["gflops"]
	_, hasBytes := m["gbps"]
	if !hasFlops && !hasBytes {
		t.Errorf("neither gflops nor gbps: %s", line)
	}
	for _, k := range []string{"gflops", "gbps"} {
		if v, ok := m[k]; ok {
			if f, ok := v.(float64); !ok || f <= 0 {
				t.Errorf("%s = %v, want > 0: %s", k, v, line)
			}
		}
	}
	return m
}

func TestMeasureFMA(t *testing.T) {
	d := vktest.Device(t)
	c := smallFMA()
	rs, err := measure(context.Background(), d, c, options{warmup: 1, repeat: 3})
	if err != nil {
		t.Fatal(err)
	}
	r := rs[0]
	var buf bytes.Buffer
	if err := writeJSON(&buf, r); err != nil {
		t.Fatal(err)
	}
	m := checkSchema(t, strings.TrimSpace(buf.String()))
	if m["name"] != "fma" || m["shape"] != c.shape || m["device"] != d.Info.Name {
		t.Errorf("wrong identity: %s", buf.String())
	}
	if want := c.flops / r.Seconds / 1e9; r.GFLOPS != want {
		t.Errorf("gflops = %v, want %v", r.GFLOPS, want)
	}
}

// TestKernelCases runs small cases of every family; the e2mc ones also
// report their parts as rows of their own.
func TestKernelCases(t *testing.T) {
	d := vktest.Device(t)
	cases := []benchCase{gemmCase(33, 17, 9), copyCase(31, 65), e2mcCase(67, 13, false), e2mcCase(67, 13, true)}
	for _, c := range cases {
		rs, err := measure(context.Background(), d, c, options{warmup: 1, repeat: 1})
		if err != nil {
			t.Fatalf("%s: %v", c.id(), err)
		}
		if len(rs) != 1+len(c.parts) {
			t.Fatalf("%s: %d rows for %d parts", c.id(), len(rs), len(c.parts))
		}
		for _, r := range rs {
			var buf bytes.Buffer
			if err := writeJSON(&buf, r); err != nil {
				t.Fatal(err)
			}
			checkSchema(t, strings.TrimSpace(buf.String()))
			if r.Seconds > rs[0].Seconds*1.0001 {
				t.Errorf("%s: part %s takes longer (%g s) than the whole (%g s)", c.id(), r.Name, r.Seconds, rs[0].Seconds)
			}
		}
	}
}

// TestRun runs the command line in-process with a case that fails between two
// that work: the others still run, and the exit status is 1.
func TestRun(t *testing.T) {
	device := os.Getenv("E2MCVK_TEST_DEVICE")
	if device == "" {
		device = "0"
	}
	cases := []benchCase{smallFMA(), failing(), fmaCase(2*fmaGroup, 4)}
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"--device", device, "--repeat", "2", "--json"}, &out, &errOut, cases)
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d JSON lines, want 2:\n%s", len(lines), out.String())
	}
	for _, l := range lines {
		checkSchema(t, l)
	}
	if !strings.Contains(errOut.String(), "vkbench: broken 1: broken: not implemented yet") ||
		!strings.Contains(errOut.String(), "1 of 3 cases failed") {
		t.Errorf("stderr does not report the failed case:\n%s", errOut.String())
	}

	out.Reset()
	errOut.Reset()
	code = run(context.Background(), []string{"--device", device, "--repeat", "1", "--filter", "^fma/"}, &out, &errOut, cases)
	if code != 0 || errOut.Len() != 0 {
		t.Errorf("table: exit status %d, stderr %q", code, errOut.String())
	}
	if rows := strings.Count(out.String(), "\nfma "); rows != 2 || !strings.Contains(out.String(), "GFLOP/S") {
		t.Errorf("table has %d fma rows, want 2:\n%s", rows, out.String())
	}
}

// TestProfile checks --profile: each case's kernels with their device time
// on stderr (the fma case is one kernel, so it takes the whole case's time,
// short of the two bracketing timestamps), and in the JSON output.
func TestProfile(t *testing.T) {
	device := os.Getenv("E2MCVK_TEST_DEVICE")
	if device == "" {
		device = "0"
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--device", device, "--repeat", "2", "--profile"}, &out, &errOut, []benchCase{smallFMA()}); code != 0 {
		t.Fatalf("exit status %d: %s", code, errOut.String())
	}
	if !strings.Contains(errOut.String(), "device time per kernel") || !strings.Contains(errOut.String(), "fma_peak[") {
		t.Errorf("no kernel profile on stderr:\n%s", errOut.String())
	}
	out.Reset()
	errOut.Reset()
	if code := run(context.Background(), []string{"--device", device, "--repeat", "2", "--profile", "--json"}, &out, &errOut, []benchCase{smallFMA()}); code != 0 {
		t.Fatalf("exit status %d: %s", code, errOut.String())
	}
	var r result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Kernels) != 1 {
		t.Fatalf("kernels %v, want fma_peak alone", r.Kernels)
	}
	for k, sec := range r.Kernels {
		if !strings.HasPrefix(k, "fma_peak[") || sec <= 0 || sec > r.Seconds {
			t.Errorf("kernel %s: %g s of a case of %g s", k, sec, r.Seconds)
		}
	}
}

func TestCommandLineErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--filter", "("}, 2, "--filter"},
		{[]string{"--filter", "no-such-case"}, 2, "no case matches"},
		{[]string{"--no-such-flag"}, 2, "unknown flag"},
		{[]string{"--device", "99"}, 1, "device index 99 out of range"},
		{[]string{"--repeat", "0"}, 1, "--repeat"},
	} {
		var out, errOut bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errOut, []benchCase{smallFMA()})
		if code != tc.code || !strings.HasPrefix(errOut.String(), "vkbench: ") || !strings.Contains(errOut.String(), tc.msg) {
			t.Errorf("%v: exit status %d (want %d), stderr %q (want %q)", tc.args, code, tc.code, errOut.String(), tc.msg)
		}
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &errOut, nil); code != 0 || !strings.Contains(out.String(), "Usage: vkbench") {
		t.Errorf("--help: exit status %d, stdout %q", code, out.String())
	}
}

func TestCaseTable(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range allCases() {
		if c.name == "" || c.shape == "" || c.prepare == nil || (c.flops <= 0 && c.bytes <= 0) {
			t.Errorf("incomplete case %+v", c)
		}
		if seen[c.id()] {
			t.Errorf("case %s twice", c.id())
		}
		seen[c.id()] = true
	}
	for _, id := range []string{"gemm/256x256x256", "gemm/1024x1024x1024", "gemm/2048x2048x2048", "gemm/3136x256x64", "gemm/8x8192x8192", "copy/4096x4096"} {
		if !seen[id] {
			t.Errorf("no case %s", id)
		}
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--list", "--filter", "^gemm/"}, &out, &errOut, allCases()); code != 0 || strings.Count(out.String(), "\n") != len(gemmCases()) {
		t.Errorf("--list --filter ^gemm/: status %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
}

func TestMedian(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median of 3 = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median of 4 = %v", m)
	}
}
