package loader

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"
)

// The allow-listed unpickler. A checkpoint is a pickle, and a pickle is a
// program: GLOBAL names any Python callable and REDUCE calls it. Like
// torch.load(weights_only=True) only the globals a checkpoint of weights
// needs are resolved. Every pickle is first scanned opcode by opcode
// (scanPickle) and refused if it names any other global, so a forbidden
// callable is never even looked up; only then does gopickle's pickle
// machine run it, with a FindClass hook that resolves the same allow-list
// again.

// RefusedGlobalError reports a pickle that names a Python global outside
// the allow-list (a class or function other than the tensor, storage and
// container constructors a checkpoint of weights needs). Loaders return it
// as *RefusedGlobalError.
type RefusedGlobalError struct {
	Module, Name string
}

func (e *RefusedGlobalError) Error() string {
	return fmt.Sprintf("refused to load %s.%s: only weights are loaded (tensors, numbers, strings, lists and dicts, "+
		"like torch.load(weights_only=True)); save a state_dict instead of whole objects", e.Module, e.Name)
}

// Limits on what a pickle may make the decoder allocate, so that a hostile
// or corrupt file gives an error instead of exhausting memory.
const (
	// maxPickleMarks is the deepest nesting of MARKs; real checkpoints
	// nest a handful of containers.
	maxPickleMarks = 10000
	// maxPickleCost bounds the estimated bytes gopickle allocates for the
	// objects a pickle builds (not counting tensor data, which lives in
	// separate records).
	maxPickleCost = 1 << 30
	// maxPickleLine bounds the text arguments of protocol-0 opcodes.
	maxPickleLine = 1 << 20
	// maxSymString is the longest string the scanner remembers by value:
	// longer ones cannot name an allowed global.
	maxSymString = 256
)

// errPickleTruncated marks a pickle that ends before its STOP opcode.
var errPickleTruncated = errors.New("the pickle ends before its STOP opcode (truncated file?)")

// sym is what the scanner knows about a stack or memo entry: whether it is
// a string, and if so (and short) which.
type sym struct {
	isStr bool
	long  bool // a string longer than maxSymString, value not kept
	s     string
}

// pickleScanner checks a pickle without building anything: every opcode is
// known, every argument lies within the input, the stack never underflows,
// memo references exist, and every global it names is allowed. It tracks
// which stack entries are strings so that STACK_GLOBAL (protocol 4), whose
// module and name are strings pushed before it, perhaps fetched from the
// memo, is checked like GLOBAL.
type pickleScanner struct {
	r     *bufio.Reader
	pos   int64 // bytes consumed
	limit int64 // bytes available
	stack []sym
	marks [][]sym
	memo  map[uint64]sym
	cost  int64
}

// scanPickle scans the pickle at the start of r, of which at most limit
// bytes are available, and returns its length in bytes (through STOP).
func scanPickle(r io.Reader, limit int64) (int64, error) {
	s := &pickleScanner{r: bufio.NewReaderSize(r, int(min(limit, 4096))), limit: limit, memo: map[uint64]sym{}}
	for {
		at := s.pos
		op, err := s.byte()
		if err != nil {
			return 0, err
		}
		stop, err := s.step(op)
		if err != nil {
			var refused *RefusedGlobalError
			if errors.Is(err, errPickleTruncated) || errors.As(err, &refused) {
				return 0, err
			}
			return 0, fmt.Errorf("corrupt pickle: opcode 0x%02x at byte %d: %w", op, at, err)
		}
		if stop {
			return s.pos, nil
		}
	}
}

func (s *pickleScanner) byte() (byte, error) {
	if s.pos >= s.limit {
		return 0, errPickleTruncated
	}
	b, err := s.r.ReadByte()
	if err != nil {
		return 0, errPickleTruncated
	}
	s.pos++
	return b, nil
}

