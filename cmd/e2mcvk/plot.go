package main

import (
	"fmt"
	"maps"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Plot sizes: wide enough to read a few thousand steps.
const (
	plotWidth  = 8 * vg.Inch
	plotHeight = 5 * vg.Inch
)

// writeLossPlot draws the total loss and every loss term of the records
// over the steps into a PNG at path.
func writeLossPlot(path string, recs []map[string]float64) error {
	if len(recs) == 0 {
		return fmt.Errorf("plot %s: no logged steps", path)
	}
	names := []string{metricLoss}
	for _, k := range termNames(recs) {
		if k != metricEntrpy {
			names = append(names, k)
		}
	}
	p := plot.New()
	p.Title.Text = "Training loss"
	p.X.Label.Text = "step"
	p.Y.Label.Text = "loss"
	p.Legend.Top = true
	if err := addLines(p, recs, names); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return savePlot(p, path)
}

// writeEntropyPlot draws the mean entropy over the steps into a PNG at
// path; it reports false, writing nothing, when no record has one.
func writeEntropyPlot(path string, recs []map[string]float64) (bool, error) {
	if !slices.ContainsFunc(recs, func(r map[string]float64) bool { _, ok := r[metricEntrpy]; return ok }) {
		return false, nil
	}
	p := plot.New()
	p.Title.Text = "Mean entropy of the embeddings (m-spacing estimate)"
	p.X.Label.Text = "step"
	p.Y.Label.Text = "mean entropy (nats)"
	if err := addLines(p, recs, []string{metricEntrpy}); err != nil {
		return false, fmt.Errorf("plot %s: %w", path, err)
	}
	return true, savePlot(p, path)
}

// termNames returns the loss-term keys of the records, sorted.
func termNames(recs []map[string]float64) []string {
	seen := map[string]bool{}
	for _, r := range recs {
		for k := range r {
			switch k {
			case metricStep, metricEpoch, metricLR, metricLoss, metricRate:
			default:
				seen[k] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// addLines adds one line per key over the records' steps, with a legend.
func addLines(p *plot.Plot, recs []map[string]float64, keys []string) error {
	var args []any
	for _, k := range keys {
		var xy plotter.XYs
		for _, r := range recs {
			if v, ok := r[k]; ok {
				xy = append(xy, plotter.XY{X: r[metricStep], Y: v})
			}
		}
		if len(xy) > 0 {
			args = append(args, k, xy)
		}
	}
	return plotutil.AddLines(p, args...)
}

func savePlot(p *plot.Plot, path string) error {
	if err := p.Save(plotWidth, plotHeight, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}
