package agentimage

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestMeasure(t *testing.T) {
	root := t.TempDir()
	files := map[string]int{
		"usr/lib/x86_64-linux-gnu/libnode.so": 500,
		"usr/lib/x86_64-linux-gnu/libicu.so":  300,
		"usr/lib/x86_64-linux-gnu/libc.so":    250,
		"usr/share/nodejs/a/index.js":         100,
		"usr/share/nodejs/b/index.js":         100,
		"usr/share/nodejs/c/index.js":         100,
		"usr/bin/git":                         200,
		"etc/empty":                           0,
	}
	for p, n := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, bytes.Repeat([]byte("x"), n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A hard link is counted once; a symlink not at all.
	if err := os.Link(filepath.Join(root, "usr/bin/git"), filepath.Join(root, "usr/lib/git")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("git", filepath.Join(root, "usr/bin/git-link")); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		n    int
		want []pathSize
	}{
		// usr/ and usr/lib/ are left out: one child holds most of each.
		{n: 10, want: []pathSize{
			{"usr/lib/x86_64-linux-gnu/", 1050},
			{"usr/lib/x86_64-linux-gnu/libnode.so", 500},
			{"usr/lib/x86_64-linux-gnu/libicu.so", 300},
			{"usr/share/nodejs/", 300},
			{"usr/lib/x86_64-linux-gnu/libc.so", 250},
			{"usr/bin/git", 200},
			{"usr/share/nodejs/a/index.js", 100},
			{"usr/share/nodejs/b/index.js", 100},
			{"usr/share/nodejs/c/index.js", 100},
		}},
		{n: 2, want: []pathSize{
			{"usr/lib/x86_64-linux-gnu/", 1050},
			{"usr/lib/x86_64-linux-gnu/libnode.so", 500},
		}},
		{n: 0, want: nil},
	} {
		u, err := measure(root, tc.n)
		if err != nil {
			t.Fatal(err)
		}
		if u.Total != 1550 || u.Files != 8 {
			t.Errorf("n=%d: total %d in %d files, want 1550 in 8", tc.n, u.Total, u.Files)
		}
		if !reflect.DeepEqual(u.Largest, tc.want) {
			t.Errorf("n=%d: largest\n%v\nwant\n%v", tc.n, u.Largest, tc.want)
		}
	}
}

func TestUsagePrint(t *testing.T) {
	u := usage{Total: 416_400_000, Files: 1764, Largest: []pathSize{{"opt/claude", 402_300_000}, {"opt/npm/", 9_000_000}}}
	var out strings.Builder
	u.print(&out, "2 (npm)")
	want := `    layer 2 (npm): 416.4 MB (397.1 MiB) in 1764 files
         402.3 MB  opt/claude
           9.0 MB  opt/npm/
`
	if out.String() != want {
		t.Errorf("print:\n%s\nwant\n%s", out.String(), want)
	}
}
