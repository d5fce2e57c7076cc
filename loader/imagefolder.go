package loader

import (
	"context"
	"errors"
	"fmt"
	"image"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// Dataset is a labelled set of images, indexed from 0 to Len()-1: what
// `e2mcvk embed` reads and training samples from.
type Dataset interface {
	// Len returns the number of images.
	Len() int
	// Label returns the class index of image i.
	Label(i int) int
	// Classes returns the class names; a label indexes this list.
	Classes() []string
	// Image decodes image i.
	Image(i int) (image.Image, error)
	// Name returns a name for image i that error messages and sample lists
	// can show: its path for a file.
	Name(i int) string
}

// imageExtensions returns torchvision's IMG_EXTENSIONS, matched on the
// lower-case file name.
func imageExtensions() []string {
	return []string{".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
}

// hasImageExtension reports whether name ends, ignoring case, in one of
// torchvision's image extensions.
func hasImageExtension(name string) bool {
	lower := strings.ToLower(name)
	for _, ext := range imageExtensions() {
		if strings.HasSuffix(lower, ext) {
			return true
		}
	}
	return false
}

// Sample is one image of an ImageFolder: its path and its class index.
type Sample struct {
	Path  string
	Label int
}

// ImageFolder is a data set laid out as torchvision's ImageFolder expects:
// root/<class>/<image>, with images found at any depth below their class
// folder.
type ImageFolder struct {
	Root string
	// ClassNames are the class folders' names; a label indexes them. (The
	// Dataset method Classes returns them.)
	ClassNames []string
	Samples    []Sample
}

// OpenImageFolder lists an image folder in torchvision's order, so that
// indices and labels agree with a PyTorch run on the same folder: classes
// are the sorted names of root's sub-folders (symbolic links to folders
// included); each class's images are found as make_dataset does, walking the
// class folder with links followed, taking the folders in sorted path order
// and the files of each folder in sorted name order, keeping files whose
// name ends in an image extension (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff
// .webp, any case). Files are not opened here. Like torchvision it refuses a
// class folder without images.
func OpenImageFolder(root string) (*ImageFolder, error) {
	fi, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image folder %s: no such directory", root)
	}
	if err != nil {
		return nil, fmt.Errorf("image folder: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("image folder %s: not a directory", root)
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("image folder: %w", err)
	}
	f := &ImageFolder{Root: root}
	for _, e := range entries {
		// os.Stat follows links, as Python's DirEntry.is_dir() does.
		if st, err := os.Stat(filepath.Join(root, e.Name())); err == nil && st.IsDir() {
			f.ClassNames = append(f.ClassNames, e.Name())
		}
	}
	if len(f.ClassNames) == 0 {
		return nil, fmt.Errorf("image folder %s: no class folders (expected %s/<class>/<image>)", root, root)
	}
	sort.Strings(f.ClassNames)
	var empty []string
	for label, class := range f.ClassNames {
		dirs, err := walkDirs(filepath.Join(root, class))
		if err != nil {
			return nil, fmt.Errorf("image folder: %w", err)
		}
		n := len(f.Samples)
		for _, d := range dirs {
			for _, name := range d.files {
				if hasImageExtension(name) {
					f.Samples = append(f.Samples, Sample{Path: filepath.Join(d.path, name), Label: label})
				}
			}
		}
		if len(f.Samples) == n {
			empty = append(empty, class)
		}
	}
	if len(empty) > 0 {
		return nil, fmt.Errorf("image folder %s: no images in class folder(s) %s (image extensions: %s)",
			root, strings.Join(empty, ", "), strings.Join(imageExtensions(), " "))
	}
	return f, nil
}

// walkedDir is one folder of a walk and the sorted names of its non-folder
// entries.
type walkedDir struct {
	path  string
	files []string
}

// walkDirs lists top and every folder below it, following links to folders
// (a link back to a folder on the current path is not followed again), and
// returns them sorted by path as torchvision's sorted(os.walk(...)) does:
// "a/b-c" comes before "a/b/c".
func walkDirs(top string) ([]walkedDir, error) {
	var out []walkedDir
	var walk func(dir string, ancestors []os.FileInfo) error
	walk = func(dir string, ancestors []os.FileInfo) error {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		d := walkedDir{path: dir}
		var subdirs []string
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			st, err := os.Stat(p)
			if err != nil || !st.IsDir() {
				// Broken links and other non-folders count as files, as in
				// os.walk; opening them reports the problem.
				d.files = append(d.files, e.Name())
				continue
			}
			loop := false
			for _, a := range ancestors {
				if os.SameFile(a, st) {
					loop = true
					break
				}
			}
			if !loop {
				subdirs = append(subdirs, p)
			}
		}
		sort.Strings(d.files)
		out = append(out, d)
		for _, s := range subdirs {
			st, err := os.Stat(s)
			if err != nil {
				return err
			}
			if err := walk(s, append(ancestors[:len(ancestors):len(ancestors)], st)); err != nil {
				return err
			}
		}
		return nil
	}
	st, err := os.Stat(top)
	if err != nil {
		return nil, err
	}
	if err := walk(top, []os.FileInfo{st}); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out, nil
}

// Len returns the number of images.
func (f *ImageFolder) Len() int { return len(f.Samples) }

// Label returns the class index of image i.
func (f *ImageFolder) Label(i int) int { return f.Samples[i].Label }

// Classes returns the class folder names.
func (f *ImageFolder) Classes() []string { return f.ClassNames }

// Name returns the path of image i.
func (f *ImageFolder) Name(i int) string { return f.Samples[i].Path }

// Image decodes image i.
func (f *ImageFolder) Image(i int) (image.Image, error) { return DecodeImage(f.Samples[i].Path) }

// ParseDataSpec opens the data set a command line names:
// "fashion-mnist:train" or "fashion-mnist:test" for Debian's Fashion-MNIST,
// "cifar10:DIR:train" or "cifar10:DIR:test" for CIFAR-10's binary batches,
// "DIR@LIST.txt" for the files of a SimCLR subset list in an ImageFolder,
// anything else a directory laid out as an ImageFolder.
func ParseDataSpec(spec string) (Dataset, error) {
	if split, ok := strings.CutPrefix(spec, "fashion-mnist:"); ok {
		return OpenFashionMNIST(split)
	}
	if strings.HasPrefix(spec, "cifar10:") {
		return ParseCIFARSpec(spec)
	}
	// A folder name may hold "@": only a list file after the last one
	// makes a subset.
	if at := strings.LastIndex(spec, "@"); at > 0 && strings.HasSuffix(spec[at:], ".txt") {
		return ParseSubsetSpec(spec)
	}
	if spec == "" {
		return nil, errors.New("no data set given: a directory of class folders, fashion-mnist:train or fashion-mnist:test")
	}
	f, err := OpenImageFolder(spec)
	if err != nil {
		if spec == "fashion-mnist" {
			return nil, fmt.Errorf("%w (for Debian's Fashion-MNIST say fashion-mnist:train or fashion-mnist:test)", err)
		}
		return nil, err
	}
	return f, nil
}

// LoadBatch decodes and preprocesses the images idx of ds on workers
// goroutines (0: one a CPU) and returns them as one [len(idx), 3, H, W]
// tensor with H and W. All images must come out the same size: with
// p.Crop set they do, otherwise a different size is an error naming the
// first image that differs. The error reported is always the one of the
// earliest image in idx that fails. It stops early when ctx is cancelled.
func LoadBatch(ctx context.Context, ds Dataset, idx []int, p Preprocess, workers int) ([]float32, int, int, error) {
	if len(idx) == 0 {
		return nil, 0, 0, errors.New("load batch: no images")
	}
	if workers < 0 {
		return nil, 0, 0, fmt.Errorf("load batch: %d workers", workers)
	}
	if workers == 0 {
		workers = runtime.NumCPU()
	}
	for _, i := range idx {
		if i < 0 || i >= ds.Len() {
			return nil, 0, 0, fmt.Errorf("load batch: image %d out of range (the data set has %d)", i, ds.Len())
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, 0, err
	}
	load := func(i int) (image.Image, error) {
		img, err := ds.Image(i)
		if err != nil {
			// Errors of images read from files (DecodeImage) name the
			// path already; others get the image's name.
			if strings.Contains(err.Error(), ds.Name(i)) {
				return nil, err
			}
			return nil, fmt.Errorf("%s: %w", ds.Name(i), err)
		}
		return img, nil
	}
	// The output size: the crop's, or the first image's.
	var h, w int
	start := 0
	var first []float32
	if p.Crop > 0 {
		if _, _, err := p.OutputSize(p.Crop, p.Crop); err != nil {
			return nil, 0, 0, err
		}
		h, w = p.Crop, p.Crop
	} else {
		img, err := load(idx[0])
		if err != nil {
			return nil, 0, 0, err
		}
		if first, h, w, err = p.Apply(img); err != nil {
			return nil, 0, 0, fmt.Errorf("%s: %w", ds.Name(idx[0]), err)
		}
		start = 1
	}
	per := 3 * h * w
	out := make([]float32, len(idx)*per)
	copy(out, first)

	errs := make([]error, len(idx))
	var next atomic.Int64
	next.Store(int64(start))
	var firstErr atomic.Int64 // lowest failing position so far
	firstErr.Store(int64(len(idx)))
	fail := func(pos int, err error) {
		errs[pos] = err
		for {
			cur := firstErr.Load()
			if int64(pos) >= cur || firstErr.CompareAndSwap(cur, int64(pos)) {
				return
			}
		}
	}
	var wg sync.WaitGroup
	for range min(workers, len(idx)-start) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				pos := int(next.Add(1) - 1)
				// Positions past an earlier failure need not be loaded: the
				// earliest error is reported either way.
				if pos >= len(idx) || int64(pos) > firstErr.Load() || ctx.Err() != nil {
					return
				}
				img, err := load(idx[pos])
				if err != nil {
					fail(pos, err)
					continue
				}
				if err := p.applyInto(img, h, w, out[pos*per:(pos+1)*per]); err != nil {
					var se *sizeError
					if errors.As(err, &se) {
						err = fmt.Errorf("images differ in size: %s gives 3x%dx%d, %s gives 3x%dx%d (use --resize and --crop to make them equal)",
							ds.Name(idx[0]), h, w, ds.Name(idx[pos]), se.got[0], se.got[1])
					} else {
						err = fmt.Errorf("%s: %w", ds.Name(idx[pos]), err)
					}
					fail(pos, err)
				}
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, 0, 0, err
	}
	if pos := firstErr.Load(); pos < int64(len(idx)) {
		return nil, 0, 0, errs[pos]
	}
	return out, h, w, nil
}
