package loader

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// FashionMNISTDir is where Debian's dataset-fashion-mnist package installs
// the data set's gzipped IDX files.
const FashionMNISTDir = "/usr/share/datasets/fashion-mnist"

// fashionMNISTClasses returns the class names in label order, as
// torchvision's FashionMNIST.classes spells them.
func fashionMNISTClasses() []string {
	return []string{
		"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
		"Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
	}
}

// IDX magic numbers: zero, zero, the element type (0x08: unsigned byte) and
// the number of dimensions.
const (
	idxImagesMagic = 0x00000803
	idxLabelsMagic = 0x00000801
)

// FashionMNIST is one split of Fashion-MNIST held in memory: 28x28 grey
// images (60000 in train, 10000 in test) and labels 0 to 9.
type FashionMNIST struct {
	split  string
	rows   int
	cols   int
	images []byte // n * rows * cols bytes, row-major
	labels []byte
}

// OpenFashionMNIST reads a split ("train" or "test") of Debian's
// dataset-fashion-mnist from FashionMNISTDir.
func OpenFashionMNIST(split string) (*FashionMNIST, error) {
	return ReadFashionMNIST(FashionMNISTDir, split)
}

// ReadFashionMNIST reads a split ("train" or "test") of Fashion-MNIST from
// the gzipped IDX files in dir ({train,t10k}-{images-idx3,labels-idx1}-ubyte.gz),
// checking their magic numbers, sizes and labels.
func ReadFashionMNIST(dir, split string) (*FashionMNIST, error) {
	var prefix string
	switch split {
	case "train":
		prefix = "train"
	case "test":
		prefix = "t10k"
	default:
		return nil, fmt.Errorf("fashion-mnist: unknown split %q (train or test)", split)
	}
	imagesPath := filepath.Join(dir, prefix+"-images-idx3-ubyte.gz")
	labelsPath := filepath.Join(dir, prefix+"-labels-idx1-ubyte.gz")
	imgDims, images, err := readIDX(imagesPath, idxImagesMagic)
	if err != nil {
		return nil, err
	}
	lblDims, labels, err := readIDX(labelsPath, idxLabelsMagic)
	if err != nil {
		return nil, err
	}
	if imgDims[1] != 28 || imgDims[2] != 28 {
		return nil, fmt.Errorf("fashion-mnist %s: images are %dx%d, not 28x28", imagesPath, imgDims[1], imgDims[2])
	}
	if imgDims[0] != lblDims[0] {
		return nil, fmt.Errorf("fashion-mnist %s: %d images but %d labels in %s", imagesPath, imgDims[0], lblDims[0], labelsPath)
	}
	for i, l := range labels {
		if l > 9 {
			return nil, fmt.Errorf("fashion-mnist %s: label %d of image %d is not a class 0-9", labelsPath, l, i)
		}
	}
	return &FashionMNIST{split: split, rows: imgDims[1], cols: imgDims[2], images: images, labels: labels}, nil
}

// readIDX reads a gzipped IDX file of unsigned bytes whose magic number is
// magic, and returns its dimensions and data.
func readIDX(path string, magic uint32) ([]int, []byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("fashion-mnist: %s not found: install dataset-fashion-mnist (tools/setup.sh)", path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("fashion-mnist: %w", err)
	}
	defer f.Close()
	dims, data, err := decodeIDX(bufio.NewReader(f), magic)
	if err != nil {
		return nil, nil, fmt.Errorf("fashion-mnist %s: %w", path, err)
	}
	return dims, data, nil
}

// decodeIDX reads one gzipped IDX array of unsigned bytes.
func decodeIDX(r io.Reader, magic uint32) ([]int, []byte, error) {
	z, err := gzip.NewReader(r)
	if err != nil {
		return nil, nil, fmt.Errorf("not a gzip file: %w", err)
	}
	defer z.Close()
	var head [4]byte
	if _, err := io.ReadFull(z, head[:]); err != nil {
		return nil, nil, fmt.Errorf("truncated IDX header: %w", err)
	}
	if got := binary.BigEndian.Uint32(head[:]); got != magic {
		return nil, nil, fmt.Errorf("bad IDX magic number 0x%08x, want 0x%08x", got, magic)
	}
	nd := int(magic & 0xff)
	dims := make([]int, nd)
	size := int64(1)
	for i := range dims {
		if _, err := io.ReadFull(z, head[:]); err != nil {
			return nil, nil, fmt.Errorf("truncated IDX header: %w", err)
		}
		d := binary.BigEndian.Uint32(head[:])
		// A sane bound before multiplying: no IDX data set comes near it.
		if d > 1<<28 {
			return nil, nil, fmt.Errorf("IDX dimension %d is %d, too large", i, d)
		}
		dims[i] = int(d)
		size *= int64(d)
		if size > 1<<34 {
			return nil, nil, errors.New("IDX array too large")
		}
	}
	// Allocate what the header claims only up to 64 MiB (Fashion-MNIST's
	// training images take 45 MiB) and grow as data actually arrives: a
	// hostile header must not cost memory.
	var buf bytes.Buffer
	buf.Grow(int(min(size+bytes.MinRead, 64<<20)))
	n, err := buf.ReadFrom(io.LimitReader(z, size))
	if err != nil {
		return nil, nil, fmt.Errorf("reading IDX data: %w", err)
	}
	if n != size {
		return nil, nil, fmt.Errorf("truncated IDX data: %d of %d bytes", n, size)
	}
	var extra [1]byte
	if k, err := z.Read(extra[:]); k > 0 || (err != nil && err != io.EOF) {
		if err != nil && err != io.EOF {
			return nil, nil, fmt.Errorf("reading IDX data: %w", err)
		}
		return nil, nil, fmt.Errorf("trailing data after the %d bytes of IDX data", size)
	}
	return dims, buf.Bytes(), nil
}

// Len returns the number of images.
func (m *FashionMNIST) Len() int { return len(m.labels) }

// Label returns the class index (0-9) of image i.
func (m *FashionMNIST) Label(i int) int { return int(m.labels[i]) }

// Classes returns the ten Fashion-MNIST class names.
func (m *FashionMNIST) Classes() []string { return fashionMNISTClasses() }

// Name returns "fashion-mnist:<split>[i]".
func (m *FashionMNIST) Name(i int) string { return fmt.Sprintf("fashion-mnist:%s[%d]", m.split, i) }

// Image returns image i as a 28x28 image.Gray (a copy: callers may modify
// it).
func (m *FashionMNIST) Image(i int) (image.Image, error) {
	if i < 0 || i >= m.Len() {
		return nil, fmt.Errorf("fashion-mnist:%s: image %d out of range (%d images)", m.split, i, m.Len())
	}
	n := m.rows * m.cols
	img := image.NewGray(image.Rect(0, 0, m.cols, m.rows))
	copy(img.Pix, m.images[i*n:(i+1)*n])
	return img, nil
}
