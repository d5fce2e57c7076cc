// Package vktest gives tests of every package one shared Vulkan device and
// fails the test binary if the validation layer reported anything.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { vktest.Main(m) }
//
// E2MCVK_TEST_DEVICE picks the device index (default 0); E2MCVK_VALIDATE=1
// turns the validation layer on.
package vktest

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
)

// The shared instance of a test binary: opened by the first test that needs
// a device, closed by Main after the last.
var (
	mu      sync.Mutex
	inst    *vk.Instance
	devs    = map[int]*vk.Device{}
	openErr error
)

// Main runs the tests, closes the devices, and exits non-zero if any
// validation message was reported during the run.
func Main(m *testing.M) {
	code := m.Run()
	mu.Lock()
	if inst != nil {
		inst.Close()
		if n := inst.ValidationMessages(); n > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: the Vulkan validation layer reported %d messages (above)\n", n)
			code = 1
		}
	}
	mu.Unlock()
	os.Exit(code)
}

// Instance returns the shared instance, failing the test if Vulkan is absent.
func Instance(t testing.TB) *vk.Instance {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if inst == nil && openErr == nil {
		inst, openErr = vk.NewInstance()
	}
	if openErr != nil {
		t.Fatalf("vulkan: %v", openErr)
	}
	return inst
}

// Device returns the shared test device.
func Device(t testing.TB) *vk.Device {
	t.Helper()
	index := 0
	if s := os.Getenv("E2MCVK_TEST_DEVICE"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("E2MCVK_TEST_DEVICE=%q: not an index", s)
		}
		index = v
	}
	return Open(t, index, 0)
}

// Open returns logical device slot of physical device index; different slots
// of one index are distinct logical devices, as `--device 0,0` opens them.
func Open(t testing.TB, index, slot int) *vk.Device {
	t.Helper()
	in := Instance(t)
	mu.Lock()
	defer mu.Unlock()
	key := index*1000 + slot
	if d, ok := devs[key]; ok {
		return d
	}
	d, err := in.Open(index)
	if err != nil {
		t.Fatal(err)
	}
	devs[key] = d
	return d
}

// SplitDevice returns a logical device of the test device's physical device
// whose buffers are split into segments of at most limit bytes, as
// E2MCVK_MAX_BUFFER_BYTES=limit would: kernels run their segment-crossing
// path on it.
func SplitDevice(t testing.TB, limit int64) *vk.Device {
	t.Helper()
	base := Device(t)
	in := Instance(t)
	mu.Lock()
	defer mu.Unlock()
	key := -int(limit)
	if d, ok := devs[key]; ok {
		return d
	}
	old, had := os.LookupEnv("E2MCVK_MAX_BUFFER_BYTES")
	os.Setenv("E2MCVK_MAX_BUFFER_BYTES", strconv.FormatInt(limit, 10))
	d, err := in.Open(base.Info.Index)
	if had {
		os.Setenv("E2MCVK_MAX_BUFFER_BYTES", old)
	} else {
		os.Unsetenv("E2MCVK_MAX_BUFFER_BYTES")
	}
	if err != nil {
		t.Fatal(err)
	}
	devs[key] = d
	return d
}
