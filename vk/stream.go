package vk

import (
	"context"
	"fmt"
	"time"
	"unsafe"

	vulkan "github.com/vulkan-go/vulkan"
)

// Stream records many dispatches into one command buffer and submits them at
// once (Kompute's Sequence). It inserts a barrier only where a dispatch reads
// or writes a segment that an earlier dispatch since the last barrier wrote,
// or writes one that was read. A Stream is used by one goroutine at a time.
type Stream struct {
	dev       *Device
	pool      vulkan.CommandPool
	cmd       vulkan.CommandBuffer
	fence     vulkan.Fence
	recording bool

	descPools []vulkan.DescriptorPool
	descUsed  int // sets taken from the last pool

	written, read []region // since the last barrier
	dispatches    int
	barriers      int

	// done runs after the recorded work has finished (or was discarded):
	// it releases what the work needed, such as temporary buffers.
	done []func()

	queries   vulkan.QueryPool
	perKernel bool     // a timestamp after every dispatch (TimeDispatches)
	marks     []string // labels of this recording's timestamps
	timed     []string // labels of the last Run's timestamps
	ticks     []uint64 // and their values
}

type region struct {
	blk       *block
	off, size int64
}

func (r region) overlaps(o region) bool {
	return r.blk == o.blk && r.off < o.off+o.size && o.off < r.off+r.size
}

const (
	setsPerPool = 256
	maxMarks    = 8192 // a profiled ResNet-50 training step has about 2000 dispatches
)

// NewStream creates a command stream on the device.
func (d *Device) NewStream() (*Stream, error) {
	s := &Stream{dev: d}
	var pool vulkan.CommandPool
	if r := vulkan.CreateCommandPool(d.handle, &vulkan.CommandPoolCreateInfo{
		SType:            vulkan.StructureTypeCommandPoolCreateInfo,
		Flags:            vulkan.CommandPoolCreateFlags(vulkan.CommandPoolCreateResetCommandBufferBit),
		QueueFamilyIndex: d.queueFamily,
	}, nil, &pool); r != vulkan.Success {
		return nil, fmt.Errorf("create command pool: %w", resultError(r))
	}
	s.pool = pool
	cmds := make([]vulkan.CommandBuffer, 1)
	if r := vulkan.AllocateCommandBuffers(d.handle, &vulkan.CommandBufferAllocateInfo{
		SType:              vulkan.StructureTypeCommandBufferAllocateInfo,
		CommandPool:        s.pool,
		Level:              vulkan.CommandBufferLevelPrimary,
		CommandBufferCount: 1,
	}, cmds); r != vulkan.Success {
		s.Close()
		return nil, fmt.Errorf("allocate command buffer: %w", resultError(r))
	}
	s.cmd = cmds[0]
	var fence vulkan.Fence
	if r := vulkan.CreateFence(d.handle, &vulkan.FenceCreateInfo{SType: vulkan.StructureTypeFenceCreateInfo}, nil, &fence); r != vulkan.Success {
		s.Close()
		return nil, fmt.Errorf("create fence: %w", resultError(r))
	}
	s.fence = fence
	return s, nil
}

// EnableTimestamps makes Mark record GPU timestamps. It fails on devices whose
// compute queue has no timestamps.
func (s *Stream) EnableTimestamps() error {
	if s.queries != nil {
		return nil
	}
	if !s.dev.Info.timestampBits {
		return fmt.Errorf("%s has no timestamp queries on its compute queue", s.dev.Info.Name)
	}
	var queries vulkan.QueryPool
	if r := vulkan.CreateQueryPool(s.dev.handle, &vulkan.QueryPoolCreateInfo{
		SType:      vulkan.StructureTypeQueryPoolCreateInfo,
		QueryType:  vulkan.QueryTypeTimestamp,
		QueryCount: maxMarks,
	}, nil, &queries); r != vulkan.Success {
		return fmt.Errorf("create query pool: %w", resultError(r))
	}
	s.queries = queries
	return nil
}

