package eval

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"

	"github.com/e2mcvk/e2mcvk/loader"
)

// VOC07Costs returns VISSL's grid of SVM costs (a fresh slice).
func VOC07Costs() []float64 { return []float64{0.01, 0.1, 1, 2, 5, 10, 15, 20, 50, 100, 1000} }

// SVMConfig are the settings of the VOC07 protocol's linear SVMs: scikit-
// learn's LinearSVC(C=cost, class_weight={1: PosWeight, -1: NegWeight},
// intercept_scaling=1, penalty='l2', loss='squared_hinge', dual=True,
// tol=Tol, max_iter=MaxIter) per class, the cost chosen by Folds-fold
// stratified cross-validation (scikit-learn's StratifiedKFold without
// shuffling) of the average precision.
type SVMConfig struct {
	Costs                []float64
	PosWeight, NegWeight float64
	Tol                  float64
	MaxIter              int
	Folds                int
	// Normalize scales each feature row to unit L2 norm first.
	Normalize bool
	// Seed chooses the order of liblinear's coordinate sweeps.
	Seed uint64
}

// DefaultSVMConfig is VISSL's VOC07 SVM setting.
func DefaultSVMConfig() SVMConfig {
	return SVMConfig{Costs: VOC07Costs(), PosWeight: 2, NegWeight: 1, Tol: 1e-4, MaxIter: 2000, Folds: 3, Normalize: true}
}

// LinearSVM is a binary linear classifier: score = W·x + Bias.
type LinearSVM struct {
	W    []float64
	Bias float64
	// Iters is the number of outer sweeps the solver took.
	Iters int
}

// Decision returns the scores of n rows of d features x.
func (m *LinearSVM) Decision(x []float32, n int) []float64 {
	d := len(m.W)
	out := make([]float64, n)
	for i := range n {
		out[i] = dot64(m.W, x[i*d:(i+1)*d]) + m.Bias
	}
	return out
}

func dot64(w []float64, x []float32) float64 {
	var s float64
	for j, v := range x {
		s += w[j] * float64(v)
	}
	return s
}

