package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/eval"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// evalCheckpoint writes a narrow ResNet-18 with the small stem (3x3, no max
// pool) as an e2mcvk checkpoint, so that 16 px images leave a res5 map.
func evalCheckpoint(t *testing.T, dir string) string {
	t.Helper()
	ctx := context.Background()
	r, err := layers.NewResNet(ctx, vktest.Device(t), layers.ResNetConfig{Depth: 18, Width: 4, SmallStem: true, InChannels: 3}, rand.New(rand.NewPCG(2, 3)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	parts, err := loader.ModelParts(ctx, r, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "eval.safetensors")
	if err := loader.WriteCheckpoint(path, &loader.Checkpoint{Parts: *parts}); err != nil {
		t.Fatal(err)
	}
	return path
}

// classImage is a size x size image of class c: noise over a colour that
// depends on the class.
func classImage(rng *rand.Rand, c, size int) image.Image {
	img := image.NewRGBA(image.Rect(0, 0, size, size))
	for y := range size {
		for x := range size {
			px := [3]float64{}
			for k := range px {
				px[k] = 100 + 40*rng.NormFloat64()
			}
			px[c%3] += 80
			clamp := func(v float64) uint8 { return uint8(max(0, min(255, math.Round(v)))) }
			img.Set(x, y, color.RGBA{clamp(px[0]), clamp(px[1]), clamp(px[2]), 255})
		}
	}
	return img
}

// writeFolder writes an ImageFolder of perClass PNG images of each of
// classes classes.
func writeFolder(t *testing.T, root string, rng *rand.Rand, classes, perClass, size int) {
	t.Helper()
	for c := range classes {
		dir := filepath.Join(root, fmt.Sprintf("n%04d", c))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i := range perClass {
			f, err := os.Create(filepath.Join(dir, fmt.Sprintf("n%04d_%d.png", c, i)))
			if err != nil {
				t.Fatal(err)
			}
			if err := png.Encode(f, classImage(rng, c, size)); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
}

// evalJSON runs an eval command with --json and decodes its output.
func evalJSON(t *testing.T, args ...string) (map[string]any, string) {
	t.Helper()
	code, stdout, stderr := runCLI(t, append(args, "--json")...)
	if code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, stderr)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(stdout), &m); err != nil || strings.Count(stdout, "\n") != 1 {
		t.Fatalf("%v: stdout is not one JSON object: %q", args, stdout)
	}
	return m, stderr
}

// readFeatures reads the .npy pair embed wrote as eval features.
func readFeatures(t *testing.T, z, labels string, classes int) *eval.Features {
	t.Helper()
	a, err := loader.ReadNpy(z)
	if err != nil {
		t.Fatal(err)
	}
	l, err := loader.ReadNpy(labels)
	if err != nil {
		t.Fatal(err)
	}
	f := &eval.Features{X: a.Float32(), N: a.Shape[0], D: a.Shape[1], Classes: classes}
	for _, v := range l.Data {
		f.Labels = append(f.Labels, int(v))
	}
	return f
}

// TestEvalLinearKNN runs eval linear and eval knn on a tiny checkpoint and
// image folders, and checks their numbers against package eval run on the
// features `e2mcvk embed` writes for the same images (the command's
// plumbing: the same features, settings and seeds give the same top-1 and
// top-5 exactly); then the feature cache, labels fractions over two seeds,
// a SimCLR subset list, --pool 1 (BN probe) and --augment.
func TestEvalLinearKNN(t *testing.T) {
	dir := t.TempDir()
	ckpt := evalCheckpoint(t, dir)
	rng := rand.New(rand.NewPCG(8, 8))
	train, val := filepath.Join(dir, "train"), filepath.Join(dir, "val")
	writeFolder(t, train, rng, 3, 8, 16)
	writeFolder(t, val, rng, 3, 4, 16)
	cache := filepath.Join(dir, "cache")
	common := []string{"--checkpoint", ckpt, "--train-data", train, "--val-data", val, "--resize", "0", "--crop", "0", "--batch-size", "8", "--cache-dir", cache}

	var feats [2]*eval.Features
	for k, data := range []string{train, val} {
		z, l := filepath.Join(dir, fmt.Sprintf("z%d.npy", k)), filepath.Join(dir, fmt.Sprintf("l%d.npy", k))
		if code, _, stderr := runCLI(t, "embed", "--checkpoint", ckpt, "--data", data, "--out", z, "--labels-out", l, "--resize", "0", "--crop", "0"); code != 0 {
			t.Fatalf("embed: exit %d: %s", code, stderr)
		}
		feats[k] = readFeatures(t, z, l, 3)
	}
	cfg := eval.DefaultLinearConfig()
	cfg.Epochs, cfg.BatchSize, cfg.Seed = 7, 8, 4
	p, err := eval.TrainLinear(context.Background(), feats[0], cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	want1, want5, err := p.Evaluate(feats[1])
	if err != nil {
		t.Fatal(err)
	}
	got, stderr := evalJSON(t, append([]string{"eval", "linear", "--epochs", "7", "--seed", "4"}, common...)...)
	if got["top1"] != want1 || got["top5"] != want5 {
		t.Errorf("eval linear: top1 %v top5 %v; eval.TrainLinear on embed's features: %v %v", got["top1"], got["top5"], want1, want5)
	}
	if s, ok := got["settings"].(map[string]any); !ok || s["labels"] != "100%" || s["epochs"] != 7.0 || s["arch"] != "resnet18" || got["protocol"] != "linear" {
		t.Errorf("eval linear --json: %v", got)
	}
	if strings.Contains(stderr, "from the cache") {
		t.Errorf("the first run read features from an empty cache: %s", stderr)
	}

	w1, w5, err := eval.KNN(context.Background(), nil, feats[0], feats[1], 5, 0.1)
	if err != nil {
		t.Fatal(err)
	}
	got, stderr = evalJSON(t, append([]string{"eval", "knn", "--k", "5", "--temperature", "0.1"}, common...)...)
	if got["top1"] != w1 || got["top5"] != w5 {
		t.Errorf("eval knn: top1 %v top5 %v; eval.KNN on embed's features: %v %v", got["top1"], got["top5"], w1, w5)
	}
	if strings.Count(stderr, "from the cache") != 2 {
		t.Errorf("eval knn after eval linear: want both feature sets from the cache: %s", stderr)
	}

	// Half the labels, two seeds: per-seed values and their spread.
	got, _ = evalJSON(t, append([]string{"eval", "linear", "--epochs", "3", "--labels", "50%", "--seeds", "2"}, common...)...)
	if runs, ok := got["top1_runs"].([]any); !ok || len(runs) != 2 {
		t.Errorf("--seeds 2: top1_runs %v", got["top1_runs"])
	}
	// A SimCLR list of the training folder: two images of each class.
	list := filepath.Join(dir, "list.txt")
	os.WriteFile(list, []byte("n0000_1.png\nn0000_3.png\nn0001_0.png\nn0001_7.png\nn0002_2.png\nn0002_5.png\n"), 0o644)
	got, _ = evalJSON(t, append([]string{"eval", "linear", "--epochs", "3", "--subset", list}, common...)...)
	if s := got["settings"].(map[string]any); s["subset"] != list {
		t.Errorf("--subset: settings %v", s)
	}
	// The BN probe on the res5 map (AvgPool(1, 1): 32 x 2 x 2 features)
	// and augmented training through the backbone, with text output.
	got, _ = evalJSON(t, append([]string{"eval", "linear", "--epochs", "2", "--pool", "1"}, common...)...)
	for _, k := range []string{"top1", "top5"} {
		if v, ok := got[k].(float64); !ok || v < 0 || v > 100 {
			t.Errorf("--pool 1: %s = %v", k, got[k])
		}
	}
	args := append([]string{"eval", "linear", "--epochs", "1", "--augment"}, common...)
	args[len(args)-5] = "12" // --crop 12 for the training crops (and the evaluation centre crop)
	code, stdout, stderr := runCLI(t, args...)
	if code != 0 || !strings.HasPrefix(stdout, "linear: top1 ") {
		t.Errorf("--augment: exit %d, stdout %q, stderr %s", code, stdout, stderr)
	}
}

// TestEvalFinetune runs one short fine-tuning per seed on the tiny
// checkpoint: the command trains and reports.
func TestEvalFinetune(t *testing.T) {
	dir := t.TempDir()
	ckpt := evalCheckpoint(t, dir)
	rng := rand.New(rand.NewPCG(9, 9))
	train, val := filepath.Join(dir, "train"), filepath.Join(dir, "val")
	writeFolder(t, train, rng, 3, 6, 16)
	writeFolder(t, val, rng, 3, 2, 16)
	got, stderr := evalJSON(t, "eval", "finetune", "--checkpoint", ckpt, "--train-data", train, "--val-data", val,
		"--resize", "0", "--crop", "12", "--batch-size", "6", "--epochs", "2", "--milestones", "1", "--labels", "50%", "--seeds", "2")
	if runs, ok := got["top1_runs"].([]any); !ok || len(runs) != 2 {
		t.Fatalf("top1_runs %v (%s)", got["top1_runs"], stderr)
	}
	if s := got["settings"].(map[string]any); s["trunk_lr"] != 0.01 || s["head_lr"] != 0.2 {
		t.Errorf("settings %v", s)
	}
}

// writeVOC writes a tiny VOC2007 folder under root: 24 JPEGs of 16 px of
// three kinds, every third in the test split, the others in trainval, with
// each class's targets following the kind (and some difficult ones).
func writeVOC(t *testing.T, root string, rng *rand.Rand) {
	t.Helper()
	for _, sub := range []string{"ImageSets/Main", "JPEGImages"} {
		os.MkdirAll(filepath.Join(root, sub), 0o755)
	}
	splits := map[string][]string{}
	classFiles := map[string]*strings.Builder{}
	for i := range 24 {
		id := fmt.Sprintf("%06d", i+1)
		split := "trainval"
		if i%3 == 2 {
			split = "test"
		}
		splits[split] = append(splits[split], id)
		c := i % 3
		f, err := os.Create(filepath.Join(root, "JPEGImages", id+".jpg"))
		if err != nil {
			t.Fatal(err)
		}
		jpeg.Encode(f, classImage(rng, c, 16), &jpeg.Options{Quality: 95})
		f.Close()
		for k, class := range loader.VOCClasses() {
			target := -1
			switch {
			case k%3 == c:
				target = 1
			case k == 5 && i%4 == 0:
				target = 0
			}
			key := class + "_" + split
			if classFiles[key] == nil {
				classFiles[key] = &strings.Builder{}
			}
			fmt.Fprintf(classFiles[key], "%s %2d\n", id, target)
		}
	}
	for split, ids := range splits {
		os.WriteFile(filepath.Join(root, "ImageSets/Main", split+".txt"), []byte(strings.Join(ids, "\n")+"\n"), 0o644)
	}
	for key, b := range classFiles {
		os.WriteFile(filepath.Join(root, "ImageSets/Main", key+".txt"), []byte(b.String()), 0o644)
	}
}

// TestEvalVOC07 runs the VOC07 protocol on a tiny VOC2007 folder (JPEGs of
// 16 px, the res5 map 2 x 2, --pool 2): the command reads both splits,
// trains the 20 SVMs and reports a mAP; with a trainval image truncated it
// skips it and says so.
func TestEvalVOC07(t *testing.T) {
	dir := t.TempDir()
	ckpt := evalCheckpoint(t, dir)
	root := filepath.Join(dir, "VOC2007")
	writeVOC(t, root, rand.New(rand.NewPCG(10, 10)))
	args := []string{"eval", "voc07", "--checkpoint", ckpt, "--train-data", root, "--val-data", root,
		"--resize", "0", "--crop", "0", "--pool", "2", "--costs", "0.1,1", "--cache-dir", filepath.Join(dir, "cache")}
	got, stderr := evalJSON(t, args...)
	if v, ok := got["map"].(float64); !ok || !(v > 0 && v <= 100) {
		t.Errorf("map %v (%s)", got["map"], stderr)
	}
	if s := got["settings"].(map[string]any); s["pool"] != 2.0 || s["train_split"] != "trainval" || got["skipped"] != 0.0 {
		t.Errorf("settings %v, skipped %v", s, got["skipped"])
	}
	bad := filepath.Join(root, "JPEGImages", "000004.jpg") // trainval
	b, err := os.ReadFile(bad)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bad, b[:len(b)/2], 0o644)
	got, stderr = evalJSON(t, append(args, "--no-cache")...)
	if v, ok := got["map"].(float64); !ok || !(v > 0 && v <= 100) || got["skipped"] != 1.0 || !strings.Contains(stderr, bad) {
		t.Errorf("a truncated image: map %v, skipped %v (%s)", got["map"], got["skipped"], stderr)
	}
}

// TestEvalBadInput checks the one-line errors of the eval commands.
func TestEvalBadInput(t *testing.T) {
	dir := t.TempDir()
	ckpt := evalCheckpoint(t, dir)
	train := filepath.Join(dir, "train")
	writeFolder(t, train, rand.New(rand.NewPCG(1, 1)), 2, 2, 8)
	other := filepath.Join(dir, "other")
	writeFolder(t, other, rand.New(rand.NewPCG(1, 1)), 3, 1, 8)
	base := []string{"--checkpoint", ckpt, "--train-data", train, "--val-data", train, "--no-cache"}
	cases := map[string]struct {
		args []string
		want string
	}{
		"labels":     {append([]string{"eval", "linear", "--labels", "0%"}, base...), "--labels"},
		"labels 2":   {append([]string{"eval", "knn", "--labels", "ten"}, base...), "--labels"},
		"no val":     {[]string{"eval", "knn", "--checkpoint", ckpt, "--train-data", train, "--val-data", filepath.Join(dir, "nope"), "--no-cache"}, "nope"},
		"wrong arch": {append([]string{"eval", "linear", "--arch", "resnet50"}, base...), "resnet18"},
		"augment":    {append([]string{"eval", "linear", "--augment", "--crop", "0"}, base...), "--crop"},
		"seeds":      {append([]string{"eval", "knn", "--seeds", "0"}, base...), "--seeds"},
		"subset":     {append([]string{"eval", "linear", "--subset", ckpt}, base...), "--subset"},
		"no voc":     {[]string{"eval", "voc07", "--checkpoint", ckpt, "--train-data", train, "--val-data", train}, "--train-data"},
		"classes":    {[]string{"eval", "linear", "--checkpoint", ckpt, "--train-data", train, "--val-data", other, "--no-cache"}, "classes"},
		"costs":      {[]string{"eval", "voc07", "--checkpoint", ckpt, "--train-data", train, "--val-data", train, "--costs", "0,1"}, "--costs"},
	}
	for name, c := range cases {
		code, _, stderr := runCLI(t, c.args...)
		assertOneLineError(t, code, stderr)
		if !strings.Contains(stderr, c.want) {
			t.Errorf("%s: %q does not mention %q", name, stderr, c.want)
		}
	}
}

// TestEvalSkipsUnreadable runs eval knn and eval linear on image folders
// holding a truncated JPEG and a garbage .png among the training images
// and a truncated JPEG among the evaluation images: each is logged with its
// path, the report counts the three, and the numbers equal those of the
// same folders without the bad files (the rows stay aligned with their
// labels), from the cache as computed; a labels subset holding the bad
// files drops them and says so, fine-tuning skips them too, and --strict
// fails naming a bad file.
func TestEvalSkipsUnreadable(t *testing.T) {
	dir := t.TempDir()
	ckpt := evalCheckpoint(t, dir)
	var folders [2][2]string // clean, with bad files; train, val
	for k := range folders {
		rng := rand.New(rand.NewPCG(12, 12))
		for j, name := range []string{"train", "val"} {
			folders[k][j] = filepath.Join(dir, fmt.Sprint(k), name)
			writeFolder(t, folders[k][j], rng, 3, []int{4, 2}[j], 16)
		}
	}
	var full bytes.Buffer
	jpeg.Encode(&full, classImage(rand.New(rand.NewPCG(1, 2)), 1, 16), &jpeg.Options{Quality: 95})
	bad := []string{
		filepath.Join(folders[1][0], "n0001", "n0001_9.jpg"),
		filepath.Join(folders[1][0], "n0002", "n0002_9.png"),
		filepath.Join(folders[1][1], "n0000", "n0000_9.jpg"),
	}
	os.WriteFile(bad[0], full.Bytes()[:full.Len()/2], 0o644)
	os.WriteFile(bad[1], []byte("garbage with an image extension"), 0o644)
	os.WriteFile(bad[2], full.Bytes()[:full.Len()/3], 0o644)
	args := func(k int, cache string, extra ...string) []string {
		return append(append([]string{"eval"}, extra...), "--checkpoint", ckpt, "--train-data", folders[k][0], "--val-data", folders[k][1],
			"--resize", "0", "--crop", "0", "--batch-size", "5", "--cache-dir", cache)
	}
	cache := filepath.Join(dir, "cache")
	clean, _ := evalJSON(t, args(0, cache, "knn", "--k", "3")...)
	if clean["skipped"] != 0.0 {
		t.Fatalf("clean folders: skipped %v", clean["skipped"])
	}
	for round := range 2 { // computed, then from the cache
		got, stderr := evalJSON(t, args(1, cache, "knn", "--k", "3")...)
		if got["skipped"] != 3.0 || len(got["skipped_files"].([]any)) != 3 || got["top1"] != clean["top1"] || got["top5"] != clean["top5"] {
			t.Errorf("round %d: skipped %v, top1 %v top5 %v; without the bad files top1 %v top5 %v", round, got["skipped"], got["top1"], got["top5"], clean["top1"], clean["top5"])
		}
		for _, p := range bad {
			if strings.Count(stderr, "skipped unreadable image: ") != 3 || !strings.Contains(stderr, p) {
				t.Errorf("round %d: stderr does not log %s once among three skips:\n%s", round, p, stderr)
			}
		}
		if (round == 1) != (strings.Count(stderr, "from the cache") == 2) {
			t.Errorf("round %d: cache use: %s", round, stderr)
		}
	}
	// Text output, and a labels subset of all images but the bad ones'
	// (99% of four or five per class rounds to all): the same probe as on
	// the clean folder.
	code, stdout, stderr := runCLI(t, args(1, cache, "linear", "--epochs", "3", "--labels", "99%")...)
	if code != 0 || !strings.Contains(stdout, "3 unreadable images skipped") || !strings.Contains(stderr, "labels subset: dropped 2 sample(s)") {
		t.Errorf("linear --labels 99%%: exit %d, stdout %q, stderr %s", code, stdout, stderr)
	}
	want, _ := evalJSON(t, args(0, cache, "linear", "--epochs", "3")...)
	got, _ := evalJSON(t, args(1, cache, "linear", "--epochs", "3", "--labels", "99%")...)
	if got["top1"] != want["top1"] || got["top5"] != want["top5"] {
		t.Errorf("linear: top1 %v top5 %v, without the bad files %v %v", got["top1"], got["top5"], want["top1"], want["top5"])
	}
	got, stderr = evalJSON(t, append(args(1, cache, "finetune", "--epochs", "1", "--milestones", "1"), "--crop", "12")...)
	if got["skipped"] != 3.0 {
		t.Errorf("finetune: skipped %v (%s)", got["skipped"], stderr)
	}
	for _, cmd := range []string{"knn", "linear"} {
		code, _, stderr := runCLI(t, append(args(1, cache, cmd), "--strict")...)
		assertOneLineError(t, code, stderr)
		if !strings.Contains(stderr, bad[2]) {
			t.Errorf("%s --strict: %q does not name %s", cmd, stderr, bad[2])
		}
	}
}
