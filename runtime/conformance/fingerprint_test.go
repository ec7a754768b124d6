package conformance

import (
	"slices"
	"strings"
	"testing"
)

func TestGoldenFingerprintParses(t *testing.T) {
	g, err := parseGolden(goldenFingerprint)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.keys) < 50 {
		t.Errorf("golden fingerprint has %d lines", len(g.keys))
	}
	// A backend's line is one of the fingerprint's, or one more of a kind
	// it has (a network interface a Pod always has: "net eth0").
	kinds := map[string]bool{}
	for k := range g.lines {
		kind, _, _ := strings.Cut(k, " ")
		kinds[kind] = true
	}
	for backend, o := range g.overrides {
		for k := range o {
			kind, _, _ := strings.Cut(k, " ")
			if _, ok := g.lines[k]; !ok && !kinds[kind] {
				t.Errorf("[%s] %s: not a line of the fingerprint, nor of a kind it has", backend, k)
			}
		}
	}
}

func TestFingerprintDiff(t *testing.T) {
	g, err := parseGolden("# c\na b: 1\nc: 2\n[x] c: 3\n# why\n")
	if err != nil {
		t.Fatal(err)
	}
	if d := diffLines(g.forBackend("y"), map[string]string{"a b": "1", "c": "2"}); len(d) != 0 {
		t.Errorf("equal fingerprint differs: %q", d)
	}
	got := diffLines(g.forBackend("x"), map[string]string{"a b": "1", "c": "2", "e": "5"})
	want := []string{"c: 2, want 3", "e: 5, not in the golden fingerprint"}
	if !slices.Equal(got, want) {
		t.Errorf("diff %q, want %q", got, want)
	}
	if d := diffLines(g.forBackend("y"), map[string]string{"c": "2"}); !slices.Equal(d, []string{"a b: missing, want 1"}) {
		t.Errorf("missing line: %q", d)
	}
	if !slices.Equal(g.differences["x"], []string{"c: 3"}) {
		t.Errorf("differences %q", g.differences)
	}
	for _, bad := range []string{"no colon\n", "[x c: 1\n", "a: 1\na: 2\n"} {
		if _, err := parseGolden(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