// TrainSVM fits a linear SVM with squared hinge loss and an L2 penalty on
// the rows rows of x (n rows of d features; nil rows: all) with targets y
// (+1 or -1), by liblinear's dual coordinate descent for L2-loss SVC
// (solve_l2r_l1l2_svc: random sweeps, shrinking, stopping when the
// projected gradient's spread is at most tol), with cost*posWeight for the
// positive and cost*negWeight for the negative samples. The bias is
// liblinear's: a constant feature 1 appended to every row, penalised like
// the weights.
func TrainSVM(x []float32, d int, y []int8, rows []int, cost, posWeight, negWeight, tol float64, maxIter int, seed uint64) (*LinearSVM, error) {
	if rows == nil {
		rows = make([]int, len(y))
		for i := range rows {
			rows[i] = i
		}
	}
	l := len(rows)
	if l == 0 || d < 1 || len(x) != len(y)*d {
		return nil, fmt.Errorf("svm: %d values, %d targets, %d features", len(x), len(y), d)
	}
	if !(cost > 0) || !(posWeight > 0) || !(negWeight > 0) || !(tol > 0) || maxIter < 1 {
		return nil, fmt.Errorf("svm: cost %g, weights %g and %g, tol %g, max iterations %d: want all positive", cost, posWeight, negWeight, tol, maxIter)
	}
	const bias = 1.0 // intercept_scaling
	w := make([]float64, d)
	var wb float64
	alpha := make([]float64, l)
	qd := make([]float64, l)
	diag := make([]float64, l) // 1/(2C) of the sample's class
	ys := make([]float64, l)
	for s, i := range rows {
		switch y[i] {
		case 1:
			ys[s], diag[s] = 1, 0.5/(cost*posWeight)
		case -1:
			ys[s], diag[s] = -1, 0.5/(cost*negWeight)
		default:
			return nil, fmt.Errorf("svm: target %d of row %d, want 1 or -1", y[i], i)
		}
		row := x[i*d : (i+1)*d]
		var nn float64
		for _, v := range row {
			nn += float64(v) * float64(v)
		}
		qd[s] = diag[s] + nn + bias*bias
	}
	index := make([]int, l)
	for s := range index {
		index[s] = s
	}
	rng := rand.New(rand.NewPCG(seed, 0x5e7))
	active := l
	pgMaxOld, pgMinOld := math.Inf(1), math.Inf(-1)
	iter := 0
	for iter < maxIter {
		pgMaxNew, pgMinNew := math.Inf(-1), math.Inf(1)
		for s := range active {
			j := s + rng.IntN(active-s)
			index[s], index[j] = index[j], index[s]
		}
		for s := 0; s < active; s++ {
			k := index[s]
			row := x[rows[k]*d : (rows[k]+1)*d]
			g := ys[k]*(dot64(w, row)+wb*bias) - 1 + alpha[k]*diag[k]
			pg := 0.0
			if alpha[k] == 0 {
				if g > pgMaxOld {
					active--
					index[s], index[active] = index[active], index[s]
					s--
					continue
				} else if g < 0 {
					pg = g
				}
			} else {
				pg = g // the upper bound is infinite for the squared hinge
			}
			pgMaxNew = max(pgMaxNew, pg)
			pgMinNew = min(pgMinNew, pg)
			if math.Abs(pg) > 1e-12 {
				old := alpha[k]
				alpha[k] = max(alpha[k]-g/qd[k], 0)
				step := (alpha[k] - old) * ys[k]
				for j, v := range row {
					w[j] += step * float64(v)
				}
				wb += step * bias
			}
		}
		iter++
		if pgMaxNew-pgMinNew <= tol {
			if active == l {
				break
			}
			active = l
			pgMaxOld, pgMinOld = math.Inf(1), math.Inf(-1)
			continue
		}
		pgMaxOld, pgMinOld = pgMaxNew, pgMinNew
		if pgMaxOld <= 0 {
			pgMaxOld = math.Inf(1)
		}
		if pgMinOld >= 0 {
			pgMinOld = math.Inf(-1)
		}
	}
	return &LinearSVM{W: w, Bias: wb * bias, Iters: iter}, nil
}

// VOCAP is the all-point interpolated average precision of VOC (VISSL's
// calculate_ap on get_precision_recall): scores ranked from the highest,
// targets 1 (positive), -1 (negative) or 0 (difficult: left out). It is 0
// with no positive; NaN scores are an error of the caller.
func VOCAP(scores []float64, targets []int8) float64 {
	var s []float64
	var pos []bool
	npos := 0
	for i, t := range targets {
		if t == 0 {
			continue
		}
		s = append(s, scores[i])
		pos = append(pos, t > 0)
		if t > 0 {
			npos++
		}
	}
	if npos == 0 {
		return 0
	}
	order := make([]int, len(s))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return s[order[a]] > s[order[b]] })
	rec := make([]float64, len(s)+2)
	prec := make([]float64, len(s)+2)
	tp, fp := 0, 0
	for k, i := range order {
		if pos[i] {
			tp++
		} else {
			fp++
		}
		rec[k+1] = float64(tp) / float64(npos)
		prec[k+1] = float64(tp) / float64(tp+fp)
	}
	rec[len(s)+1], prec[len(s)+1] = 1, 0
	for i := len(prec) - 1; i > 0; i-- {
		prec[i-1] = max(prec[i-1], prec[i])
	}
	ap := 0.0
	for i := 1; i < len(rec); i++ {
		if rec[i] != rec[i-1] {
			ap += (rec[i] - rec[i-1]) * prec[i]
		}
	}
	return ap
}

