package main

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// embedFixtures runs testdata/torch_embed.py (cached): a torchvision
// ResNet-50 with random weights saved in four layouts, a small ImageFolder
// and PyTorch's embeddings of it.
func embedFixtures(t *testing.T) string {
	t.Helper()
	script, err := os.ReadFile("testdata/torch_embed.py")
	if err != nil {
		t.Fatal(err)
	}
	return oracle.Cached(t, []string{"torch", "torchvision", "numpy", "PIL"}, func(py, dir string) {
		oracle.RunFile(t, py, "testdata/torch_embed.py", "make", dir)
	}, script)
}

// assertNpyClose compares two .npy files: same shape, relative error (2-norm)
// at most tol.
func assertNpyClose(t *testing.T, got, want string, tol float64) {
	t.Helper()
	g, err := loader.ReadNpy(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := loader.ReadNpy(want)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Shape) != len(w.Shape) || g.Len() != w.Len() {
		t.Fatalf("%s has shape %v, want %v", got, g.Shape, w.Shape)
	}
	var diff, norm float64
	for i := range w.Data {
		diff += (g.Data[i] - w.Data[i]) * (g.Data[i] - w.Data[i])
		norm += w.Data[i] * w.Data[i]
	}
	if norm == 0 {
		t.Fatalf("%s is all zeros", want)
	}
	if rel := math.Sqrt(diff / norm); rel > tol || math.IsNaN(rel) {
		t.Errorf("%s: relative error %.3g from %s > %.3g", got, rel, want, tol)
	}
}

// TestEmbedLayouts embeds the images with the same ResNet-50 saved by
// PyTorch as VICReg (full, with optimizer), SwAV (legacy format), SimSiam and
// torchvision checkpoints, and compares with PyTorch's eval-mode features;
// also VICReg's projector.
func TestEmbedLayouts(t *testing.T) {
	if testing.Short() {
		t.Skip("four ResNet-50 checkpoints of 95 MB")
	}
	fix := embedFixtures(t)
	images := filepath.Join(fix, "images")
	out := t.TempDir()
	for _, layout := range []string{"vicreg", "swav", "simsiam", "torchvision"} {
		z, labels := filepath.Join(out, layout+".npy"), filepath.Join(out, layout+"-labels.npy")
		code, _, stderr := runCLI(t, "embed", "--checkpoint", filepath.Join(fix, layout+".pth"), "--data", images,
			"--out", z, "--labels-out", labels, "--resize", "0", "--crop", "0", "--batch-size", "4")
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", layout, code, stderr)
		}
		assertNpyClose(t, z, filepath.Join(fix, "backbone.npy"), 1e-4)
		assertNpyClose(t, labels, filepath.Join(fix, "labels.npy"), 0)
	}
	z := filepath.Join(out, "projector.npy")
	code, _, stderr := runCLI(t, "embed", "--checkpoint", filepath.Join(fix, "vicreg.pth"), "--head", "projector",
		"--data", images, "--out", z, "--resize", "0", "--crop", "0")
	if code != 0 {
		t.Fatalf("projector: exit %d: %s", code, stderr)
	}
	assertNpyClose(t, z, filepath.Join(fix, "projector.npy"), 1e-4)
}

// TestConvertRoundTrip converts SwAV's .pth to our .safetensors and that to
// a .pth, which PyTorch loads into torchvision's resnet50 and which gives
// the original embeddings there; the .safetensors embeds as the original.
func TestConvertRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("ResNet-50 checkpoints of 95 MB")
	}
	fix := embedFixtures(t)
	out := t.TempDir()
	st, pth := filepath.Join(out, "swav.safetensors"), filepath.Join(out, "swav.pth")
	for _, args := range [][]string{{filepath.Join(fix, "swav.pth"), st}, {st, pth}} {
		if code, _, stderr := runCLI(t, append([]string{"convert"}, args...)...); code != 0 {
			t.Fatalf("convert %v: exit %d: %s", args, code, stderr)
		}
	}
	z := filepath.Join(out, "z.npy")
	if code, _, stderr := runCLI(t, "embed", "--checkpoint", st, "--data", filepath.Join(fix, "images"), "--out", z, "--resize", "0", "--crop", "0"); code != 0 {
		t.Fatalf("embed: exit %d: %s", code, stderr)
	}
	assertNpyClose(t, z, filepath.Join(fix, "backbone.npy"), 1e-4)
	py := oracle.Python(t, "torch", "torchvision", "numpy", "PIL")
	printed := strings.TrimSpace(string(oracle.RunFile(t, py, "testdata/torch_embed.py", "check", pth, filepath.Join(fix, "images"), filepath.Join(fix, "backbone.npy"))))
	rel, err := strconv.ParseFloat(printed, 64)
	if err != nil {
		t.Fatalf("oracle printed %q", printed)
	}
	// The same weights in the same library: equal up to rounding.
	if rel > 1e-6 {
		t.Errorf("PyTorch's features from the converted .pth differ from the original's by %.3g (relative)", rel)
	}
}

