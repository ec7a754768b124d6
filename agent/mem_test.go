package agent

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/gateway"
)

// BenchmarkLongLine: the memory one 50 MiB stdout line costs on its way to
// the events (it arrives in 16 MiB pieces); B/op over the line's size is
// the number of copies.
func BenchmarkLongLine(b *testing.B) {
	const size = 50 << 20
	stdout := strings.Repeat("x", size) + "\n" + okResult + "\n"
	g, err := gateway.New(gateway.Config{Upstream: "http://127.0.0.1:1", Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		f := &fakeRuntime{stdout: stdout, chunk: 64 << 10}
		r := &Launcher{Runtime: f, Gateway: g, Image: "img"}
		if _, err := r.Run(context.Background(), Job{Config: Config{Prompt: "x"}}, func(json.RawMessage) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
