package main

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Plot sizes: wide enough to read a few thousand steps.
const (
	plotWidth  = 8 * vg.Inch
	plotHeight = 5 * vg.Inch
)

// writeLossPlot draws the total loss and every loss term of the records
// over the steps into a PNG at path, one panel each (the terms' scales
// differ by orders of magnitude).
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
	cols := min(2, len(names))
	rows := (len(names) + cols - 1) / cols
	panels := make([][]*plot.Plot, rows)
	for i, name := range names {
		p := newPanel(name)
		xy := series(recs, name)
		l, err := plotter.NewLine(xy)
		if err != nil {
			return fmt.Errorf("plot %s: %s: %w", path, name, err)
		}
		l.Color = plotutil.Color(i)
		p.Add(l, plotter.NewGrid())
		panels[i/cols] = append(panels[i/cols], p)
	}
	for r := range panels {
		for len(panels[r]) < cols {
			panels[r] = append(panels[r], nil)
		}
	}
	img := vgimg.New(vg.Length(cols)*4*vg.Inch, vg.Length(rows)*2.5*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter, PadY: vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	canvases := plot.Align(panels, tiles, dc)
	for r := range panels {
		for c, p := range panels[r] {
			if p != nil {
				p.Draw(canvases[r][c])
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return f.Close()
}

// readableTicks labels plot.DefaultTicks' marks with enough digits to tell
// them apart (its own labels round -1.25 and -1.3 alike).
type readableTicks struct{ digits int }

func (r readableTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'g', r.digits, 64)
		}
	}
	return ts
}

// newPanel returns a plot with step on the x axis and readable tick labels.
func newPanel(title string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "step"
	p.X.Tick.Marker = readableTicks{digits: 8}
	p.Y.Tick.Marker = readableTicks{digits: 5}
	return p
}

// series returns the records' values of key over their steps.
func series(recs []map[string]float64, key string) plotter.XYs {
	var xy plotter.XYs
	for _, r := range recs {
		if v, ok := r[key]; ok {
			xy = append(xy, plotter.XY{X: r[metricStep], Y: v})
		}
	}
	return xy
}

// writeEntropyPlot draws the mean entropy over the steps into a PNG at
// path; it reports false, writing nothing, when no record has one.
func writeEntropyPlot(path string, recs []map[string]float64) (bool, error) {
	if !slices.ContainsFunc(recs, func(r map[string]float64) bool { _, ok := r[metricEntrpy]; return ok }) {
		return false, nil
	}
	p := newPanel("Mean entropy of the embeddings (m-spacing estimate)")
	p.Y.Label.Text = "mean entropy (nats)"
	l, err := plotter.NewLine(series(recs, metricEntrpy))
	if err != nil {
		return false, fmt.Errorf("plot %s: %w", path, err)
	}
	p.Add(l, plotter.NewGrid())
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

func savePlot(p *plot.Plot, path string) error {
	if err := p.Save(plotWidth, plotHeight, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}
