package vk

import (
	"fmt"
	"os"
	"strconv"
	"sync"

	vulkan "github.com/vulkan-go/vulkan"
)

// MaxBindings is the number of storage buffers in the one descriptor-set
// layout every kernel shares; a kernel uses bindings 0..n-1 of it.
const MaxBindings = 8

// TexelBinding is the first of MaxTexelBindings uniform-texel-buffer
// bindings that follow the storage buffers in the shared layout; a shader
// declares them as `layout(binding = 8) uniform textureBuffer` and so on.
const TexelBinding = MaxBindings

// MaxTexelBindings is the number of texel-buffer bindings in the layout.
const MaxTexelBindings = 4

// PushConstantBytes is the push-constant block every kernel may use: 128 bytes
// is the least any Vulkan device guarantees.
const PushConstantBytes = 128

// Device is a logical device with one compute queue. Its methods are safe for
// concurrent use; a Stream is not.
type Device struct {
	Info DeviceInfo

	inst        *Instance
	physical    vulkan.PhysicalDevice
	handle      vulkan.Device
	queue       vulkan.Queue
	queueFamily uint32

	submitMu sync.Mutex // one queue submission at a time

	setLayout  vulkan.DescriptorSetLayout
	pipeLayout vulkan.PipelineLayout
	pipes      *pipelineCache

	mem      *allocator
	segLimit int64 // largest segment of a Buffer, see NewBuffer

	transferMu sync.Mutex // guards staging and transfer
	staging    *hostBuffer
	transfer   *Stream

	closeOnce sync.Once
}

func openDevice(in *Instance, index int) (*Device, error) {
	info := in.infos[index]
	pd := in.physical[index]
	d := &Device{Info: info, inst: in, physical: pd}

	family, err := computeQueueFamily(pd)
	if err != nil {
		return nil, err
	}
	d.queueFamily = family
	ci := vulkan.DeviceCreateInfo{
		SType:                vulkan.StructureTypeDeviceCreateInfo,
		QueueCreateInfoCount: 1,
		PQueueCreateInfos: []vulkan.DeviceQueueCreateInfo{{
			SType:            vulkan.StructureTypeDeviceQueueCreateInfo,
			QueueFamilyIndex: family,
			QueueCount:       1,
			PQueuePriorities: []float32{1},
		}},
	}
	var dev vulkan.Device
	if r := vulkan.CreateDevice(pd, &ci, nil, &dev); r != vulkan.Success {
		return nil, fmt.Errorf("create logical device: %w", resultError(r))
	}
	d.handle = dev
	var q vulkan.Queue
	vulkan.GetDeviceQueue(dev, family, 0, &q)
	d.queue = q

	if err := d.createLayouts(); err != nil {
		d.close()
		return nil, err
	}
	d.pipes = newPipelineCache(d)
	d.segLimit = segmentLimit(info)
	if d.mem, err = newAllocator(d); err != nil {
		d.close()
		return nil, err
	}
	if d.transfer, err = d.NewStream(); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

// segmentLimit is the largest byte range one descriptor may bind and one
// allocation may hold on this device. E2MCVK_MAX_BUFFER_BYTES lowers it so the
// buffer-splitting path runs on any device.
func segmentLimit(info DeviceInfo) int64 {
	limit := min(info.MaxStorageBufferRange, info.MaxAllocationBytes)
	if s := os.Getenv("E2MCVK_MAX_BUFFER_BYTES"); s != "" {
		if v, err := strconv.ParseInt(s, 10, 64); err == nil && v > 0 && v < limit {
			limit = v
		}
	}
	limit &^= 255 // keep segment starts aligned for any element type
	return max(limit, 256)
}

// SegmentLimit returns the largest segment a Buffer is split into.
func (d *Device) SegmentLimit() int64 { return d.segLimit }

func computeQueueFamily(pd vulkan.PhysicalDevice) (uint32, error) {
	var n uint32
	vulkan.GetPhysicalDeviceQueueFamilyProperties(pd, &n, nil)
	props := make([]vulkan.QueueFamilyProperties, n)
	vulkan.GetPhysicalDeviceQueueFamilyProperties(pd, &n, props)
	for i := range props {
		props[i].Deref()
		if vulkan.QueueFlagBits(props[i].QueueFlags)&vulkan.QueueComputeBit != 0 {
			return uint32(i), nil
		}
	}
	return 0, fmt.Errorf("the device has no compute queue")
}

func (d *Device) createLayouts() error {
	bindings := make([]vulkan.DescriptorSetLayoutBinding, MaxBindings+MaxTexelBindings)
	for i := range bindings {
		typ := vulkan.DescriptorTypeStorageBuffer
		if i >= MaxBindings {
			typ = vulkan.DescriptorTypeUniformTexelBuffer
		}
		bindings[i] = vulkan.DescriptorSetLayoutBinding{
			Binding:         uint32(i),
			DescriptorType:  typ,
			DescriptorCount: 1,
			StageFlags:      vulkan.ShaderStageFlags(vulkan.ShaderStageComputeBit),
		}
	}
	var sl vulkan.DescriptorSetLayout
	if r := vulkan.CreateDescriptorSetLayout(d.handle, &vulkan.DescriptorSetLayoutCreateInfo{
		SType:        vulkan.StructureTypeDescriptorSetLayoutCreateInfo,
		BindingCount: uint32(len(bindings)),
		PBindings:    bindings,
	}, nil, &sl); r != vulkan.Success {
		return fmt.Errorf("create descriptor set layout: %w", resultError(r))
	}
	d.setLayout = sl
	var pl vulkan.PipelineLayout
	if r := vulkan.CreatePipelineLayout(d.handle, &vulkan.PipelineLayoutCreateInfo{
		SType:                  vulkan.StructureTypePipelineLayoutCreateInfo,
		SetLayoutCount:         1,
		PSetLayouts:            []vulkan.DescriptorSetLayout{sl},
		PushConstantRangeCount: 1,
		PPushConstantRanges: []vulkan.PushConstantRange{{
			StageFlags: vulkan.ShaderStageFlags(vulkan.ShaderStageComputeBit),
			Size:       PushConstantBytes,
		}},
	}, nil, &pl); r != vulkan.Success {
		return fmt.Errorf("create pipeline layout: %w", resultError(r))
	}
	d.pipeLayout = pl
	return nil
}

// Synchronize waits until the queue is idle.
func (d *Device) Synchronize() error {
	d.submitMu.Lock()
	defer d.submitMu.Unlock()
	return resultError(vulkan.QueueWaitIdle(d.queue))
}

// close releases everything the device owns; the Instance calls it.
func (d *Device) close() {
	d.closeOnce.Do(func() {
		if d.handle == nil {
			return
		}
		vulkan.DeviceWaitIdle(d.handle)
		if d.transfer != nil {
			d.transfer.Close()
		}
		if d.staging != nil {
			d.staging.free(d)
		}
		if d.pipes != nil {
			d.pipes.close()
		}
		if d.mem != nil {
			d.mem.close()
		}
		if d.pipeLayout != vulkan.NullPipelineLayout {
			vulkan.DestroyPipelineLayout(d.handle, d.pipeLayout, nil)
		}
		if d.setLayout != vulkan.NullDescriptorSetLayout {
			vulkan.DestroyDescriptorSetLayout(d.handle, d.setLayout, nil)
		}
		vulkan.DestroyDevice(d.handle, nil)
		d.handle = nil
	})
}
