// Command gen compiles the shaders of package shaders into shaders/spv; it is
// run by `go generate ./shaders` from the shaders directory.
package main

import (
	"fmt"
	"os"

	"github.com/e2mcvk/e2mcvk/shaders/internal/glslc"
)

func main() {
	if err := glslc.Compile(".", "spv"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
