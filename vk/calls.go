package vk

// The Vulkan calls of the hot and the long-running paths, made from C.
// vulkan-go converts a call's structs to C memory whose release it leaves to
// a finalizer on an object it drops before the call, so a garbage collection
// during the call can free a create-info the driver is still reading; this
// crashed vkCreateComputePipelines (seconds of LLVM compilation on lavapipe)
// about once in fifteen test runs. Here the structs live on the C stack for
// the whole call. The functions come from the loader's exports, which
// dispatch on the device or command buffer handle.

/*
#include <dlfcn.h>
#include <vulkan/vulkan.h>

void *e2_loader_lib(void);

static void *e2_sym(const char *name) {
	void *lib = e2_loader_lib();
	return lib ? dlsym(lib, name) : NULL;
}

static VkResult e2_create_shader_module(VkDevice dev, const uint32_t *code, size_t size, VkShaderModule *out) {
	PFN_vkCreateShaderModule f = (PFN_vkCreateShaderModule)e2_sym("vkCreateShaderModule");
	if (!f) return VK_ERROR_INITIALIZATION_FAILED;
	VkShaderModuleCreateInfo ci = {VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, NULL, 0, size, code};
	return f(dev, &ci, NULL, out);
}

// e2_create_pipeline builds a compute pipeline whose specialization constant
// i is spec[i].
static VkResult e2_create_pipeline(VkDevice dev, VkPipelineCache cache, VkPipelineLayout layout,
		VkShaderModule module, const uint32_t *spec, uint32_t nspec, VkPipeline *out) {
	PFN_vkCreateComputePipelines f = (PFN_vkCreateComputePipelines)e2_sym("vkCreateComputePipelines");
	if (!f || nspec > 32) return VK_ERROR_INITIALIZATION_FAILED;
	VkSpecializationMapEntry entries[32];
	for (uint32_t i = 0; i < nspec; i++) {
		entries[i].constantID = i;
		entries[i].offset = 4 * i;
		entries[i].size = 4;
	}
	VkSpecializationInfo si = {nspec, entries, 4 * (size_t)nspec, spec};
	VkComputePipelineCreateInfo ci = {0};
	ci.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO;
	ci.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
	ci.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
	ci.stage.module = module;
	ci.stage.pName = "main";
	ci.stage.pSpecializationInfo = nspec ? &si : NULL;
	ci.layout = layout;
	ci.basePipelineIndex = -1;
	return f(dev, cache, 1, &ci, NULL, out);
}

// e2_bind_buffers writes n storage-buffer bindings 0..n-1 of set.
static void e2_bind_buffers(VkDevice dev, VkDescriptorSet set, uint32_t n,
		const VkBuffer *bufs, const VkDeviceSize *offs, const VkDeviceSize *sizes) {
	static PFN_vkUpdateDescriptorSets f;
	if (!f) f = (PFN_vkUpdateDescriptorSets)e2_sym("vkUpdateDescriptorSets");
	VkDescriptorBufferInfo info[8];
	VkWriteDescriptorSet w[8];
	if (n > 8) n = 8;
	for (uint32_t i = 0; i < n; i++) {
		info[i].buffer = bufs[i];
		info[i].offset = offs[i];
		info[i].range = sizes[i];
		VkWriteDescriptorSet x = {VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, NULL, set, i, 0, 1,
			VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, NULL, &info[i], NULL};
		w[i] = x;
	}
	f(dev, n, w, 0, NULL);
}

static VkResult e2_create_texel_view(VkDevice dev, VkBuffer buf, VkFormat format, VkDeviceSize off, VkDeviceSize size, VkBufferView *out) {
	static PFN_vkCreateBufferView f; // looked up once: views are made per dispatch
	if (!f) f = (PFN_vkCreateBufferView)e2_sym("vkCreateBufferView");
	if (!f) return VK_ERROR_INITIALIZATION_FAILED;
	VkBufferViewCreateInfo ci = {VK_STRUCTURE_TYPE_BUFFER_VIEW_CREATE_INFO, NULL, 0, buf, format, off, size};
	return f(dev, &ci, NULL, out);
}

// e2_bind_texel writes uniform-texel-buffer binding b of set.
static void e2_bind_texel(VkDevice dev, VkDescriptorSet set, uint32_t b, VkBufferView view) {
	static PFN_vkUpdateDescriptorSets f;
	if (!f) f = (PFN_vkUpdateDescriptorSets)e2_sym("vkUpdateDescriptorSets");
	VkWriteDescriptorSet w = {VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, NULL, set, b, 0, 1,
		VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER, NULL, NULL, &view};
	f(dev, 1, &w, 0, NULL);
}

static void e2_memory_barrier(VkCommandBuffer cmd, VkPipelineStageFlags src, VkPipelineStageFlags dst,
		VkAccessFlags srcAccess, VkAccessFlags dstAccess) {
	static PFN_vkCmdPipelineBarrier f;
	if (!f) f = (PFN_vkCmdPipelineBarrier)e2_sym("vkCmdPipelineBarrier");
	VkMemoryBarrier b = {VK_STRUCTURE_TYPE_MEMORY_BARRIER, NULL, srcAccess, dstAccess};
	f(cmd, src, dst, 0, 1, &b, 0, NULL, 0, NULL);
}

static VkResult e2_submit(VkQueue q, VkCommandBuffer cmd, VkFence fence) {
	PFN_vkQueueSubmit f = (PFN_vkQueueSubmit)e2_sym("vkQueueSubmit");
	if (!f) return VK_ERROR_INITIALIZATION_FAILED;
	VkSubmitInfo si = {0};
	si.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO;
	si.commandBufferCount = 1;
	si.pCommandBuffers = &cmd;
	return f(q, 1, &si, fence);
}
*/
import "C"

