package loader

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// vocTargets are the test tree's targets of its test split, ids in the
// split file's order; classes not set are -1.
func vocTargets() map[string]map[string]int {
	return map[string]map[string]int{
		"000004": {"dog": 1, "person": 1, "bird": 0},
		"000001": {"aeroplane": 0},
		"000010": {"tvmonitor": 1, "chair": 0},
	}
}

// writeVOC writes a VOC2007 tree with a test split of vocTargets and a
// 5x3 JPEG for 000010, and returns its root.
func writeVOC(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "VOC2007")
	ids := []string{"000004", "000001", "000010"}
	tg := vocTargets()
	files := map[string]string{"ImageSets/Main/test.txt": strings.Join(ids, "\n") + "\n"}
	for _, class := range VOCClasses() {
		var b strings.Builder
		// The class files list the ids in another order than the split
		// file, with the official double space before a positive target.
		for _, id := range []string{"000001", "000004", "000010"} {
			v, ok := tg[id][class]
			if !ok {
				v = -1
			}
			fmt.Fprintf(&b, "%s %2d\n", id, v)
		}
		files["ImageSets/Main/"+class+"_test.txt"] = b.String()
	}
	var jb bytes.Buffer
	if err := jpeg.Encode(&jb, image.NewGray(image.Rect(0, 0, 5, 3)), nil); err != nil {
		t.Fatal(err)
	}
	files["JPEGImages/000010.jpg"] = jb.String()
	writeDatasetFiles(t, root, files)
	return root
}

func TestOpenVOC07(t *testing.T) {
	root := writeVOC(t)
	v, err := OpenVOC07(root, "test")
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"000004", "000001", "000010"}
	if v.Len() != 3 {
		t.Fatalf("%d images", v.Len())
	}
	classes := VOCClasses()
	if len(classes) != 20 || classes[0] != "aeroplane" || classes[14] != "person" || classes[19] != "tvmonitor" {
		t.Fatalf("classes %v", classes)
	}
	tg := vocTargets()
	wantLabels := []int{11, -1, 19} // dog; only a difficult aeroplane; tvmonitor
	for i, id := range ids {
		if v.ID(i) != id {
			t.Errorf("id %d = %s, want %s", i, v.ID(i), id)
		}
		want := make([]int8, 20)
		for c, class := range classes {
			want[c] = -1
			if x, ok := tg[id][class]; ok {
				want[c] = int8(x)
			}
		}
		if got := v.Targets(i); !reflect.DeepEqual(got, want) {
			t.Errorf("targets of %s: %v, want %v", id, got, want)
		}
		if v.Label(i) != wantLabels[i] {
			t.Errorf("label of %s: %d, want %d", id, v.Label(i), wantLabels[i])
		}
	}
	if got, want := v.Name(2), filepath.Join(root, "JPEGImages", "000010.jpg"); got != want {
		t.Errorf("name %q, want %q", got, want)
	}
	img, err := v.Image(2)
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds().Dx() != 5 || img.Bounds().Dy() != 3 {
		t.Errorf("image 000010 is %v, want 5x3", img.Bounds())
	}
	if _, err := v.Image(0); err == nil || !strings.Contains(err.Error(), "000004.jpg") {
		t.Errorf("missing JPEG: %v", err)
	}
	if _, err := v.Image(3); err == nil {
		t.Error("image 3 of 3: no error")
	}
}

func TestOpenVOC07Errors(t *testing.T) {
	set := func(name, data string) func(string) error {
		return func(root string) error {
			return os.WriteFile(filepath.Join(root, "ImageSets", "Main", name), []byte(data), 0o644)
		}
	}
	for _, tc := range []struct {
		name   string
		change func(root string) error
		split  string
		want   []string
	}{
		{"split", nil, "val2", []string{`unknown split "val2"`}},
		{"no split file", nil, "trainval", []string{"trainval.txt not found"}},
		{"no class file", func(r string) error { return os.Remove(filepath.Join(r, "ImageSets", "Main", "sofa_test.txt")) },
			"test", []string{"sofa_test.txt not found"}},
		{"empty split", set("test.txt", "\n"), "test", []string{"test.txt: lists no images"}},
		{"repeated id", set("test.txt", "000004\n000001\n000004\n"), "test", []string{"test.txt: line 3: id 000004 repeats line 1"}},
		{"path id", set("test.txt", "../x\n"), "test", []string{"test.txt: line 1", "not an image id"}},
		{"two fields", set("test.txt", "000004 1\n"), "test", []string{"test.txt: line 1"}},
		{"unknown id", set("cat_test.txt", "000004 1\n000001 -1\n000010 -1\n000011 -1\n"), "test",
			[]string{"cat_test.txt: line 4: id \"000011\" is not in", "test.txt"}},
		{"missing id", set("cat_test.txt", "000004 1\n"), "test", []string{"cat_test.txt: lists 1 of the 3 images", "000001, 000010"}},
		{"twice", set("cat_test.txt", "000004 1\n000001 -1\n000004 1\n"), "test", []string{"cat_test.txt: line 3: id 000004 is listed twice"}},
		{"bad target", set("cat_test.txt", "000004 2\n000001 -1\n000010 -1\n"), "test", []string{"cat_test.txt: line 1: target \"2\""}},
		{"no target", set("cat_test.txt", "000004\n"), "test", []string{"cat_test.txt: line 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := writeVOC(t)
			if tc.change != nil {
				if err := tc.change(root); err != nil {
					t.Fatal(err)
				}
			}
			_, err := OpenVOC07(root, tc.split)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
