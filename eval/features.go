// Package eval measures a pre-trained backbone by the protocols of the SSL
// papers' tables (DESIGN.md section 7): the linear probe, the kNN classifier,
// semi-supervised fine-tuning and the VOC07 linear SVMs, with the report of
// a run over several seeds.
//
// The classifiers of the linear probe, kNN and the SVMs work on the host
// from the backbone's frozen features, which an Extractor computes on the
// device (and a cache keeps between runs); fine-tuning trains the whole
// network on the device through package layers.
package eval

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// Features are the frozen-backbone features of a data set: N rows of D
// values, one per image that could be read (in data-set order as
// Extractor.Dataset computes them; in the order asked after Select), and
// the images' labels. An image that could not be read has no row: Index maps
// rows to data-set indices, and whatever selects rows by data-set index (a
// labels subset, the targets of VOC07) goes through Index (Select,
// Indices), never through the row number.
type Features struct {
	// X holds the N x D features, row-major.
	X    []float32
	N, D int
	// Labels holds the class of each row, in [0, Classes).
	Labels  []int
	Classes int
	// Index holds the data-set index of each row; nil means row i is
	// image i (features built by hand, nothing skipped).
	Index []int
	// Skipped holds the images of the data set (or of a selection) that
	// have no row because they could not be read, in data-set order.
	Skipped []Skip
}

// Row returns the features of row i (a view into X).
func (f *Features) Row(i int) []float32 { return f.X[i*f.D : (i+1)*f.D] }