// averagePrecision is scikit-learn's average_precision_score for targets
// +1 / -1: the sum over distinct score thresholds, from the highest, of
// (R_k - R_{k-1}) P_k.
func averagePrecision(scores []float64, y []int8) float64 {
	order := make([]int, len(scores))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return scores[order[a]] > scores[order[b]] })
	npos := 0
	for _, t := range y {
		if t > 0 {
			npos++
		}
	}
	if npos == 0 {
		return 0
	}
	ap, prevR := 0.0, 0.0
	tp, fp := 0, 0
	for k, i := range order {
		if y[i] > 0 {
			tp++
		} else {
			fp++
		}
		if k+1 < len(order) && scores[order[k+1]] == scores[i] {
			continue // one threshold for tied scores
		}
		r := float64(tp) / float64(npos)
		ap += (r - prevR) * float64(tp) / float64(tp+fp)
		prevR = r
	}
	return ap
}

// stratifiedFolds assigns each sample its test fold as scikit-learn's
// StratifiedKFold(k, shuffle=False) does: classes numbered in order of first
// appearance, each class's samples given to the folds in blocks sized by a
// round robin over the sorted class numbers.
func stratifiedFolds(y []int8, k int) ([]int, error) {
	code := map[int8]int{}
	enc := make([]int, len(y))
	for i, v := range y {
		c, ok := code[v]
		if !ok {
			c = len(code)
			code[v] = c
		}
		enc[i] = c
	}
	counts := make([]int, len(code))
	for _, c := range enc {
		counts[c]++
	}
	for _, n := range counts {
		if n < k {
			return nil, fmt.Errorf("%d-fold cross-validation of a class with %d samples", k, n)
		}
	}
	sorted := slices.Clone(enc)
	slices.Sort(sorted)
	alloc := make([][]int, k) // [fold][class]
	for f := range k {
		alloc[f] = make([]int, len(code))
		for i := f; i < len(sorted); i += k {
			alloc[f][sorted[i]]++
		}
	}
	folds := make([]int, len(y))
	for c := range counts {
		var blocks []int
		for f := range k {
			for range alloc[f][c] {
				blocks = append(blocks, f)
			}
		}
		next := 0
		for i, e := range enc {
			if e == c {
				folds[i] = blocks[next]
				next++
			}
		}
	}
	return folds, nil
}

// MultiLabel are features with multi-label targets: VOC07's 20 classes,
// each image's target 1 (present), -1 (absent) or 0 (difficult).
type MultiLabel struct {
	X       []float32
	N, D    int
	Targets [][]int8 // N rows of len(Classes)
	Classes []string
}

// NewMultiLabel pairs the features of VOC07 images with their targets:
// each row gets the targets of the image its Index names, so that images
// skipped as unreadable (no row) leave no row misaligned.
func NewMultiLabel(f *Features, voc *loader.VOC07) (*MultiLabel, error) {
	m := &MultiLabel{X: f.X, N: f.N, D: f.D, Classes: voc.Classes(), Targets: make([][]int8, f.N)}
	for r, i := range f.Indices() {
		if i < 0 || i >= voc.Len() {
			return nil, fmt.Errorf("voc07: feature row %d is image %d of a split of %d", r, i, voc.Len())
		}
		m.Targets[r] = voc.Targets(i)
	}
	return m, nil
}

// VOC07Result is the outcome of the VOC07 SVM protocol.
type VOC07Result struct {
	// MAP is the mean over the classes of AP, in percent.
	MAP float64
	// AP holds each class's test AP in percent, Cost the cost chosen for it
	// and CVAP its cross-validated AP (percent) at each cost of the grid.
	AP, Cost []float64
	CVAP     [][]float64
	// CVConverged says, for each class and cost, whether all the
	// cross-validation fits converged within MaxIter sweeps; Converged
	// whether each class's final fit did. An unconverged fit depends on
	// the order of the sweeps (the protocol caps them).
	CVConverged [][]bool
	Converged   []bool
}

