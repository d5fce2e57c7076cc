package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
)

// A run's directory (--out) holds:
//
//	last.safetensors         the model (loader.WriteCheckpoint: loadable by
//	                         embed, eval and convert) whose metadata also
//	                         carries the run's position (runPosition) and flags
//	last.optim.safetensors   the optimizer state (loader.OptimPath), named by
//	                         its SHA-256 in the model's metadata
//	last.method.safetensors  the method's own state (SwAV's queue), likewise
//	                         named by its SHA-256; absent for methods without
//	metrics.jsonl            one JSON object per logged step
//	loss.png, entropy.png    plots, at the end of the run
//
// The model file is written last: it is the commit point of a save. A
// crash before its rename leaves the previous model, which refuses the
// newer optimizer and method files by their hashes.
const (
	checkpointName  = "last.safetensors"
	methodStateName = "last.method.safetensors"
	metricsName     = "metrics.jsonl"
	lossPlotName    = "loss.png"
	entropyPlotName = "entropy.png"
)

// Metadata keys of the run's position and settings in the model file, besides
// loader's Meta* keys.
const (
	metaCriterion     = "criterion"
	metaRunEpoch      = "run_epoch"      // the epoch of the next batch
	metaRunBatch      = "run_batch"      // the next batch's index in its epoch
	metaRunSeed       = "seed"           // the run's --seed
	metaRunStart      = "run_start_step" // the step the run's schedule starts at
	metaRunEnd        = "run_end_step"   // the step the run ends at
	metaMethodSHA256  = "method_state_sha256"
	formatMethodState = "e2mcvk-method-state"
)

// runPosition is where a run stands between two steps: what --resume needs,
// besides the weights and the optimizer, to take the very batches and
// learning rates an uninterrupted run would.
type runPosition struct {
	Epoch int    // the epoch of the next batch
	Batch int    // the next batch's index within Epoch
	Step  int    // optimizer steps taken (the next step's iteration)
	Seed  uint64 // keys the data order and the augmentations
	Start int    // the step the run's learning-rate schedule starts at
	End   int    // the step the run stops at
}

// runState is everything a save writes.
type runState struct {
	Model     *loader.Parts
	Optimizer *layers.OptimizerState
	Method    map[string]layers.HostTensor // nil: the method keeps none
	Pos       runPosition
	// Meta holds the run's method, criterion, flags (loader.MetaArgs) and
	// version; saveRunState adds the position.
	Meta map[string]string
}

// saveRunState writes st into the run directory out. Each file is written
// atomically; see the comment on checkpointName for the order.
func saveRunState(out string, st *runState) error {
	meta := maps.Clone(st.Meta)
	if meta == nil {
		meta = map[string]string{}
	}
	p := st.Pos
	meta[loader.MetaStep] = strconv.Itoa(p.Step)
	meta[metaRunEpoch] = strconv.Itoa(p.Epoch)
	meta[metaRunBatch] = strconv.Itoa(p.Batch)
	meta[metaRunSeed] = strconv.FormatUint(p.Seed, 10)
	meta[metaRunStart] = strconv.Itoa(p.Start)
	meta[metaRunEnd] = strconv.Itoa(p.End)
	delete(meta, metaMethodSHA256)
	if len(st.Method) > 0 {
		sum, err := writeMethodState(filepath.Join(out, methodStateName), st.Method, p.Step)
		if err != nil {
			return err
		}
		meta[metaMethodSHA256] = sum
	}
	parts := *st.Model
	// The epoch entry counts completed epochs, as the official scripts'
	// checkpoints do (their "epoch" is the epoch to start from).
	parts.Epoch = p.Epoch
	parts.Notes = nil
	parts.Optimizer = nil
	c := &loader.Checkpoint{Parts: parts, Meta: meta, OptState: st.Optimizer}
	return loader.WriteCheckpoint(filepath.Join(out, checkpointName), c)
}

// writeMethodState writes a method's state atomically and returns the
// SHA-256 of the file.
func writeMethodState(path string, state map[string]layers.HostTensor, step int) (string, error) {
	var ts []loader.NamedTensor
	for _, k := range slices.Sorted(maps.Keys(state)) {
		ts = append(ts, loader.NamedTensor{Name: k, Tensor: state[k]})
	}
	var b bytes.Buffer
	meta := map[string]string{loader.MetaFormat: formatMethodState, loader.MetaStep: strconv.Itoa(step)}
	if err := loader.EncodeSafetensors(&b, ts, meta); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := writeFileAtomic(path, b.Bytes()); err != nil {
		return "", err
	}
	h := sha256.Sum256(b.Bytes())
	return hex.EncodeToString(h[:]), nil
}

// writeFileAtomic writes data through a synced temporary file in the same
// directory renamed over path: a crash leaves the old file or the new one.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// errNoRunState is returned by loadRunState for a directory without a
// checkpoint.
var errNoRunState = errors.New("no checkpoint to resume from")

// loadRunState reads the run state saved in out. The returned state's
// Optimizer is nil when the optimizer file is missing or does not belong
// to the model (an interrupted save); notes say so.
func loadRunState(out string) (*runState, []string, error) {
	path := filepath.Join(out, checkpointName)
	c, err := loader.ReadCheckpoint(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%s: %w", out, errNoRunState)
	}
	if err != nil {
		return nil, nil, err
	}
	m := c.Meta
	var pos runPosition
	ints := []struct {
		key string
		dst *int
	}{
		{loader.MetaStep, &pos.Step}, {metaRunEpoch, &pos.Epoch}, {metaRunBatch, &pos.Batch},
		{metaRunStart, &pos.Start}, {metaRunEnd, &pos.End},
	}
	for _, f := range ints {
		v, err := strconv.Atoi(m[f.key])
		if err != nil || v < 0 {
			return nil, nil, fmt.Errorf("%s: not a run's checkpoint (its %q is %q); continue from it with --from instead", path, f.key, m[f.key])
		}
		*f.dst = v
	}
	if pos.Seed, err = strconv.ParseUint(m[metaRunSeed], 10, 64); err != nil {
		return nil, nil, fmt.Errorf("%s: seed %q in its metadata: %w", path, m[metaRunSeed], err)
	}
	st := &runState{Model: &c.Parts, Optimizer: c.OptState, Pos: pos, Meta: m}
	notes := slices.Clone(c.Notes)
	if sum := m[metaMethodSHA256]; sum != "" {
		mp := filepath.Join(out, methodStateName)
		raw, err := os.ReadFile(mp)
		if err != nil {
			return nil, nil, fmt.Errorf("%s names a method state: %w", path, err)
		}
		if h := sha256.Sum256(raw); hex.EncodeToString(h[:]) != sum {
			return nil, nil, fmt.Errorf("%s belongs to another checkpoint than %s (written after it by an interrupted save?)", mp, path)
		}
		ts, meta, err := loader.DecodeSafetensors(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", mp, err)
		}
		if meta[loader.MetaFormat] != formatMethodState {
			return nil, nil, fmt.Errorf("read %s: not an e2mcvk method-state file", mp)
		}
		st.Method = map[string]layers.HostTensor{}
		for _, t := range ts {
			st.Method[t.Name] = t.Tensor
		}
	}
	return st, notes, nil
}
