package vk

// This file is the only C in the runtime. It exists for three reasons:
//
//   - vulkan-go's default loader dlopens the unversioned "libvulkan.so", which
//     only the -dev package installs; we open "libvulkan.so.1" ourselves and
//     hand its vkGetInstanceProcAddr to the binding.
//   - vulkan-go binds Vulkan 1.0 entry points only; the 1.1+ queries
//     (vkGetPhysicalDeviceProperties2 / Features2) are fetched here.
//   - The instance is created here so that its pNext chain (validation
//     features) and the debug messenger, whose callback must be a C function,
//     stay in C memory.

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vulkan/vulkan.h>

static void *e2_lib;
static PFN_vkGetInstanceProcAddr e2_gipa;

// e2_loader_lib is the loader's handle once e2_load succeeded (calls.go).
void *e2_loader_lib(void) { return e2_lib; }

// e2_load opens the Vulkan loader and returns its vkGetInstanceProcAddr, or
// NULL with dlerror's text in err.
static void *e2_load(const char *name, char *err, size_t errlen) {
	if (e2_gipa) return (void *)e2_gipa;
	void *lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		const char *e = dlerror();
		snprintf(err, errlen, "%s", e ? e : "dlopen failed");
		return NULL;
	}
	PFN_vkGetInstanceProcAddr f = (PFN_vkGetInstanceProcAddr)dlsym(lib, "vkGetInstanceProcAddr");
	if (!f) {
		snprintf(err, errlen, "%s has no vkGetInstanceProcAddr", name);
		dlclose(lib);
		return NULL;
	}
	e2_lib = lib;
	e2_gipa = f;
	return (void *)f;
}

static uint32_t e2_loader_version(void) {
	PFN_vkEnumerateInstanceVersion f =
		(PFN_vkEnumerateInstanceVersion)e2_gipa(NULL, "vkEnumerateInstanceVersion");
	uint32_t v = VK_API_VERSION_1_0;
	if (f && f(&v) != VK_SUCCESS) v = VK_API_VERSION_1_0;
	return v;
}

static int e2_has_layer(const char *name) {
	PFN_vkEnumerateInstanceLayerProperties f =
		(PFN_vkEnumerateInstanceLayerProperties)e2_gipa(NULL, "vkEnumerateInstanceLayerProperties");
	uint32_t n = 0;
	if (!f || f(&n, NULL) != VK_SUCCESS || n == 0) return 0;
	VkLayerProperties *p = calloc(n, sizeof *p);
	int found = 0;
	if (f(&n, p) == VK_SUCCESS)
		for (uint32_t i = 0; i < n; i++)
			if (strcmp(p[i].layerName, name) == 0) found = 1;
	free(p);
	return found;
}

// e2_messages counts validation messages of warning severity or worse; it is
// handed to the callback as user data and read by Go.
typedef struct { int count; } e2_messages;

static VKAPI_ATTR VkBool32 VKAPI_CALL e2_debug_cb(
	VkDebugUtilsMessageSeverityFlagBitsEXT sev, VkDebugUtilsMessageTypeFlagsEXT type,
	const VkDebugUtilsMessengerCallbackDataEXT *data, void *user) {
	(void)type;
	if (sev >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT) {
		__atomic_add_fetch(&((e2_messages *)user)->count, 1, __ATOMIC_SEQ_CST);
		fprintf(stderr, "vulkan validation: %s\n", data->pMessage ? data->pMessage : "(no message)");
	}
	return VK_FALSE;
}

typedef struct {
	VkInstance instance;
	VkDebugUtilsMessengerEXT messenger;
	uint32_t api;
} e2_instance;