// begin starts recording if the stream is idle. Every command buffer opens
// with one full barrier: work of earlier submissions (which the host waited
// for) and host writes become visible to this one.
func (s *Stream) begin() error {
	if s.recording {
		return nil
	}
	if r := vulkan.BeginCommandBuffer(s.cmd, &vulkan.CommandBufferBeginInfo{
		SType: vulkan.StructureTypeCommandBufferBeginInfo,
		Flags: vulkan.CommandBufferUsageFlags(vulkan.CommandBufferUsageOneTimeSubmitBit),
	}); r != vulkan.Success {
		return fmt.Errorf("begin command buffer: %w", resultError(r))
	}
	s.recording = true
	if s.queries != nil {
		vulkan.CmdResetQueryPool(s.cmd, s.queries, 0, maxMarks)
	}
	s.barrier(vulkan.PipelineStageAllCommandsBit, vulkan.PipelineStageAllCommandsBit)
	return nil
}

// barrier makes all device writes of stages src available and visible to
// accesses of stages dst (host reads when dst is the host stage).
func (s *Stream) barrier(src, dst vulkan.PipelineStageFlagBits) {
	dstAccess := vulkan.AccessMemoryReadBit | vulkan.AccessMemoryWriteBit
	if dst == vulkan.PipelineStageHostBit {
		dstAccess = vulkan.AccessHostReadBit
	}
	memoryBarrier(s.cmd, src, dst, vulkan.AccessMemoryWriteBit, dstAccess)
	s.written, s.read = s.written[:0], s.read[:0]
	s.barriers++
}

// Dispatch records kernel k over groups workgroups with push constants push
// (at most PushConstantBytes) and args bound in order: storage-buffer args
// to bindings 0, 1, ... and texel args (Arg.Texel) to TexelBinding,
// TexelBinding+1, ...
func (s *Stream) Dispatch(k *Kernel, groups [3]uint32, push []byte, args ...Arg) error {
	nt := 0
	for _, a := range args {
		if a.texel != 0 {
			nt++
		}
	}
	if len(args)-nt > MaxBindings || nt > MaxTexelBindings {
		return fmt.Errorf("dispatch %s: %d storage and %d texel bindings, at most %d and %d", k.name, len(args)-nt, nt, MaxBindings, MaxTexelBindings)
	}
	if len(push) > PushConstantBytes {
		return fmt.Errorf("dispatch %s: %d bytes of push constants, at most %d", k.name, len(push), PushConstantBytes)
	}
	if groups[0] == 0 || groups[1] == 0 || groups[2] == 0 {
		return nil
	}
	lim := s.dev.Info.maxGroups
	if groups[0] > lim[0] || groups[1] > lim[1] || groups[2] > lim[2] {
		return fmt.Errorf("dispatch %s: %v workgroups exceed the device's %v", k.name, groups, lim)
	}
	if err := s.begin(); err != nil {
		return err
	}
	set, err := s.descriptorSet()
	if err != nil {
		return err
	}
	var bufs [MaxBindings]vulkan.Buffer
	var offs, sizes [MaxBindings]uint64
	var views [MaxTexelBindings]vulkan.BufferView
	nb, nt := 0, 0
	hazard := false
	for _, a := range args {
		blk, off, size := a.region()
		if a.texel != 0 {
			v, err := s.texelView(a)
			if err != nil {
				return fmt.Errorf("dispatch %s: %w", k.name, err)
			}
			views[nt] = v
			nt++
		} else {
			bufs[nb], offs[nb], sizes[nb] = blk.buf, uint64(off), uint64(size)
			nb++
		}
		r := region{blk, off, size}
		for _, w := range s.written {
			hazard = hazard || w.overlaps(r)
		}
		if a.write {
			for _, rd := range s.read {
				hazard = hazard || rd.overlaps(r)
			}
		}
	}
	if hazard {
		s.barrier(vulkan.PipelineStageComputeShaderBit|vulkan.PipelineStageTransferBit, vulkan.PipelineStageComputeShaderBit|vulkan.PipelineStageTransferBit)
	}
	for _, a := range args {
		blk, off, size := a.region()
		if a.write {
			s.written = append(s.written, region{blk, off, size})
		} else {
			s.read = append(s.read, region{blk, off, size})
		}
	}
	bindBuffers(s.dev.handle, set, bufs[:nb], offs[:nb], sizes[:nb])
	for i, v := range views[:nt] {
		bindTexel(s.dev.handle, set, uint32(TexelBinding+i), v)
	}
	vulkan.CmdBindPipeline(s.cmd, vulkan.PipelineBindPointCompute, k.pipeline)
	vulkan.CmdBindDescriptorSets(s.cmd, vulkan.PipelineBindPointCompute, s.dev.pipeLayout, 0, 1,
		[]vulkan.DescriptorSet{set}, 0, nil)
	if len(push) > 0 {
		vulkan.CmdPushConstants(s.cmd, s.dev.pipeLayout, vulkan.ShaderStageFlags(vulkan.ShaderStageComputeBit),
			0, uint32(len(push)), unsafe.Pointer(&push[0]))
	}
	vulkan.CmdDispatch(s.cmd, groups[0], groups[1], groups[2])
	s.dispatches++
	if s.perKernel && len(s.marks) < maxMarks-1 {
		// The last timestamp is left for the caller's closing Mark; past
		// the limit the kernels' time goes to the next labelled interval.
		if err := s.Mark(k.name); err != nil {
			return err
		}
	}
	return nil
}

