package api

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestTypeOf(t *testing.T) {
	tests := []struct {
		name, ev, want string
	}{
		{"first", `{"type":"sandbox","event":"created"}`, TypeSandbox},
		{"last", `{"code":"timeout","message":"m","type":"error"}`, TypeError},
		{"after a nested type", `{"message":{"type":"text","content":[{"type":"x"}]},"type":"assistant"}`, "assistant"},
		{"spaces", ` { "type" : "file" } `, TypeFile},
		{"no type", `{"event":"created"}`, ""},
		{"not a string", `{"type":1}`, ""},
		{"not an object", `["type","error"]`, ""},
		{"not JSON", `type: error`, ""},
		{"empty", ``, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := TypeOf(json.RawMessage(tt.ev)); got != tt.want {
				t.Errorf("TypeOf(%s) = %q, want %q", tt.ev, got, tt.want)
			}
		})
	}
}

// BenchmarkTypeOf tells a large SDK message apart, as the run service and
// the metrics do for every event a run streams.
func BenchmarkTypeOf(b *testing.B) {
	ev := Marshal(map[string]any{"message": map[string]string{"content": strings.Repeat("x", 64<<10)}})
	ev = append([]byte(`{"type":"assistant",`), ev[1:]...)
	b.SetBytes(int64(len(ev)))
	for b.Loop() {
		if TypeOf(ev) != "assistant" {
			b.Fatal("not an assistant message")
		}
	}
}
