package loader

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"os"
	"strconv"
	"strings"

	"github.com/nlpodyssey/gopickle/types"

	"github.com/e2mcvk/e2mcvk/layers"
)

// Reading PyTorch checkpoints (.pth, .pt, .pth.tar: whatever torch.save
// wrote) in both of torch.save's formats:
//
//   - the zip format (torch >= 1.6): <archive>/data.pkl, the pickled object
//     whose tensors name their storages by persistent id, and one record
//     <archive>/data/<key> per storage, raw little-endian values;
//   - the legacy format (torch.save(..., _use_new_zipfile_serialization=False)
//     and older torch): five pickles in a row (magic number, protocol
//     version, system info, the object, the list of storage keys), then
//     each storage as an int64 element count and its raw values.
//
// Pickles go through the allow-listed unpickler of pickle.go.

// Limits that keep a corrupt or hostile file from exhausting memory.
const (
	// maxPickleRecord bounds data.pkl; a checkpoint's pickle holds names
	// and small numbers, its tensors live in the storage records.
	maxPickleRecord = 1 << 30
	// maxNesting bounds how deeply containers nest.
	maxNesting = 1000
	// extraTensorValues is how many values tensors may hold beyond four
	// times the values of the storages they view (views may overlap, and
	// expanded tensors have zero strides).
	extraTensorValues = 1 << 20
)

// legacyMagic is the magic number that starts a legacy checkpoint.
const legacyMagic = "1950a86a20f9469cfc6c"

// ReadPth reads a PyTorch checkpoint written by torch.save and returns its
// root object in the object model of torchfile.go. Only weights are loaded,
// like torch.load(weights_only=True): a pickle naming any other Python
// global is refused with a *RefusedGlobalError before any of it is
// executed.
//
// Tensors of float32, float16, bfloat16 and float64 load as float32 values
// in row-major order whatever their strides; int64, int32, uint8 and bool
// tensors load with Int64 set (values exact below 2^24). Tuples and
// torch.Size load as []any, bytes as string, a dtype as its name
// ("torch.float16"); an OrderedDict's attributes (a state dict's
// _metadata) are dropped.
func ReadPth(path string) (any, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return nil, fmt.Errorf("load %s: a directory, not a checkpoint file", path)
	}
	return DecodePth(f, st.Size(), path)
}

// DecodePth reads a checkpoint of size bytes from r, like ReadPth; name is
// used in error messages.
func DecodePth(r io.ReaderAt, size int64, name string) (any, error) {
	v, err := decodePth(r, size)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	return v, nil
}

func decodePth(r io.ReaderAt, size int64) (any, error) {
	if size <= 0 {
		return nil, errors.New("not a PyTorch checkpoint: the file is empty")
	}
	head := make([]byte, min(size, 512))
	if n, err := r.ReadAt(head, 0); n < len(head) {
		return nil, fmt.Errorf("read: %w", err)
	}
	switch {
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return decodeZip(r, size)
	case len(head) >= 262 && string(head[257:262]) == "ustar":
		return nil, errors.New("the tar checkpoint format of PyTorch before 0.4 is not supported: " +
			"load the file with torch.load and save it again with torch.save")
	}
	return decodeLegacy(r, size)
}

// decodeZip reads the zip format.
func decodeZip(r io.ReaderAt, size int64) (any, error) {
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return nil, fmt.Errorf("truncated or corrupt zip archive: %w", err)
	}
	if len(zr.File) == 0 {
		return nil, errors.New("not a PyTorch checkpoint: an empty zip archive")
	}
	// Like torch's reader: every record lies in the folder of the first.
	prefix, _, ok := strings.Cut(zr.File[0].Name, "/")
	if !ok {
		return nil, fmt.Errorf("not a PyTorch checkpoint: zip entry %q is not in an archive folder", zr.File[0].Name)
	}
	files := map[string]*zip.File{}
	for _, f := range zr.File {
		if _, dup := files[f.Name]; !dup {
			files[f.Name] = f
		}
	}
	pkl := files[prefix+"/data.pkl"]
	if pkl == nil {
		if files[prefix+"/constants.pkl"] != nil {
			return nil, errors.New("a TorchScript archive (torch.jit.save), not a checkpoint: " +
				"save the model's state_dict() with torch.save")
		}
		return nil, fmt.Errorf("not a PyTorch checkpoint: the zip archive has no %s/data.pkl", prefix)
	}
	if f := files[prefix+"/byteorder"]; f != nil {
		b, err := readRecord(f, size, -1, 16)
		if err != nil {
			return nil, err
		}
		if order := strings.TrimSpace(string(b)); order != "little" {
			return nil, fmt.Errorf("the checkpoint was written in %q byte order; only little-endian files are read", order)
		}
	}
	data, err := readRecord(pkl, size, -1, maxPickleRecord)
	if err != nil {
		return nil, err
	}
	d := &pthDecoder{storages: map[string]*storage{}}
	root, err := loadPickle(data, d.persistentLoad)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", pkl.Name, err)
	}
	for _, st := range d.order {
		name := prefix + "/data/" + st.key
		f := files[name]
		if f == nil {
			return nil, fmt.Errorf("storage %q is missing from the archive (no record %s)", st.key, name)
		}
		if st.numel > math.MaxInt64/int64(st.dt.size) {
			return nil, fmt.Errorf("storage %q of %d values is too large", st.key, st.numel)
		}
		nbytes := st.numel * int64(st.dt.size)
		if st.data, err = readRecord(f, size, nbytes, nbytes); err != nil {
			return nil, fmt.Errorf("storage %q (%d values of %s): %w", st.key, st.numel, st.dt.name, err)
		}
		st.loaded = true
	}
	return d.convertRoot(root)
}