// e2_create_instance creates an instance of at most Vulkan 1.2, with the
// Khronos validation layer (synchronization validation on) when validate is set.
static VkResult e2_create_instance(int validate, e2_messages *msgs, e2_instance *out) {
	PFN_vkCreateInstance create = (PFN_vkCreateInstance)e2_gipa(NULL, "vkCreateInstance");
	if (!create) return VK_ERROR_INITIALIZATION_FAILED;
	uint32_t api = e2_loader_version();
	if (api > VK_API_VERSION_1_2) api = VK_API_VERSION_1_2;
	VkApplicationInfo app = {VK_STRUCTURE_TYPE_APPLICATION_INFO};
	app.pApplicationName = "e2mcvk";
	app.pEngineName = "e2mcvk";
	app.apiVersion = api;
	const char *layers[] = {"VK_LAYER_KHRONOS_validation"};
	const char *exts[] = {VK_EXT_DEBUG_UTILS_EXTENSION_NAME};
	VkValidationFeatureEnableEXT enables[] = {VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT};
	VkValidationFeaturesEXT features = {VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT};
	features.enabledValidationFeatureCount = 1;
	features.pEnabledValidationFeatures = enables;
	VkDebugUtilsMessengerCreateInfoEXT dbg = {VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT};
	dbg.messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
	dbg.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
		VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
	dbg.pfnUserCallback = e2_debug_cb;
	dbg.pUserData = msgs;
	features.pNext = &dbg;

	VkInstanceCreateInfo ci = {VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
	ci.pApplicationInfo = &app;
	if (validate) {
		ci.enabledLayerCount = 1;
		ci.ppEnabledLayerNames = layers;
		ci.enabledExtensionCount = 1;
		ci.ppEnabledExtensionNames = exts;
		ci.pNext = &features;
	}
	memset(out, 0, sizeof *out);
	VkResult r = create(&ci, NULL, &out->instance);
	if (r != VK_SUCCESS) return r;
	out->api = api;
	if (validate) {
		PFN_vkCreateDebugUtilsMessengerEXT mk =
			(PFN_vkCreateDebugUtilsMessengerEXT)e2_gipa(out->instance, "vkCreateDebugUtilsMessengerEXT");
		if (mk) r = mk(out->instance, &dbg, NULL, &out->messenger);
	}
	return r;
}

static void e2_destroy_instance(e2_instance *in) {
	if (in->messenger) {
		PFN_vkDestroyDebugUtilsMessengerEXT rm =
			(PFN_vkDestroyDebugUtilsMessengerEXT)e2_gipa(in->instance, "vkDestroyDebugUtilsMessengerEXT");
		if (rm) rm(in->instance, in->messenger, NULL);
	}
	PFN_vkDestroyInstance d = (PFN_vkDestroyInstance)e2_gipa(in->instance, "vkDestroyInstance");
	if (d) d(in->instance, NULL);
}

// e2_caps holds what the 1.1+ property and feature chains tell.
typedef struct {
	uint32_t subgroup_size;
	uint32_t subgroup_ops;
	uint64_t max_allocation;
	uint32_t float16, int8, storage16, storage8;
	char driver_name[VK_MAX_DRIVER_NAME_SIZE];
	char driver_info[VK_MAX_DRIVER_INFO_SIZE];
} e2_caps;

static void e2_query_caps(VkInstance inst, VkPhysicalDevice pd, uint32_t device_api, e2_caps *out) {
	memset(out, 0, sizeof *out);
	PFN_vkGetPhysicalDeviceProperties2 props2 =
		(PFN_vkGetPhysicalDeviceProperties2)e2_gipa(inst, "vkGetPhysicalDeviceProperties2");
	PFN_vkGetPhysicalDeviceFeatures2 feats2 =
		(PFN_vkGetPhysicalDeviceFeatures2)e2_gipa(inst, "vkGetPhysicalDeviceFeatures2");
	if (!props2 || !feats2 || device_api < VK_API_VERSION_1_1) return;

	VkPhysicalDeviceSubgroupProperties sub = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
	VkPhysicalDeviceMaintenance3Properties m3 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
	VkPhysicalDeviceDriverProperties drv = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
	VkPhysicalDeviceProperties2 p = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
	p.pNext = &sub;
	sub.pNext = &m3;
	if (device_api >= VK_API_VERSION_1_2) m3.pNext = &drv;
	props2(pd, &p);
	out->subgroup_size = sub.subgroupSize;
	out->subgroup_ops = sub.supportedOperations;
	out->max_allocation = m3.maxMemoryAllocationSize;
	if (device_api >= VK_API_VERSION_1_2) {
		snprintf(out->driver_name, sizeof out->driver_name, "%s", drv.driverName);
		snprintf(out->driver_info, sizeof out->driver_info, "%s", drv.driverInfo);
	}

	VkPhysicalDevice16BitStorageFeatures s16 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
	VkPhysicalDevice8BitStorageFeatures s8 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES};
	VkPhysicalDeviceShaderFloat16Int8Features f16 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES};
	VkPhysicalDeviceFeatures2 f = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
	f.pNext = &s16;
	if (device_api >= VK_API_VERSION_1_2) {
		s16.pNext = &s8;
		s8.pNext = &f16;
	}
	feats2(pd, &f);
	out->storage16 = s16.storageBuffer16BitAccess;
	out->storage8 = s8.storageBuffer8BitAccess;
	out->float16 = f16.shaderFloat16;
	out->int8 = f16.shaderInt8;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	vulkan "github.com/vulkan-go/vulkan"
)

// ErrNoDriver is returned when no Vulkan loader or no Vulkan device is found.
var ErrNoDriver = errors.New("no Vulkan driver found: install mesa-vulkan-drivers or your GPU's driver")