import (
	"unsafe"

	"github.com/vulkan-go/vulkan"
)

// Handle conversions: vulkan-go's handles are the C handles under Go names.
func cDevice(d vulkan.Device) C.VkDevice { return C.VkDevice(unsafe.Pointer(d)) }

func createShaderModule(d vulkan.Device, words []uint32) (vulkan.ShaderModule, vulkan.Result) {
	var m C.VkShaderModule
	r := C.e2_create_shader_module(cDevice(d), (*C.uint32_t)(unsafe.Pointer(&words[0])), C.size_t(4*len(words)), &m)
	return vulkan.ShaderModule(unsafe.Pointer(m)), vulkan.Result(r)
}

func createPipeline(d vulkan.Device, cache vulkan.PipelineCache, layout vulkan.PipelineLayout, module vulkan.ShaderModule, spec []uint32) (vulkan.Pipeline, vulkan.Result) {
	var sp *C.uint32_t
	if len(spec) > 0 {
		sp = (*C.uint32_t)(unsafe.Pointer(&spec[0]))
	}
	var p C.VkPipeline
	r := C.e2_create_pipeline(cDevice(d), C.VkPipelineCache(unsafe.Pointer(cache)), C.VkPipelineLayout(unsafe.Pointer(layout)),
		C.VkShaderModule(unsafe.Pointer(module)), sp, C.uint32_t(len(spec)), &p)
	return vulkan.Pipeline(unsafe.Pointer(p)), vulkan.Result(r)
}

// bindBuffers points bindings 0..len(bufs)-1 of set at the given ranges.
func bindBuffers(d vulkan.Device, set vulkan.DescriptorSet, bufs []vulkan.Buffer, offs, sizes []uint64) {
	if len(bufs) == 0 {
		return
	}
	C.e2_bind_buffers(cDevice(d), C.VkDescriptorSet(unsafe.Pointer(set)), C.uint32_t(len(bufs)),
		(*C.VkBuffer)(unsafe.Pointer(&bufs[0])), (*C.VkDeviceSize)(unsafe.Pointer(&offs[0])), (*C.VkDeviceSize)(unsafe.Pointer(&sizes[0])))
}

func createTexelView(d vulkan.Device, buf vulkan.Buffer, format vulkan.Format, off, size int64) (vulkan.BufferView, vulkan.Result) {
	var v C.VkBufferView
	r := C.e2_create_texel_view(cDevice(d), C.VkBuffer(unsafe.Pointer(buf)), C.VkFormat(format), C.VkDeviceSize(off), C.VkDeviceSize(size), &v)
	return vulkan.BufferView(unsafe.Pointer(v)), vulkan.Result(r)
}

// bindTexel points binding b of set at a uniform texel buffer view.
func bindTexel(d vulkan.Device, set vulkan.DescriptorSet, b uint32, view vulkan.BufferView) {
	C.e2_bind_texel(cDevice(d), C.VkDescriptorSet(unsafe.Pointer(set)), C.uint32_t(b), C.VkBufferView(unsafe.Pointer(view)))
}

func memoryBarrier(cmd vulkan.CommandBuffer, src, dst vulkan.PipelineStageFlagBits, srcAccess, dstAccess vulkan.AccessFlagBits) {
	C.e2_memory_barrier(C.VkCommandBuffer(unsafe.Pointer(cmd)), C.VkPipelineStageFlags(src), C.VkPipelineStageFlags(dst),
		C.VkAccessFlags(srcAccess), C.VkAccessFlags(dstAccess))
}

func submit(q vulkan.Queue, cmd vulkan.CommandBuffer, fence vulkan.Fence) vulkan.Result {
	return vulkan.Result(C.e2_submit(C.VkQueue(unsafe.Pointer(q)), C.VkCommandBuffer(unsafe.Pointer(cmd)), C.VkFence(unsafe.Pointer(fence))))
}