// readRecord reads the first n bytes of a zip record, or all of it if n is
// negative (at most max bytes), and checks the record's CRC.
func readRecord(f *zip.File, archiveSize, n, max int64) ([]byte, error) {
	if n < 0 {
		if f.UncompressedSize64 > uint64(max) {
			return nil, fmt.Errorf("record %s of %d bytes is too large", f.Name, f.UncompressedSize64)
		}
		n = int64(f.UncompressedSize64)
	}
	if uint64(n) > f.UncompressedSize64 {
		return nil, fmt.Errorf("record %s holds %d bytes, %d needed", f.Name, f.UncompressedSize64, n)
	}
	stored := f.Method == zip.Store
	if stored && (f.CompressedSize64 > uint64(archiveSize) || uint64(n) > f.CompressedSize64) {
		return nil, fmt.Errorf("record %s: corrupt sizes (truncated archive?)", f.Name)
	}
	rc, err := f.Open()
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", f.Name, err)
	}
	defer rc.Close()
	var buf []byte
	if stored {
		buf = make([]byte, n)
		_, err = io.ReadFull(rc, buf)
	} else {
		// Grow with what the decompressor really gives rather than trust
		// the header.
		buf, err = io.ReadAll(io.LimitReader(rc, n))
		if err == nil && int64(len(buf)) < n {
			err = io.ErrUnexpectedEOF
		}
	}
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", f.Name, err)
	}
	// Read to the end so that archive/zip checks the CRC.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return nil, fmt.Errorf("record %s: %w", f.Name, err)
	}
	return buf, nil
}

