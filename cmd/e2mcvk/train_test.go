package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

// trainImages writes an ImageFolder of n random RGB images of w x h pixels
// in two classes, and returns its root.
func trainImages(t *testing.T, n, w, h int) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "images")
	rng := rand.New(rand.NewPCG(7, uint64(n)))
	for i := range n {
		dir := filepath.Join(root, []string{"a", "b"}[i%2])
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		img := image.NewRGBA(image.Rect(0, 0, w, h))
		for y := range h {
			for x := range w {
				img.Set(x, y, color.RGBA{uint8(rng.IntN(256)), uint8(rng.IntN(256)), uint8(rng.IntN(256)), 255})
			}
		}
		var b bytes.Buffer
		if err := png.Encode(&b, img); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, strings.Repeat("x", 1+i/10)+string(rune('a'+i%10))+".png"), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestTrainUsageErrors checks that bad command lines fail with one line
// naming the problem, before any training.
func TestTrainUsageErrors(t *testing.T) {
	data := trainImages(t, 12, 10, 10)
	dir := t.TempDir()
	taken := filepath.Join(dir, "taken")
	os.MkdirAll(taken, 0o755)
	os.WriteFile(filepath.Join(taken, checkpointName), []byte("x"), 0o644)
	cases := map[string]struct {
		args []string
		want string
	}{
		"method":           {[]string{"--method", "byol"}, "byol"},
		"criterion":        {[]string{"--criterion", "barlow"}, "barlow"},
		"epochs and steps": {[]string{"--epochs", "2", "--steps", "3"}, "--epochs and --steps"},
		"uneven split":     {[]string{"--batch-size", "5", "--device", "0,0"}, "split evenly"},
		"bad device":       {[]string{"--device", "0,x"}, "--device"},
		"tiny batch":       {[]string{"--batch-size", "1"}, "--batch-size 1"},
		"resume nothing":   {[]string{"--resume", "--out", filepath.Join(dir, "empty")}, "no checkpoint to resume"},
		"run exists":       {[]string{"--out", taken}, "--resume"},
		"resume and from":  {[]string{"--resume", "--from", filepath.Join(taken, checkpointName), "--out", taken}, "--resume and --from"},
		"batch too large":  {[]string{"--batch-size", "64"}, "fewer than one batch"},
		"negative log":     {[]string{"--log-every", "0"}, "--log-every"},
	}
	for name, c := range cases {
		args := append([]string{"train", "--data", data, "--out", filepath.Join(dir, "run")}, c.args...)
		code, _, stderr := runCLI(t, args...)
		assertOneLineError(t, code, stderr)
		if !strings.Contains(stderr, c.want) {
			t.Errorf("%s: %q does not mention %q", name, stderr, c.want)
		}
	}
}

// TestDefaultStepsDocumented keeps --steps' help in step with defaultSteps.
func TestDefaultStepsDocumented(t *testing.T) {
	code, out, _ := runCLI(t, "train", "--help")
	if code != 0 || !strings.Contains(strings.Join(strings.Fields(out), " "), "default without --epochs: "+strconv.Itoa(defaultSteps)) {
		t.Errorf("train --help does not give the default of %d steps:\n%s", defaultSteps, out)
	}
}

// TestLargestFittingBatch checks the out-of-memory advice: halving from
// the run's batch, multiples of the replicas, out-of-memory errors only.
func TestLargestFittingBatch(t *testing.T) {
	oomAbove := func(limit int, probed *[]int) func(int) error {
		return func(b int) error {
			*probed = append(*probed, b)
			if b > limit {
				return fmt.Errorf("step: %w", &vk.OutOfMemoryError{Device: "test", Requested: int64(b) << 20})
			}
			return nil
		}
	}
	var probed []int
	if got := largestFittingBatch(512, 1, oomAbove(100, &probed)); !strings.Contains(got, "--batch-size 64 fits") || !slices.Equal(probed, []int{256, 128, 64}) {
		t.Errorf("512 on 1 device, 100 fit: %q after probing %v", got, probed)
	}
	probed = nil
	if got := largestFittingBatch(96, 3, oomAbove(20, &probed)); !strings.Contains(got, "--batch-size 12 fits") || !slices.Equal(probed, []int{48, 24, 12}) {
		t.Errorf("96 on 3 devices, 20 fit: %q after probing %v", got, probed)
	}
	probed = nil
	if got := largestFittingBatch(16, 1, oomAbove(1, &probed)); !strings.Contains(got, "not even --batch-size 2 fits") {
		t.Errorf("nothing fits: %q after probing %v", got, probed)
	}
	if got := largestFittingBatch(16, 1, func(int) error { return errors.New("device lost") }); !strings.Contains(got, "device lost") {
		t.Errorf("another error while probing: %q", got)
	}
}

