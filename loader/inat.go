package loader

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// INat is a split of iNaturalist 2018 (or any data set described by a
// COCO-style JSON file with one annotation an image): the images in the
// JSON's order, classes the categories sorted by id.
type INat struct {
	root    string
	json    string
	classes []string
	paths   []string // the images' file names, relative to root
	labels  []int
}

// inatFile is the part of the JSON file that INat reads.
type inatFile struct {
	Images []struct {
		ID       *int64  `json:"id"`
		FileName *string `json:"file_name"`
	} `json:"images"`
	Annotations []struct {
		ImageID    *int64 `json:"image_id"`
		CategoryID *int64 `json:"category_id"`
	} `json:"annotations"`
	Categories []struct {
		ID   *int64 `json:"id"`
		Name string `json:"name"`
	} `json:"categories"`
}

// OpenINat reads a COCO-style JSON file ({"images": [{"id", "file_name"}],
// "annotations": [{"image_id", "category_id"}], "categories": [{"id",
// "name"}]}, as iNat2018's train2018.json and val2018.json): the data set's
// images are root/<file_name> in the order of "images"; its classes are the
// categories' names sorted by category id, and an image's label is the
// index of its annotation's category. Every image needs exactly one
// annotation; ids must be unique, references must resolve, and file names
// must be relative paths inside root. Images are not opened here.
func OpenINat(root, jsonPath string) (*INat, error) {
	f, err := os.Open(jsonPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("inat: %s not found", jsonPath)
	}
	if err != nil {
		return nil, fmt.Errorf("inat: %w", err)
	}
	defer f.Close()
	var doc inatFile
	dec := json.NewDecoder(bufio.NewReader(f))
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("inat %s: %w", jsonPath, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("inat %s: data after the JSON object", jsonPath)
	}
	d, err := buildINat(root, &doc)
	if err != nil {
		return nil, fmt.Errorf("inat %s: %w", jsonPath, err)
	}
	d.json = jsonPath
	return d, nil
}

// buildINat checks doc and turns it into an INat.
func buildINat(root string, doc *inatFile) (*INat, error) {
	if len(doc.Categories) == 0 {
		return nil, errors.New(`no "categories"`)
	}
	if len(doc.Images) == 0 {
		return nil, errors.New(`no "images"`)
	}
	type cat struct {
		id   int64
		name string
	}
	cats := make([]cat, len(doc.Categories))
	for k, c := range doc.Categories {
		if c.ID == nil {
			return nil, fmt.Errorf("category %d has no id", k)
		}
		cats[k] = cat{*c.ID, c.Name}
	}
	sort.SliceStable(cats, func(a, b int) bool { return cats[a].id < cats[b].id })
	d := &INat{root: root}
	classOf := make(map[int64]int, len(cats))
	for k, c := range cats {
		if k > 0 && cats[k-1].id == c.id {
			return nil, fmt.Errorf("category id %d is used twice", c.id)
		}
		classOf[c.id] = k
		d.classes = append(d.classes, c.name)
	}

	rowOf := make(map[int64]int, len(doc.Images))
	for k, im := range doc.Images {
		if im.ID == nil || im.FileName == nil {
			return nil, fmt.Errorf(`image %d lacks "id" or "file_name"`, k)
		}
		if _, dup := rowOf[*im.ID]; dup {
			return nil, fmt.Errorf("image id %d is used twice", *im.ID)
		}
		// A file name must stay inside root: the JSON is data, not a
		// licence to read any file.
		name := filepath.FromSlash(*im.FileName)
		if !filepath.IsLocal(name) {
			return nil, fmt.Errorf("image %d: file name %q is not a relative path inside the data set", *im.ID, *im.FileName)
		}
		rowOf[*im.ID] = k
		d.paths = append(d.paths, name)
	}
	d.labels = make([]int, len(doc.Images))
	for k := range d.labels {
		d.labels[k] = -1
	}
	for k, a := range doc.Annotations {
		if a.ImageID == nil || a.CategoryID == nil {
			return nil, fmt.Errorf(`annotation %d lacks "image_id" or "category_id"`, k)
		}
		r, ok := rowOf[*a.ImageID]
		if !ok {
			return nil, fmt.Errorf("annotation %d: image id %d is not in \"images\"", k, *a.ImageID)
		}
		c, ok := classOf[*a.CategoryID]
		if !ok {
			return nil, fmt.Errorf("annotation %d: category id %d is not in \"categories\"", k, *a.CategoryID)
		}
		if d.labels[r] >= 0 {
			return nil, fmt.Errorf("image id %d has more than one annotation (annotation %d is another)", *a.ImageID, k)
		}
		d.labels[r] = c
	}
	for r, l := range d.labels {
		if l < 0 {
			return nil, fmt.Errorf("image id %d (%s) has no annotation", *doc.Images[r].ID, *doc.Images[r].FileName)
		}
	}
	return d, nil
}

// Len returns the number of images.
func (d *INat) Len() int { return len(d.paths) }

// Label returns the class index of image i: its category's position among
// the categories sorted by id.
func (d *INat) Label(i int) int { return d.labels[i] }

// Classes returns the category names, sorted by category id.
func (d *INat) Classes() []string { return d.classes }

// Name returns the path of image i.
func (d *INat) Name(i int) string { return filepath.Join(d.root, d.paths[i]) }

// Image decodes image i.
func (d *INat) Image(i int) (image.Image, error) {
	if i < 0 || i >= len(d.paths) {
		return nil, fmt.Errorf("inat %s: image %d out of range (%d images)", d.json, i, len(d.paths))
	}
	return DecodeImage(d.Name(i))
}