// decodeLegacy reads the legacy format.
func decodeLegacy(r io.ReaderAt, size int64) (any, error) {
	var off int64
	// next reads the pickle at off.
	next := func(persistentLoad func(any) (any, error)) (any, error) {
		n, err := scanPickle(io.NewSectionReader(r, off, size-off), size-off)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, n)
		if m, err := r.ReadAt(buf, off); int64(m) < n {
			return nil, fmt.Errorf("read: %w", err)
		}
		off += n
		return loadPickle(buf, persistentLoad)
	}
	magic, err := next(nil)
	if err != nil {
		var refused *RefusedGlobalError
		if errors.As(err, &refused) {
			return nil, err
		}
		return nil, fmt.Errorf("not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file): %w", err)
	}
	if m, ok := magic.(*big.Int); !ok || m.Text(16) != legacyMagic {
		return nil, errors.New("not a PyTorch checkpoint: a pickle without torch.save's magic number (written by pickle.dump?)")
	}
	version, err := next(nil)
	if err != nil {
		return nil, fmt.Errorf("legacy header: %w", err)
	}
	if v, ok := version.(int); !ok || v != 1001 {
		return nil, fmt.Errorf("legacy checkpoint of unknown protocol version %v", version)
	}
	info, err := next(nil)
	if err != nil {
		return nil, fmt.Errorf("legacy header: %w", err)
	}
	if info, ok := info.(*types.Dict); ok {
		if little, ok := info.Get("little_endian"); ok && little != true {
			return nil, errors.New("the checkpoint was written on a big-endian machine; only little-endian files are read")
		}
	}
	d := &pthDecoder{storages: map[string]*storage{}, legacy: true}
	root, err := next(d.persistentLoad)
	if err != nil {
		return nil, fmt.Errorf("data pickle: %w", err)
	}
	keysV, err := next(nil)
	if err != nil {
		return nil, fmt.Errorf("storage list: %w", err)
	}
	list, ok := keysV.(*types.List)
	if !ok {
		return nil, fmt.Errorf("storage list: a list expected, got %T", keysV)
	}
	for _, k := range *list {
		key, ok := k.(string)
		if !ok {
			return nil, fmt.Errorf("storage list: key of type %T", k)
		}
		st := d.storages[key]
		if st == nil {
			return nil, fmt.Errorf("storage list names %q, which no tensor uses", key)
		}
		if st.loaded {
			return nil, fmt.Errorf("storage list names %q twice", key)
		}
		var head [8]byte
		if m, _ := r.ReadAt(head[:], off); m < 8 {
			return nil, fmt.Errorf("storage %q: the file ends before its data (truncated file)", key)
		}
		off += 8
		numel := int64(binary.LittleEndian.Uint64(head[:]))
		if numel < 0 || numel > (size-off)/int64(st.dt.size) {
			return nil, fmt.Errorf("storage %q of %d values of %s: the file ends after %d bytes (truncated file)",
				key, numel, st.dt.name, size-off)
		}
		// Like torch, the count in the file, not the one in the pickle,
		// sizes the storage; views are checked against it.
		st.numel = numel
		st.data = make([]byte, numel*int64(st.dt.size))
		if m, err := r.ReadAt(st.data, off); m < len(st.data) {
			return nil, fmt.Errorf("storage %q: %w", key, err)
		}
		off += int64(len(st.data))
		st.loaded = true
	}
	for _, st := range d.order {
		if !st.loaded {
			return nil, fmt.Errorf("storage %q is missing from the file", st.key)
		}
	}
	return d.convertRoot(root)
}

// storage is one storage of a checkpoint: its values as raw little-endian
// bytes.
type storage struct {
	key    string
	dt     dtype
	numel  int64
	data   []byte
	loaded bool
}

// tensorRef is a tensor as the pickle rebuilds it: a strided view of a
// storage, materialised once the storages are read.
type tensorRef struct {
	st           *storage
	offset       int64
	size, stride []int64
}

// pthDecoder holds the state of one checkpoint's decoding.
type pthDecoder struct {
	storages map[string]*storage
	order    []*storage // in order of first use
	legacy   bool
	// budget is how many more tensor values may be materialised.
	budget int64
	// done maps the pickle's containers and tensors to their conversions,
	// so that shared objects are converted once (and cycles found).
	done map[any]any
}

// persistentLoad resolves a storage's persistent id: ('storage',
// torch.<T>Storage, key, location, numel) in the zip format, with a sixth
// entry (view metadata, None since PyTorch 0.4) in the legacy one.
// Storages of any location load on the host.
func (d *pthDecoder) persistentLoad(pid any) (any, error) {
	t, ok := pid.(*types.Tuple)
	if !ok || t.Len() == 0 {
		return nil, fmt.Errorf("persistent id of type %T is not a storage", pid)
	}
	if kind := asString(t.Get(0)); kind != "storage" {
		return nil, fmt.Errorf("persistent id %q is not a storage", kind)
	}
	want := 5
	if d.legacy {
		want = 6
	}
	if t.Len() != want {
		return nil, fmt.Errorf("storage id with %d entries, %d expected", t.Len(), want)
	}
	typ, ok1 := t.Get(1).(storageType)
	key, ok2 := t.Get(2).(string)
	numel, ok3 := t.Get(4).(int)
	if !ok1 || !ok2 || !ok3 || numel < 0 {
		return nil, errors.New("malformed storage id")
	}
	if d.legacy && t.Get(5) != nil {
		return nil, errors.New("storage views (checkpoints of PyTorch before 0.4) are not supported")
	}
	if st := d.storages[key]; st != nil {
		if st.dt != typ.dt {
			return nil, fmt.Errorf("storage %q is used as %s and as %s", key, st.dt.name, typ.dt.name)
		}
		return st, nil
	}
	st := &storage{key: key, dt: typ.dt, numel: int64(numel)}
	d.storages[key] = st
	d.order = append(d.order, st)
	return st, nil
}

// asString returns v if it is a string or bytes, else "".
func asString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// inProgress marks a container whose conversion has begun.
type inProgress struct{}

