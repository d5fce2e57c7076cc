package eval

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Summary is one metric over the runs of several seeds, as the papers'
// tables give it: the mean and the sample standard deviation (n-1 in the
// denominator; 0 for a single run).
type Summary struct {
	Mean, Std float64
	// Runs holds the metric of each run, in seed order.
	Runs []float64
}

// Summarize returns the mean and standard deviation of runs.
func Summarize(runs []float64) Summary {
	s := Summary{Runs: slices.Clone(runs)}
	if len(runs) == 0 {
		return s
	}
	for _, v := range runs {
		s.Mean += v
	}
	s.Mean /= float64(len(runs))
	if len(runs) > 1 {
		var ss float64
		for _, v := range runs {
			ss += (v - s.Mean) * (v - s.Mean)
		}
		s.Std = math.Sqrt(ss / float64(len(runs)-1))
	}
	return s
}

// String formats the summary as "mean ± std" with two decimals (the mean
// alone for one run).
func (s Summary) String() string {
	if len(s.Runs) <= 1 {
		return fmt.Sprintf("%.2f", s.Mean)
	}
	return fmt.Sprintf("%.2f ± %.2f", s.Mean, s.Std)
}

// Report is the result of one evaluation: its metrics (in percent: "top1",
// "top5" or "map"), each summarised over the seeds, and the settings that
// produced them.
type Report struct {
	Protocol string
	// Metrics maps a metric's name to its summary; Order lists the names in
	// the order they are printed.
	Metrics  map[string]Summary
	Order    []string
	Settings map[string]any
	// Skipped names the images the run passed over as unreadable, each
	// once (Skips.List).
	Skipped []string
}

// NewReport returns an empty report of a protocol with its settings.
func NewReport(protocol string, settings map[string]any) *Report {
	return &Report{Protocol: protocol, Metrics: map[string]Summary{}, Settings: settings}
}

// Add records the per-seed values of a metric.
func (r *Report) Add(name string, runs []float64) {
	if _, ok := r.Metrics[name]; !ok {
		r.Order = append(r.Order, name)
	}
	r.Metrics[name] = Summarize(runs)
}

// SetSkipped records the images skips passed over.
func (r *Report) SetSkipped(skips *Skips) {
	r.Skipped = nil
	for _, s := range skips.List() {
		r.Skipped = append(r.Skipped, s.Name)
	}
}

// Text is the report as one line a person reads: "linear: top1 71.20 ±
// 0.12, top5 90.03 ± 0.05 (3 seeds)", with ", 2 unreadable images
// skipped" inside the brackets when there were any.
func (r *Report) Text() string {
	parts := make([]string, 0, len(r.Order))
	runs := 0
	for _, name := range r.Order {
		s := r.Metrics[name]
		parts = append(parts, name+" "+s.String())
		runs = max(runs, len(s.Runs))
	}
	seeds := "1 seed"
	if runs != 1 {
		seeds = fmt.Sprintf("%d seeds", runs)
	}
	switch len(r.Skipped) {
	case 0:
	case 1:
		seeds += ", 1 unreadable image skipped"
	default:
		seeds += fmt.Sprintf(", %d unreadable images skipped", len(r.Skipped))
	}
	return fmt.Sprintf("%s: %s (%s)", r.Protocol, strings.Join(parts, ", "), seeds)
}

// MarshalJSON writes the report as one object: "protocol", each metric's
// mean under its name ("top1": 71.2), its standard deviation under
// name+"_std" and its per-seed values under name+"_runs", "settings", the
// number of images skipped as unreadable under "skipped" and their names
// under "skipped_files".
func (r *Report) MarshalJSON() ([]byte, error) {
	m := map[string]any{"protocol": r.Protocol, "settings": r.Settings, "skipped": len(r.Skipped), "skipped_files": append([]string{}, r.Skipped...)}
	for name, s := range r.Metrics {
		m[name] = s.Mean
		m[name+"_std"] = s.Std
		m[name+"_runs"] = s.Runs
	}
	return json.Marshal(m)
}