// VOC07 runs the VISSL protocol: for each class, a linear SVM per cost of
// cfg.Costs scored by cross-validated AP on train (difficult images as
// negatives, as VISSL trains), the best cost (the first of equals) refit on
// all of train, and its all-point AP on test with difficult images left out.
func VOC07(ctx context.Context, train, test *MultiLabel, cfg SVMConfig, classDone func(done int)) (*VOC07Result, error) {
	if train.D != test.D || len(train.Classes) != len(test.Classes) || len(train.Classes) == 0 {
		return nil, fmt.Errorf("voc07: %d-d training and %d-d test features, %d and %d classes", train.D, test.D, len(train.Classes), len(test.Classes))
	}
	if len(cfg.Costs) == 0 || cfg.Folds < 2 {
		return nil, fmt.Errorf("voc07: %d costs, %d folds: want a cost and at least 2 folds", len(cfg.Costs), cfg.Folds)
	}
	xtr, xte := train.X, test.X
	if cfg.Normalize {
		xtr = normalizedRows(&Features{X: train.X, N: train.N, D: train.D})
		xte = normalizedRows(&Features{X: test.X, N: test.N, D: test.D})
	}
	nc := len(train.Classes)
	res := &VOC07Result{AP: make([]float64, nc), Cost: make([]float64, nc), CVAP: make([][]float64, nc),
		CVConverged: make([][]bool, nc), Converged: make([]bool, nc)}
	errs := make([]error, nc)
	var mu sync.Mutex
	done := 0
	err := parallelFor(ctx, nc, func(c int) {
		errs[c] = voc07Class(ctx, res, c, xtr, xte, train, test, cfg)
		if classDone != nil {
			mu.Lock()
			done++
			classDone(done)
			mu.Unlock()
		}
	})
	if err != nil {
		return nil, err
	}
	for c, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("voc07 class %s: %w", train.Classes[c], err)
		}
	}
	for _, ap := range res.AP {
		res.MAP += ap
	}
	res.MAP /= float64(nc)
	return res, nil
}

// voc07Class fills class c of res.
func voc07Class(ctx context.Context, res *VOC07Result, c int, xtr, xte []float32, train, test *MultiLabel, cfg SVMConfig) error {
	y := make([]int8, train.N)
	for i := range y {
		y[i] = -1
		if train.Targets[i][c] == 1 {
			y[i] = 1
		}
	}
	folds, err := stratifiedFolds(y, cfg.Folds)
	if err != nil {
		return err
	}
	res.CVAP[c] = make([]float64, len(cfg.Costs))
	res.CVConverged[c] = make([]bool, len(cfg.Costs))
	best := -1
	for ci, cost := range cfg.Costs {
		var sum float64
		converged := true
		for f := range cfg.Folds {
			if err := ctx.Err(); err != nil {
				return err
			}
			var fit, held []int
			for i, fi := range folds {
				if fi == f {
					held = append(held, i)
				} else {
					fit = append(fit, i)
				}
			}
			m, err := TrainSVM(xtr, train.D, y, fit, cost, cfg.PosWeight, cfg.NegWeight, cfg.Tol, cfg.MaxIter, cfg.Seed+uint64(f))
			if err != nil {
				return err
			}
			converged = converged && m.Iters < cfg.MaxIter
			scores := make([]float64, len(held))
			yh := make([]int8, len(held))
			for k, i := range held {
				scores[k] = dot64(m.W, xtr[i*train.D:(i+1)*train.D]) + m.Bias
				yh[k] = y[i]
			}
			sum += averagePrecision(scores, yh)
		}
		res.CVAP[c][ci] = 100 * sum / float64(cfg.Folds)
		res.CVConverged[c][ci] = converged
		if best < 0 || res.CVAP[c][ci] > res.CVAP[c][best] {
			best = ci
		}
	}
	m, err := TrainSVM(xtr, train.D, y, nil, cfg.Costs[best], cfg.PosWeight, cfg.NegWeight, cfg.Tol, cfg.MaxIter, cfg.Seed)
	if err != nil {
		return err
	}
	targets := make([]int8, test.N)
	for i := range targets {
		targets[i] = test.Targets[i][c]
	}
	res.Cost[c] = cfg.Costs[best]
	res.Converged[c] = m.Iters < cfg.MaxIter
	res.AP[c] = 100 * VOCAP(m.Decision(xte, test.N), targets)
	return nil
}
