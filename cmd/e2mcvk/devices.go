package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/e2mcvk/e2mcvk/vk"
)

// devicesCmd is `e2mcvk devices`.
type devicesCmd struct {
	JSON bool `name:"json" help:"Print a JSON array of device objects instead of a table."`
}

// Help is the long help of `e2mcvk devices --help`.
func (devicesCmd) Help() string {
	return `Lists the Vulkan devices in enumeration order, the order of
'vulkaninfo --summary'; a device's index is how other commands select it.
The table shows each device's type, driver, Vulkan version, device-local
memory, subgroup size, the largest storage-buffer range one kernel may bind,
and the shared memory of one workgroup.

With --json it prints a JSON array of objects with at least the fields index,
name, type, driver, api_version, memory_bytes, subgroup_size,
max_storage_buffer_range and max_shared_memory (sizes in bytes).`
}

// Run lists the devices.
func (c *devicesCmd) Run(e *env) error {
	return withInstance(func(in *vk.Instance) error {
		if c.JSON {
			return writeDevicesJSON(e.stdout, in.Devices())
		}
		return writeDevicesTable(e.stdout, in.Devices())
	})
}

func writeDevicesJSON(w io.Writer, devs []vk.DeviceInfo) error {
	b, err := json.MarshalIndent(devs, "", "  ")
	if err != nil {
		return fmt.Errorf("encode devices: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func writeDevicesTable(w io.Writer, devs []vk.DeviceInfo) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tNAME\tTYPE\tDRIVER\tAPI\tMEMORY\tSUBGROUP\tMAX STORAGE BUFFER\tMAX SHARED")
	for _, d := range devs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n",
			d.Index, d.Name, d.Type, driverString(d), d.APIVersion, vk.FormatBytes(d.MemoryBytes),
			d.SubgroupSize, vk.FormatBytes(d.MaxStorageBufferRange), vk.FormatBytes(int64(d.MaxSharedMemory)))
	}
	return tw.Flush()
}

// driverString is the driver's name with its version, e.g.
// "llvmpipe (Mesa 22.3.6 (LLVM 15.0.6))".
func driverString(d vk.DeviceInfo) string {
	if d.DriverVersion == "" {
		return d.Driver
	}
	return d.Driver + " " + d.DriverVersion
}