// convertRoot converts the unpickled root to the object model.
func (d *pthDecoder) convertRoot(root any) (any, error) {
	var total int64
	for _, st := range d.order {
		total += st.numel
	}
	d.budget = 4*total + extraTensorValues
	d.done = map[any]any{}
	return d.convert(root, 0)
}

// convert converts one unpickled value.
func (d *pthDecoder) convert(v any, depth int) (any, error) {
	switch v := v.(type) {
	case nil, bool, float64, string:
		return v, nil
	case int:
		return int64(v), nil
	case *big.Int:
		if !v.IsInt64() {
			return nil, fmt.Errorf("integer %s does not fit in 64 bits", v)
		}
		return v.Int64(), nil
	case []byte:
		return string(v), nil
	case *types.ByteArray:
		return string(*v), nil
	case torchDType:
		return "torch." + v.name, nil
	case inertGlobal:
		return "global:" + v.module + "." + v.name, nil
	case sizeValue:
		out := make([]any, len(v))
		for i, n := range v {
			out[i] = n
		}
		return out, nil
	case *tensorRef, *types.List, *types.Tuple, *types.Dict, *types.OrderedDict:
		if depth >= maxNesting {
			return nil, fmt.Errorf("containers nested more than %d deep", maxNesting)
		}
		if out, ok := d.done[v]; ok {
			if _, busy := out.(inProgress); busy {
				return nil, errors.New("the pickle holds a container that contains itself")
			}
			return out, nil
		}
		d.done[v] = inProgress{}
		out, err := d.convertShared(v, depth)
		if err != nil {
			return nil, err
		}
		d.done[v] = out
		return out, nil
	case *storage:
		return nil, errors.New("a bare storage (not a tensor) is not supported")
	case storageType, rebuildTensor, rebuildParameter, torchSize, codecsEncode, *types.OrderedDictClass:
		return nil, fmt.Errorf("the checkpoint holds the class or function %T itself, not a value", v)
	}
	return nil, fmt.Errorf("values of Python type %T are not supported", v)
}

