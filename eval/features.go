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
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// Features are the frozen-backbone features of a data set: N rows of D
// values, one per image in data-set order, and the images' labels.
type Features struct {
	// X holds the N x D features, row-major.
	X    []float32
	N, D int
	// Labels holds the class of each row, in [0, Classes).
	Labels  []int
	Classes int
}

// Row returns the features of row i (a view into X).
func (f *Features) Row(i int) []float32 { return f.X[i*f.D : (i+1)*f.D] }

// Select returns the rows idx of f, in that order (a copy).
func (f *Features) Select(idx []int) *Features {
	out := &Features{N: len(idx), D: f.D, Classes: f.Classes, X: make([]float32, 0, len(idx)*f.D), Labels: make([]int, len(idx))}
	for k, i := range idx {
		out.X = append(out.X, f.Row(i)...)
		out.Labels[k] = f.Labels[i]
	}
	return out
}

// check reports features whose sizes or labels do not agree.
func (f *Features) check(what string) error {
	if f.N < 1 || f.D < 1 || len(f.X) != f.N*f.D || len(f.Labels) != f.N {
		return fmt.Errorf("%s features: %d values and %d labels for %d x %d", what, len(f.X), len(f.Labels), f.N, f.D)
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
	cfg, err := loader.ResNetConfigFor(parts)
	if err != nil {
		return nil, err
	}
	if cfg.InChannels != 3 {
		return nil, fmt.Errorf("the checkpoint's backbone takes %d-channel images; evaluation feeds RGB", cfg.InChannels)
	}
	cfg.Classes = 0
	net, err := layers.NewResNet(ctx, dev, cfg, rand.New(rand.NewPCG(0, 0))) // overwritten by the checkpoint
	if err != nil {
		return nil, err
	}
	if err := loader.LoadBackbone(ctx, net, parts); err != nil {
		net.Release()
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

// Device returns the device the backbone lives on.
func (e *Extractor) Device() *vk.Device { return e.dev }

// Forward records the features of images x [N, 3, H, W] on tp.
func (e *Extractor) Forward(tp *layers.Tape, x *layers.Var) *layers.Var {
	if e.pool == 0 {
		return e.net.Forward(tp, x)
	}
	return tp.Flatten(tp.AvgPool2d(resNetMap(tp, e.net, x), layers.PoolParams{Kernel: [2]int{e.pool, e.pool}, Stride: [2]int{1, 1}}))
}

// resNetMap runs r up to its res5 map [N, C, H, W], as r.Forward does
// before its global pooling. (layers.ResNet does not export the map, so the
// trunk is walked here through the exported layers.)
func resNetMap(tp *layers.Tape, r *layers.ResNet, x *layers.Var) *layers.Var {
	h := tp.Relu(r.BN1.Forward(tp, r.Conv1.Forward(tp, x), r.Training))
	if !r.Config.SmallStem {
		h = tp.MaxPool2d(h, layers.PoolParams{Kernel: [2]int{3, 3}, Stride: [2]int{2, 2}, Padding: [2]int{1, 1}})
	}
	for _, stage := range r.Layers {
		for _, blk := range stage {
			y := h
			last := len(blk.Convs) - 1
			for i, c := range blk.Convs {
				y = blk.BNs[i].Forward(tp, c.Forward(tp, y), r.Training)
				if i < last {
					y = tp.Relu(y)
				}
			}
			id := h
			if blk.Down != nil {
				id = blk.DownBN.Forward(tp, blk.Down.Forward(tp, h), r.Training)
			}
			h = tp.Relu(tp.Add(y, id))
		}
	}
	return h
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

// Dataset computes the features of every image of ds, preprocessed by pre,
// batch images a forward pass; progress, when not nil, is told the images
// done after each batch.
func (e *Extractor) Dataset(ctx context.Context, ds loader.Dataset, pre loader.Preprocess, batch int, progress func(done int)) (*Features, error) {
	if batch < 1 {
		return nil, fmt.Errorf("batch size %d: want at least 1", batch)
	}
	n := ds.Len()
	if n == 0 {
		return nil, fmt.Errorf("no images")
	}
	f := &Features{N: n, Classes: len(ds.Classes()), Labels: make([]int, n)}
	for lo := 0; lo < n; lo += batch {
		idx := make([]int, 0, batch)
		for i := lo; i < min(n, lo+batch); i++ {
			idx = append(idx, i)
		}
		data, h, w, err := loader.LoadBatch(ctx, ds, idx, pre, 0)
		if err != nil {
			return nil, err
		}
		rows, dim, err := e.Batch(ctx, data, len(idx), h, w)
		if err != nil {
			return nil, err
		}
		if f.X == nil {
			f.D = dim
			f.X = make([]float32, 0, n*dim)
		}
		f.X = append(f.X, rows...)
		if progress != nil {
			progress(min(n, lo+batch))
		}
	}
	for i := range f.Labels {
		f.Labels[i] = ds.Label(i)
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
	fmt.Fprintf(h, "e2mcvk features v1\x00%s\x00%s\x00%s\x00%d\x00%d %d\x00pool %d\x00", checkpointHash, model, spec, ds.Len(), pre.Resize, pre.Crop, pool)
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
// back is computed afresh.
func Cached(dir, key string, classes int, compute func() (*Features, error)) (*Features, bool, error) {
	if dir != "" {
		if f, err := readFeatures(dir, key, classes); err == nil {
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

func readFeatures(dir, key string, classes int) (*Features, error) {
	l, err := loader.ReadNpy(filepath.Join(dir, key+"-labels.npy"))
	if err != nil {
		return nil, err
	}
	x, n, d, err := readNpyMatrix32(filepath.Join(dir, key+".npy"))
	if err != nil {
		return nil, err
	}
	if len(l.Shape) != 1 || l.Shape[0] != n {
		return nil, fmt.Errorf("cache entry %s: %d rows and labels of shape %v", key, n, l.Shape)
	}
	f := &Features{X: x, N: n, D: d, Classes: classes, Labels: make([]int, len(l.Data))}
	for i, v := range l.Data {
		f.Labels[i] = int(v)
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

// writeFeatures writes the two .npy files of an entry, each through a
// temporary file renamed into place, so that a reader never sees half an
// entry's file.
func writeFeatures(dir, key string, f *Features) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	labels := make([]int64, f.N)
	for i, l := range f.Labels {
		labels[i] = int64(l)
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s-%d.tmp.npy", key, os.Getpid()))
	if err := loader.WriteNpyInt64(tmp, []int{f.N}, labels); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, key+"-labels.npy")); err != nil {
		return err
	}
	if err := loader.WriteNpy(tmp, []int{f.N, f.D}, f.X); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, key+".npy"))
}