// TestScaledViews checks the views' sizes at another image size: the
// 224 px crops become the image size, SwAV's 96 px ones round(96/224 * S).
func TestScaledViews(t *testing.T) {
	vs, err := scaledViews("swav", 32)
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for _, v := range vs {
		sizes = append(sizes, v.Size)
	}
	want := []int{32, 32, 14, 14, 14, 14, 14, 14} // round(96*32/224) = round(13.71)
	if !slices.Equal(sizes, want) {
		t.Errorf("swav sizes at 32 px: %v, want %v", sizes, want)
	}
}

// TestMetricsLog checks the records' exact round trip, the resume rule
// (lines from the resumed step on dropped, a partial last line too) and
// the refusal of non-finite values.
func TestMetricsLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), metricsName)
	log, err := openMetricsLog(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	var want []metricsRecord
	for step := range 7 {
		r := metricsRecord{
			Step: step, Epoch: step / 3, LR: 0.1 * rng.Float64(), Loss: rng.NormFloat64() * 30,
			Terms: map[string]float64{"sim": rng.Float64(), "ent": -rng.ExpFloat64(), metricEntrpy: rng.NormFloat64()},
			Rate:  100 * rng.Float64(),
		}
		want = append(want, r)
		if err := log.write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := log.write(metricsRecord{Loss: math.NaN()}); err == nil {
		t.Error("a NaN loss was written")
	}
	log.close()
	got, err := readMetrics(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d records, want %d", len(got), len(want))
	}
	for i, r := range want {
		w := maps.Clone(r.Terms)
		w[metricStep], w[metricEpoch], w[metricLR], w[metricLoss], w[metricRate] = float64(r.Step), float64(r.Epoch), r.LR, r.Loss, r.Rate
		if !maps.Equal(got[i], w) {
			t.Errorf("record %d: %v, want %v (bit for bit)", i, got[i], w)
		}
	}
	line, _ := want[0].MarshalJSON()
	if !bytes.HasPrefix(line, []byte(`{"step":0,"epoch":0,"lr":`)) {
		t.Errorf("record does not start with step, epoch, lr: %s", line)
	}

	// A killed run: a partial last line; the resume is at step 4.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"step":7,"epoch":2,"lr":0.`)
	f.Close()
	log, err = openMetricsLog(path, 4)
	if err != nil {
		t.Fatal(err)
	}
	log.close()
	got, err = readMetrics(path)
	if err != nil {
		t.Fatal(err)
	}
	var steps []float64
	for _, r := range got {
		steps = append(steps, r[metricStep])
	}
	if !slices.Equal(steps, []float64{0, 1, 2, 3}) {
		t.Errorf("kept steps %v, want 0 1 2 3", steps)
	}
}

// TestPlots checks that the plots are PNG images and that the entropy plot
// is left out without entropy.
func TestPlots(t *testing.T) {
	dir := t.TempDir()
	var recs []map[string]float64
	for i := range 20 {
		x := float64(i)
		recs = append(recs, map[string]float64{metricStep: x, metricLoss: 30 - x, "sim": 10 / (1 + x), "ent": -0.1 * x, metricEntrpy: -3 + 0.05*x, metricRate: 50})
	}
	loss, ent := filepath.Join(dir, lossPlotName), filepath.Join(dir, entropyPlotName)
	if err := writeLossPlot(loss, recs); err != nil {
		t.Fatal(err)
	}
	if ok, err := writeEntropyPlot(ent, recs); err != nil || !ok {
		t.Fatalf("entropy plot: %v, %v", ok, err)
	}
	for _, p := range []string{loss, ent} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(f)
		f.Close()
		if err != nil || cfg.Width < 200 || cfg.Height < 100 {
			t.Errorf("%s: %+v, %v", p, cfg, err)
		}
	}
	for _, r := range recs {
		delete(r, metricEntrpy)
	}
	if ok, err := writeEntropyPlot(filepath.Join(dir, "none.png"), recs); ok || err != nil {
		t.Errorf("entropy plot without entropy: %v, %v", ok, err)
	}
	if got := termNames(recs); !slices.Equal(got, []string{"ent", "sim"}) {
		t.Errorf("terms %v", got)
	}
}

