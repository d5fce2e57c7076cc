package main

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/e2mcvk/e2mcvk/internal/oracle"
	"github.com/e2mcvk/e2mcvk/loader"
)

// TestEntropyMatchesScipy checks `e2mcvk entropy` against scipy's van Es
// estimator with the bias correction of DESIGN.md section 2, on normal,
// uniform and heavy-tailed (Cauchy) columns: to 1e-5 absolute, issue 4's
// tolerance for the entropy.
func TestEntropyMatchesScipy(t *testing.T) {
	py := oracle.Python(t, "scipy", "numpy")
	const n, d = 1000, 9
	rng := rand.New(rand.NewPCG(4, 4))
	z := make([]float32, n*d)
	for i := range z {
		switch (i % d) % 3 {
		case 0:
			z[i] = float32(rng.NormFloat64())
		case 1:
			z[i] = float32(6*rng.Float64() - 3)
		case 2:
			z[i] = float32(math.Tan(math.Pi * (rng.Float64() - 0.5)))
		}
	}
	path := filepath.Join(t.TempDir(), "z.npy")
	if err := loader.WriteNpy(path, []int{n, d}, z); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCLI(t, "entropy", "--in", path, "--bound", "none", "--eps", "0", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var r entropyReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if r.N != n || r.D != d || r.M != 32 || len(r.Entropy) != d {
		t.Fatalf("report n=%d d=%d m=%d with %d entropies", r.N, r.D, r.M, len(r.Entropy))
	}
	ref := oracle.Run(t, py, `
import sys, numpy as np
from scipy.stats import differential_entropy
z = np.load(sys.argv[1]).astype(np.float64)
n, d = z.shape
m = int(round(np.sqrt(n)))
corr = sum(1.0 / k for k in range(m, n + 1)) + np.log(m) - np.log(n + 1)
for j in range(d):
    print(differential_entropy(z[:, j], window_length=m, method="van es") - corr)
`, path)
	for j, f := range strings.Fields(string(ref)) {
		want, _ := strconv.ParseFloat(f, 64)
		if got := float64(r.Entropy[j]); math.Abs(got-want) > 1e-5 {
			t.Errorf("column %d (%s): entropy %v, scipy %v", j, []string{"normal", "uniform", "Cauchy"}[j%3], got, want)
		}
	}
	if r.CovLoss <= 0 || r.EffectiveRank == nil || *r.EffectiveRank <= 1 || *r.EffectiveRank > d {
		t.Errorf("cov loss %v, effective rank %v", r.CovLoss, r.EffectiveRank)
	}
	code, out, stderr = runCLI(t, "entropy", "--in", path, "--no-rank", "--json")
	if code != 0 || strings.Contains(out, "effective_rank") {
		t.Errorf("--no-rank: exit %d, output %s %s", code, out, stderr)
	}
}

func TestEntropyBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, shape []int, data []float32) string {
		p := filepath.Join(dir, name)
		if err := loader.WriteNpy(p, shape, data); err != nil {
			t.Fatal(err)
		}
		return p
	}
	notNpy := filepath.Join(dir, "text.npy")
	os.WriteFile(notNpy, []byte("not an array"), 0o644)
	nan := make([]float32, 12)
	for i := range nan {
		nan[i] = float32(i)
	}
	nan[7] = float32(math.NaN())
	cases := map[string]struct {
		args []string
		want string
	}{
		"not npy":   {[]string{"--in", notNpy}, "not a .npy file"},
		"1-D":       {[]string{"--in", write("flat.npy", []int{12}, nan[:12])}, "2-D"},
		"too short": {[]string{"--in", write("short.npy", []int{3, 4}, nan[:12])}, "at least 4 rows"},
		"NaN":       {[]string{"--in", write("nan.npy", []int{6, 2}, nan)}, "NaN"},
		"missing":   {[]string{"--in", filepath.Join(dir, "nope.npy")}, "no such file"},
		"bad m":     {[]string{"--in", write("ok.npy", []int{6, 2}, append(nan[:7:7], 1, 2, 3, 4, 5)), "--m", "6"}, "window"},
	}
	for name, c := range cases {
		code, _, stderr := runCLI(t, append([]string{"entropy"}, c.args...)...)
		assertOneLineError(t, code, stderr)
		if !strings.Contains(stderr, c.want) {
			t.Errorf("%s: %q does not mention %q", name, stderr, c.want)
		}
	}
}
