package ssl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"gonum.org/v1/gonum/mat"

	"github.com/e2mcvk/e2mcvk/layers"
)

// DefaultMMCRCoeff is the weight of the MMCR loss in the E2MC authors'
// SwAV baseline (main_swav_mmcr_ft.py, --mmcr_weight, default 1.0; the
// paper's runs pass it on the command line).
const DefaultMMCRCoeff = 1.0

// MMCR is the Maximum Manifold Capacity Representations criterion (Yerxa et
// al., NeurIPS 2023) as the E2MC paper's Table 2 adds it to SwAV.
//
// What it computes, from the sources: the authors of MMCR
// (github.com/ThomasYerxa/mmcr, MMCR_Loss) L2-normalise every view's
// embedding, all-gather them over the devices, average the views of each
// sample into a centroid (rows of C, shape [N, D] for the global batch N),
// and take loss = lambda * local_nuc / N - ||C||_* with lambda = 0 by
// default: minus the nuclear norm of the centroid matrix, not divided by N
// or anything else. The E2MC authors' SwAV baseline
// (github.com/deepc94/e2mc, main_swav_mmcr_ft.py) does exactly that on
// SwAV's L2-normalised 128-d projection outputs of all 8 crops (2x224 +
// 6x96: the centroid is over every crop, unlike E2MC and AUH, which use
// crops 0 and 1), drops centroid rows that are not finite, and adds
// mmcr_weight * mmcr_loss to the SwAV loss.
//
// Apply follows that on the views it is given (so the caller passes every
// crop): it gathers the views over the group, computes the loss and its
// gradient on the host in float64 (the gradient of ||C||_* is U V^T of
// C's thin SVD, chained through the mean over views and the L2
// normalisation, which divides by max(||z||, 1e-12) as F.normalize does)
// and feeds the gradient into the tape with Surrogate. One sample (N = 1)
// is allowed: the loss is minus the length of its centroid.
type MMCR struct {
	coeff float64
}

// NewMMCR returns the MMCR criterion weighted by coeff (DefaultMMCRCoeff in
// the authors' script).
func NewMMCR(coeff float64) *MMCR { return &MMCR{coeff: coeff} }

// Name returns "mmcr".
func (m *MMCR) Name() string { return "mmcr" }

// Release frees nothing: the criterion holds no device memory between steps.
func (m *MMCR) Release() {}

// Apply records coeff * MMCR on the views z (one [b, D] Var per view of
// the replica's share). Penalty.Value is coeff times the loss and
// HostTerms["mmcr"] the unweighted loss, both of the global batch.
func (m *MMCR) Apply(st *Step, z []*layers.Var) (*Penalty, error) {
	h, err := gatherToHost(st, z)
	if err != nil {
		return nil, fmt.Errorf("mmcr: %w", err)
	}
	loss, grads := mmcrHost(h.vals, h.n, h.d)
	for _, g := range grads {
		for i := range g {
			g[i] *= m.coeff
		}
	}
	add, err := h.surrogate(st, grads)
	if err != nil {
		return nil, fmt.Errorf("mmcr: %w", err)
	}
	return &Penalty{Add: add, Value: m.coeff * loss, HostTerms: map[string]float64{"mmcr": loss}}, nil
}

// normEps is F.normalize's floor on the norm.
const normEps = 1e-12

// normalizeRows returns the rows of x ([n, d], row-major) divided by
// max(||row||, normEps), and the divisors.
func normalizeRows(x []float64, n, d int) (y, norms []float64) {
	y = make([]float64, len(x))
	norms = make([]float64, n)
	for i := range n {
		row := x[i*d : (i+1)*d]
		var s float64
		for _, v := range row {
			s += v * v
		}
		r := max(math.Sqrt(s), normEps)
		norms[i] = r
		for k, v := range row {
			y[i*d+k] = v / r
		}
	}
	return y, norms
}

// normalizeBackward maps g, the gradient with respect to the normalised
// rows y, to the gradient with respect to the rows before normalisation, in
// place: (g - y (y.g)) / ||x|| where the norm is above the floor, g / floor
// where it is not (the floor is then a constant).
func normalizeBackward(g, y, norms []float64, n, d int) {
	for i := range n {
		gr, yr := g[i*d:(i+1)*d], y[i*d:(i+1)*d]
		if norms[i] <= normEps {
			for k := range gr {
				gr[k] /= normEps
			}
			continue
		}
		var dot float64
		for k := range gr {
			dot += yr[k] * gr[k]
		}
		for k := range gr {
			gr[k] = (gr[k] - yr[k]*dot) / norms[i]
		}
	}
}

