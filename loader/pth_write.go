package loader

import (
	"archive/zip"
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/e2mcvk/e2mcvk/layers"
)

// Writing checkpoints in PyTorch's zip format, as torch.save writes them,
// so that torch.load (1.13 and later) reads them and a state dict goes
// straight into load_state_dict.

// pthAlign is the alignment of every record's data in the archive, as
// torch's writer pads them (so that newer torch can map storages in
// place).
const pthAlign = 64

// pthArchive is the folder name of the records; torch's reader takes
// whatever the first record's folder is.
const pthArchive = "archive"

// WritePth writes root as a PyTorch checkpoint in torch.save's zip format,
// atomically (a reader sees the old file or the whole new one).
//
// Tensors are written as float32 (torch.FloatStorage), or as int64
// (torch.LongStorage) when Int64 is set, each with its own storage. A
// *Dict whose values are all tensors (a state dict) is written as a
// collections.OrderedDict, any other as a dict; a dict whose keys are all
// decimal integers (optimizer state, keyed by parameter index) gets int
// keys again, undoing what ReadPth does. Lists are written as lists; the
// other values (string, int64, int, float64, float32, bool, nil) as the
// Python values they stand for.
func WritePth(path string, root *Dict) error {
	return writeAtomic(path, func(w io.Writer) error { return encodePth(w, root) })
}

// encodePth writes the checkpoint to w.
func encodePth(w io.Writer, root *Dict) error {
	if root == nil {
		return errors.New("nil checkpoint")
	}
	p := &pickler{}
	p.buf.WriteString("\x80\x02") // PROTO 2, as torch.save writes
	if err := p.value(root, "", 0); err != nil {
		return err
	}
	p.buf.WriteByte('.') // STOP

	records := []record{{name: "data.pkl", data: p.buf.Bytes()}}
	for i, s := range p.storages {
		records = append(records, record{name: "data/" + strconv.Itoa(i), data: s})
	}
	records = append(records, record{name: "version", data: []byte("3\n")})
	return writeRecords(w, records)
}

// record is one entry of the archive, named relative to its folder.
type record struct {
	name string
	data []byte
}