func (s *Stream) descriptorSet() (vulkan.DescriptorSet, error) {
	if len(s.descPools) == 0 || s.descUsed == setsPerPool {
		var p vulkan.DescriptorPool
		if r := vulkan.CreateDescriptorPool(s.dev.handle, &vulkan.DescriptorPoolCreateInfo{
			SType:         vulkan.StructureTypeDescriptorPoolCreateInfo,
			MaxSets:       setsPerPool,
			PoolSizeCount: 2,
			PPoolSizes: []vulkan.DescriptorPoolSize{
				{Type: vulkan.DescriptorTypeStorageBuffer, DescriptorCount: setsPerPool * MaxBindings},
				{Type: vulkan.DescriptorTypeUniformTexelBuffer, DescriptorCount: setsPerPool * MaxTexelBindings},
			},
		}, nil, &p); r != vulkan.Success {
			return nil, fmt.Errorf("create descriptor pool: %w", resultError(r))
		}
		s.descPools = append(s.descPools, p)
		s.descUsed = 0
	}
	sets := make([]vulkan.DescriptorSet, 1)
	if r := vulkan.AllocateDescriptorSets(s.dev.handle, &vulkan.DescriptorSetAllocateInfo{
		SType:              vulkan.StructureTypeDescriptorSetAllocateInfo,
		DescriptorPool:     s.descPools[len(s.descPools)-1],
		DescriptorSetCount: 1,
		PSetLayouts:        []vulkan.DescriptorSetLayout{s.dev.setLayout},
	}, &sets[0]); r != vulkan.Success {
		return nil, fmt.Errorf("allocate descriptor set: %w", resultError(r))
	}
	s.descUsed++
	return sets[0], nil
}

// AfterRun registers f to run once the work recorded so far has finished,
// at the end of the next Run (also when it fails), or at Close. Ops use it
// to release temporary buffers their dispatches read or write.
func (s *Stream) AfterRun(f func()) { s.done = append(s.done, f) }

// Release returns b's memory to the device once the work recorded so far
// has run, for a tensor that this recording still uses. (Handing the memory
// to new buffers at once would let a host upload into one of them be
// overwritten when the recorded work runs; reuse within a recording is the
// business of the recorder, who knows which buffers are only device-written:
// see layers.Tape.)
func (s *Stream) Release(b *Buffer) { s.AfterRun(b.Release) }

// Mark records a GPU timestamp named label; after Run, Timings reports the
// time between consecutive marks. Without EnableTimestamps it does nothing.
func (s *Stream) Mark(label string) error {
	if s.queries == nil {
		return nil
	}
	if len(s.marks) == maxMarks {
		return fmt.Errorf("more than %d timestamps in one submission", maxMarks)
	}
	if err := s.begin(); err != nil {
		return err
	}
	vulkan.CmdWriteTimestamp(s.cmd, vulkan.PipelineStageComputeShaderBit, s.queries, uint32(len(s.marks)))
	s.marks = append(s.marks, label)
	return nil
}

// TimeDispatches makes every later dispatch end with a timestamp labelled
// with its kernel's name and specialization, so Timings gives each kernel's
// device time (a profile). It needs EnableTimestamps; each timestamp
// serialises the work around it, so a profiled run is slower.
func (s *Stream) TimeDispatches(on bool) error {
	if on && s.queries == nil {
		return fmt.Errorf("time dispatches: timestamps are not enabled on this stream")
	}
	s.perKernel = on
	return nil
}

// Timing is the device time between a Mark and the one before it.
type Timing struct {
	Label   string
	Seconds float64
}

// Timings returns the intervals between the marks of the last Run.
func (s *Stream) Timings() []Timing {
	var out []Timing
	period := float64(s.dev.Info.TimestampPeriodNs) * 1e-9
	for i := 1; i < len(s.ticks); i++ {
		out = append(out, Timing{Label: s.timed[i], Seconds: float64(s.ticks[i]-s.ticks[i-1]) * period})
	}
	return out
}