// bytes reads n bytes of argument; with keep false they are skipped and
// nil returned. n is checked against what is left before anything is
// allocated.
func (s *pickleScanner) bytes(n uint64, keep bool) ([]byte, error) {
	if n > uint64(s.limit-s.pos) {
		return nil, errPickleTruncated
	}
	if !keep {
		if _, err := s.r.Discard(int(n)); err != nil {
			return nil, errPickleTruncated
		}
		s.pos += int64(n)
		return nil, nil
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(s.r, buf); err != nil {
		return nil, errPickleTruncated
	}
	s.pos += int64(n)
	return buf, nil
}

func (s *pickleScanner) uint(n int) (uint64, error) {
	var v uint64
	for i := 0; i < n; i++ {
		b, err := s.byte()
		if err != nil {
			return 0, err
		}
		v |= uint64(b) << (8 * i)
	}
	return v, nil
}

// line reads a newline-terminated argument and returns it without the
// newline.
func (s *pickleScanner) line() (string, error) {
	var buf []byte
	for {
		b, err := s.byte()
		if err != nil {
			return "", err
		}
		if b == '\n' {
			return string(buf), nil
		}
		if len(buf) >= maxPickleLine {
			return "", errors.New("text argument too long")
		}
		buf = append(buf, b)
	}
}

// str reads a counted string argument of n bytes and pushes it.
func (s *pickleScanner) str(n uint64) error {
	if n > maxSymString {
		if _, err := s.bytes(n, false); err != nil {
			return err
		}
		return s.push(sym{isStr: true, long: true}, int64(n))
	}
	b, err := s.bytes(n, true)
	if err != nil {
		return err
	}
	return s.push(sym{isStr: true, s: string(b)}, int64(n))
}

// push pushes v, charging cost bytes besides the entry itself.
func (s *pickleScanner) push(v sym, cost int64) error {
	s.stack = append(s.stack, v)
	return s.charge(cost + 32)
}

func (s *pickleScanner) charge(n int64) error {
	s.cost += n
	if s.cost > maxPickleCost {
		return errors.New("the pickle builds too many objects")
	}
	return nil
}

func (s *pickleScanner) pop(n int) error {
	if len(s.stack) < n {
		return errors.New("stack underflow")
	}
	s.stack = s.stack[:len(s.stack)-n]
	return nil
}

// need checks that n entries are on the stack (above the last mark).
func (s *pickleScanner) need(n int) error {
	if len(s.stack) < n {
		return errors.New("stack underflow")
	}
	return nil
}

func (s *pickleScanner) popMark() error {
	if len(s.marks) == 0 {
		return errors.New("no MARK to pop")
	}
	s.stack = s.marks[len(s.marks)-1]
	s.marks = s.marks[:len(s.marks)-1]
	return nil
}

// memoIndex reads the memo index of a GET or PUT opcode: a decimal line
// (GET, PUT), one byte (BINGET, BINPUT) or four (LONG_BINGET, LONG_BINPUT).
func (s *pickleScanner) memoIndex(op byte) (uint64, error) {
	switch op {
	case 'g', 'p':
		l, err := s.line()
		if err != nil {
			return 0, err
		}
		i, err := strconv.ParseUint(l, 10, 32)
		if err != nil {
			name := "GET"
			if op == 'p' {
				name = "PUT"
			}
			return 0, fmt.Errorf("%s index %q", name, l)
		}
		return i, nil
	case 'h', 'q':
		return s.uint(1)
	}
	return s.uint(4)
}

func (s *pickleScanner) get(i uint64) error {
	v, ok := s.memo[i]
	if !ok {
		return fmt.Errorf("memo entry %d is not defined", i)
	}
	return s.push(v, 0)
}

func (s *pickleScanner) put(i uint64) error {
	if err := s.need(1); err != nil {
		return err
	}
	s.memo[i] = s.stack[len(s.stack)-1]
	return s.charge(48)
}

// global checks a global named by module and name.
func (s *pickleScanner) global(module, name string) error {
	if _, ok := allowedGlobal(module, name); !ok {
		return &RefusedGlobalError{Module: module, Name: name}
	}
	return nil
}

// step scans the arguments of opcode op and applies its effect on the
// stack. It reports whether op was STOP.
func (s *pickleScanner) step(op byte) (bool, error) {
	switch op {
	case '(': // MARK
		if len(s.marks) >= maxPickleMarks {
			return false, errors.New("MARKs nested too deeply")
		}
		s.marks = append(s.marks, s.stack)
		s.stack = nil
		return false, s.charge(256)
	case '.': // STOP
		return true, s.pop(1)
	case '0': // POP
		if len(s.stack) == 0 {
			return false, s.popMark()
		}
		return false, s.pop(1)
	case '1': // POP_MARK
		return false, s.popMark()
	case '2': // DUP
		if err := s.need(1); err != nil {
			return false, err
		}
		return false, s.push(s.stack[len(s.stack)-1], 0)
	case 'F', 'I', 'L': // FLOAT, INT, LONG as text
		l, err := s.line()
		if err != nil {
			return false, err
		}
		return false, s.push(sym{}, int64(len(l)))
	case 'J': // BININT
		if _, err := s.bytes(4, false); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 0)
	case 'K': // BININT1
		if _, err := s.bytes(1, false); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 0)
	case 'M': // BININT2
		if _, err := s.bytes(2, false); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 0)
	case 'G': // BINFLOAT
		if _, err := s.bytes(8, false); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 0)
	case 'N', 0x88, 0x89, ')': // NONE, NEWTRUE, NEWFALSE, EMPTY_TUPLE
		return false, s.push(sym{}, 0)
	case ']', '}', 0x8f: // EMPTY_LIST, EMPTY_DICT, EMPTY_SET
		return false, s.push(sym{}, 128)
	case 'P': // PERSID
		l, err := s.line()
		if err != nil {
			return false, err
		}
		return false, s.push(sym{}, int64(len(l)))
	case 'Q': // BINPERSID
		if err := s.pop(1); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 0)
	case 'R': // REDUCE
		if err := s.pop(2); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 128)
	case 'S': // STRING (quoted)
		l, err := s.line()
		if err != nil {
			return false, err
		}
		if len(l) < 2 || l[0] != l[len(l)-1] || (l[0] != '\'' && l[0] != '"') {
			return false, errors.New("STRING argument not quoted")
		}
		l = l[1 : len(l)-1]
		if len(l) > maxSymString {
			return false, s.push(sym{isStr: true, long: true}, int64(len(l)))
		}
		return false, s.push(sym{isStr: true, s: l}, int64(len(l)))
	case 'V': // UNICODE (raw-unicode-escape, kept as gopickle keeps it)
		l, err := s.line()
		if err != nil {
			return false, err
		}
		if len(l) > maxSymString {
			return false, s.push(sym{isStr: true, long: true}, int64(len(l)))
		}
		return false, s.push(sym{isStr: true, s: l}, int64(len(l)))
	case 'T': // BINSTRING, signed 4-byte length
		n, err := s.uint(4)
		if err != nil {
			return false, err
		}
		if int32(n) < 0 {
			return false, errors.New("negative string length")
		}
		return false, s.str(n)
	case 'U', 0x8c: // SHORT_BINSTRING, SHORT_BINUNICODE
		n, err := s.uint(1)
		if err != nil {
			return false, err
		}
		return false, s.str(n)
	case 'X': // BINUNICODE
		n, err := s.uint(4)
		if err != nil {
			return false, err
		}
		return false, s.str(n)
	case 0x8d: // BINUNICODE8
		n, err := s.uint(8)
		if err != nil {
			return false, err
		}
		return false, s.str(n)
	case 'C': // SHORT_BINBYTES
		n, err := s.uint(1)
		if err != nil {
			return false, err
		}
		if _, err := s.bytes(n, false); err != nil {
			return false, err
		}
		return false, s.push(sym{}, int64(n))
	case 'B': // BINBYTES
		n, err := s.uint(4)
		if err != nil {
			return false, err
		}
		if _, err := s.bytes(n, false); err != nil {
			return false, err
		}
		return false, s.push(sym{}, int64(n))
	case 0x8e, 0x96: // BINBYTES8, BYTEARRAY8
		n, err := s.uint(8)
		if err != nil {
			return false, err
		}
		if _, err := s.bytes(n, false); err != nil {
			return false, err
		}
		return false, s.push(sym{}, int64(n))
	case 0x8a: // LONG1
		n, err := s.uint(1)
		if err != nil {
			return false, err
		}
		if n == 0 {
			// gopickle cannot decode an empty LONG1 (Python reads it as 0,
			// but never writes it).
			return false, errors.New("empty LONG1")
		}
		if _, err := s.bytes(n, false); err != nil {
			return false, err
		}
		return false, s.push(sym{}, int64(n))
	case 0x8b: // LONG4
		n, err := s.uint(4)
		if err != nil {
			return false, err
		}
		if int32(n) <= 0 {
			return false, errors.New("LONG4 without bytes")
		}
		if _, err := s.bytes(n, false); err != nil {
			return false, err
		}
		return false, s.push(sym{}, int64(n))
	case 'a': // APPEND
		if err := s.pop(1); err != nil {
			return false, err
		}
		return false, s.need(1)
	case 'b': // BUILD
		if err := s.pop(1); err != nil {
			return false, err
		}
		return false, s.need(1)
	case 'c': // GLOBAL
		module, err := s.line()
		if err != nil {
			return false, err
		}
		name, err := s.line()
		if err != nil {
			return false, err
		}
		if err := s.global(module, name); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 0)
	case 'i': // INST
		module, err := s.line()
		if err != nil {
			return false, err
		}
		name, err := s.line()
		if err != nil {
			return false, err
		}
		if err := s.global(module, name); err != nil {
			return false, err
		}
		if err := s.popMark(); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 128)
	case 0x93: // STACK_GLOBAL
		if err := s.need(2); err != nil {
			return false, err
		}
		module, name := s.stack[len(s.stack)-2], s.stack[len(s.stack)-1]
		if !module.isStr || !name.isStr {
			return false, errors.New("STACK_GLOBAL needs a module and a name string")
		}
		if module.long || name.long {
			return false, &RefusedGlobalError{Module: shorten(module), Name: shorten(name)}
		}
		if err := s.global(module.s, name.s); err != nil {
			return false, err
		}
		s.stack = s.stack[:len(s.stack)-2]
		return false, s.push(sym{}, 0)
	case 0x82, 0x83, 0x84: // EXT1, EXT2, EXT4
		// Extension codes name globals through copyreg's registry.
		return false, &RefusedGlobalError{Module: "copyreg", Name: "extension code"}
	case 'd', 'l', 't', 0x91: // DICT, LIST, TUPLE, FROZENSET
		if err := s.popMark(); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 128)
	case 'e', 'u', 0x90: // APPENDS, SETITEMS, ADDITEMS
		if err := s.popMark(); err != nil {
			return false, err
		}
		return false, s.need(1)
	case 'o': // OBJ
		if len(s.stack) == 0 {
			return false, errors.New("OBJ without a class")
		}
		if err := s.popMark(); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 128)
	case 'g', 'h', 'j': // GET, BINGET, LONG_BINGET
		i, err := s.memoIndex(op)
		if err != nil {
			return false, err
		}
		return false, s.get(i)
	case 'p', 'q', 'r': // PUT, BINPUT, LONG_BINPUT
		i, err := s.memoIndex(op)
		if err != nil {
			return false, err
		}
		return false, s.put(i)
	case 0x94: // MEMOIZE
		return false, s.put(uint64(len(s.memo)))
	case 's': // SETITEM
		if err := s.pop(2); err != nil {
			return false, err
		}
		return false, s.need(1)
	case 0x80: // PROTO
		v, err := s.uint(1)
		if err != nil {
			return false, err
		}
		if v > uint64(pickle.HighestProtocol) {
			return false, fmt.Errorf("unsupported pickle protocol %d", v)
		}
		return false, nil
	case 0x81: // NEWOBJ
		if err := s.pop(2); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 128)
	case 0x92: // NEWOBJ_EX
		if err := s.pop(3); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 128)
	case 0x85: // TUPLE1
		if err := s.pop(1); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 64)
	case 0x86: // TUPLE2
		if err := s.pop(2); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 64)
	case 0x87: // TUPLE3
		if err := s.pop(3); err != nil {
			return false, err
		}
		return false, s.push(sym{}, 64)
	case 0x95: // FRAME: the frame's opcodes follow and are scanned as such
		n, err := s.uint(8)
		if err != nil {
			return false, err
		}
		if n > uint64(s.limit-s.pos) {
			return false, errPickleTruncated
		}
		return false, nil
	case 0x97: // NEXT_BUFFER
		return false, errors.New("out-of-band buffers are not supported")
	case 0x98: // READONLY_BUFFER
		return false, s.need(1)
	}
	return false, errors.New("unknown opcode")
}

