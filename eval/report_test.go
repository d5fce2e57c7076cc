package eval

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// TestReport checks the mean and sample standard deviation against a
// direct two-pass computation, and the JSON and text forms.
func TestReport(t *testing.T) {
	runs := []float64{71.25, 70.5, 72.125}
	var mean float64
	for _, v := range runs {
		mean += v / 3
	}
	var ss float64
	for _, v := range runs {
		ss += (v - mean) * (v - mean)
	}
	s := Summarize(runs)
	if math.Abs(s.Mean-mean) > 1e-12 || math.Abs(s.Std-math.Sqrt(ss/2)) > 1e-12 {
		t.Errorf("summary %v ± %v, want %v ± %v", s.Mean, s.Std, mean, math.Sqrt(ss/2))
	}
	if one := Summarize(runs[:1]); one.Std != 0 || one.Mean != runs[0] || one.String() != "71.25" {
		t.Errorf("one run: %+v %q", one, one.String())
	}
	r := NewReport("linear", map[string]any{"labels": "10%", "epochs": 100})
	r.Add("top1", runs)
	r.Add("top5", []float64{90, 91, 92})
	if txt := r.Text(); !strings.HasPrefix(txt, "linear: top1 71.29 ± 0.81, top5 91.00 ± 1.00 (3 seeds)") {
		t.Errorf("text %q", txt)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back["top1"].(float64) != s.Mean || back["top5_std"].(float64) != 1 || len(back["top1_runs"].([]any)) != 3 ||
		back["settings"].(map[string]any)["labels"] != "10%" || back["protocol"] != "linear" {
		t.Errorf("json %s", b)
	}
}
