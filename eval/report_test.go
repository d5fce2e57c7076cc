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
	if back["skipped"].(float64) != 0 || len(back["skipped_files"].([]any)) != 0 {
		t.Errorf("json of a run that skipped nothing: %s", b)
	}
}

// TestReportSkipped checks that a report gives the number of images a run
// skipped, and their names, in its text and JSON forms.
func TestReportSkipped(t *testing.T) {
	for _, c := range []struct {
		names []string
		text  string
	}{
		{nil, "knn: top1 50.00 (1 seed)"},
		{[]string{"a/1.jpg"}, "knn: top1 50.00 (1 seed, 1 unreadable image skipped)"},
		{[]string{"a/1.jpg", "b/2.png", "c/3.jpg"}, "knn: top1 50.00 (1 seed, 3 unreadable images skipped)"},
	} {
		skips := &Skips{}
		for i, n := range c.names {
			// Met twice: counted once.
			for range 2 {
				if err := skips.add(Skip{Index: i, Name: n, Err: n + ": bad"}); err != nil {
					t.Fatal(err)
				}
			}
		}
		r := NewReport("knn", nil)
		r.Add("top1", []float64{50})
		r.SetSkipped(skips)
		if got := r.Text(); got != c.text {
			t.Errorf("text %q, want %q", got, c.text)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back struct {
			Skipped      int      `json:"skipped"`
			SkippedFiles []string `json:"skipped_files"`
		}
		if err := json.Unmarshal(b, &back); err != nil || back.Skipped != len(c.names) || len(back.SkippedFiles) != len(c.names) {
			t.Errorf("json %s (%v), want %d skipped", b, err, len(c.names))
		}
		for i, n := range c.names {
			if back.SkippedFiles[i] != n {
				t.Errorf("skipped file %d: %q, want %q", i, back.SkippedFiles[i], n)
			}
		}
	}
}