// shorten names a string entry for an error message.
func shorten(v sym) string {
	if v.long {
		return "<long string>"
	}
	return v.s
}

// allowedGlobal returns gopickle's stand-in for an allowed global and
// whether module.name is allowed. This is the allow-list: tensor and
// parameter rebuilders, the storage types of the dtypes the loader
// converts, torch.Size, a few dtypes, OrderedDict and _codecs.encode
// (which protocol-2 pickles use for bytes).
func allowedGlobal(module, name string) (any, bool) {
	if lossFilter(module, name) {
		return inertGlobal{module: module, name: name}, true
	}
	switch module {
	case "collections":
		if name == "OrderedDict" {
			return &types.OrderedDictClass{}, true
		}
	case "_codecs":
		if name == "encode" {
			return codecsEncode{}, true
		}
	case "torch._utils":
		switch name {
		case "_rebuild_tensor":
			return rebuildTensor{version: 1}, true
		case "_rebuild_tensor_v2":
			return rebuildTensor{version: 2}, true
		case "_rebuild_parameter", "_rebuild_parameter_with_state":
			return rebuildParameter{}, true
		}
	case "torch":
		if name == "Size" {
			return torchSize{}, true
		}
		if dt, ok := storageDType(name); ok {
			return storageType{dt: dt}, true
		}
		switch name {
		case "float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool":
			return torchDType{name: name}, true
		}
	}
	return nil, false
}

