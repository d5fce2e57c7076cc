package loader

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// inatJSON is a small iNat-style file: categories out of id order, an
// annotation order unlike the images', and extra fields iNat has.
const inatJSON = `{
 "info": {"year": 2018},
 "images": [
  {"id": 30, "file_name": "train_val2018/Plantae/9/c.png", "width": 2, "height": 2},
  {"id": 10, "file_name": "train_val2018/Aves/2/a.png", "width": 2, "height": 2},
  {"id": 20, "file_name": "train_val2018/Aves/5/b.png", "width": 2, "height": 2}
 ],
 "annotations": [
  {"id": 1, "image_id": 10, "category_id": 2},
  {"id": 2, "image_id": 20, "category_id": 5},
  {"id": 3, "image_id": 30, "category_id": 9}
 ],
 "categories": [
  {"id": 9, "name": "Quercus", "supercategory": "Plantae"},
  {"id": 2, "name": "Corvus", "supercategory": "Aves"},
  {"id": 5, "name": "Pica", "supercategory": "Aves"}
 ]
}
`

func TestOpenINat(t *testing.T) {
	root := t.TempDir()
	writeDatasetFiles(t, root, map[string]string{
		"val2018.json":                  inatJSON,
		"train_val2018/Plantae/9/c.png": pngBytes(t, 2, 2, 30),
		"train_val2018/Aves/2/a.png":    pngBytes(t, 2, 2, 10),
		"train_val2018/Aves/5/b.png":    pngBytes(t, 3, 1, 20),
	})
	d, err := OpenINat(root, filepath.Join(root, "val2018.json"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"Corvus", "Pica", "Quercus"}; !reflect.DeepEqual(d.Classes(), want) {
		t.Errorf("classes %v, want %v", d.Classes(), want)
	}
	if d.Len() != 3 {
		t.Fatalf("%d images", d.Len())
	}
	for i, want := range []struct {
		name  string
		label int
		seed  uint8
	}{{"Plantae/9/c.png", 2, 30}, {"Aves/2/a.png", 0, 10}, {"Aves/5/b.png", 1, 20}} {
		if got := d.Name(i); got != filepath.Join(root, "train_val2018", want.name) {
			t.Errorf("name %d: %s, want %s", i, got, want.name)
		}
		if d.Label(i) != want.label {
			t.Errorf("label %d: %d, want %d", i, d.Label(i), want.label)
		}
		img, err := d.Image(i)
		if err != nil {
			t.Fatal(err)
		}
		if r, g, _, _ := img.At(1, 0).RGBA(); r>>8 != uint32(want.seed+1) || g>>8 != uint32(want.seed) {
			t.Errorf("image %d is not %s", i, want.name)
		}
	}
	if _, err := d.Image(3); err == nil {
		t.Error("image 3 of 3: no error")
	}
}

func TestOpenINatErrors(t *testing.T) {
	const cats = `"categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]`
	for _, tc := range []struct {
		name, json, want string
	}{
		{"not json", `{"images": [`, "unexpected EOF"},
		{"trailing", `{"images": [], "categories": []} {}`, "data after the JSON object"},
		{"wrong type", `{"images": [{"id": "7", "file_name": "a.png"}]}`, "cannot unmarshal string"},
		{"no categories", `{"images": [{"id": 1, "file_name": "a.png"}]}`, `no "categories"`},
		{"no images", `{` + cats + `}`, `no "images"`},
		{"category id", `{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"name": "x"}]}`, "category 0 has no id"},
		{"category twice", `{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 3, "name": "x"}, {"id": 3, "name": "y"}]}`, "category id 3 is used twice"},
		{"no file name", `{"images": [{"id": 1}], ` + cats + `}`, `image 0 lacks "id" or "file_name"`},
		{"image twice", `{"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}], ` + cats + `}`, "image id 1 is used twice"},
		{"escape", `{"images": [{"id": 1, "file_name": "../a.png"}], ` + cats + `}`, "not a relative path inside"},
		{"absolute", `{"images": [{"id": 1, "file_name": "/etc/passwd"}], ` + cats + `}`, "not a relative path inside"},
		{"unannotated", `{"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}], "annotations": [{"image_id": 1, "category_id": 2}], ` + cats + `}`,
			"image id 2 (b.png) has no annotation"},
		{"unknown image", `{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 4, "category_id": 2}], ` + cats + `}`,
			`annotation 0: image id 4 is not in "images"`},
		{"unknown category", `{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "category_id": 7}], ` + cats + `}`,
			`annotation 0: category id 7 is not in "categories"`},
		{"two annotations", `{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "category_id": 1}, {"image_id": 1, "category_id": 2}], ` + cats + `}`,
			"image id 1 has more than one annotation"},
		{"partial annotation", `{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1}], ` + cats + `}`,
			`annotation 0 lacks "image_id" or "category_id"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeDatasetFiles(t, root, map[string]string{"d.json": tc.json})
			path := filepath.Join(root, "d.json")
			_, err := OpenINat(root, path)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range []string{path, tc.want} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := OpenINat(t.TempDir(), "/nonexistent/val2018.json"); err == nil || !strings.Contains(err.Error(), "val2018.json not found") {
		t.Errorf("missing file: %v", err)
	}
}
