package loader

import (
	"bufio"
	"errors"
	"fmt"
	"image"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// CIFAR-10's binary format: each record is one label byte and a 32x32 RGB
// image stored channel by channel (1024 red bytes, then green, then blue),
// each channel row-major.
const (
	cifarSide   = 32
	cifarPixels = cifarSide * cifarSide
	cifarRecord = 1 + 3*cifarPixels
	// cifarMaxRecords bounds a batch file: the official ones hold 10000.
	cifarMaxRecords = 1 << 20
)

// CIFAR10 is one split of CIFAR-10 in its binary version
// (cifar-10-batches-bin), held in memory: about 150 MiB for train.
type CIFAR10 struct {
	dir     string
	split   string
	classes []string
	files   []string // the batch files, in order
	first   []int    // index of each file's first image; one more entry: Len
	records []byte   // all records, cifarRecord bytes each
}

// cifarFiles returns the batch files of a split.
func cifarFiles(split string) ([]string, error) {
	switch split {
	case "train":
		return []string{"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"}, nil
	case "test":
		return []string{"test_batch.bin"}, nil
	}
	return nil, fmt.Errorf("cifar10: unknown split %q (train or test)", split)
}

// OpenCIFAR10 reads a split ("train": data_batch_1.bin to data_batch_5.bin;
// "test": test_batch.bin) of the binary CIFAR-10 in dir, with the class names
// of dir/batches.meta.txt (one a line, blank lines ignored). Each batch must
// be whole records and every label must name a class.
func OpenCIFAR10(dir, split string) (*CIFAR10, error) {
	names, err := cifarFiles(split)
	if err != nil {
		return nil, err
	}
	classes, err := readCIFARMeta(filepath.Join(dir, "batches.meta.txt"))
	if err != nil {
		return nil, err
	}
	c := &CIFAR10{dir: dir, split: split, classes: classes}
	for _, name := range names {
		path := filepath.Join(dir, name)
		c.first = append(c.first, len(c.records)/cifarRecord)
		if c.records, err = readCIFARBatch(path, c.records); err != nil {
			return nil, err
		}
		c.files = append(c.files, path)
	}
	c.first = append(c.first, len(c.records)/cifarRecord)
	for i := range c.Len() {
		if l := int(c.records[i*cifarRecord]); l >= len(classes) {
			f, k := c.locate(i)
			return nil, fmt.Errorf("cifar10 %s: record %d has label %d, but %s names %d classes",
				c.files[f], k, l, filepath.Join(dir, "batches.meta.txt"), len(classes))
		}
	}
	return c, nil
}

// readCIFARMeta reads the class names of batches.meta.txt.
func readCIFARMeta(path string) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("cifar10: %s not found (is the directory cifar-10-batches-bin?)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("cifar10: %w", err)
	}
	defer f.Close()
	var classes []string
	// The meta file is ten short lines; a long one is no meta file.
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	for sc.Scan() {
		if name := strings.TrimSpace(sc.Text()); name != "" {
			classes = append(classes, name)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cifar10 %s: %w", path, err)
	}
	if len(classes) == 0 || len(classes) > 256 {
		return nil, fmt.Errorf("cifar10 %s: %d class names, want 1 to 256 (CIFAR-10 has 10)", path, len(classes))
	}
	return classes, nil
}

// readCIFARBatch appends the records of one batch file to dst.
func readCIFARBatch(path string, dst []byte) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("cifar10: %s not found", path)
	}
	if err != nil {
		return nil, fmt.Errorf("cifar10: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cifar10: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("cifar10 %s: not a regular file", path)
	}
	size := st.Size()
	if size == 0 || size%cifarRecord != 0 || size/cifarRecord > cifarMaxRecords {
		return nil, fmt.Errorf("cifar10 %s: %d bytes is not a whole number of %d-byte records (1 label byte + 3x32x32 pixels), 1 to %d of them",
			path, size, cifarRecord, cifarMaxRecords)
	}
	n := len(dst)
	dst = append(dst, make([]byte, size)...)
	if _, err := io.ReadFull(f, dst[n:]); err != nil {
		return nil, fmt.Errorf("cifar10 %s: %w", path, err)
	}
	return dst, nil
}

// ParseCIFARSpec opens the data set a command line names as
// "cifar10:DIR:train" or "cifar10:DIR:test" (DIR may itself hold colons:
// the split follows the last one).
func ParseCIFARSpec(spec string) (Dataset, error) {
	rest, ok := strings.CutPrefix(spec, "cifar10:")
	colon := strings.LastIndex(rest, ":")
	if !ok || colon <= 0 {
		return nil, fmt.Errorf("cifar10 %q: expected cifar10:DIR:train or cifar10:DIR:test", spec)
	}
	c, err := OpenCIFAR10(rest[:colon], rest[colon+1:])
	if err != nil {
		return nil, err
	}
	return c, nil
}

// locate returns the batch file and the record within it of image i.
func (c *CIFAR10) locate(i int) (file, record int) {
	for f := range c.files {
		if i < c.first[f+1] {
			return f, i - c.first[f]
		}
	}
	return len(c.files) - 1, i - c.first[len(c.files)-1]
}

// Len returns the number of images.
func (c *CIFAR10) Len() int { return len(c.records) / cifarRecord }

// Label returns the class index of image i.
func (c *CIFAR10) Label(i int) int { return int(c.records[i*cifarRecord]) }

// Classes returns the names of batches.meta.txt.
func (c *CIFAR10) Classes() []string { return c.classes }

// Name returns "<batch file>[<record>]" for image i.
func (c *CIFAR10) Name(i int) string {
	f, k := c.locate(i)
	return fmt.Sprintf("%s[%d]", c.files[f], k)
}

// Image returns image i as a 32x32 opaque *image.RGBA (a copy: callers may
// modify it).
func (c *CIFAR10) Image(i int) (image.Image, error) {
	if i < 0 || i >= c.Len() {
		return nil, fmt.Errorf("cifar10:%s:%s: image %d out of range (%d images)", c.dir, c.split, i, c.Len())
	}
	rec := c.records[i*cifarRecord+1 : (i+1)*cifarRecord]
	img := image.NewRGBA(image.Rect(0, 0, cifarSide, cifarSide))
	for p := range cifarPixels {
		img.Pix[4*p] = rec[p]
		img.Pix[4*p+1] = rec[cifarPixels+p]
		img.Pix[4*p+2] = rec[2*cifarPixels+p]
		img.Pix[4*p+3] = 0xff
	}
	return img, nil
}