// TestPlainBatches checks the fidelity modes' batches: --no-augment views
// are loader.LoadBatch's resize and centre crop, --no-shuffle keeps the
// data-set order, and a stream started at batch k gives the full stream's
// batch k.
func TestPlainBatches(t *testing.T) {
	ctx := context.Background()
	root := trainImages(t, 14, 12, 9) // not square: the resize and the crop both act
	ds, err := loader.OpenImageFolder(root)
	if err != nil {
		t.Fatal(err)
	}
	views, err := scaledViews("swav", 8)
	if err != nil {
		t.Fatal(err)
	}
	p := &trainPlan{data: ds, views: views}
	for _, mode := range []struct{ noAugment, noShuffle bool }{{true, true}, {true, false}, {false, true}} {
		c := &trainCmd{BatchSize: 4, Seed: 5, NoAugment: mode.noAugment, NoShuffle: mode.noShuffle, Workers: new(int)}
		src := newDataSource(c, p, nil)
		all := collectBatches(t, src, 1, 0)
		if len(all) != 3 {
			t.Fatalf("%+v: %d batches, want 3 (14 images, batch 4, the rest dropped)", mode, len(all))
		}
		order := src.pipe.Order(1)
		if mode.noShuffle {
			order = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
		}
		for k, b := range all {
			if !slices.Equal(b.Samples, order[4*k:4*k+4]) {
				t.Errorf("%+v: batch %d samples %v, want %v", mode, k, b.Samples, order[4*k:4*k+4])
			}
			if !mode.noAugment {
				continue
			}
			for v, s := range b.Sizes {
				want, h, w, err := loader.LoadBatch(ctx, ds, b.Samples, loader.Preprocess{Resize: s, Crop: s}, 1)
				if err != nil {
					t.Fatal(err)
				}
				if h != s || w != s || !slices.Equal(b.Views[v], want) {
					t.Errorf("%+v: batch %d view %d differs from LoadBatch's %dx%d", mode, k, v, h, w)
				}
			}
		}
		late := collectBatches(t, src, 1, 2)
		if len(late) != 1 || !reflect.DeepEqual(late[0], all[2]) {
			t.Errorf("%+v: the stream started at batch 2 differs from the full one's batch 2", mode)
		}
	}
}

