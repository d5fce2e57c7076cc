package ssl

import (
	"fmt"
	"math"

	"github.com/e2mcvk/e2mcvk/layers"
)

// Defaults of the AUH uniformity baseline in the E2MC authors' SwAV script
// (main_swav_unif_ft.py: --unif_weight 1.0, --kernel_width 3.0; DESIGN.md
// section 2 gives t = 3 too, where Wang & Isola's own default is t = 2).
const (
	DefaultAUHCoeff = 1.0
	DefaultAUHT     = 3.0
)

// AUH is the uniformity loss of "Understanding Contrastive Representation
// Learning through Alignment and Uniformity on the Hypersphere" (Wang &
// Isola, ICML 2020) as the E2MC paper's Table 2 adds it to SwAV.
//
// What it computes, from the sources: Wang & Isola's align_uniform code
// (github.com/SsnL/align_uniform) defines
// uniform_loss(x, t=2) = torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()
// on L2-normalised x, the mean over the pairs i < j, and trains on the
// average of the two views' uniformities. The E2MC authors' SwAV baseline
// (github.com/deepc94/e2mc, main_swav_unif_ft.py) does the same on SwAV's
// L2-normalised 128-d projection outputs of crops 0 and 1 (crops_for_assign),
// each all-gathered over the devices first, with t = kernel_width = 3 and
// weight unif_weight (default 1), adding unif_weight * mean over the crops
// to the SwAV loss.
//
// Apply follows that on the first two views it is given (SwAV's crops 0
// and 1): loss = mean over views of log(mean_{i<j} exp(-t |y_i - y_j|^2)),
// y the rows divided by max(||z||, 1e-12) as F.normalize does, computed
// with its closed-form gradient on the host in float64 over the gathered
// batch. The loss needs a pair: a global batch of one sample is an error
// (PyTorch would give NaN).
type AUH struct {
	coeff, t float64
}

// NewAUH returns the uniformity criterion weighted by coeff with kernel
// width t (DefaultAUHCoeff and DefaultAUHT in the authors' script).
func NewAUH(coeff, t float64) *AUH { return &AUH{coeff: coeff, t: t} }

// Name returns "auh".
func (a *AUH) Name() string { return "auh" }

// Release frees nothing: the criterion holds no device memory between steps.
func (a *AUH) Release() {}

// Apply records coeff * AUH on the views z (one [b, D] Var per view of the
// replica's share). Penalty.Value is coeff times the loss and
// HostTerms["auh"] the unweighted loss, both of the global batch.
func (a *AUH) Apply(st *Step, z []*layers.Var) (*Penalty, error) {
	if len(z) > 2 {
		z = z[:2]
	}
	h, err := gatherToHost(st, z)
	if err != nil {
		return nil, fmt.Errorf("auh: %w", err)
	}
	if h.n < 2 {
		return nil, fmt.Errorf("auh: a global batch of %d sample(s) has no pairs", h.n)
	}
	loss, grads := auhHost(h.vals, h.n, h.d, a.t)
	for _, g := range grads {
		for i := range g {
			g[i] *= a.coeff
		}
	}
	add, err := h.surrogate(st, grads)
	if err != nil {
		return nil, fmt.Errorf("auh: %w", err)
	}
	return &Penalty{Add: add, Value: a.coeff * loss, HostTerms: map[string]float64{"auh": loss}}, nil
}

// auhHost computes the mean over views (each [n, d] row-major, n >= 2) of
// the uniformity log(mean_{i<j} exp(-t |y_i - y_j|^2)) of the normalised
// rows y, and its gradient with respect to each view, in float64.
func auhHost(views [][]float64, n, d int, t float64) (float64, [][]float64) {
	nv := float64(len(views))
	pairs := float64(n) * float64(n-1) / 2
	var loss float64
	grads := make([][]float64, len(views))
	e := make([]float64, n*n)
	for v, x := range views {
		y, norms := normalizeRows(x, n, d)
		var sum float64
		for i := range n {
			yi := y[i*d : (i+1)*d]
			for j := i + 1; j < n; j++ {
				yj := y[j*d : (j+1)*d]
				// Squared distance from the differences, as pdist does,
				// not from 2 - 2 y_i.y_j (which cancels badly for near
				// neighbours).
				var d2 float64
				for k := range yi {
					diff := yi[k] - yj[k]
					d2 += diff * diff
				}
				w := math.Exp(-t * d2)
				e[i*n+j] = w
				sum += w
			}
		}
		loss += math.Log(sum/pairs) / nv
		// d/dy_i of log(sum/P) / V = -2t / (V sum) * sum_j e_ij (y_i - y_j).
		f := -2 * t / (nv * sum)
		g := make([]float64, n*d)
		for i := range n {
			gi, yi := g[i*d:(i+1)*d], y[i*d:(i+1)*d]
			for j := i + 1; j < n; j++ {
				w := f * e[i*n+j]
				gj, yj := g[j*d:(j+1)*d], y[j*d:(j+1)*d]
				for k := range gi {
					c := w * (yi[k] - yj[k])
					gi[k] += c
					gj[k] -= c
				}
			}
		}
		normalizeBackward(g, y, norms, n, d)
		grads[v] = g
	}
	return loss, grads
}