// mmcrHost computes the MMCR loss of views (each [n, d], row-major, the
// global batch) and its gradient with respect to each view, in float64.
func mmcrHost(views [][]float64, n, d int) (float64, [][]float64) {
	nv := len(views)
	ys := make([][]float64, nv)
	norms := make([][]float64, nv)
	c := make([]float64, n*d)
	for v, x := range views {
		ys[v], norms[v] = normalizeRows(x, n, d)
		for i, y := range ys[v] {
			c[i] += y / float64(nv)
		}
	}
	// The authors drop centroid rows that are not finite (a diverged
	// sample); those rows take no gradient.
	var rows []int
	for i := range n {
		finite := true
		for _, v := range c[i*d : (i+1)*d] {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				finite = false
				break
			}
		}
		if finite {
			rows = append(rows, i)
		}
	}
	grads := make([][]float64, nv)
	for v := range grads {
		grads[v] = make([]float64, n*d)
	}
	if len(rows) == 0 {
		return 0, grads // an empty matrix has nuclear norm 0
	}
	sel := mat.NewDense(len(rows), d, nil)
	for r, i := range rows {
		sel.SetRow(r, c[i*d:(i+1)*d])
	}
	var svd mat.SVD
	if !svd.Factorize(sel, mat.SVDThin) {
		// Factorize fails only on non-finite input, which was filtered.
		for v := range grads {
			for i := range grads[v] {
				grads[v][i] = math.NaN()
			}
		}
		return math.NaN(), grads
	}
	var nuc float64
	for _, s := range svd.Values(nil) {
		nuc += s
	}
	// d(-||C||_*)/dC = -U V^T (the subgradient torch's svdvals backward
	// takes as well where singular values are zero).
	var u, vm mat.Dense
	svd.UTo(&u)
	svd.VTo(&vm)
	var gc mat.Dense
	gc.Mul(&u, vm.T())
	for v := range nv {
		g := grads[v]
		for r, i := range rows {
			for k := range d {
				g[i*d+k] = -gc.At(r, k) / float64(nv)
			}
		}
		normalizeBackward(g, ys[v], norms[v], n, d)
	}
	return -nuc, grads
}

// hostViews are a step's views gathered over the group: their tape Vars
// and their values widened to float64, each [n, d] row-major.
type hostViews struct {
	vars []*layers.Var
	vals [][]float64
	n, d int
}

// gatherToHost gathers every view of z over the group (tp.AllGather: its
// backward sums the gathered gradient over the replicas and keeps each
// replica's rows, so every replica passes the gradient of the one global
// loss), runs the stream recorded so far (recording goes on afterwards)
// and downloads the gathered views.
func gatherToHost(st *Step, z []*layers.Var) (*hostViews, error) {
	tp := st.Tape
	if err := tp.Err(); err != nil {
		return nil, err
	}
	if len(z) == 0 {
		return nil, errors.New("no views")
	}
	h := &hostViews{}
	for i, v := range z {
		if v == nil {
			return nil, fmt.Errorf("view %d is nil", i)
		}
		g := tp.AllGather(v)
		if err := tp.Err(); err != nil {
			return nil, err
		}
		shape := g.Shape()
		if len(shape) != 2 {
			return nil, fmt.Errorf("view %d has shape %v; want [N, D]", i, shape)
		}
		if i > 0 && !slices.Equal(shape, []int{h.n, h.d}) {
			return nil, fmt.Errorf("view %d has shape %v; view 0 has [%d %d]", i, shape, h.n, h.d)
		}
		h.n, h.d = shape[0], shape[1]
		h.vars = append(h.vars, g)
	}
	ctx := stepContext(st)
	s := tp.Stream()
	// Strided views are copied into contiguous tensors for the download.
	tensors := make([]*layers.Tensor, len(h.vars))
	var copies []*layers.Tensor
	defer func() {
		for _, c := range copies {
			c.Release()
		}
	}()
	for i, g := range h.vars {
		tensors[i] = g.Value
		if !g.Value.Contiguous() {
			c, err := layers.Contiguous(s, g.Value)
			if err != nil {
				return nil, fmt.Errorf("view %d: %w", i, err)
			}
			copies = append(copies, c)
			tensors[i] = c
		}
	}
	if err := s.Run(ctx); err != nil {
		return nil, fmt.Errorf("running the forward pass: %w", err)
	}
	for i, t := range tensors {
		data, err := t.Download(ctx)
		if err != nil {
			return nil, fmt.Errorf("downloading view %d: %w", i, err)
		}
		x := make([]float64, len(data))
		for k, v := range data {
			x[k] = float64(v)
		}
		h.vals = append(h.vals, x)
	}
	return h, nil
}

// surrogate uploads grads (one per gathered view, [n, d] row-major) and
// records the sum of the views' Surrogates, the scalar whose gradient
// carries them into the tape. The uploaded tensors are freed at the end of
// the stream's next run: the only kernels that read them are the
// surrogate's forward and backward, which are recorded before any later
// run (the step's, or the one an all-gather's backward makes, which comes
// after the surrogate's backward in the reverse order).
func (h *hostViews) surrogate(st *Step, grads [][]float64) (*layers.Var, error) {
	tp := st.Tape
	ctx := stepContext(st)
	var total *layers.Var
	for i, g := range grads {
		data := make([]float32, len(g))
		for k, v := range g {
			data[k] = float32(v)
		}
		t, err := layers.FromHost(ctx, tp.Device(), data, h.n, h.d)
		if err != nil {
			return nil, fmt.Errorf("uploading the gradient of view %d: %w", i, err)
		}
		tp.Stream().AfterRun(t.Release)
		s := Surrogate(tp, h.vars[i], t)
		if total == nil {
			total = s
		} else {
			total = tp.Add(total, s)
		}
	}
	if err := tp.Err(); err != nil {
		return nil, err
	}
	return total, nil
}

// stepContext is the step's context, or Background where the step has none.
func stepContext(st *Step) context.Context {
	if st.Ctx != nil {
		return st.Ctx
	}
	return context.Background()
}