func collectBatches(t *testing.T, src *dataSource, epoch, start int) []*loader.Batch {
	t.Helper()
	it, err := src.epoch(context.Background(), epoch, start)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out []*loader.Batch
	for it.Next() {
		out = append(out, it.Batch())
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRunStateRoundTrip saves a run state (model with a head, optimizer,
// method state, position), reads it back equal, has `embed` load the
// checkpoint, and refuses a method state of another save.
func TestRunStateRoundTrip(t *testing.T) {
	ctx := context.Background()
	dev := vktest.Device(t)
	rng := rand.New(rand.NewPCG(1, 2))
	r, err := layers.NewResNet(ctx, dev, layers.ResNetConfig{Depth: 18, Width: 4, SmallStem: true, InChannels: 3}, rng)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	parts, err := loader.ModelParts(ctx, r, nil)
	if err != nil {
		t.Fatal(err)
	}
	randTensor := func(shape ...int) layers.HostTensor {
		n := 1
		for _, d := range shape {
			n *= d
		}
		h := layers.HostTensor{Shape: shape, Data: make([]float32, n)}
		for i := range h.Data {
			h.Data[i] = float32(rng.NormFloat64())
		}
		return h
	}
	out := t.TempDir()
	st := &runState{
		Model:     parts,
		Optimizer: &layers.OptimizerState{Steps: 17, Tensors: map[string]layers.HostTensor{"0.0.mu": randTensor(4, 3, 3, 3), "1.2.mu": randTensor(7)}},
		Method:    map[string]layers.HostTensor{"queue": randTensor(2, 5, 3)},
		Pos:       runPosition{Epoch: 3, Batch: 2, Step: 17, Seed: 1 << 40, Start: 5, End: 30},
		Meta:      map[string]string{loader.MetaMethod: "swav", metaCriterion: "e2mc", loader.MetaArgs: `{"Method":"swav"}`},
	}
	if err := saveRunState(out, st); err != nil {
		t.Fatal(err)
	}
	got, notes, err := loadRunState(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(notes) > 0 {
		t.Errorf("notes: %v", notes)
	}
	if got.Pos != st.Pos {
		t.Errorf("position %+v, want %+v", got.Pos, st.Pos)
	}
	if got.Model.Epoch != 3 || got.Meta[loader.MetaMethod] != "swav" || got.Meta[metaCriterion] != "e2mc" {
		t.Errorf("epoch %d, meta %v", got.Model.Epoch, got.Meta)
	}
	if !reflect.DeepEqual(got.Optimizer, st.Optimizer) || !reflect.DeepEqual(got.Method, st.Method) {
		t.Error("optimizer or method state differs after the round trip")
	}
	if !reflect.DeepEqual(got.Model.Backbone, parts.Backbone) {
		t.Error("backbone differs after the round trip")
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
	data := trainImages(t, 4, 8, 8)
	code, _, stderr := runCLI(t, "embed", "--checkpoint", filepath.Join(out, checkpointName), "--data", data,
		"--resize", "0", "--crop", "8", "--out", filepath.Join(out, "z.npy"))
	if code != 0 {
		t.Fatalf("embed of the run's checkpoint: %s", stderr)
	}
	code, _, stderr = runCLI(t, "convert", filepath.Join(out, checkpointName), filepath.Join(out, "c.pth"))
	if code != 0 {
		t.Fatalf("convert of the run's checkpoint: %s", stderr)
	}

	// An interrupted later save: a new method state beside the old model.
	if _, err := writeMethodState(filepath.Join(out, methodStateName), map[string]layers.HostTensor{"queue": randTensor(2)}, 20); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadRunState(out); err == nil || !strings.Contains(err.Error(), "another checkpoint") {
		t.Errorf("stale method state: %v", err)
	}

	// A checkpoint that is not a run's.
	plain := t.TempDir()
	if err := loader.WriteCheckpoint(filepath.Join(plain, checkpointName), &loader.Checkpoint{Parts: *parts}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadRunState(plain); err == nil || !strings.Contains(err.Error(), "--from") {
		t.Errorf("resume from a plain checkpoint: %v", err)
	}
	var args trainCmd
	if err := json.Unmarshal([]byte(got.Meta[loader.MetaArgs]), &args); err != nil || args.Method != "swav" {
		t.Errorf("args %+v, %v", args, err)
	}
}

// tinyTrain are the flags of the tests' runs: a narrow ResNet-18 on 16 px
// views of 24 random images (3 batches of 8 an epoch), a small expander.
func tinyTrain(data, out string, extra ...string) []string {
	return append([]string{"train", "--data", data, "--out", out, "--batch-size", "8", "--image-size", "16",
		"--width", "8", "--mlp", "64-64-64", "--seed", "3", "--workers", "2"}, extra...)
}

// lastLine returns the last line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// TestTrainRun runs three steps and checks the run directory: the
// checkpoint (which embed and convert read), the metrics and the plots.
func TestTrainRun(t *testing.T) {
	data := trainImages(t, 24, 20, 18)
	out := filepath.Join(t.TempDir(), "run")
	code, _, stderr := runCLI(t, tinyTrain(data, out, "--steps", "3", "--log-every", "2")...)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	for _, name := range []string{checkpointName, loader.OptimPath(checkpointName), metricsName, lossPlotName, entropyPlotName} {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Error(err)
		}
	}
	recs, err := readMetrics(filepath.Join(out, metricsName))
	if err != nil {
		t.Fatal(err)
	}
	var steps []float64
	for _, r := range recs {
		steps = append(steps, r[metricStep])
		for _, k := range []string{metricEpoch, metricLR, metricLoss, metricRate, metricEntrpy, "sim", "std", "cov"} {
			if _, ok := r[k]; !ok {
				t.Errorf("step %v: no %q in %v", r[metricStep], k, r)
			}
		}
	}
	if !slices.Equal(steps, []float64{0, 2}) {
		t.Errorf("logged steps %v, want 0 and 2 (--log-every 2, the last always)", steps)
	}
	st, _, err := loadRunState(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pos.Step != 3 || st.Pos.End != 3 || st.Optimizer == nil || st.Optimizer.Steps != 3 {
		t.Errorf("saved position %+v, optimizer %v", st.Pos, st.Optimizer != nil)
	}
	code, _, stderr = runCLI(t, "embed", "--checkpoint", filepath.Join(out, checkpointName), "--head", "projector",
		"--data", data, "--resize", "16", "--crop", "16", "--limit", "4", "--out", filepath.Join(out, "z.npy"))
	if code != 0 {
		t.Fatalf("embed of the trained checkpoint: %s", stderr)
	}
	z, err := loader.ReadNpy(filepath.Join(out, "z.npy"))
	if err != nil || !slices.Equal(z.Shape, []int{4, 64}) {
		t.Errorf("projector embeddings %v, %v", z, err)
	}

	// Continued training from the checkpoint (epoch 1 done: 3 batches an
	// epoch) to epoch 2: steps 3 to 5 of epoch 1, the optimizer's state and
	// step count carried on, the heads' sizes taken from the checkpoint.
	next := filepath.Join(t.TempDir(), "next")
	code, _, stderr = runCLI(t, "train", "--from", filepath.Join(out, checkpointName), "--data", data, "--out", next,
		"--batch-size", "8", "--image-size", "16", "--epochs", "2", "--log-every", "1", "--workers", "2")
	if code != 0 {
		t.Fatalf("--from: exit %d:\n%s", code, stderr)
	}
	recs, err = readMetrics(filepath.Join(next, metricsName))
	if err != nil {
		t.Fatal(err)
	}
	steps = nil
	for _, r := range recs {
		steps = append(steps, r[metricStep], r[metricEpoch])
	}
	if !slices.Equal(steps, []float64{3, 1, 4, 1, 5, 1}) {
		t.Errorf("continued run's (step, epoch) pairs %v, want steps 3 to 5 of epoch 1", steps)
	}
	st, _, err = loadRunState(next)
	if err != nil {
		t.Fatal(err)
	}
	if st.Model.Epoch != 2 || st.Pos.Step != 6 || st.Optimizer == nil || st.Optimizer.Steps != 6 {
		t.Errorf("continued run's checkpoint: epoch %d, position %+v", st.Model.Epoch, st.Pos)
	}
	if got := st.Model.Heads[loader.HeadProjector]["0.weight"].Shape; !slices.Equal(got, []int{64, 64}) {
		t.Errorf("continued run's projector layer 0 is %v, want the checkpoint's [64 64]", got)
	}
}

// TestTrainResume is the interrupted-run test: a run is stopped with
// SIGINT after its first checkpoint (it saves and says how to resume),
// resumed, killed with SIGKILL after its next checkpoint, resumed again to
// the end, and its logged losses must equal an uninterrupted run's. The
// runs cross epoch boundaries (3 batches an epoch, 8 steps).
func TestTrainResume(t *testing.T) {
	data := trainImages(t, 24, 20, 18)
	dir := t.TempDir()
	full, cut := filepath.Join(dir, "full"), filepath.Join(dir, "cut")
	const steps = 8
	args := func(out string, extra ...string) []string {
		return tinyTrain(data, out, append([]string{"--steps", strconv.Itoa(steps), "--save-every", "2", "--log-every", "1"}, extra...)...)
	}
	if code, _, stderr := runCLI(t, args(full)...); code != 0 {
		t.Fatalf("uninterrupted run: exit %d:\n%s", code, stderr)
	}

	// SIGINT after the first checkpoint.
	stderr := stopChild(t, cut, syscall.SIGINT, 0, args(cut)...)
	if !strings.Contains(stderr, "interrupted") || !strings.Contains(stderr, "--resume") {
		t.Errorf("interrupted run's message: %s", lastLine(stderr))
	}
	st, _, err := loadRunState(cut)
	if err != nil {
		t.Fatal(err)
	}
	first := st.Pos.Step
	if first >= steps {
		t.Fatalf("the interrupted run got to the end (%d steps): nothing was tested", first)
	}
	// SIGKILL after the resumed run's next checkpoint.
	stopChild(t, cut, syscall.SIGKILL, first, "train", "--resume", "--out", cut)
	if st, _, err = loadRunState(cut); err != nil {
		t.Fatal(err)
	}
	if st.Pos.Step <= first || st.Pos.Step >= steps {
		t.Fatalf("killed at step %d: want a checkpoint after %d and before the end", st.Pos.Step, first)
	}
	if code, _, stderr := runCLI(t, "train", "--resume", "--out", cut); code != 0 {
		t.Fatalf("resumed run: exit %d:\n%s", code, stderr)
	}
	want, err := readMetrics(filepath.Join(full, metricsName))
	if err != nil {
		t.Fatal(err)
	}
	got, err := readMetrics(filepath.Join(cut, metricsName))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != steps || len(want) != steps {
		t.Fatalf("%d and %d logged steps, want %d each", len(got), len(want), steps)
	}
	// float32 tolerance: the same kernels on the same data give the same
	// bits, but a resumed run's buffers may sit elsewhere in memory.
	const tol = 1e-5
	for i := range want {
		for k, w := range want[i] {
			if k == metricRate {
				continue
			}
			g, ok := got[i][k]
			if !ok || math.Abs(g-w) > tol*math.Max(1, math.Abs(w)) {
				t.Errorf("step %d %s: resumed %v, uninterrupted %v", i, k, g, w)
			}
		}
	}
}

// stopChild runs e2mcvk in a child process, sends it sig once the run
// directory holds a checkpoint past step after, and returns its stderr.
func stopChild(t *testing.T, out string, sig syscall.Signal, after int, args ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(2 * time.Minute)
	for {
		select {
		case err := <-done:
			t.Fatalf("the run ended before it could be stopped (%v):\n%s", err, errOut.String())
		case <-deadline:
			cmd.Process.Kill()
			t.Fatalf("no checkpoint past step %d within 2 minutes:\n%s", after, errOut.String())
		case <-time.After(10 * time.Millisecond):
		}
		if st, _, err := loadRunState(out); err == nil && st.Pos.Step > after {
			break
		}
	}
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if err == nil {
		t.Fatalf("the run stopped by %v exited 0", sig)
	}
	return errOut.String()
}

// TestTrainNonFinite poisons step 3's batch with NaN: the run stops
// naming the step and the term, and keeps the checkpoint saved at the end
// of epoch 0 (after 3 steps: 24 images, batch 8).
func TestTrainNonFinite(t *testing.T) {
	data := trainImages(t, 24, 20, 18)
	out := filepath.Join(t.TempDir(), "run")
	t.Setenv(poisonEnv, "3")
	code, _, stderr := runCLI(t, tinyTrain(data, out, "--steps", "6", "--save-every", "0")...)
	if code != exitFailure {
		t.Errorf("exit %d, want %d", code, exitFailure)
	}
	msg := lastLine(stderr)
	if !strings.HasPrefix(msg, "e2mcvk: step 3: the loss term") || !strings.Contains(msg, "NaN") || !strings.Contains(msg, "after 3 steps") {
		t.Errorf("message %q: want the step (3), the term, its value and the kept checkpoint (after 3 steps)", msg)
	}
	st, _, err := loadRunState(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pos.Step != 3 {
		t.Errorf("the checkpoint is after %d steps, want the last good one, after 3", st.Pos.Step)
	}
	for name, x := range st.Model.Backbone {
		for _, v := range x.Data {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("the kept checkpoint's %s is not finite", name)
			}
		}
	}
}
