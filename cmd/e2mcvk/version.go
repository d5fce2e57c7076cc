package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/e2mcvk/e2mcvk/vk"
)

// buildVersion is the one place the version of e2mcvk is kept. Release
// builds set it with
//
//	go build -ldflags "-X main.buildVersion=v1.2.3" ./cmd/e2mcvk
//
// Left empty, the version comes from the module (go install ...@v1.2.3) or
// the VCS revision the binary was built from.
var buildVersion string

// version returns the version of this binary.
func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return "devel"
	}
	return "devel-" + rev + dirty
}

// versionCmd is `e2mcvk version`.
type versionCmd struct{}

// Help is the long help of `e2mcvk version --help`.
func (versionCmd) Help() string {
	return `Prints the version of e2mcvk, the Go toolchain that built it, and the Vulkan
loader it opens (libvulkan.so.1, or E2MCVK_VULKAN_LIBRARY). It succeeds even
when no Vulkan loader or driver is installed, and then says why.`
}

// Run prints the version lines.
func (versionCmd) Run(e *env) error {
	fmt.Fprintf(e.stdout, "e2mcvk %s\n", version())
	fmt.Fprintf(e.stdout, "go     %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	var loader string
	var ndev int
	err := withInstance(func(in *vk.Instance) error {
		loader = loadedLibrary(func(base string) bool { return strings.HasPrefix(base, "libvulkan.so") })
		ndev = len(in.Devices())
		return nil
	})
	switch {
	case err != nil:
		fmt.Fprintf(e.stdout, "vulkan unavailable: %v\n", err)
	case loader == "":
		fmt.Fprintf(e.stdout, "vulkan %s (%s)\n", requestedLoader(), plural(ndev, "device"))
	default:
		fmt.Fprintf(e.stdout, "vulkan %s (%s)\n", loader, plural(ndev, "device"))
	}
	return nil
}

// requestedLoader is the library name the vk package opens.
func requestedLoader() string {
	if lib := os.Getenv("E2MCVK_VULKAN_LIBRARY"); lib != "" {
		return lib
	}
	return "libvulkan.so.1"
}

// loadedLibrary returns the path of the first shared library mapped into this
// process whose base name match accepts, or "" where /proc/self/maps is not
// readable (outside Linux) or none matches.
func loadedLibrary(match func(base string) bool) string {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		path := strings.Join(fields[5:], " ")
		if strings.HasPrefix(path, "/") && match(filepath.Base(path)) {
			return path
		}
	}
	return ""
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