// Indices returns the data-set index of each row (a copy).
func (f *Features) Indices() []int {
	if f.Index != nil {
		return slices.Clone(f.Index)
	}
	idx := make([]int, f.N)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// Select returns the rows of the data-set images idx, in that order (a
// copy): the way a labels subset drawn from the data set (such as
// loader.BalancedSubset's) picks its rows. An image of idx that was skipped
// as unreadable has no row and is dropped: the result lists it in its
// Skipped (see Skips.Dropped). An index that is neither a row nor a
// skipped image is an error, and so is a selection left empty.
func (f *Features) Select(idx []int) (*Features, error) {
	size := f.N
	for _, i := range f.Index {
		size = max(size, i+1)
	}
	row := make([]int32, size) // row+1 of each data-set index, 0 for none
	for r := range f.N {
		i := r
		if f.Index != nil {
			i = f.Index[r]
		}
		if i >= 0 && row[i] == 0 {
			row[i] = int32(r + 1)
		}
	}
	skipped := make(map[int]Skip, len(f.Skipped))
	for _, s := range f.Skipped {
		skipped[s.Index] = s
	}
	out := &Features{D: f.D, Classes: f.Classes, X: make([]float32, 0, len(idx)*f.D), Labels: make([]int, 0, len(idx)), Index: make([]int, 0, len(idx))}
	for _, i := range idx {
		if i >= 0 && i < size && row[i] > 0 {
			r := int(row[i]) - 1
			out.X = append(out.X, f.Row(r)...)
			out.Labels = append(out.Labels, f.Labels[r])
			out.Index = append(out.Index, i)
			continue
		}
		s, ok := skipped[i]
		if !ok {
			return nil, fmt.Errorf("select image %d: not among the %d rows and %d skipped images of the features", i, f.N, len(f.Skipped))
		}
		out.Skipped = append(out.Skipped, s)
	}
	out.N = len(out.Labels)
	if out.N == 0 {
		return nil, fmt.Errorf("select: all %d selected images were skipped as unreadable: nothing left to evaluate", len(idx))
	}
	return out, nil
}

// check reports features whose sizes, labels or index do not agree.
func (f *Features) check(what string) error {
	if f.N < 1 || f.D < 1 || len(f.X) != f.N*f.D || len(f.Labels) != f.N {
		return fmt.Errorf("%s features: %d values and %d labels for %d x %d", what, len(f.X), len(f.Labels), f.N, f.D)
	}
	if f.Index != nil && len(f.Index) != f.N {
		return fmt.Errorf("%s features: %d indices for %d rows", what, len(f.Index), f.N)
	}
	for i, l := range f.Labels {
		if l < 0 || l >= f.Classes {
			return fmt.Errorf("%s features: row %d has label %d, want [0, %d)", what, i, l, f.Classes)
		}
	}
	return nil
}

// Extractor is a checkpoint's frozen backbone in evaluation mode (running
// batch-norm statistics) that computes features on a device: the globally
// average-pooled res5 map (2048-d for ResNet-50), or with Pool k > 0 the res5
// map average-pooled by a k x k window at stride 1 and flattened (VISSL's
// AvgPool(6, 1): 8192-d for ResNet-50 at 224 px).
type Extractor struct {
	dev  *vk.Device
	net  *layers.ResNet
	pool int
}

// NewExtractor builds the backbone of parts on dev with its weights. pool is
// 0 (global average pooling) or the window of the stride-1 average pool.
func NewExtractor(ctx context.Context, dev *vk.Device, parts *loader.Parts, pool int) (*Extractor, error) {
	if pool < 0 {
		return nil, fmt.Errorf("pool window %d: want 0 (global) or more", pool)
	}
	net, err := loadBackbone(ctx, dev, parts, rand.New(rand.NewPCG(0, 0)), "evaluation")
	if err != nil {
		return nil, err
	}
	net.Training = false
	for _, p := range layers.Parameters(net) {
		p.SetRequiresGrad(false)
	}
	return &Extractor{dev: dev, net: net, pool: pool}, nil
}

// Release frees the backbone's device memory.
func (e *Extractor) Release() { e.net.Release() }

// loadBackbone builds the backbone of parts on dev, without fc, and loads
// its weights; the initial values drawn from rng are all overwritten (but
// the draws advance rng). use names the protocol for the error on
// checkpoints of other than RGB input.
func loadBackbone(ctx context.Context, dev *vk.Device, parts *loader.Parts, rng *rand.Rand, use string) (*layers.ResNet, error) {
	cfg, err := loader.ResNetConfigFor(parts)
	if err != nil {
		return nil, err
	}
	if cfg.InChannels != 3 {
		return nil, fmt.Errorf("the checkpoint's backbone takes %d-channel images; %s feeds RGB", cfg.InChannels, use)
	}
	cfg.Classes = 0
	net, err := layers.NewResNet(ctx, dev, cfg, rng)
	if err != nil {
		return nil, err
	}
	if err := loader.LoadBackbone(ctx, net, parts); err != nil {
		net.Release()
		return nil, err
	}
	return net, nil
}

// Device returns the device the backbone lives on.
func (e *Extractor) Device() *vk.Device { return e.dev }

// Forward records the features of images x [N, 3, H, W] on tp.
func (e *Extractor) Forward(tp *layers.Tape, x *layers.Var) *layers.Var {
	if e.pool == 0 {
		return e.net.Forward(tp, x)
	}
	return tp.Flatten(tp.AvgPool2d(e.net.FeatureMap(tp, x), layers.PoolParams{Kernel: [2]int{e.pool, e.pool}, Stride: [2]int{1, 1}}))
}

// Batch computes the features of n preprocessed images data [n, 3, h, w]
// and returns them as n rows of len(rows)/n values.
func (e *Extractor) Batch(ctx context.Context, data []float32, n, h, w int) (rows []float32, dim int, err error) {
	rows, err = forwardBatch(ctx, e.dev, data, n, h, w, e.Forward)
	if err != nil {
		return nil, 0, fmt.Errorf("features of %d x %d images: %w", h, w, err)
	}
	return rows, len(rows) / n, nil
}

// Dataset computes the features of every readable image of ds,
// preprocessed by pre, batch images a forward pass; progress, when not nil,
// is told the images done after each batch. An image that cannot be read is
// accounted for by skips (logged and passed over, or with Strict an error)
// and listed in the result's Skipped; the rows' Index says which images
// they hold. All images unreadable is an error.
func (e *Extractor) Dataset(ctx context.Context, ds loader.Dataset, pre loader.Preprocess, batch int, skips *Skips, progress func(done int)) (*Features, error) {
	if batch < 1 {
		return nil, fmt.Errorf("batch size %d: want at least 1", batch)
	}
	n := ds.Len()
	if n == 0 {
		return nil, fmt.Errorf("no images")
	}
	f := &Features{Classes: len(ds.Classes()), Labels: make([]int, 0, n), Index: make([]int, 0, n)}
	for lo := 0; lo < n; lo += batch {
		idx := make([]int, 0, batch)
		for i := lo; i < min(n, lo+batch); i++ {
			idx = append(idx, i)
		}
		data, kept, h, w, skipped, err := loadBatch(ctx, ds, idx, pre)
		if err != nil {
			return nil, err
		}
		if err := skips.add(skipped...); err != nil {
			return nil, err
		}
		f.Skipped = append(f.Skipped, skipped...)
		if len(kept) > 0 {
			rows, dim, err := e.Batch(ctx, data, len(kept), h, w)
			if err != nil {
				return nil, err
			}
			if f.X == nil {
				f.D = dim
				f.X = make([]float32, 0, n*dim)
			}
			f.X = append(f.X, rows...)
			for _, i := range kept {
				f.Index = append(f.Index, i)
				f.Labels = append(f.Labels, ds.Label(i))
			}
			f.N += len(kept)
		}
		if progress != nil {
			progress(min(n, lo+batch))
		}
	}
	if f.N == 0 {
		return nil, fmt.Errorf("all %d images are unreadable: nothing left to evaluate", n)
	}
	return f, f.check("computed")
}

// FileHash returns the SHA-256 of a file's contents in hex: what identifies
// a checkpoint in a feature cache key.
func FileHash(path string) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FeatureKey names the features of a data set in a cache: a hash of the
// checkpoint's hash, the model settings (layout, architecture, pooling),
// the data set's spec, size, image names and labels, and the preprocessing.
// The images themselves are not read: a data set whose files change in
// place under the same names needs a fresh cache.
func FeatureKey(checkpointHash, model, spec string, ds loader.Dataset, pre loader.Preprocess, pool int) string {
	h := sha256.New()
	// v2: entries hold the rows' data-set indices and the skipped images.
	fmt.Fprintf(h, "e2mcvk features v2\x00%s\x00%s\x00%s\x00%d\x00%d %d\x00pool %d\x00", checkpointHash, model, spec, ds.Len(), pre.Resize, pre.Crop, pool)
	for i := range ds.Len() {
		io.WriteString(h, ds.Name(i))
		h.Write([]byte{0})
		io.WriteString(h, strconv.Itoa(ds.Label(i)))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// Cached returns the features stored under key in dir, or computes them
// with compute and stores them there (dir "" turns the cache off). It
// reports whether they came from the cache. An entry that does not read
// back is computed afresh. An entry's skipped images go through skips as
// computing them did, so that a cached run logs, counts and refuses as an
// uncached one: with Strict (or skips nil) an entry that skipped images is
// computed afresh, which fails at the first one still unreadable.
func Cached(dir, key string, classes int, skips *Skips, compute func() (*Features, error)) (*Features, bool, error) {
	if dir != "" {
		if f, err := readFeatures(dir, key, classes); err == nil && (len(f.Skipped) == 0 || (skips != nil && !skips.Strict)) {
			if err := skips.add(f.Skipped...); err != nil {
				return nil, false, err
			}
			return f, true, nil
		}
	}
	f, err := compute()
	if err != nil {
		return nil, false, err
	}
	if dir != "" {
		if err := writeFeatures(dir, key, f); err != nil {
			return nil, false, fmt.Errorf("feature cache: %w", err)
		}
	}
	return f, false, nil
}

// A cache entry is four files: key.npy (the N x D features, float32),
// key-labels.npy and key-index.npy (N labels and data-set indices, int64)
// and key-skipped.json (the skipped images).
func readFeatures(dir, key string, classes int) (*Features, error) {
	l, err := loader.ReadNpy(filepath.Join(dir, key+"-labels.npy"))
	if err != nil {
		return nil, err
	}
	ix, err := loader.ReadNpy(filepath.Join(dir, key+"-index.npy"))
	if err != nil {
		return nil, err
	}
	sj, err := os.ReadFile(filepath.Join(dir, key+"-skipped.json"))
	if err != nil {
		return nil, err
	}
	x, n, d, err := readNpyMatrix32(filepath.Join(dir, key+".npy"))
	if err != nil {
		return nil, err
	}
	if len(l.Shape) != 1 || l.Shape[0] != n || len(ix.Shape) != 1 || ix.Shape[0] != n {
		return nil, fmt.Errorf("cache entry %s: %d rows, labels of shape %v and indices of shape %v", key, n, l.Shape, ix.Shape)
	}
	f := &Features{X: x, N: n, D: d, Classes: classes, Labels: make([]int, n), Index: make([]int, n)}
	if err := json.Unmarshal(sj, &f.Skipped); err != nil {
		return nil, fmt.Errorf("cache entry %s: skipped images: %w", key, err)
	}
	for i, v := range l.Data {
		f.Labels[i] = int(v)
	}
	for i, v := range ix.Data {
		f.Index[i] = int(v)
	}
	// The rows and the skipped images together are the data set's images
	// 0, 1, ..., each once, in order: anything else would misplace rows.
	r, s := 0, 0
	for want := range n + len(f.Skipped) {
		switch {
		case r < n && f.Index[r] == want:
			r++
		case s < len(f.Skipped) && f.Skipped[s].Index == want:
			s++
		default:
			return nil, fmt.Errorf("cache entry %s: image %d is neither a row nor a skipped image", key, want)
		}
	}
	return f, f.check("cached")
}

// readNpyMatrix32 reads a 2-D little-endian float32 .npy file in C order,
// as loader.WriteNpy writes them, straight into float32 (loader.ReadNpy
// goes through float64, twice the memory of ImageNet-sized features).
func readNpyMatrix32(path string) (x []float32, n, d int, err error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, 0, 0, err
	}
	defer fh.Close()
	r := bufio.NewReaderSize(fh, 1<<20)
	var pre [8]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil || string(pre[:6]) != "\x93NUMPY" {
		return nil, 0, 0, fmt.Errorf("%s: not a .npy file", path)
	}
	var hlen int
	switch pre[6] {
	case 1:
		var b [2]byte
		_, err = io.ReadFull(r, b[:])
		hlen = int(binary.LittleEndian.Uint16(b[:]))
	case 2, 3:
		var b [4]byte
		_, err = io.ReadFull(r, b[:])
		hlen = int(binary.LittleEndian.Uint32(b[:]))
	default:
		err = fmt.Errorf("version %d", pre[6])
	}
	if err != nil || hlen > 1<<20 {
		return nil, 0, 0, fmt.Errorf("%s: bad .npy header", path)
	}
	hb := make([]byte, hlen)
	if _, err := io.ReadFull(r, hb); err != nil {
		return nil, 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	h := string(hb)
	open, closing := strings.Index(h, "'shape': ("), -1
	if open >= 0 {
		closing = strings.Index(h[open:], ")")
	}
	if !strings.Contains(h, "'descr': '<f4'") || !strings.Contains(h, "'fortran_order': False") || closing < 0 {
		return nil, 0, 0, fmt.Errorf("%s: want a C-order <f4 array, header %q", path, h)
	}
	dims := strings.Split(h[open+len("'shape': ("):open+closing], ",")
	if len(dims) != 2 {
		return nil, 0, 0, fmt.Errorf("%s: want a 2-D array, header %q", path, h)
	}
	n, err1 := strconv.Atoi(strings.TrimSpace(dims[0]))
	d, err2 := strconv.Atoi(strings.TrimSpace(dims[1]))
	if err1 != nil || err2 != nil || n < 0 || d < 0 {
		return nil, 0, 0, fmt.Errorf("%s: bad shape in header %q", path, h)
	}
	x = make([]float32, n*d)
	buf := make([]byte, 1<<16)
	for done := 0; done < len(x); {
		m := min(len(buf)/4, len(x)-done)
		if _, err := io.ReadFull(r, buf[:4*m]); err != nil {
			return nil, 0, 0, fmt.Errorf("%s: %w", path, err)
		}
		for i := range m {
			x[done+i] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*i:]))
		}
		done += m
	}
	return x, n, d, nil
}

// writeFeatures writes the four files of an entry, each atomically
// (loader's .npy writers go through a temporary file renamed into place),
// the features last and after removing any old ones, so that a reader never
// sees half a file, nor a complete entry before all are written.
func writeFeatures(dir, key string, f *Features) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, key)
	if err := os.Remove(path + ".npy"); err != nil && !os.IsNotExist(err) {
		return err
	}
	labels := make([]int64, f.N)
	for i, l := range f.Labels {
		labels[i] = int64(l)
	}
	index := make([]int64, f.N)
	for i, v := range f.Indices() {
		index[i] = int64(v)
	}
	if err := loader.WriteNpyInt64(path+"-labels.npy", []int{f.N}, labels); err != nil {
		return err
	}
	if err := loader.WriteNpyInt64(path+"-index.npy", []int{f.N}, index); err != nil {
		return err
	}
	skipped, err := json.Marshal(append([]Skip{}, f.Skipped...)) // [] rather than null
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s-%d.tmp.json", key, os.Getpid()))
	if err := os.WriteFile(tmp, skipped, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path+"-skipped.json"); err != nil {
		return err
	}
	return loader.WriteNpy(path+".npy", []int{f.N, f.D}, f.X)
}