// Stats returns how many dispatches and barriers the stream has recorded
// since its last Run.
func (s *Stream) Stats() (dispatches, barriers int) { return s.dispatches, s.barriers }

// Run submits what was recorded, waits for it (giving up if ctx ends) and
// readies the stream for reuse. A stream with nothing recorded returns at once.
func (s *Stream) Run(ctx context.Context) error {
	if !s.recording {
		s.reset()
		return nil
	}
	// Make device writes visible to the host for downloads.
	s.barrier(vulkan.PipelineStageAllCommandsBit, vulkan.PipelineStageHostBit)
	s.recording = false
	if r := vulkan.EndCommandBuffer(s.cmd); r != vulkan.Success {
		s.reset()
		return fmt.Errorf("end command buffer: %w", resultError(r))
	}
	d := s.dev
	d.submitMu.Lock()
	r := submit(d.queue, s.cmd, s.fence)
	d.submitMu.Unlock()
	if r != vulkan.Success {
		s.reset()
		return fmt.Errorf("submit: %w", resultError(r))
	}
	if err := s.wait(ctx); err != nil {
		return err
	}
	s.ticks, s.timed = nil, append(s.timed[:0], s.marks...)
	if s.queries != nil && len(s.marks) > 0 {
		s.ticks = make([]uint64, len(s.marks))
		vulkan.GetQueryPoolResults(d.handle, s.queries, 0, uint32(len(s.marks)), uint(8*len(s.marks)),
			unsafe.Pointer(&s.ticks[0]), 8, vulkan.QueryResultFlags(vulkan.QueryResult64Bit|vulkan.QueryResultWaitBit))
	}
	s.reset()
	return nil
}

// wait polls the fence so that a cancelled context is noticed; the GPU work
// itself cannot be cancelled, so on cancellation it still waits for the fence
// before the stream's memory may be reused.
func (s *Stream) wait(ctx context.Context) error {
	fences := []vulkan.Fence{s.fence}
	const slice = uint64(50 * time.Millisecond)
	for {
		r := vulkan.WaitForFences(s.dev.handle, 1, fences, vulkan.True, slice)
		switch r {
		case vulkan.Success:
			vulkan.ResetFences(s.dev.handle, 1, fences)
			return nil
		case vulkan.Timeout:
			if err := ctx.Err(); err != nil {
				vulkan.WaitForFences(s.dev.handle, 1, fences, vulkan.True, ^uint64(0))
				vulkan.ResetFences(s.dev.handle, 1, fences)
				s.reset()
				return err
			}
		default:
			s.reset()
			return fmt.Errorf("wait for device: %w", resultError(r))
		}
	}
}

func (s *Stream) reset() {
	for _, f := range s.done {
		f()
	}
	s.done = s.done[:0]
	vulkan.ResetCommandBuffer(s.cmd, 0)
	for _, p := range s.descPools {
		vulkan.ResetDescriptorPool(s.dev.handle, p, 0)
	}
	if len(s.descPools) > 0 {
		// Keep one pool; the rest were only needed by a long recording.
		for _, p := range s.descPools[1:] {
			vulkan.DestroyDescriptorPool(s.dev.handle, p, nil)
		}
		s.descPools = s.descPools[:1]
	}
	s.descUsed = 0
	s.written, s.read = s.written[:0], s.read[:0]
	s.dispatches, s.barriers = 0, 0
	s.marks = s.marks[:0]
	s.recording = false
}

// Close releases the stream. A recording that was never run is discarded.
func (s *Stream) Close() {
	h := s.dev.handle
	if s.recording {
		vulkan.EndCommandBuffer(s.cmd)
		s.recording = false
	}
	for _, f := range s.done {
		f()
	}
	s.done = nil
	for _, p := range s.descPools {
		vulkan.DestroyDescriptorPool(h, p, nil)
	}
	s.descPools = nil
	if s.queries != nil {
		vulkan.DestroyQueryPool(h, s.queries, nil)
	}
	if s.fence != nil {
		vulkan.DestroyFence(h, s.fence, nil)
	}
	if s.pool != nil {
		vulkan.DestroyCommandPool(h, s.pool, nil)
	}
}

// Device returns the device the stream records for.
func (s *Stream) Device() *Device { return s.dev }