// lossFilter reports the functions a training script keeps by reference in
// its optimizer's param groups: VICReg's LARS stores exclude_bias_and_norm
// (main_vicreg.py, run as __main__), so every full VICReg checkpoint names
// it. They load as inert references: never looked up, never called (an
// inertGlobal is not callable, so a pickle that calls one fails).
func lossFilter(module, name string) bool {
	return name == "exclude_bias_and_norm" && (module == "__main__" || module == "main_vicreg")
}

// inertGlobal is an allowed reference to a function that is never called;
// it loads as the string "global:module.name".
type inertGlobal struct{ module, name string }

// findAllowed is gopickle's FindClass hook.
func findAllowed(module, name string) (any, error) {
	if v, ok := allowedGlobal(module, name); ok {
		return v, nil
	}
	return nil, &RefusedGlobalError{Module: module, Name: name}
}

// loadPickle scans data, which must hold exactly one pickle, and only then
// unpickles it. persistentLoad resolves persistent ids (storages); nil
// refuses them. A panic inside gopickle (it indexes without checks in a few
// places) becomes an error.
func loadPickle(data []byte, persistentLoad func(any) (any, error)) (v any, err error) {
	n, err := scanPickle(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, err
	}
	if n != int64(len(data)) {
		return nil, fmt.Errorf("corrupt pickle: %d bytes after STOP", int64(len(data))-n)
	}
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("corrupt pickle: %v", r)
		}
	}()
	u := pickle.NewUnpickler(bytes.NewReader(data))
	u.FindClass = findAllowed
	if persistentLoad == nil {
		persistentLoad = func(any) (any, error) { return nil, errors.New("unexpected persistent id") }
	}
	u.PersistentLoad = persistentLoad
	v, err = u.Load()
	if err != nil {
		var refused *RefusedGlobalError
		if errors.As(err, &refused) {
			return nil, err
		}
		return nil, fmt.Errorf("corrupt pickle: %w", err)
	}
	return v, nil
}

