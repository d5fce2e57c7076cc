package loader

import (
	"bufio"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/nlpodyssey/safetensors"
)

// e2mcvk's checkpoints are safetensors files: the model under official key
// names (torchvision's for the backbone under "backbone.", the heads under
// "projector.", "predictor.", "prototypes.", "fc."), float32 with the batch
// counters as int64, and the run's metadata as strings in the header. The
// optimizer's state goes to a second file beside it (OptimPath), so that a
// model can be shared without it.

// Keys of a checkpoint's metadata. WriteCheckpoint sets MetaFormat,
// MetaFormatVersion, MetaArch, MetaEpoch and MetaOptimizerSHA256 itself; the
// others are the caller's.
const (
	// MetaFormat is "e2mcvk-checkpoint" in a model file,
	// "e2mcvk-optimizer" in an optimizer file.
	MetaFormat = "format"
	// MetaFormatVersion is the version of the file format, "1".
	MetaFormatVersion = "format_version"
	// MetaMethod is the training method ("vicreg", "swav", "simsiam").
	MetaMethod = "method"
	// MetaArch is Parts.Arch.
	MetaArch = "arch"
	// MetaEpoch is Parts.Epoch in decimal, absent when it is -1.
	MetaEpoch = "epoch"
	// MetaStep is the optimizer step the checkpoint was taken at.
	MetaStep = "step"
	// MetaArgs holds the run's arguments as JSON.
	MetaArgs = "args"
	// MetaVersion is the version of e2mcvk that wrote the file.
	MetaVersion = "e2mcvk_version"
	// MetaSourceLayout is the layout of the checkpoint the model was
	// converted from, when it was not e2mcvk's own.
	MetaSourceLayout = "source_layout"
	// MetaOptimizerSHA256 is the SHA-256 of the optimizer file written
	// with the model, so that a stale optimizer file is never paired with
	// it (a crash between the two files' renames).
	MetaOptimizerSHA256 = "optimizer_sha256"
	// MetaSteps is the optimizer's step count, in the optimizer file.
	MetaSteps = "steps"
)

const (
	formatModel     = "e2mcvk-checkpoint"
	formatOptimizer = "e2mcvk-optimizer"
	formatVersion   = 1
)

// Checkpoint is a model with its run's metadata and, for resuming, its
// optimizer's state.
type Checkpoint struct {
	Parts
	// Meta is the run's metadata (the Meta* keys).
	Meta map[string]string
	// OptState is the optimizer's state, nil when not saved or when the
	// optimizer file does not belong to the model (a note says so).
	OptState *layers.OptimizerState
}

// OptimPath returns where the optimizer state of the checkpoint at path
// goes: "run/ckpt.safetensors" keeps it in "run/ckpt.optim.safetensors".
func OptimPath(path string) string {
	return strings.TrimSuffix(path, ".safetensors") + ".optim.safetensors"
}

// WriteCheckpoint writes c's model to path and, when c.OptState is set, its
// optimizer state to OptimPath(path), each atomically (a crash leaves the
// old file or the new one, never a mixture). Everything is checked before
// the first byte is written. Parts.Optimizer (a PyTorch optimizer's pickled
// state) is not written.
func WriteCheckpoint(path string, c *Checkpoint) error {
	model, err := c.modelTensors()
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	meta := map[string]string{}
	maps.Copy(meta, c.Meta)
	delete(meta, MetaEpoch)
	delete(meta, MetaOptimizerSHA256)
	meta[MetaFormat] = formatModel
	meta[MetaFormatVersion] = strconv.Itoa(formatVersion)
	meta[MetaArch], _ = inferArch(c.Backbone)
	if c.Epoch >= 0 {
		meta[MetaEpoch] = strconv.Itoa(c.Epoch)
	}
	if c.Layout != "" && c.Layout != LayoutE2MCVK {
		meta[MetaSourceLayout] = string(c.Layout)
	}
	var opt []NamedTensor
	if c.OptState != nil {
		if c.OptState.Steps < 0 {
			return fmt.Errorf("write %s: optimizer state with %d steps", path, c.OptState.Steps)
		}
		for _, k := range slices.Sorted(maps.Keys(c.OptState.Tensors)) {
			opt = append(opt, NamedTensor{Name: k, Tensor: c.OptState.Tensors[k]})
		}
		if err := checkTensors(opt); err != nil {
			return fmt.Errorf("write %s: optimizer state: %w", OptimPath(path), err)
		}
	}
	if err := checkTensors(model); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if c.OptState != nil {
		// The optimizer file first: the model names it by its hash, so a
		// crash before the model's rename leaves the old model, which
		// refuses the new optimizer file instead of resuming from it.
		om := map[string]string{
			MetaFormat:        formatOptimizer,
			MetaFormatVersion: strconv.Itoa(formatVersion),
			MetaSteps:         strconv.Itoa(c.OptState.Steps),
		}
		h := sha256.New()
		err := writeAtomic(OptimPath(path), func(w io.Writer) error {
			return EncodeSafetensors(io.MultiWriter(w, h), opt, om)
		})
		if err != nil {
			return err
		}
		meta[MetaOptimizerSHA256] = hex.EncodeToString(h.Sum(nil))
	}
	return writeAtomic(path, func(w io.Writer) error { return EncodeSafetensors(w, model, meta) })
}

