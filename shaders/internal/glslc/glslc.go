// Package glslc compiles the kernels of package shaders with glslc. It is
// shared by `go generate ./shaders` and the test that finds stale SPIR-V.
package glslc

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Args are the flags every kernel is compiled with: Vulkan 1.1 SPIR-V
// (subgroup operations), optimised, includes from include/.
var Args = []string{"--target-env=vulkan1.1", "-O", "-Werror"}

// Compile compiles every .comp in srcDir into outDir/<name>.spv with glslc.
// It is what `go generate` runs, and what the freshness test compares with.
func Compile(srcDir, outDir string) error {
	glslc, err := exec.LookPath("glslc")
	if err != nil {
		return fmt.Errorf("glslc not found: install the glslc package (tools/setup.sh does)")
	}
	srcs, err := filepath.Glob(filepath.Join(srcDir, "*.comp"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	for _, src := range srcs {
		name := strings.TrimSuffix(filepath.Base(src), ".comp")
		args := append(append([]string{}, Args...), "-I", filepath.Join(srcDir, "include"),
			"-o", filepath.Join(outDir, name+".spv"), src)
		if out, err := exec.Command(glslc, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("compile %s: %v\n%s", src, err, out)
		}
	}
	return nil
}
