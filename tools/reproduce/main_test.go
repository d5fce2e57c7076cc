package main

import (
	"slices"
	"strings"
	"testing"
)

// TestPlan checks the quick reproduction's commands: three training runs
// and twelve evaluations per method, the continuations from the base
// checkpoint, SwAV's own flag only on SwAV's runs, the linear probes' flags
// only on linear probes.
func TestPlan(t *testing.T) {
	o := options{Setting: "quick", Methods: []string{"vicreg", "swav", "simsiam"}, Seeds: 3, Out: "runs", Device: "0"}
	steps := plan(o, settings()[o.Setting])
	if len(steps) != 3*(3+len(variants())*len(probes())) {
		t.Fatalf("%d steps", len(steps))
	}
	for i, s := range steps {
		cmd := strings.Join(s.args, " ")
		method := s.args[slices.Index(s.args, "--method")+1]
		if s.args[0] == "eval" {
			method = strings.Split(s.args[slices.Index(s.args, "--checkpoint")+1], "/")[1]
		}
		switch i % 15 {
		case 0:
			if !strings.Contains(cmd, "--criterion none --steps 200") || strings.Contains(cmd, "--from") {
				t.Errorf("base run: %s", cmd)
			}
		case 1, 2:
			want := "--from runs/" + method + "/base/last.safetensors --steps 20"
			if !strings.Contains(cmd, want) {
				t.Errorf("continuation %q lacks %q", cmd, want)
			}
		default:
			if s.args[0] != "eval" || s.json == "" || !strings.Contains(cmd, "--seeds 3 --json") {
				t.Errorf("evaluation: %s", cmd)
			}
		}
		if s.args[0] == "train" && strings.Contains(cmd, "--freeze-prototypes") != (method == "swav") {
			t.Errorf("--freeze-prototypes on %s: %s", method, cmd)
		}
	}
	smoke := plan(options{Setting: "smoke", Methods: []string{"vicreg"}, Seeds: 1, Out: "r", Device: "0"}, settings()["smoke"])
	for _, s := range smoke {
		if s.args[0] == "eval" && slices.Contains(s.args, "--epochs") != (s.args[1] == "linear") {
			t.Errorf("--epochs on %s", strings.Join(s.args, " "))
		}
	}
}
