package shaders

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/shaders/internal/glslc"
)

// TestSPIRVUpToDate recompiles every shader and compares it with the
// committed .spv, so a shader edited without `go generate ./shaders` fails.
func TestSPIRVUpToDate(t *testing.T) {
	if _, err := exec.LookPath("glslc"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("glslc is missing in CI: tools/setup.sh installs it")
		}
		t.Skip("glslc not installed")
	}
	out := t.TempDir()
	if err := glslc.Compile(".", out); err != nil {
		t.Fatal(err)
	}
	srcs, _ := filepath.Glob("*.comp")
	if len(srcs) == 0 {
		t.Fatal("no shaders found")
	}
	for _, src := range srcs {
		name := strings.TrimSuffix(src, ".comp")
		fresh, err := os.ReadFile(filepath.Join(out, name+".spv"))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := SPIRV(name)
		if err != nil {
			t.Errorf("%s.spv is not committed: run go generate ./shaders", name)
			continue
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("spv/%s.spv is stale: run go generate ./shaders", name)
		}
	}
	if got, want := len(Names()), len(srcs); got != want {
		t.Errorf("%d .spv files for %d .comp files: remove the .spv of deleted shaders", got, want)
	}
}
