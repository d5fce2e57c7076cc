package vk

import (
	"errors"
	"fmt"

	vulkan "github.com/vulkan-go/vulkan"
)

// ErrOutOfDeviceMemory is wrapped by every error caused by the device running
// out of memory; test for it with errors.Is.
var ErrOutOfDeviceMemory = errors.New("out of device memory")

// OutOfMemoryError reports an allocation the device could not satisfy, with
// the sizes a user needs to decide what to shrink.
type OutOfMemoryError struct {
	Device    string // device name
	Requested int64  // bytes asked for by the failing allocation
	InUse     int64  // bytes this process already holds on the device
	Budget    int64  // bytes of the device-local heap
}

func (e *OutOfMemoryError) Error() string {
	return fmt.Sprintf("out of device memory on %s: asked for %s, %s already in use of %s; use a smaller batch size",
		e.Device, FormatBytes(e.Requested), FormatBytes(e.InUse), FormatBytes(e.Budget))
}

// Unwrap lets errors.Is(err, ErrOutOfDeviceMemory) match.
func (e *OutOfMemoryError) Unwrap() error { return ErrOutOfDeviceMemory }

// resultError turns a VkResult into an error (nil for VK_SUCCESS).
func resultError(r vulkan.Result) error {
	if r == vulkan.Success {
		return nil
	}
	if r == vulkan.ErrorOutOfDeviceMemory {
		return ErrOutOfDeviceMemory
	}
	return vulkan.Error(r)
}

// FormatBytes prints a byte count with a binary unit, e.g. "1.5 GiB".
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