// writeRecords writes the zip archive: every entry stored uncompressed,
// its data aligned to pthAlign bytes by a padding extra field, as torch's
// writer does ("FB" field of 'Z's).
func writeRecords(w io.Writer, records []record) error {
	bw := bufio.NewWriter(w)
	zw := zip.NewWriter(bw)
	var offset int64 // where the next local header starts
	for _, r := range records {
		name := pthArchive + "/" + r.name
		// A local file header is 30 bytes, then the name, then the extra
		// field; Go writes no zip64 field there for raw entries.
		start := offset + 30 + int64(len(name)) + 4
		pad := (pthAlign - start%pthAlign) % pthAlign
		extra := make([]byte, 4+pad)
		copy(extra, "FB")
		binary.LittleEndian.PutUint16(extra[2:], uint16(pad))
		for i := 4; i < len(extra); i++ {
			extra[i] = 'Z'
		}
		fh := &zip.FileHeader{
			Name:               name,
			Method:             zip.Store,
			CRC32:              crc32.ChecksumIEEE(r.data),
			CompressedSize64:   uint64(len(r.data)),
			UncompressedSize64: uint64(len(r.data)),
			Extra:              extra,
		}
		fw, err := zw.CreateRaw(fh)
		if err != nil {
			return err
		}
		if _, err := fw.Write(r.data); err != nil {
			return err
		}
		offset = start + pad + int64(len(r.data))
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// pickler writes a checkpoint's pickle (protocol 2, the opcodes torch.save
// uses) and collects its storages.
type pickler struct {
	buf      bytes.Buffer
	storages [][]byte
}

// value writes v; path names it in errors.
func (p *pickler) value(v any, path string, depth int) error {
	if depth > maxNesting {
		return fmt.Errorf("%s: containers nested more than %d deep (a cycle?)", where(path), maxNesting)
	}
	b := &p.buf
	switch v := v.(type) {
	case nil:
		b.WriteByte('N')
	case bool:
		if v {
			b.WriteByte(0x88) // NEWTRUE
		} else {
			b.WriteByte(0x89) // NEWFALSE
		}
	case int64:
		p.int(v)
	case int:
		p.int(int64(v))
	case float64:
		p.float(v)
	case float32:
		p.float(float64(v))
	case string:
		if !utf8.ValidString(v) {
			return fmt.Errorf("%s: string is not valid UTF-8", where(path))
		}
		p.str(v)
	case []any:
		b.WriteByte(']') // EMPTY_LIST
		if len(v) > 0 {
			b.WriteByte('(') // MARK
			for i, x := range v {
				if err := p.value(x, path+"["+strconv.Itoa(i)+"]", depth+1); err != nil {
					return err
				}
			}
			b.WriteByte('e') // APPENDS
		}
	case *Dict:
		return p.dict(v, path, depth)
	case layers.HostTensor:
		return p.tensor(v, path)
	default:
		return fmt.Errorf("%s: values of type %T cannot be written to a checkpoint", where(path), v)
	}
	return nil
}

// where names a path for errors.
func where(path string) string {
	if path == "" {
		return "checkpoint root"
	}
	return path
}

func (p *pickler) dict(d *Dict, path string, depth int) error {
	b := &p.buf
	stateDict := len(d.Keys) > 0
	intKeys := len(d.Keys) > 0
	for _, k := range d.Keys {
		if _, ok := d.Values[k].(layers.HostTensor); !ok {
			stateDict = false
		}
		if !isDecimal(k) {
			intKeys = false
		}
	}
	if len(d.Values) != len(d.Keys) {
		return fmt.Errorf("%s: Dict with %d keys and %d values (use Set)", where(path), len(d.Keys), len(d.Values))
	}
	if stateDict {
		b.WriteString("ccollections\nOrderedDict\n)R") // GLOBAL, EMPTY_TUPLE, REDUCE
		intKeys = false
	} else {
		b.WriteByte('}') // EMPTY_DICT
	}
	if len(d.Keys) == 0 {
		return nil
	}
	b.WriteByte('(') // MARK
	for _, k := range d.Keys {
		v, ok := d.Values[k]
		if !ok {
			return fmt.Errorf("%s: key %q has no value (use Set)", where(path), k)
		}
		if intKeys {
			n, _ := strconv.ParseInt(k, 10, 64)
			p.int(n)
		} else {
			p.str(k)
		}
		sub := k
		if path != "" {
			sub = path + "." + k
		}
		if err := p.value(v, sub, depth+1); err != nil {
			return err
		}
	}
	b.WriteByte('u') // SETITEMS
	return nil
}

// isDecimal reports whether k is an integer as Python's str(int) writes it.
func isDecimal(k string) bool {
	n, err := strconv.ParseInt(k, 10, 64)
	return err == nil && strconv.FormatInt(n, 10) == k
}

// tensor writes torch._utils._rebuild_tensor_v2(storage, 0, size, stride,
// False, OrderedDict()) with the storage as persistent id ('storage',
// torch.FloatStorage or torch.LongStorage, key, 'cpu', numel), and records
// the storage's bytes.
func (p *pickler) tensor(t layers.HostTensor, path string) error {
	numel := 1
	for _, n := range t.Shape {
		if n < 0 {
			return fmt.Errorf("%s: tensor of shape %v", where(path), t.Shape)
		}
		numel *= n
	}
	if numel != len(t.Data) {
		return fmt.Errorf("%s: tensor of shape %v holds %d values, not %d", where(path), t.Shape, len(t.Data), numel)
	}
	var data []byte
	class := "FloatStorage"
	if t.Int64 {
		class = "LongStorage"
		data = make([]byte, 8*numel)
		for i, v := range t.Data {
			if v != float32(math.Trunc(float64(v))) || math.Abs(float64(v)) > 1<<62 {
				return fmt.Errorf("%s: int64 tensor holds %v", where(path), v)
			}
			binary.LittleEndian.PutUint64(data[8*i:], uint64(int64(v)))
		}
	} else {
		data = make([]byte, 4*numel)
		for i, v := range t.Data {
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
		}
	}
	key := strconv.Itoa(len(p.storages))
	p.storages = append(p.storages, data)

	b := &p.buf
	b.WriteString("ctorch._utils\n_rebuild_tensor_v2\n(") // GLOBAL, MARK
	b.WriteByte('(')                                      // MARK of the persistent id
	p.str("storage")
	b.WriteString("ctorch\n" + class + "\n")
	p.str(key)
	p.str("cpu")
	p.int(int64(numel))
	b.WriteString("tQ") // TUPLE, BINPERSID
	p.int(0)            // storage offset
	stride := make([]int64, len(t.Shape))
	s := int64(1)
	for i := len(t.Shape) - 1; i >= 0; i-- {
		stride[i] = s
		s *= int64(max(t.Shape[i], 1))
	}
	b.WriteByte('(')
	for _, n := range t.Shape {
		p.int(int64(n))
	}
	b.WriteByte('t')
	b.WriteByte('(')
	for _, n := range stride {
		p.int(n)
	}
	b.WriteByte('t')
	b.WriteByte(0x89)                              // requires_grad False
	b.WriteString("ccollections\nOrderedDict\n)R") // backward hooks
	b.WriteString("tR")                            // TUPLE, REDUCE
	return nil
}

// int writes n with the shortest opcode Python's pickler would use.
func (p *pickler) int(n int64) {
	b := &p.buf
	switch {
	case n >= 0 && n < 1<<8:
		b.WriteByte('K')
		b.WriteByte(byte(n))
	case n >= 0 && n < 1<<16:
		b.WriteByte('M')
		b.Write(binary.LittleEndian.AppendUint16(nil, uint16(n)))
	case n >= math.MinInt32 && n <= math.MaxInt32:
		b.WriteByte('J')
		b.Write(binary.LittleEndian.AppendUint32(nil, uint32(int32(n))))
	default:
		// LONG1: little-endian two's complement, as few bytes as keep the
		// sign.
		var raw [8]byte
		binary.LittleEndian.PutUint64(raw[:], uint64(n))
		size := 8
		for size > 1 && (raw[size-1] == 0 && raw[size-2]&0x80 == 0 || raw[size-1] == 0xff && raw[size-2]&0x80 != 0) {
			size--
		}
		b.WriteByte(0x8a)
		b.WriteByte(byte(size))
		b.Write(raw[:size])
	}
}

func (p *pickler) float(f float64) {
	p.buf.WriteByte('G') // BINFLOAT, big-endian
	p.buf.Write(binary.BigEndian.AppendUint64(nil, math.Float64bits(f)))
}

func (p *pickler) str(s string) {
	p.buf.WriteByte('X') // BINUNICODE
	p.buf.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(s))))
	p.buf.WriteString(s)
}
