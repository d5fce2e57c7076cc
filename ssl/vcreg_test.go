package ssl

import (
	"fmt"
	"math"
	"testing"
)

// varCovHost is VICReg's variance and covariance terms of two views in
// float64, straight from main_vicreg.py: centred columns, std =
// sqrt(var + 1e-4) (unbiased), std term mean(relu(1 - std))/2 per view, cov
// term sum(offdiag(x^T x/(n-1))^2)/d per view.
func varCovHost(views [2][]float64, n, d int) (std, cov float64) {
	for _, z := range views {
		x := make([]float64, n*d)
		for j := 0; j < d; j++ {
			var m float64
			for i := 0; i < n; i++ {
				m += z[i*d+j]
			}
			m /= float64(n)
			for i := 0; i < n; i++ {
				x[i*d+j] = z[i*d+j] - m
			}
		}
		for j := 0; j < d; j++ {
			var v float64
			for i := 0; i < n; i++ {
				v += x[i*d+j] * x[i*d+j]
			}
			s := math.Sqrt(v/float64(n-1) + 1e-4)
			std += math.Max(0, 1-s) / float64(d) / 2
		}
		for j := 0; j < d; j++ {
			for k := 0; k < d; k++ {
				if j == k {
					continue
				}
				var c float64
				for i := 0; i < n; i++ {
					c += x[i*d+j] * x[i*d+k]
				}
				c /= float64(n - 1)
				cov += c * c / float64(d)
			}
		}
	}
	return std, cov
}

// TestVCRegApply checks VCReg (and so VICReg's variance-covariance code)
// on random embeddings against varCovHost: the terms to 1e-5 relative, the
// gradient to 1e-4 relative against central differences of the float64
// reference. The columns' spreads straddle 1, so that the hinge of the std
// term is active for some columns and not for others.
func TestVCRegApply(t *testing.T) {
	cases := []struct {
		n, d     int
		std, cov float64
	}{
		{2, 3, 25, 1},      // fewer rows than columns: the Gram matrix
		{9, 33, 25, 1},     // likewise
		{13, 9, 25, 1},     // more rows: the covariance matrix
		{37, 21, 2.5, 0.7}, // likewise
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("n%d_d%d", c.n, c.d), func(t *testing.T) {
			views := randViews(uint64(100+i), c.n, c.d, 0.5, 1)
			for v := range views {
				for j := range views[v] {
					// Column k's spread is 0.4 + 0.15k: some below one.
					views[v][j] *= float32(0.4 + 0.15*float64(j%c.d))
				}
			}
			reg := NewVCReg(c.std, c.cov)
			pen, terms, grads := regGrads(t, reg, views, c.n, c.d)
			host := [2][]float64{widen(views[0]), widen(views[1])}
			std, cov := varCovHost(host, c.n, c.d)
			want := c.std*std + c.cov*cov
			for _, x := range []struct {
				name      string
				got, want float64
			}{{"std_vcreg", terms["std_vcreg"], std}, {"cov_vcreg", terms["cov_vcreg"], cov}, {"value", terms["value"], want}} {
				if math.Abs(x.got-x.want) > 1e-5*math.Abs(x.want) {
					t.Errorf("%s = %.8g, want %.8g", x.name, x.got, x.want)
				}
			}
			if pen.ValueVar == nil || pen.Add == nil {
				t.Fatal("the penalty has no value on the tape")
			}
			const h = 1e-6
			for v := range host {
				num := make([]float64, len(host[v]))
				for j := range host[v] {
					x := host[v][j]
					host[v][j] = x + h
					s1, c1 := varCovHost(host, c.n, c.d)
					host[v][j] = x - h
					s0, c0 := varCovHost(host, c.n, c.d)
					host[v][j] = x
					num[j] = (c.std*(s1-s0) + c.cov*(c1-c0)) / (2 * h)
				}
				if e := relErr2(t, grads[v], num); e > 1e-4 {
					t.Errorf("gradient of view %d: relative error %.3g > 1e-4", v, e)
				}
			}
		})
	}
}

func TestNewVCRegDefaults(t *testing.T) {
	if r := NewVCReg(0, 0); r.std != 25 || r.cov != 1 || r.Name() != "vcreg" {
		t.Errorf("defaults %+v", r)
	}
	if r := NewVCReg(3, 0.5); r.std != 3 || r.cov != 0.5 {
		t.Errorf("weights %+v", r)
	}
}
