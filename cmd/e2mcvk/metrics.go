package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"time"
)

// Keys of a metrics.jsonl record that are not loss terms.
const (
	metricStep   = "step"
	metricEpoch  = "epoch"
	metricLR     = "lr"
	metricLoss   = "loss"
	metricRate   = "images_per_s"
	metricEntrpy = "entropy"
)

// metricsRecord is one logged training step: a line of OUT/metrics.jsonl.
type metricsRecord struct {
	Step  int     // the iteration, counted from 0 over the whole run
	Epoch int     // the epoch the step's batch belongs to
	LR    float64 // the learning rate of the step
	Loss  float64 // the total loss
	// Terms are the loss terms by name, and "entropy" (the mean entropy)
	// where the criterion reports it.
	Terms map[string]float64
	// Rate is the training throughput in images a second since the last
	// logged step.
	Rate float64
}

// MarshalJSON writes the record as one JSON object with step, epoch, lr and
// loss first, then the terms in sorted order, then images_per_s. Numbers are
// written in their shortest exact form, so a resumed run's losses compare
// bit for bit with an uninterrupted run's.
func (r metricsRecord) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	num := func(v float64) error {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("metrics: non-finite value %v", v)
		}
		b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
		return nil
	}
	fmt.Fprintf(&b, `{"%s":%d,"%s":%d,"%s":`, metricStep, r.Step, metricEpoch, r.Epoch, metricLR)
	if err := num(r.LR); err != nil {
		return nil, err
	}
	fmt.Fprintf(&b, `,"%s":`, metricLoss)
	if err := num(r.Loss); err != nil {
		return nil, err
	}
	for _, k := range slices.Sorted(maps.Keys(r.Terms)) {
		switch k {
		case metricStep, metricEpoch, metricLR, metricLoss, metricRate:
			return nil, fmt.Errorf("metrics: a loss term is named %q, a reserved key", k)
		}
		name, _ := json.Marshal(k)
		b.WriteByte(',')
		b.Write(name)
		b.WriteByte(':')
		if err := num(r.Terms[k]); err != nil {
			return nil, fmt.Errorf("term %s: %w", k, err)
		}
	}
	fmt.Fprintf(&b, `,"%s":`, metricRate)
	if err := num(r.Rate); err != nil {
		return nil, err
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// metricsLog appends records to OUT/metrics.jsonl, one line each, written
// with a single write so that a killed run leaves whole lines (or, at
// worst, one partial last line, which openMetricsLog drops).
type metricsLog struct {
	f *os.File
}

// openMetricsLog opens path for appending. A resumed run keeps the records
// of steps before from (those the checkpoint it resumes from has taken) and
// drops the rest, which it will log again; from 0 starts a new file.
func openMetricsLog(path string, from int) (*metricsLog, error) {
	var keep []byte
	if from > 0 {
		old, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		keep = keptMetrics(old, from)
	}
	// Rewritten through a temporary file: a crash here leaves the old log.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, keep, 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &metricsLog{f: f}, nil
}

// keptMetrics returns the whole, well-formed lines of a metrics log whose
// step is below from.
func keptMetrics(log []byte, from int) []byte {
	var out []byte
	for line := range bytes.Lines(log) {
		if !bytes.HasSuffix(line, []byte("\n")) {
			break // a partial last line of a killed run
		}
		var r struct {
			Step *int `json:"step"`
		}
		if json.Unmarshal(line, &r) != nil || r.Step == nil || *r.Step >= from {
			continue
		}
		out = append(out, line...)
	}
	return out
}

// write appends one record.
func (m *metricsLog) write(r metricsRecord) error {
	line, err := r.MarshalJSON()
	if err != nil {
		return err
	}
	if _, err := m.f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("write %s: %w", m.f.Name(), err)
	}
	return nil
}

// close closes the log.
func (m *metricsLog) close() error { return m.f.Close() }

// readMetrics reads a metrics log into one map per line (every value is a
// number), skipping a partial last line.
func readMetrics(path string) ([]map[string]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []map[string]float64
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		var r map[string]float64
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// trainProgress is the live status of a training run on stderr: a line
// redrawn in place (at most a few times a second) when stderr is a
// terminal, else a line every --log-every steps.
type trainProgress struct {
	w        io.Writer
	terminal bool
	first    int // the run's first step (a resumed run starts later)
	total    int // the step the run ends at
	start    time.Time
	last     time.Time
	drawn    bool
}

func newTrainProgress(w io.Writer, first, total int) *trainProgress {
	now := time.Now()
	return &trainProgress{w: w, terminal: isTerminal(w), first: first, total: total, start: now}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// update shows the state after step (counted from 0); logged says whether
// the step is one --log-every logs.
func (p *trainProgress) update(step int, loss, rate float64, logged bool) {
	now := time.Now()
	done := step + 1 - p.first
	left := "?"
	if el := now.Sub(p.start); done > 0 {
		left = (time.Duration(float64(el) / float64(done) * float64(p.total-step-1))).Round(time.Second).String()
	}
	line := fmt.Sprintf("train: step %d/%d (%.0f%%)  loss %.5g  %.1f images/s  ETA %s",
		step+1, p.total, 100*float64(step+1)/float64(p.total), loss, rate, left)
	switch {
	case p.terminal:
		if now.Sub(p.last) < 200*time.Millisecond && step+1 < p.total {
			return
		}
		p.last = now
		p.drawn = true
		fmt.Fprintf(p.w, "\r\033[K%s", line)
	case logged:
		fmt.Fprintln(p.w, line)
	}
}

// finish ends the redrawn line, so that later messages start on their own.
func (p *trainProgress) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}
