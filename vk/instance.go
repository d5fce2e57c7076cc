package vk

import (
	"fmt"
	"os"
	"strings"
	"sync"

	vulkan "github.com/vulkan-go/vulkan"
)

// Instance is the explicit device registry of a process: the Vulkan instance,
// the physical devices in enumeration order (the order `vulkaninfo --summary`
// prints) and the logical devices opened from them.
type Instance struct {
	c        *cInstance
	handle   vulkan.Instance
	api      uint32
	physical []vulkan.PhysicalDevice
	infos    []DeviceInfo
	validate bool

	mu     sync.Mutex
	opened []*Device
	closed int // validation messages counted up to Close
}

// DeviceInfo describes a physical device. The JSON names are the stable
// interface of `e2mcvk devices --json`.
type DeviceInfo struct {
	Index                 int      `json:"index"`
	Name                  string   `json:"name"`
	Type                  string   `json:"type"`
	Driver                string   `json:"driver"`
	DriverVersion         string   `json:"driver_version"`
	APIVersion            string   `json:"api_version"`
	VendorID              uint32   `json:"vendor_id"`
	DeviceID              uint32   `json:"device_id"`
	MemoryBytes           int64    `json:"memory_bytes"`
	SubgroupSize          uint32   `json:"subgroup_size"`
	SubgroupOps           []string `json:"subgroup_operations"`
	MaxStorageBufferRange int64    `json:"max_storage_buffer_range"`
	MaxAllocationBytes    int64    `json:"max_allocation_bytes"`
	MaxSharedMemory       uint32   `json:"max_shared_memory"`
	MaxWorkgroupSize      uint32   `json:"max_workgroup_invocations"`
	MaxPushConstants      uint32   `json:"max_push_constants"`
	StorageOffsetAlign    int64    `json:"min_storage_buffer_offset_alignment"`
	MaxTexelElements      int64    `json:"max_texel_buffer_elements"`
	TimestampPeriodNs     float32  `json:"timestamp_period_ns"`
	Float16               bool     `json:"shader_float16"`
	Int8                  bool     `json:"shader_int8"`
	Storage16             bool     `json:"storage_buffer_16bit"`
	Storage8              bool     `json:"storage_buffer_8bit"`

	apiVersion    uint32
	pipelineUUID  [vulkan.UuidSize]byte
	timestampBits bool
	maxGroups     [3]uint32
}

// NewInstance loads the Vulkan loader, creates an instance and lists the
// physical devices. E2MCVK_VALIDATE=1 in the environment turns on the Khronos
// validation layer with synchronization validation; see ValidationMessages.
func NewInstance() (*Instance, error) {
	validate := os.Getenv("E2MCVK_VALIDATE") != "" && os.Getenv("E2MCVK_VALIDATE") != "0"
	c, handle, api, err := createInstance(validate)
	if err != nil {
		return nil, err
	}
	in := &Instance{c: c, handle: handle, api: api, validate: validate}
	var n uint32
	if r := vulkan.EnumeratePhysicalDevices(handle, &n, nil); r != vulkan.Success {
		in.Close()
		return nil, fmt.Errorf("enumerate Vulkan devices: %w", resultError(r))
	}
	if n == 0 {
		in.Close()
		return nil, ErrNoDriver
	}
	in.physical = make([]vulkan.PhysicalDevice, n)
	vulkan.EnumeratePhysicalDevices(handle, &n, in.physical)
	in.physical = in.physical[:n]
	for i, pd := range in.physical {
		in.infos = append(in.infos, describe(in.handle, pd, i))
	}
	return in, nil
}