// TestCheckpointBadInput checks the one-line errors of embed and convert.
func TestCheckpointBadInput(t *testing.T) {
	dir := t.TempDir()
	pthDir := filepath.Join("..", "..", "loader", "testdata", "pth")
	images := filepath.Join(dir, "images", "a")
	os.MkdirAll(images, 0o755)
	os.WriteFile(filepath.Join(images, "broken.png"), []byte("\x89PNG\r\n\x1a\nnot really"), 0o644)
	small := smallCheckpoint(t, dir)
	notPth := filepath.Join(dir, "notes.pth")
	os.WriteFile(notPth, []byte("hello"), 0o644)
	cases := map[string]struct {
		args []string
		want string
	}{
		"forbidden global": {[]string{"convert", filepath.Join(pthDir, "hostile_zip.pth"), filepath.Join(dir, "x.safetensors")}, "posix.system"},
		"forbidden legacy": {[]string{"convert", filepath.Join(pthDir, "hostile_legacy.pth"), filepath.Join(dir, "x.safetensors")}, "posix.system"},
		"truncated":        {[]string{"convert", filepath.Join(pthDir, "checkpoint_zip_truncated.pth"), filepath.Join(dir, "x.safetensors")}, "checkpoint_zip_truncated.pth"},
		"not a checkpoint": {[]string{"convert", notPth, filepath.Join(dir, "x.safetensors")}, "notes.pth"},
		"missing":          {[]string{"convert", filepath.Join(dir, "nope.pth"), filepath.Join(dir, "x.safetensors")}, "nope.pth"},
		"bad layout":       {[]string{"convert", filepath.Join(pthDir, "state_dict_zip.pth"), filepath.Join(dir, "x.safetensors"), "--layout", "moco"}, "moco"},
		"no model":         {[]string{"convert", filepath.Join(pthDir, "state_dict_zip.pth"), filepath.Join(dir, "x.safetensors")}, "state_dict_zip.pth"},
		"bad output":       {[]string{"convert", filepath.Join(pthDir, "state_dict_zip.pth"), filepath.Join(dir, "x.txt")}, ""},
		"wrong arch":       {[]string{"embed", "--checkpoint", small, "--arch", "resnet50", "--data", images, "--out", filepath.Join(dir, "z.npy")}, "resnet18"},
		"broken image":     {[]string{"embed", "--checkpoint", small, "--data", filepath.Join(dir, "images"), "--out", filepath.Join(dir, "z.npy")}, "broken.png"},
		"no projector":     {[]string{"embed", "--checkpoint", small, "--head", "projector", "--data", filepath.Join(dir, "images"), "--out", filepath.Join(dir, "z.npy")}, "projector"},
		"no images":        {[]string{"embed", "--checkpoint", small, "--data", dir, "--out", filepath.Join(dir, "z.npy")}, dir},
	}
	for name, c := range cases {
		code, _, stderr := runCLI(t, c.args...)
		assertOneLineError(t, code, stderr)
		if !strings.Contains(stderr, c.want) {
			t.Errorf("%s: %q does not mention %q", name, stderr, c.want)
		}
	}
}

// smallCheckpoint writes a narrow ResNet-18 as an e2mcvk checkpoint.
func smallCheckpoint(t *testing.T, dir string) string {
	t.Helper()
	ctx := context.Background()
	r, err := layers.NewResNet(ctx, vktest.Device(t), layers.ResNetConfig{Depth: 18, Width: 4}, rand.New(rand.NewPCG(1, 1)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	parts, err := loader.ModelParts(ctx, r, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "small.safetensors")
	if err := loader.WriteCheckpoint(path, &loader.Checkpoint{Parts: *parts}); err != nil {
		t.Fatal(err)
	}
	return path
}
