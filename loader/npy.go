// Package loader reads and writes what users bring and take away: arrays,
// checkpoints and data sets.
package loader

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Array is an n-dimensional array of floats in row-major (C) order, as read
// from or written to numpy's .npy format.
type Array struct {
	Shape []int
	Data  []float64
	// DType is the numpy type string the array was stored as: "<f4", "<f8"
	// or "<i8" (integers such as labels, exact in Data below 2^53).
	DType string
}

// Len returns the number of elements the shape holds.
func (a *Array) Len() int {
	n := 1
	for _, s := range a.Shape {
		n *= s
	}
	return n
}

// Float32 returns the data converted to float32.
func (a *Array) Float32() []float32 {
	out := make([]float32, len(a.Data))
	for i, v := range a.Data {
		out[i] = float32(v)
	}
	return out
}

var npyMagic = []byte("\x93NUMPY")

var (
	reDescr   = regexp.MustCompile(`'descr'\s*:\s*'([^']*)'`)
	reFortran = regexp.MustCompile(`'fortran_order'\s*:\s*(True|False)`)
	reShape   = regexp.MustCompile(`'shape'\s*:\s*\(([^)]*)\)`)
)

// ReadNpy reads a .npy file of float32 or float64 values in C order
// (format versions 1, 2 and 3).
func ReadNpy(path string) (*Array, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	a, err := DecodeNpy(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return a, nil
}

// DecodeNpy reads one array in .npy format from r.
func DecodeNpy(r io.Reader) (*Array, error) {
	var pre [8]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return nil, errors.New("not a .npy file: too short")
	}
	if string(pre[:6]) != string(npyMagic) {
		return nil, errors.New("not a .npy file: bad magic (save it with numpy.save)")
	}
	var hlen int
	switch major := pre[6]; major {
	case 1:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, errors.New("truncated .npy header")
		}
		hlen = int(binary.LittleEndian.Uint16(b[:]))
	case 2, 3:
		var b [4]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, errors.New("truncated .npy header")
		}
		hlen = int(binary.LittleEndian.Uint32(b[:]))
		if hlen > 1<<20 {
			return nil, fmt.Errorf(".npy header of %d bytes: corrupt file", hlen)
		}
	default:
		return nil, fmt.Errorf("unsupported .npy format version %d", major)
	}
	header := make([]byte, hlen)
	if _, err := io.ReadFull(r, header); err != nil {
		return nil, errors.New("truncated .npy header")
	}
	h := string(header)
	descr := reDescr.FindStringSubmatch(h)
	fortran := reFortran.FindStringSubmatch(h)
	shapeM := reShape.FindStringSubmatch(h)
	if descr == nil || fortran == nil || shapeM == nil {
		return nil, fmt.Errorf("malformed .npy header %q", strings.TrimSpace(h))
	}
	if fortran[1] == "True" {
		return nil, errors.New("the array is in Fortran order: save it with numpy.save(path, numpy.ascontiguousarray(a))")
	}
	var size int
	var dtype string
	switch descr[1] {
	case "<f4", "=f4":
		size, dtype = 4, "<f4"
	case "<f8", "=f8":
		size, dtype = 8, "<f8"
	case "<i8", "=i8":
		size, dtype = 8, "<i8"
	default:
		return nil, fmt.Errorf("dtype %s is not supported: convert the array to float32 or float64 (a.astype('float32'))", descr[1])
	}
	a := &Array{DType: dtype}
	for _, part := range strings.Split(shapeM[1], ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		v, err := strconv.Atoi(part)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("malformed .npy shape (%s)", shapeM[1])
		}
		a.Shape = append(a.Shape, v)
	}
	n := a.Len()
	if n > 1<<34 {
		return nil, fmt.Errorf(".npy shape %v is too large", a.Shape)
	}
	raw := make([]byte, n*size)
	if _, err := io.ReadFull(r, raw); err != nil {
		return nil, fmt.Errorf("truncated .npy data: shape %v needs %d bytes", a.Shape, len(raw))
	}
	a.Data = make([]float64, n)
	for i := range a.Data {
		switch dtype {
		case "<f4":
			a.Data[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
		case "<f8":
			a.Data[i] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
		default: // int64 labels: exact below 2^53
			a.Data[i] = float64(int64(binary.LittleEndian.Uint64(raw[8*i:])))
		}
	}
	return a, nil
}

// EncodeNpy writes data (row-major, of the given shape) as a float32 .npy
// array, format version 1 unless the header needs version 2.
func EncodeNpy(w io.Writer, shape []int, data []float32) error {
	if err := npyHeader(w, "<f4", shape, len(data)); err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	var b [4]byte
	for _, v := range data {
		binary.LittleEndian.PutUint32(b[:], math.Float32bits(v))
		bw.Write(b[:])
	}
	return bw.Flush()
}

// EncodeNpyInt64 writes integers (class labels) as an int64 .npy array,
// which numpy and PyTorch read as integers.
func EncodeNpyInt64(w io.Writer, shape []int, data []int64) error {
	if err := npyHeader(w, "<i8", shape, len(data)); err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	var b [8]byte
	for _, v := range data {
		binary.LittleEndian.PutUint64(b[:], uint64(v))
		bw.Write(b[:])
	}
	return bw.Flush()
}

// npyHeader writes the .npy header of an array of the numpy type descr
// and the given shape, which must hold n values.
func npyHeader(w io.Writer, descr string, shape []int, n int) error {
	want := 1
	for _, s := range shape {
		want *= s
	}
	if want != n {
		return fmt.Errorf("shape %v holds %d values, got %d", shape, want, n)
	}
	dims := make([]string, len(shape))
	for i, s := range shape {
		dims[i] = strconv.Itoa(s)
	}
	tuple := strings.Join(dims, ", ")
	if len(shape) == 1 {
		tuple += ","
	}
	dict := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, tuple)
	// The header (magic, version, length, dict, padding, '\n') is padded to a
	// multiple of 64 bytes so the data is aligned.
	version, lenBytes := byte(1), 2
	if len(dict)+12 > math.MaxUint16 {
		version, lenBytes = 2, 4
	}
	total := len(npyMagic) + 2 + lenBytes + len(dict) + 1
	pad := (64 - total%64) % 64
	hlen := len(dict) + pad + 1
	buf := append([]byte{}, npyMagic...)
	buf = append(buf, version, 0)
	if lenBytes == 2 {
		buf = binary.LittleEndian.AppendUint16(buf, uint16(hlen))
	} else {
		buf = binary.LittleEndian.AppendUint32(buf, uint32(hlen))
	}
	buf = append(buf, dict...)
	buf = append(buf, strings.Repeat(" ", pad)...)
	buf = append(buf, '\n')
	_, err := w.Write(buf)
	return err
}

// WriteNpy writes a float32 .npy file atomically: a reader sees the old file
// or the whole new one, never a part.
func WriteNpy(path string, shape []int, data []float32) error {
	return writeAtomic(path, func(w io.Writer) error { return EncodeNpy(w, shape, data) })
}

// WriteNpyInt64 writes an int64 .npy file atomically.
func WriteNpyInt64(path string, shape []int, data []int64) error {
	return writeAtomic(path, func(w io.Writer) error { return EncodeNpyInt64(w, shape, data) })
}

// writeAtomic writes a file through a temporary file in the same directory,
// synced and renamed over path.
func writeAtomic(path string, write func(io.Writer) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// CreateTemp makes the file private (0600); arrays and checkpoints are
	// no secret: give them the 0644 that os.Create gives under the usual
	// umask.
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := write(tmp); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	return nil
}