func describe(inst vulkan.Instance, pd vulkan.PhysicalDevice, index int) DeviceInfo {
	var p vulkan.PhysicalDeviceProperties
	vulkan.GetPhysicalDeviceProperties(pd, &p)
	p.Deref()
	p.Limits.Deref()
	c := queryCaps(inst, pd, p.ApiVersion)

	var mp vulkan.PhysicalDeviceMemoryProperties
	vulkan.GetPhysicalDeviceMemoryProperties(pd, &mp)
	mp.Deref()
	var local int64
	for i := uint32(0); i < mp.MemoryHeapCount; i++ {
		h := mp.MemoryHeaps[i]
		h.Deref()
		if vulkan.MemoryHeapFlagBits(h.Flags)&vulkan.MemoryHeapDeviceLocalBit != 0 {
			local += int64(h.Size)
		}
	}

	info := DeviceInfo{
		Index:                 index,
		Name:                  vulkan.ToString(p.DeviceName[:]),
		Type:                  deviceType(p.DeviceType),
		Driver:                c.driverName,
		DriverVersion:         c.driverInfo,
		APIVersion:            versionString(p.ApiVersion),
		VendorID:              p.VendorID,
		DeviceID:              p.DeviceID,
		MemoryBytes:           local,
		SubgroupSize:          c.subgroupSize,
		SubgroupOps:           subgroupOps(c.subgroupOps),
		MaxStorageBufferRange: int64(p.Limits.MaxStorageBufferRange),
		MaxAllocationBytes:    int64(c.maxAllocation),
		MaxSharedMemory:       p.Limits.MaxComputeSharedMemorySize,
		MaxWorkgroupSize:      p.Limits.MaxComputeWorkGroupInvocations,
		MaxPushConstants:      p.Limits.MaxPushConstantsSize,
		StorageOffsetAlign:    int64(p.Limits.MinStorageBufferOffsetAlignment),
		MaxTexelElements:      int64(p.Limits.MaxTexelBufferElements),
		TimestampPeriodNs:     p.Limits.TimestampPeriod,
		Float16:               c.float16,
		Int8:                  c.int8,
		Storage16:             c.storage16,
		Storage8:              c.storage8,
		apiVersion:            p.ApiVersion,
		pipelineUUID:          p.PipelineCacheUUID,
		timestampBits:         p.Limits.TimestampComputeAndGraphics != 0,
		maxGroups:             p.Limits.MaxComputeWorkGroupCount,
	}
	if info.Driver == "" {
		info.Driver = fmt.Sprintf("vendor 0x%04x", p.VendorID)
	}
	if info.DriverVersion == "" {
		info.DriverVersion = fmt.Sprintf("%d", p.DriverVersion)
	}
	if info.MaxAllocationBytes == 0 {
		// Vulkan 1.0 devices do not report it; 1 GiB is the least that
		// VK_KHR_maintenance3 ever guarantees, so it is safe everywhere.
		info.MaxAllocationBytes = 1 << 30
	}
	return info
}

// subgroupOps names the bits of VkSubgroupFeatureFlags, in bit order.
func subgroupOps(bits uint32) []string {
	names := []string{"basic", "vote", "arithmetic", "ballot", "shuffle", "shuffle_relative", "clustered", "quad"}
	var out []string
	for i, n := range names {
		if bits&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// HasSubgroupOps reports whether the device's subgroups support every one of
// the named operations (see SubgroupOps).
func (info DeviceInfo) HasSubgroupOps(names ...string) bool {
	for _, n := range names {
		found := false
		for _, have := range info.SubgroupOps {
			found = found || have == n
		}
		if !found {
			return false
		}
	}
	return true
}

func deviceType(t vulkan.PhysicalDeviceType) string {
	switch t {
	case vulkan.PhysicalDeviceTypeDiscreteGpu:
		return "discrete-gpu"
	case vulkan.PhysicalDeviceTypeIntegratedGpu:
		return "integrated-gpu"
	case vulkan.PhysicalDeviceTypeVirtualGpu:
		return "virtual-gpu"
	case vulkan.PhysicalDeviceTypeCpu:
		return "cpu"
	}
	return "other"
}

func versionString(v uint32) string {
	return fmt.Sprintf("%d.%d.%d", v>>22, (v>>12)&0x3ff, v&0xfff)
}

// Devices returns the physical devices in enumeration order.
func (in *Instance) Devices() []DeviceInfo {
	return append([]DeviceInfo(nil), in.infos...)
}

// Validating reports whether the validation layer is on.
func (in *Instance) Validating() bool { return in.validate }

// ValidationMessages returns how many validation messages of warning severity
// or worse were reported so far; it is always 0 without validation.
// After Close it stays readable and includes what destruction reported.
func (in *Instance) ValidationMessages() int {
	if in.c == nil {
		return in.closed
	}
	return in.c.messages()
}

// Open creates a logical device on physical device index. Opening the same
// index twice gives two independent logical devices on one physical device,
// which is how multi-device code is tested on a single GPU or lavapipe.
func (in *Instance) Open(index int) (*Device, error) {
	if index < 0 || index >= len(in.infos) {
		return nil, &DeviceIndexError{Index: index, Devices: in.Devices()}
	}
	d, err := openDevice(in, index)
	if err != nil {
		return nil, fmt.Errorf("open device %d (%s): %w", index, in.infos[index].Name, err)
	}
	in.mu.Lock()
	in.opened = append(in.opened, d)
	in.mu.Unlock()
	return d, nil
}

// Close closes every device opened from the instance, then the instance.
func (in *Instance) Close() {
	in.mu.Lock()
	opened := in.opened
	in.opened = nil
	in.mu.Unlock()
	for _, d := range opened {
		d.close()
	}
	if in.c != nil {
		in.closed = in.c.destroy()
		in.c = nil
	}
}

// DeviceIndexError reports a device index that does not exist.
type DeviceIndexError struct {
	Index   int
	Devices []DeviceInfo
}

func (e *DeviceIndexError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "device index %d out of range: ", e.Index)
	if len(e.Devices) == 1 {
		b.WriteString("there is 1 device (")
	} else {
		fmt.Fprintf(&b, "there are %d devices (", len(e.Devices))
	}
	for i, d := range e.Devices {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d: %s", d.Index, d.Name)
	}
	b.WriteString("); run `e2mcvk devices` to list them")
	return b.String()
}