// loaderOnce guards the process-wide Vulkan loader: the binding keeps its
// function pointers in C globals, so the library is opened once per process.
var loaderOnce = sync.OnceValue(func() error {
	names := []string{"libvulkan.so.1", "libvulkan.so"}
	if lib := os.Getenv("E2MCVK_VULKAN_LIBRARY"); lib != "" {
		names = []string{lib}
	}
	var errs []string
	for _, name := range names {
		cname := C.CString(name)
		var buf [512]C.char
		gipa := C.e2_load(cname, &buf[0], C.size_t(len(buf)))
		C.free(unsafe.Pointer(cname))
		if gipa != nil {
			vulkan.SetGetInstanceProcAddr(gipa)
			if err := vulkan.Init(); err != nil {
				return fmt.Errorf("%w (%s: %v)", ErrNoDriver, name, err)
			}
			return nil
		}
		errs = append(errs, C.GoString(&buf[0]))
	}
	return fmt.Errorf("%w (%s)", ErrNoDriver, strings.Join(errs, "; "))
})

// cInstance is the C side of an Instance: the handle, the debug messenger and
// the validation message counter, all in C memory so the callback may use them.
type cInstance struct {
	in   *C.e2_instance
	msgs *C.e2_messages
}

func createInstance(validate bool) (*cInstance, vulkan.Instance, uint32, error) {
	if err := loaderOnce(); err != nil {
		return nil, nil, 0, err
	}
	if validate && !hasLayer("VK_LAYER_KHRONOS_validation") {
		return nil, nil, 0, errors.New("E2MCVK_VALIDATE is set but VK_LAYER_KHRONOS_validation is not installed: install vulkan-validationlayers")
	}
	ci := &cInstance{
		in:   (*C.e2_instance)(C.calloc(1, C.size_t(unsafe.Sizeof(C.e2_instance{})))),
		msgs: (*C.e2_messages)(C.calloc(1, C.size_t(unsafe.Sizeof(C.e2_messages{})))),
	}
	v := C.int(0)
	if validate {
		v = 1
	}
	if r := C.e2_create_instance(v, ci.msgs, ci.in); r != C.VK_SUCCESS {
		ci.free()
		if r == C.VK_ERROR_INCOMPATIBLE_DRIVER {
			return nil, nil, 0, ErrNoDriver
		}
		return nil, nil, 0, fmt.Errorf("create Vulkan instance: %w", resultError(vulkan.Result(r)))
	}
	handle := vulkan.Instance(unsafe.Pointer(ci.in.instance))
	if err := vulkan.InitInstance(handle); err != nil {
		ci.destroy()
		return nil, nil, 0, fmt.Errorf("load Vulkan instance functions: %w", err)
	}
	return ci, handle, uint32(ci.in.api), nil
}

func hasLayer(name string) bool {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	return C.e2_has_layer(cname) != 0
}

// messages returns how many validation messages of warning severity or worse
// this instance has reported.
func (ci *cInstance) messages() int {
	return int(atomic.LoadInt32((*int32)(unsafe.Pointer(&ci.msgs.count))))
}

// destroy destroys the instance and returns the final message count, which
// includes what the layer reports while objects are destroyed (leaks).
func (ci *cInstance) destroy() int {
	C.e2_destroy_instance(ci.in)
	n := ci.messages()
	ci.free()
	return n
}

func (ci *cInstance) free() {
	C.free(unsafe.Pointer(ci.in))
	C.free(unsafe.Pointer(ci.msgs))
}

// caps are the Vulkan 1.1+ properties and features of a physical device.
type caps struct {
	subgroupSize  uint32
	subgroupOps   uint32
	maxAllocation uint64
	float16, int8 bool
	storage16     bool
	storage8      bool
	driverName    string
	driverInfo    string
}

func queryCaps(inst vulkan.Instance, pd vulkan.PhysicalDevice, deviceAPI uint32) caps {
	var c C.e2_caps
	C.e2_query_caps(C.VkInstance(unsafe.Pointer(inst)), C.VkPhysicalDevice(unsafe.Pointer(pd)), C.uint32_t(deviceAPI), &c)
	return caps{
		subgroupSize:  uint32(c.subgroup_size),
		subgroupOps:   uint32(c.subgroup_ops),
		maxAllocation: uint64(c.max_allocation),
		float16:       c.float16 != 0,
		int8:          c.int8 != 0,
		storage16:     c.storage16 != 0,
		storage8:      c.storage8 != 0,
		driverName:    C.GoString(&c.driver_name[0]),
		driverInfo:    C.GoString(&c.driver_info[0]),
	}
}

// cBytes copies b into C memory, for data a Vulkan struct points to (Go
// memory must not be stored in C memory); release it with cFree.
func cBytes(b []byte) unsafe.Pointer { return C.CBytes(b) }

func cFree(p unsafe.Pointer) { C.free(p) }
