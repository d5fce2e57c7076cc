package vk

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	vulkan "github.com/vulkan-go/vulkan"

	"github.com/e2mcvk/e2mcvk/shaders"
)

// Kernel is a compute pipeline: one shader of package shaders with its
// specialization constants, bound to the device's shared pipeline layout.
type Kernel struct {
	name     string
	module   vulkan.ShaderModule
	pipeline vulkan.Pipeline
}

// Name returns the shader name and specialization the kernel was built from.
func (k *Kernel) Name() string { return k.name }

// pipelineCache builds kernels on first use, keeps them for the device's
// life, and persists the driver's VkPipelineCache in the user cache directory
// so that later runs skip shader compilation.
type pipelineCache struct {
	dev     *Device
	cache   vulkan.PipelineCache
	path    string
	dirty   bool
	mu      sync.Mutex
	kernels map[string]*Kernel
}

func newPipelineCache(d *Device) *pipelineCache {
	p := &pipelineCache{dev: d, kernels: map[string]*Kernel{}}
	if dir, err := os.UserCacheDir(); err == nil {
		p.path = filepath.Join(dir, "e2mcvk", fmt.Sprintf("pipelines-%04x-%04x-%x.bin",
			d.Info.VendorID, d.Info.DeviceID, d.Info.pipelineUUID[:]))
	}
	var initial []byte
	if p.path != "" {
		initial, _ = os.ReadFile(p.path) // a missing or stale cache is only slower
	}
	ci := vulkan.PipelineCacheCreateInfo{SType: vulkan.StructureTypePipelineCacheCreateInfo}
	if len(initial) > 0 {
		ci.InitialDataSize = uint(len(initial))
		ci.PInitialData = cBytes(initial)
		defer cFree(ci.PInitialData)
	}
	// Handles are received in locals throughout this package: cgo checks the
	// whole Go allocation an unsafe.Pointer argument points into, and our
	// structs hold Go pointers.
	var cache vulkan.PipelineCache
	if r := vulkan.CreatePipelineCache(d.handle, &ci, nil, &cache); r != vulkan.Success {
		// Some drivers reject corrupt data with an error: start empty.
		ci.InitialDataSize, ci.PInitialData = 0, nil
		if vulkan.CreatePipelineCache(d.handle, &ci, nil, &cache) != vulkan.Success {
			cache = vulkan.NullPipelineCache
		}
	}
	p.cache = cache
	return p
}

// Kernel returns the compute pipeline of shader name with the given
// specialization constants (constant_id 0, 1, ... as 32-bit values), building
// it on first use.
func (d *Device) Kernel(name string, spec ...uint32) (*Kernel, error) {
	p := d.pipes
	key := name
	if len(spec) > 0 {
		key = fmt.Sprint(name, spec)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if k, ok := p.kernels[key]; ok {
		return k, nil
	}
	k, err := p.build(name, key, spec)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", key, err)
	}
	p.kernels[key] = k
	p.dirty = true
	return k, nil
}

func (p *pipelineCache) build(name, key string, spec []uint32) (*Kernel, error) {
	code, err := shaders.SPIRV(name)
	if err != nil {
		return nil, err
	}
	words := make([]uint32, len(code)/4)
	for i := range words {
		words[i] = binary.LittleEndian.Uint32(code[4*i:])
	}
	h := p.dev.handle
	module, r := createShaderModule(h, words)
	if r != vulkan.Success {
		return nil, fmt.Errorf("create shader module: %w", resultError(r))
	}
	k := &Kernel{name: key, module: module}
	if k.pipeline, r = createPipeline(h, p.cache, p.dev.pipeLayout, module, spec); r != vulkan.Success {
		vulkan.DestroyShaderModule(h, k.module, nil)
		return nil, fmt.Errorf("create compute pipeline: %w", resultError(r))
	}
	return k, nil
}

// close saves the pipeline cache (if anything was built) and destroys every
// kernel.
func (p *pipelineCache) close() {
	h := p.dev.handle
	if p.cache != vulkan.NullPipelineCache {
		if p.dirty && p.path != "" {
			p.save()
		}
		vulkan.DestroyPipelineCache(h, p.cache, nil)
	}
	for _, k := range p.kernels {
		vulkan.DestroyPipeline(h, k.pipeline, nil)
		vulkan.DestroyShaderModule(h, k.module, nil)
	}
	p.kernels = nil
}

// save writes the driver's cache data atomically (temporary file, rename).
// It is best effort: an unwritable cache directory only costs compile time
// on the next run.
func (p *pipelineCache) save() {
	var n uint
	if r := vulkan.GetPipelineCacheData(p.dev.handle, p.cache, &n, nil); r != vulkan.Success || n == 0 {
		return
	}
	data := make([]byte, n)
	if r := vulkan.GetPipelineCacheData(p.dev.handle, p.cache, &n, unsafe.Pointer(&data[0])); r != vulkan.Success {
		return
	}
	dir := filepath.Dir(p.path)
	if os.MkdirAll(dir, 0o755) != nil {
		return
	}
	tmp, err := os.CreateTemp(dir, ".pipelines-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(data[:n])
	if cerr := tmp.Close(); werr != nil || cerr != nil || os.Rename(tmp.Name(), p.path) != nil {
		os.Remove(tmp.Name())
	}
}
