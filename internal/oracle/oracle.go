// Package oracle runs the reference implementations the tests compare with:
// Debian's Python 3 with numpy, scipy and PyTorch (DESIGN.md section 5).
package oracle

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Python returns the path of a Python interpreter that imports every one of
// modules. Debian's /usr/bin/python3 comes first: the python3 first on PATH
// may be another interpreter without Debian's packages. When none is found
// the test is skipped, or fails under CI, where tools/setup.sh installs them.
func Python(t testing.TB, modules ...string) string {
	t.Helper()
	check := "import " + strings.Join(modules, ", ")
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		path, err := exec.LookPath(py)
		if err != nil {
			continue
		}
		if exec.Command(path, "-c", check).Run() == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("no python3 with %s in CI: tools/setup.sh installs them", strings.Join(modules, ", "))
	}
	t.Skipf("no python3 with %s: run tools/setup.sh", strings.Join(modules, ", "))
	return ""
}

// Run runs a Python script with args and returns its standard output,
// failing the test with the script's standard error on error.
func Run(t testing.TB, python, script string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(python, append([]string{"-c", script}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, stderr.String())
	}
	return out
}

// RunFile runs the Python script at path with args and returns its standard
// output, failing the test with the script's standard error on error.
func RunFile(t testing.TB, python, path string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(python, append([]string{path}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python %s: %v\n%s", path, err, stderr.String())
	}
	return out
}

// CacheDir returns a directory for the outputs of an oracle run identified by
// the given parts (script text, inputs, arguments), and whether it already
// holds them. Expensive PyTorch runs are shared this way between the plain
// and the validation-layer runs of the test suite. A producer that fails
// must remove the directory (os.RemoveAll) so a later run starts afresh.
func CacheDir(t testing.TB, parts ...[]byte) (dir string, done bool) {
	t.Helper()
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	dir = filepath.Join(base, "e2mcvk-test-oracle", hex.EncodeToString(h.Sum(nil))[:32])
	if _, err := os.Stat(filepath.Join(dir, ".done")); err == nil {
		return dir, true
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, false
}

// MarkDone records that dir holds a complete oracle output.
func MarkDone(t testing.TB, dir string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, ".done"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ReadFloat32s reads a file of raw little-endian float32 values, the form
// the oracle scripts write arrays in.
func ReadFloat32s(t testing.TB, path string) []float32 {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw)%4 != 0 {
		t.Fatalf("%s: %d bytes is not a whole number of float32 values", path, len(raw))
	}
	out := make([]float32, len(raw)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return out
}

// Cached returns the directory of the oracle output identified by parts
// (see CacheDir). On a cache miss it looks for a Python with modules, only
// then (importing PyTorch takes seconds), calls produce with that
// interpreter and the directory, and marks the output complete; a produce
// that fails the test leaves no partial output behind.
func Cached(t testing.TB, modules []string, produce func(python, dir string), parts ...[]byte) string {
	t.Helper()
	dir, done := CacheDir(t, parts...)
	if done {
		return dir
	}
	complete := false
	defer func() {
		if !complete { // also on t.Fatal and t.Skip
			os.RemoveAll(dir)
		}
	}()
	produce(Python(t, modules...), dir)
	MarkDone(t, dir)
	complete = true
	return dir
}

// ReadJSON decodes the JSON file at path (an oracle's manifest or results)
// into v.
func ReadJSON(t testing.TB, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
