package loader

import (
	"bufio"
	"errors"
	"fmt"
	"image"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// VOCClasses returns the 20 PASCAL VOC class names in the standard order,
// the order of the columns of VOC07.Targets.
func VOCClasses() []string {
	return []string{
		"aeroplane", "bicycle", "bird", "boat", "bottle",
		"bus", "car", "cat", "chair", "cow",
		"diningtable", "dog", "horse", "motorbike", "person",
		"pottedplant", "sheep", "sofa", "train", "tvmonitor",
	}
}

// VOC07 is one split of PASCAL VOC 2007 for image classification: the
// multi-label targets of the transfer protocol's linear SVMs.
type VOC07 struct {
	root    string
	split   string
	ids     []string
	targets []int8 // len(ids) x 20, row-major
}

// OpenVOC07 reads a split ("train", "val", "trainval" or "test") of VOC2007
// under root (the VOC2007 folder, holding ImageSets and JPEGImages): the
// image ids of ImageSets/Main/<split>.txt, in that order, and for each of the
// 20 classes the targets of ImageSets/Main/<class>_<split>.txt, lines
// "<id> <1|-1|0>" (1: present, -1: absent, 0: present but only as difficult
// objects). Every class list must give exactly the split's ids, each once.
// Images are not opened here.
func OpenVOC07(root, split string) (*VOC07, error) {
	switch split {
	case "train", "val", "trainval", "test":
	default:
		return nil, fmt.Errorf("voc07: unknown split %q (train, val, trainval or test)", split)
	}
	sets := filepath.Join(root, "ImageSets", "Main")
	splitPath := filepath.Join(sets, split+".txt")
	v := &VOC07{root: root, split: split}
	row := map[string]int{}
	err := readVOCLines(splitPath, func(line int, fields []string) error {
		if len(fields) != 1 {
			return fmt.Errorf("line %d: %q is not one image id", line, strings.Join(fields, " "))
		}
		id := fields[0]
		if err := checkVOCID(id); err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
		if prev, dup := row[id]; dup {
			return fmt.Errorf("line %d: id %s repeats line %d", line, id, prev+1)
		}
		row[id] = len(v.ids)
		v.ids = append(v.ids, id)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(v.ids) == 0 {
		return nil, fmt.Errorf("voc07 %s: lists no images", splitPath)
	}
	nc := len(VOCClasses())
	v.targets = make([]int8, len(v.ids)*nc)
	for c, class := range VOCClasses() {
		path := filepath.Join(sets, class+"_"+split+".txt")
		seen := make([]bool, len(v.ids))
		n := 0
		err := readVOCLines(path, func(line int, fields []string) error {
			if len(fields) != 2 {
				return fmt.Errorf("line %d: %q is not \"<id> <1|-1|0>\"", line, strings.Join(fields, " "))
			}
			r, ok := row[fields[0]]
			if !ok {
				return fmt.Errorf("line %d: id %q is not in %s", line, fields[0], splitPath)
			}
			if seen[r] {
				return fmt.Errorf("line %d: id %s is listed twice", line, fields[0])
			}
			t, err := strconv.Atoi(fields[1])
			if err != nil || t < -1 || t > 1 {
				return fmt.Errorf("line %d: target %q of %s is not 1, -1 or 0", line, fields[1], fields[0])
			}
			seen[r] = true
			n++
			v.targets[r*nc+c] = int8(t)
			return nil
		})
		if err != nil {
			return nil, err
		}
		if n != len(v.ids) {
			var lack []string
			for r, s := range seen {
				if !s && len(lack) < maxNamed {
					lack = append(lack, v.ids[r])
				}
			}
			more := ""
			if missing := len(v.ids) - n; missing > len(lack) {
				more = fmt.Sprintf(" and %d more", missing-len(lack))
			}
			return nil, fmt.Errorf("voc07 %s: lists %d of the %d images of %s; missing %s%s",
				path, n, len(v.ids), splitPath, strings.Join(lack, ", "), more)
		}
	}
	return v, nil
}

// checkVOCID refuses an id that would not name a file in JPEGImages.
func checkVOCID(id string) error {
	if id == "." || id == ".." || strings.ContainsAny(id, `/\`) {
		return fmt.Errorf("%q is not an image id", id)
	}
	return nil
}

// readVOCLines calls fn with the fields of each non-blank line of path,
// numbered from 1, and wraps its error with the path.
func readVOCLines(path string, fn func(line int, fields []string) error) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("voc07: %s not found", path)
	}
	if err != nil {
		return fmt.Errorf("voc07: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if err := fn(line, fields); err != nil {
			return fmt.Errorf("voc07 %s: %w", path, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("voc07 %s: %w", path, err)
	}
	return nil
}

// Len returns the number of images.
func (v *VOC07) Len() int { return len(v.ids) }

// ID returns the id of image i ("000005").
func (v *VOC07) ID(i int) string { return v.ids[i] }

// Targets returns the 20 targets of image i in VOCClasses order: 1 present,
// -1 absent, 0 difficult. The slice is shared: callers must not modify it.
func (v *VOC07) Targets(i int) []int8 {
	nc := len(VOCClasses())
	return v.targets[i*nc : (i+1)*nc : (i+1)*nc]
}

// Label returns the first class present (target 1) in image i, or -1 when
// none is (an image with only difficult objects). VOC is multi-label: this
// exists so that VOC07 is a Dataset (for embedding); use Targets for the
// labels.
func (v *VOC07) Label(i int) int {
	for c, t := range v.Targets(i) {
		if t == 1 {
			return c
		}
	}
	return -1
}

// Classes returns the 20 VOC class names.
func (v *VOC07) Classes() []string { return VOCClasses() }

// Name returns the path of image i: JPEGImages/<id>.jpg.
func (v *VOC07) Name(i int) string { return filepath.Join(v.root, "JPEGImages", v.ids[i]+".jpg") }

// Image decodes image i.
func (v *VOC07) Image(i int) (image.Image, error) {
	if i < 0 || i >= len(v.ids) {
		return nil, fmt.Errorf("voc07 %s %s: image %d out of range (%d images)", v.root, v.split, i, len(v.ids))
	}
	return DecodeImage(v.Name(i))
}