// dtype is the element type of a storage.
type dtype struct {
	name    string // the storage class, e.g. FloatStorage
	size    int    // bytes per element
	integer bool   // an integer or bool type
}

// storageDType returns the element type of the storage class torch.<name>.
func storageDType(name string) (dtype, bool) {
	switch name {
	case "FloatStorage":
		return dtype{name, 4, false}, true
	case "DoubleStorage":
		return dtype{name, 8, false}, true
	case "HalfStorage", "BFloat16Storage":
		return dtype{name, 2, false}, true
	case "LongStorage":
		return dtype{name, 8, true}, true
	case "IntStorage":
		return dtype{name, 4, true}, true
	case "ByteStorage", "BoolStorage":
		return dtype{name, 1, true}, true
	}
	return dtype{}, false
}

// storageType stands for a storage class such as torch.FloatStorage in a
// persistent id.
type storageType struct{ dt dtype }

// torchDType stands for a dtype object such as torch.float32; it loads as
// the string "torch.float32".
type torchDType struct{ name string }

// torchSize is torch.Size: called with a tuple of ints it returns them.
type torchSize struct{}

// sizeValue is a torch.Size object.
type sizeValue []int64

func (torchSize) Call(args ...any) (any, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("torch.Size takes one argument, got %d", len(args))
	}
	v, err := intsOf(args[0])
	if err != nil {
		return nil, fmt.Errorf("torch.Size: %w", err)
	}
	return sizeValue(v), nil
}

