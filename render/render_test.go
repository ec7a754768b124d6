package render

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestHumanGolden(t *testing.T) {
	for _, verbose := range []bool{false, true} {
		name := "run.txt"
		if verbose {
			name = "run-verbose.txt"
		}
		t.Run(name, func(t *testing.T) {
			f, err := os.Open("testdata/run.jsonl")
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var out bytes.Buffer
			h := NewHuman(&out, false)
			h.Verbose = verbose
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				h.Event(json.RawMessage(sc.Bytes()))
			}
			h.Summary(1500 * time.Millisecond)
			golden := "testdata/" + name
			if *update {
				os.WriteFile(golden, out.Bytes(), 0o644)
			}
			want, _ := os.ReadFile(golden)
			if out.String() != string(want) {
				t.Errorf("output differs from %s:\n%s", golden, out.String())
			}
			if bytes.Contains(out.Bytes(), []byte("\033")) {
				t.Error("escape codes without a terminal")
			}
		})
	}
}