// modelTensors names c's tensors as a model file holds them.
func (c *Checkpoint) modelTensors() ([]NamedTensor, error) {
	if len(c.Backbone) == 0 {
		return nil, errors.New("the checkpoint has no backbone")
	}
	// Never write a file ReadCheckpoint would refuse.
	arch, err := inferArch(c.Backbone)
	if err != nil {
		return nil, err
	}
	if c.Arch != "" && c.Arch != arch {
		return nil, fmt.Errorf("the checkpoint says %s, its backbone is %s", c.Arch, arch)
	}
	var out []NamedTensor
	for _, k := range slices.Sorted(maps.Keys(c.Backbone)) {
		out = append(out, NamedTensor{Name: "backbone." + k, Tensor: c.Backbone[k]})
	}
	for _, h := range c.HeadNames() {
		if !isHead(h) {
			return nil, fmt.Errorf("unknown head %q: want %s, %s, %s or %s", h, HeadProjector, HeadPredictor, HeadPrototypes, HeadFC)
		}
		for _, k := range slices.Sorted(maps.Keys(c.Heads[h])) {
			out = append(out, NamedTensor{Name: h + "." + k, Tensor: c.Heads[h][k]})
		}
	}
	return out, nil
}

// ReadCheckpoint reads a model file and, when the model names one, its
// optimizer file. The model goes through SplitCheckpoint like a PyTorch
// file: Layout e2mcvk for our own files; a foreign safetensors file of
// another layout (a torchvision state dict) is taken apart by its own.
func ReadCheckpoint(path string) (*Checkpoint, error) {
	sd, meta, err := ReadSafetensors(path)
	if err != nil {
		return nil, err
	}
	if meta[MetaFormat] == formatModel {
		if v, err := strconv.Atoi(meta[MetaFormatVersion]); err != nil || v > formatVersion {
			return nil, fmt.Errorf("read %s: checkpoint format version %q: this e2mcvk reads version %d; use a newer one", path, meta[MetaFormatVersion], formatVersion)
		}
	} else if meta[MetaFormat] != "" {
		return nil, fmt.Errorf("read %s: a %s file, not a model checkpoint", path, meta[MetaFormat])
	}
	p, err := SplitCheckpoint(sd, "")
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	c := &Checkpoint{Parts: *p, Meta: meta}
	if s, ok := meta[MetaEpoch]; ok {
		e, err := strconv.Atoi(s)
		if err != nil || e < 0 {
			return nil, fmt.Errorf("read %s: epoch %q in its metadata is not a count", path, s)
		}
		c.Epoch = e
	}
	if a := meta[MetaArch]; a != "" && a != c.Arch {
		c.notef("the checkpoint's metadata says %s, its backbone's shapes say %s: using %s", a, c.Arch, c.Arch)
	}
	if want := meta[MetaOptimizerSHA256]; want != "" {
		st, err := readOptimizer(OptimPath(path), want)
		switch {
		case errors.Is(err, errStaleOptimizer), errors.Is(err, os.ErrNotExist):
			c.notef("no optimizer state: %v", err)
		case err != nil:
			return nil, err
		default:
			c.OptState = st
		}
	}
	return c, nil
}