// codecsEncode is _codecs.encode, with which protocol-2 pickles write bytes
// objects: encode(text, "latin1") gives the bytes of text's code points.
type codecsEncode struct{}

func (codecsEncode) Call(args ...any) (any, error) {
	if len(args) != 2 {
		return nil, fmt.Errorf("_codecs.encode takes two arguments, got %d", len(args))
	}
	s, ok1 := args[0].(string)
	enc, ok2 := args[1].(string)
	if !ok1 || !ok2 {
		return nil, errors.New("_codecs.encode takes two strings")
	}
	switch enc {
	case "latin1", "latin-1", "iso-8859-1":
		out := make([]byte, 0, len(s))
		for _, r := range s {
			if r > 0xff {
				return nil, errors.New("_codecs.encode: text is not latin-1")
			}
			out = append(out, byte(r))
		}
		return out, nil
	case "utf-8", "utf8", "ascii":
		return []byte(s), nil
	}
	return nil, fmt.Errorf("_codecs.encode: encoding %q is not supported", enc)
}

// rebuildTensor is torch._utils._rebuild_tensor (version 1) or
// _rebuild_tensor_v2: (storage, storage_offset, size, stride[,
// requires_grad, backward_hooks[, metadata]]).
type rebuildTensor struct{ version int }

func (f rebuildTensor) Call(args ...any) (any, error) {
	if f.version == 1 && len(args) != 4 || f.version == 2 && len(args) != 6 && len(args) != 7 {
		return nil, fmt.Errorf("tensor rebuild with %d arguments", len(args))
	}
	st, ok := args[0].(*storage)
	if !ok {
		return nil, fmt.Errorf("tensor rebuild without a storage (%T)", args[0])
	}
	off, ok := args[1].(int)
	if !ok || off < 0 {
		return nil, errors.New("tensor rebuild: bad storage offset")
	}
	size, err := intsOf(args[2])
	if err != nil {
		return nil, fmt.Errorf("tensor size: %w", err)
	}
	stride, err := intsOf(args[3])
	if err != nil {
		return nil, fmt.Errorf("tensor stride: %w", err)
	}
	if len(size) != len(stride) {
		return nil, fmt.Errorf("tensor of size %v with strides %v", size, stride)
	}
	return &tensorRef{st: st, offset: int64(off), size: size, stride: stride}, nil
}

// rebuildParameter is torch._utils._rebuild_parameter(data, requires_grad,
// backward_hooks) and _rebuild_parameter_with_state(..., state): the
// parameter's tensor.
type rebuildParameter struct{}

func (rebuildParameter) Call(args ...any) (any, error) {
	if len(args) != 3 && len(args) != 4 {
		return nil, fmt.Errorf("parameter rebuild with %d arguments", len(args))
	}
	t, ok := args[0].(*tensorRef)
	if !ok {
		return nil, fmt.Errorf("parameter rebuild without a tensor (%T)", args[0])
	}
	return t, nil
}

// intsOf converts a tuple, list or torch.Size of ints.
func intsOf(v any) ([]int64, error) {
	var items []any
	switch v := v.(type) {
	case *types.Tuple:
		items = *v
	case *types.List:
		items = *v
	case sizeValue:
		return v, nil
	default:
		return nil, fmt.Errorf("a tuple of ints expected, got %T", v)
	}
	out := make([]int64, len(items))
	for i, x := range items {
		n, ok := x.(int)
		if !ok {
			return nil, fmt.Errorf("a tuple of ints expected, got a %T", x)
		}
		out[i] = int64(n)
	}
	return out, nil
}