// convertShared converts a container or tensor.
func (d *pthDecoder) convertShared(v any, depth int) (any, error) {
	switch v := v.(type) {
	case *tensorRef:
		return d.tensor(v)
	case *types.List:
		return d.list(*v, depth)
	case *types.Tuple:
		return d.list(*v, depth)
	case *types.Dict:
		out := NewDict()
		for _, e := range *v {
			if err := d.setItem(out, e.Key, e.Value, depth); err != nil {
				return nil, err
			}
		}
		return out, nil
	case *types.OrderedDict:
		// The OrderedDict's attributes (a state dict's _metadata) are
		// dropped.
		out := NewDict()
		for e := v.List.Front(); e != nil; e = e.Next() {
			entry, ok := e.Value.(*types.OrderedDictEntry)
			if !ok {
				return nil, errors.New("corrupt OrderedDict")
			}
			if err := d.setItem(out, entry.Key, entry.Value, depth); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("values of Python type %T are not supported", v)
}

func (d *pthDecoder) list(items []any, depth int) ([]any, error) {
	out := make([]any, len(items))
	for i, x := range items {
		c, err := d.convert(x, depth+1)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		out[i] = c
	}
	return out, nil
}

// setItem adds one dictionary entry; integer keys (optimizer state is keyed
// by parameter index) become decimal strings.
func (d *pthDecoder) setItem(out *Dict, k, v any, depth int) error {
	var key string
	switch k := k.(type) {
	case string:
		key = k
	case []byte:
		key = string(k)
	case int:
		key = strconv.Itoa(k)
	case *big.Int:
		key = k.String()
	default:
		return fmt.Errorf("dictionary key of Python type %T is not supported", k)
	}
	if _, dup := out.Values[key]; dup {
		return fmt.Errorf("dictionary key %q appears twice", key)
	}
	c, err := d.convert(v, depth+1)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	out.Set(key, c)
	return nil
}

// tensor materialises a tensor's view of its storage as row-major float32
// values.
func (d *pthDecoder) tensor(t *tensorRef) (layers.HostTensor, error) {
	st := t.st
	if !st.loaded {
		return layers.HostTensor{}, fmt.Errorf("storage %q was not read", st.key)
	}
	shape := make([]int, len(t.size))
	numel := int64(1)
	for i, n := range t.size {
		if n < 0 || t.stride[i] < 0 {
			return layers.HostTensor{}, fmt.Errorf("tensor of size %v and strides %v", t.size, t.stride)
		}
		if n > 0 && numel > d.budget/n {
			return layers.HostTensor{}, fmt.Errorf("tensor of size %v holds more values than the file's storages (expanded tensors are not supported)", t.size)
		}
		numel *= n
		shape[i] = int(n)
	}
	if numel > d.budget {
		return layers.HostTensor{}, fmt.Errorf("tensor of size %v holds more values than the file's storages (expanded tensors are not supported)", t.size)
	}
	d.budget -= numel
	data := make([]float32, numel)
	if numel > 0 {
		// The last value the view reads must lie in the storage.
		last := t.offset
		if last >= st.numel {
			return layers.HostTensor{}, d.shortStorage(t)
		}
		for i, n := range t.size {
			if s := t.stride[i]; n > 1 && s > 0 {
				if n-1 > (st.numel-1-last)/s {
					return layers.HostTensor{}, d.shortStorage(t)
				}
				last += (n - 1) * s
			}
		}
		materialize(st, t, data)
	}
	return layers.HostTensor{Shape: shape, Data: data, Int64: st.dt.integer}, nil
}

func (d *pthDecoder) shortStorage(t *tensorRef) error {
	return fmt.Errorf("storage %q holds %d values, too few for a tensor of size %v, strides %v at offset %d",
		t.st.key, t.st.numel, t.size, t.stride, t.offset)
}

// materialize copies the view t (checked to lie in its storage) into dst
// in row-major order, one run along the last dimension at a time.
func materialize(st *storage, t *tensorRef, dst []float32) {
	nd := len(t.size)
	if nd == 0 {
		convertRun(st.dt, dst, st.data, t.offset, 1)
		return
	}
	// A contiguous tensor is a single run.
	contiguous, want := true, int64(1)
	for i := nd - 1; i >= 0; i-- {
		if t.size[i] != 1 && t.stride[i] != want {
			contiguous = false
			break
		}
		want *= t.size[i]
	}
	if contiguous {
		convertRun(st.dt, dst, st.data, t.offset, 1)
		return
	}
	inner, step := t.size[nd-1], t.stride[nd-1]
	idx := make([]int64, nd-1)
	start := t.offset
	for at := int64(0); at < int64(len(dst)); at += inner {
		convertRun(st.dt, dst[at:at+inner], st.data, start, step)
		// Advance the odometer over the outer dimensions.
		for k := nd - 2; k >= 0; k-- {
			idx[k]++
			start += t.stride[k]
			if idx[k] < t.size[k] {
				break
			}
			start -= idx[k] * t.stride[k]
			idx[k] = 0
		}
	}
}

// convertRun converts len(dst) values of storage data starting at value
// start, step values apart, to float32.
func convertRun(dt dtype, dst []float32, src []byte, start, step int64) {
	le := binary.LittleEndian
	switch dt.name {
	case "FloatStorage":
		for i := range dst {
			dst[i] = math.Float32frombits(le.Uint32(src[(start+int64(i)*step)*4:]))
		}
	case "DoubleStorage":
		for i := range dst {
			dst[i] = float32(math.Float64frombits(le.Uint64(src[(start+int64(i)*step)*8:])))
		}
	case "HalfStorage":
		for i := range dst {
			dst[i] = math.Float32frombits(halfToFloat32Bits(le.Uint16(src[(start+int64(i)*step)*2:])))
		}
	case "BFloat16Storage":
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(le.Uint16(src[(start+int64(i)*step)*2:])) << 16)
		}
	case "LongStorage":
		for i := range dst {
			dst[i] = float32(int64(le.Uint64(src[(start+int64(i)*step)*8:])))
		}
	case "IntStorage":
		for i := range dst {
			dst[i] = float32(int32(le.Uint32(src[(start+int64(i)*step)*4:])))
		}
	case "ByteStorage":
		for i := range dst {
			dst[i] = float32(src[start+int64(i)*step])
		}
	case "BoolStorage":
		for i := range dst {
			if src[start+int64(i)*step] != 0 {
				dst[i] = 1
			}
		}
	}
}

// halfToFloat32Bits converts IEEE half-precision bits to single-precision
// bits exactly (every half value is a float32 value).
func halfToFloat32Bits(h uint16) uint32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // infinity or NaN, payload kept
		return sign | 0x7f800000 | mant<<13
	case exp == 0 && mant == 0:
		return sign
	case exp == 0: // subnormal: normalise
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return sign | e<<23 | (mant&0x3ff)<<13
	}
	return sign | (exp+127-15)<<23 | mant<<13
}
