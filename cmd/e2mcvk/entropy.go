package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"text/tabwriter"

	"github.com/e2mcvk/e2mcvk/e2mc"
	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// entropyCmd is `e2mcvk entropy`.
type entropyCmd struct {
	In     string  `name:"in" required:"" type:"existingfile" placeholder:"Z.npy" help:"Embeddings: an N x D float32 or float64 .npy array, one row per sample."`
	Bound  string  `name:"bound" enum:"none,sigmoid,normal" default:"sigmoid" help:"Bound applied to each value first: sigmoid (VICReg), normal CDF (SwAV, SimSiam) or none (${enum})."`
	M      int     `name:"m" default:"0" help:"Spacing window; 0 means round(sqrt(N))."`
	Eps    float64 `name:"eps" default:"1e-7" help:"Constant added inside the log of each spacing (1e-7 as VICReg's script; SwAV and SimSiam use 1.1920929e-07)."`
	JSON   bool    `name:"json" help:"Print one JSON object instead of a summary."`
	Rank   bool    `name:"rank" default:"true" negatable:"" help:"Compute the effective rank (an eigendecomposition of min(N, D) squared on the host: seconds for thousands; --no-rank skips it)."`
	Device int     `name:"device" default:"0" help:"Index of the Vulkan device to run on (see e2mcvk devices)."`
}

// Help is the long help of `e2mcvk entropy --help`.
func (entropyCmd) Help() string {
	return `Measures a batch of embeddings the way the E2MC criterion sees it: each
column is bounded, its m-spacing entropy is estimated, and the covariance
loss (the sum of squared off-diagonal covariances over D) of the bounded,
centred values is computed, on the device. Also prints the effective rank
(exp of the entropy of the normalised covariance eigenvalues, computed on the
host).

With --json it prints one object with the fields n, d, m, bound, eps,
entropy (the D per-column values), mean_entropy, min, max, quantiles,
cov_loss and effective_rank (absent with --no-rank).`
}

// entropyReport is the JSON form of `e2mcvk entropy --json`.
type entropyReport struct {
	N             int                `json:"n"`
	D             int                `json:"d"`
	M             int                `json:"m"`
	Bound         string             `json:"bound"`
	Eps           float64            `json:"eps"`
	Entropy       []float32          `json:"entropy"`
	MeanEntropy   float64            `json:"mean_entropy"`
	Min           float64            `json:"min"`
	Max           float64            `json:"max"`
	Quantiles     map[string]float64 `json:"quantiles"`
	CovLoss       float64            `json:"cov_loss"`
	EffectiveRank *float64           `json:"effective_rank,omitempty"` // absent with --no-rank
	Device        string             `json:"device"`
}

// Run measures the array.
func (c *entropyCmd) Run(e *env) error {
	bound, err := e2mc.ParseBound(c.Bound)
	if err != nil {
		return err
	}
	arr, err := loader.ReadNpy(c.In)
	if err != nil {
		return err
	}
	if len(arr.Shape) != 2 {
		return fmt.Errorf("%s has shape %v: want a 2-D array of N rows (samples) by D columns", c.In, arr.Shape)
	}
	n, d := arr.Shape[0], arr.Shape[1]
	if n < 4 || d < 1 {
		return fmt.Errorf("%s has %d rows and %d columns: the entropy needs at least 4 rows", c.In, n, d)
	}
	for i, v := range arr.Data {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%s: element [%d, %d] is %v: embeddings must be finite", c.In, i/d, i%d, v)
		}
	}
	if c.M < 0 || c.M >= n {
		return fmt.Errorf("--m %d: the window must be in [1, N-1] = [1, %d], or 0", c.M, n-1)
	}
	if c.Eps < 0 {
		return errors.New("--eps must not be negative")
	}
	z := arr.Float32()
	crit := &e2mc.Criterion{Params: e2mc.Params{Bound: bound, M: c.M, Eps: c.Eps}}
	var meas *e2mc.Measurement
	var device string
	err = withInstance(func(in *vk.Instance) error {
		dev, err := in.Open(c.Device)
		if err != nil {
			return err
		}
		device = dev.Info.Name
		t, err := layers.FromHost(e.ctx, dev, z, n, d)
		if err != nil {
			return err
		}
		defer t.Release()
		s, err := dev.NewStream()
		if err != nil {
			return err
		}
		defer s.Close()
		meas, err = crit.Measure(e.ctx, s, t)
		return err
	})
	if err != nil {
		return err
	}
	rank := math.NaN()
	if c.Rank {
		if k := min(n, d); k >= 1024 {
			fmt.Fprintf(e.stderr, "effective rank: eigendecomposition of a %d x %d matrix on the host (--no-rank skips it)...\n", k, k)
		}
		if rank, err = e2mc.EffectiveRank(z, n, d, bound); err != nil {
			return err
		}
	}
	r := entropyReport{N: n, D: d, M: meas.M, Bound: c.Bound, Eps: c.Eps, Entropy: meas.Entropy,
		MeanEntropy: meas.MeanEntropy, CovLoss: meas.CovLoss, Device: device,
		Quantiles: map[string]float64{}}
	if c.Rank {
		r.EffectiveRank = &rank
	}
	sorted := make([]float64, d)
	for i, v := range meas.Entropy {
		sorted[i] = float64(v)
	}
	sort.Float64s(sorted)
	r.Min, r.Max = sorted[0], sorted[d-1]
	for _, q := range []float64{0.05, 0.25, 0.5, 0.75, 0.95} {
		r.Quantiles[fmt.Sprintf("%g", q)] = quantile(sorted, q)
	}
	if c.JSON {
		enc := json.NewEncoder(e.stdout)
		return enc.Encode(r)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "embeddings\t%d x %d (%s)\n", n, d, c.In)
	fmt.Fprintf(tw, "bound, m, eps\t%s, %d, %g\n", c.Bound, r.M, c.Eps)
	fmt.Fprintf(tw, "entropy per dimension\tmean %.6f  min %.6f  q05 %.6f  q25 %.6f  median %.6f  q75 %.6f  q95 %.6f  max %.6f\n",
		r.MeanEntropy, r.Min, r.Quantiles["0.05"], r.Quantiles["0.25"], r.Quantiles["0.5"], r.Quantiles["0.75"], r.Quantiles["0.95"], r.Max)
	fmt.Fprintf(tw, "covariance loss\t%.6g\n", r.CovLoss)
	if r.EffectiveRank != nil {
		fmt.Fprintf(tw, "effective rank\t%.2f of %d\n", *r.EffectiveRank, min(n, d))
	}
	fmt.Fprintf(tw, "device\t%s\n", device)
	return tw.Flush()
}

// quantile interpolates linearly between the order statistics of sorted (as
// numpy's default).
func quantile(sorted []float64, q float64) float64 {
	pos := q * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(sorted)-1)
	return sorted[lo] + (pos-float64(lo))*(sorted[hi]-sorted[lo])
}
