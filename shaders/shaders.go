// Package shaders holds the GLSL compute kernels of e2mcvk and their SPIR-V,
// compiled by glslc and embedded in the binary. One kernel per .comp file;
// GLSL shared by several kernels lives in include/. Run `go generate
// ./shaders` after editing a shader; a test fails while any .spv is stale.
package shaders

//go:generate go run ./gen

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

//go:embed spv/*.spv
var spv embed.FS

// SPIRV returns the compiled SPIR-V of kernel name (the .comp file's base name).
func SPIRV(name string) ([]byte, error) {
	b, err := spv.ReadFile("spv/" + name + ".spv")
	if err != nil {
		return nil, fmt.Errorf("no shader %q in package shaders", name)
	}
	return b, nil
}

// Names returns the names of all embedded kernels, sorted.
func Names() []string {
	entries, _ := fs.ReadDir(spv, "spv")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".spv"))
	}
	sort.Strings(names)
	return names
}
