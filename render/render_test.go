package render

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"strings"
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

// TestHumanInert: text the agent controls reaches the terminal with its
// control characters spelled out, not as escape sequences that would drive
// the reader's terminal.
func TestHumanInert(t *testing.T) {
	tests := []struct{ name, event, want string }{
		{"assistant text", `{"type":"assistant","message":{"content":[{"type":"text","text":"hi\u001b]0;pwned\u0007\u001b[2J\rthere"}]}}`,
			`hi\x1b]0;pwned\x07\x1b[2J\x0dthere`},
		{"file name", `{"type":"file","path":"a\u001b[31m.txt","size":3}`, `↓ a\x1b[31m.txt (3 B)`},
		{"C1 control and a bad byte", "{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"x\\u009b1;31my\"}]}}", `x\x9b1;31my`},
		{"newline and tab stay", `{"type":"assistant","message":{"content":[{"type":"text","text":"a\tb\nc"}]}}`, "a\tb\nc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			NewHuman(&out, false).Event(json.RawMessage(tt.event))
			if !strings.Contains(out.String(), tt.want) {
				t.Errorf("printed %q, want it to hold %q", out.String(), tt.want)
			}
			if strings.ContainsAny(out.String(), "\x1b\x07\r\u009b") {
				t.Errorf("printed a control character: %q", out.String())
			}
		})
	}
	var raw strings.Builder
	if _, err := (inert{&raw}).Write([]byte("ok\xff\x1b")); err != nil || raw.String() != `ok\xff\x1b` {
		t.Errorf("invalid UTF-8 and ESC written as %q (%v)", raw.String(), err)
	}
}