var errStaleOptimizer = errors.New("the optimizer file belongs to another checkpoint")

// readOptimizer reads an optimizer file whose SHA-256 must be sum.
func readOptimizer(path, sum string) (*layers.OptimizerState, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(raw)
	if hex.EncodeToString(h[:]) != sum {
		return nil, fmt.Errorf("%s: %w (written after it by an interrupted save?)", path, errStaleOptimizer)
	}
	ts, meta, err := DecodeSafetensors(raw)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if meta[MetaFormat] != formatOptimizer {
		return nil, fmt.Errorf("read %s: not an e2mcvk optimizer file", path)
	}
	steps, err := strconv.Atoi(meta[MetaSteps])
	if err != nil || steps < 0 {
		return nil, fmt.Errorf("read %s: steps %q is not a count", path, meta[MetaSteps])
	}
	st := &layers.OptimizerState{Steps: steps, Tensors: map[string]layers.HostTensor{}}
	for _, t := range ts {
		st.Tensors[t.Name] = t.Tensor
	}
	return st, nil
}

// ReadSafetensors reads a safetensors file into a dictionary of tensors (in
// the file's order), converting floating types to float32 and int64
// tensors to counters (HostTensor.Int64), and returns its metadata.
func ReadSafetensors(path string) (*Dict, map[string]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	ts, meta, err := DecodeSafetensors(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	d := NewDict()
	for _, t := range ts {
		d.Set(t.Name, t.Tensor)
	}
	return d, meta, nil
}

// WriteSafetensors writes tensors and metadata to path atomically.
func WriteSafetensors(path string, tensors []NamedTensor, meta map[string]string) error {
	if err := checkTensors(tensors); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return writeAtomic(path, func(w io.Writer) error { return EncodeSafetensors(w, tensors, meta) })
}

// DecodeSafetensors decodes a whole safetensors file. F32, F64, F16 and
// BF16 tensors become float32; I64 tensors become counters, which must be
// exact in a float32. Tensors come in the order of their data in the file.
func DecodeSafetensors(raw []byte) (ts []NamedTensor, meta map[string]string, err error) {
	defer func() {
		// The library checks offsets and sizes against the file; recover
		// keeps a hostile header from ever becoming a panic should one
		// check be missing.
		if r := recover(); r != nil {
			ts, meta, err = nil, nil, fmt.Errorf("corrupt safetensors file: %v", r)
		}
	}()
	n, md, err := safetensors.ReadMetadata(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("not a valid safetensors file: %w", err)
	}
	data := raw[8+n:]
	infos := md.Tensors()
	names := slices.SortedFunc(maps.Keys(infos), func(a, b string) int {
		return cmp.Compare(infos[a].DataOffsets[0], infos[b].DataOffsets[0])
	})
	for _, name := range names {
		info := infos[name]
		t, err := hostTensor(info.DType, info.Shape, data[info.DataOffsets[0]:info.DataOffsets[1]])
		if err != nil {
			return nil, nil, fmt.Errorf("tensor %s: %w", name, err)
		}
		ts = append(ts, NamedTensor{Name: name, Tensor: t})
	}
	meta = md.Metadata()
	if meta == nil {
		meta = map[string]string{}
	}
	return ts, meta, nil
}

// hostTensor converts a tensor of the file to float32.
func hostTensor(dtype safetensors.DType, dims []uint64, raw []byte) (layers.HostTensor, error) {
	shape := make([]int, len(dims))
	for i, s := range dims {
		if s > math.MaxInt32 {
			return layers.HostTensor{}, fmt.Errorf("dimension %d too large", s)
		}
		shape[i] = int(s)
	}
	var data []float32
	t := layers.HostTensor{Shape: shape}
	switch dtype {
	case safetensors.F32:
		data = make([]float32, len(raw)/4)
		for i := range data {
			data[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	case safetensors.F64:
		data = make([]float32, len(raw)/8)
		for i := range data {
			data[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:])))
		}
	case safetensors.F16:
		data = make([]float32, len(raw)/2)
		for i := range data {
			data[i] = halfToFloat(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	case safetensors.BF16:
		data = make([]float32, len(raw)/2)
		for i := range data {
			data[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(raw[2*i:])) << 16)
		}
	case safetensors.I64:
		data = make([]float32, len(raw)/8)
		for i := range data {
			n := int64(binary.LittleEndian.Uint64(raw[8*i:]))
			if n > 1<<24 || n < -(1<<24) {
				return t, fmt.Errorf("int64 value %d is too large for a counter", n)
			}
			data[i] = float32(n)
		}
		t.Int64 = true
	default:
		return t, fmt.Errorf("dtype %s is not supported (want F32, F64, F16, BF16 or I64)", dtype)
	}
	t.Data = data
	return t, nil
}

// halfToFloat converts an IEEE 754 binary16 value to float32.
func halfToFloat(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0xff<<23 | mant<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal: mant * 2^-24.
	f := float32(mant) / (1 << 24)
	if sign != 0 {
		f = -f
	}
	return f
}

// checkTensors checks that every tensor's data fits its shape and that
// counters hold integers, and that names are unique.
func checkTensors(ts []NamedTensor) error {
	seen := map[string]bool{}
	for _, t := range ts {
		if t.Name == "" || t.Name == "__metadata__" {
			return fmt.Errorf("invalid tensor name %q", t.Name)
		}
		if seen[t.Name] {
			return fmt.Errorf("tensor %s appears twice", t.Name)
		}
		seen[t.Name] = true
		n := 1
		for _, s := range t.Tensor.Shape {
			if s < 0 {
				return fmt.Errorf("tensor %s: shape %v", t.Name, t.Tensor.Shape)
			}
			n *= s
		}
		if n != len(t.Tensor.Data) {
			return fmt.Errorf("tensor %s: shape %v holds %d values, the data %d", t.Name, t.Tensor.Shape, n, len(t.Tensor.Data))
		}
		if t.Tensor.Int64 {
			for _, v := range t.Tensor.Data {
				if v != float32(math.Trunc(float64(v))) {
					return fmt.Errorf("tensor %s: counter value %v is not an integer", t.Name, v)
				}
			}
		}
	}
	return nil
}

// EncodeSafetensors writes tensors in safetensors format: float32 as F32,
// counters (HostTensor.Int64) as I64. The tensors must pass checkTensors
// (WriteSafetensors and WriteCheckpoint check them).
func EncodeSafetensors(w io.Writer, tensors []NamedTensor, meta map[string]string) error {
	if err := checkTensors(tensors); err != nil {
		return err
	}
	views := make(map[string]hostView, len(tensors))
	for _, t := range tensors {
		views[t.Name] = hostView{t.Tensor}
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := safetensors.SerializeToWriter(views, meta, bw); err != nil {
		return err
	}
	return bw.Flush()
}

// hostView is a HostTensor as the safetensors writer sees it; Data
// converts one tensor at a time, so a file is never whole in memory.
type hostView struct{ t layers.HostTensor }

func (v hostView) DType() safetensors.DType {
	if v.t.Int64 {
		return safetensors.I64
	}
	return safetensors.F32
}

func (v hostView) Shape() []uint64 {
	// Never nil: a scalar's shape is [], not null, in the header.
	s := make([]uint64, len(v.t.Shape))
	for i, d := range v.t.Shape {
		s[i] = uint64(d)
	}
	return s
}

func (v hostView) DataLen() uint64 {
	if v.t.Int64 {
		return 8 * uint64(len(v.t.Data))
	}
	return 4 * uint64(len(v.t.Data))
}

func (v hostView) Data() []byte {
	if v.t.Int64 {
		out := make([]byte, 0, 8*len(v.t.Data))
		for _, x := range v.t.Data {
			out = binary.LittleEndian.AppendUint64(out, uint64(int64(x)))
		}
		return out
	}
	out := make([]byte, 0, 4*len(v.t.Data))
	for _, x := range v.t.Data {
		out = binary.LittleEndian.AppendUint32(out, math.Float32bits(x))
	}
	return out
}
