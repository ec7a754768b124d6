package runs

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/runstore"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// admitted is a service over a store in dir, closed with the test, and a
// run of eng it admitted.
func admitted(t *testing.T, eng api.Engine, dir string) (*Service, *Handle) {
	t.Helper()
	store, err := runstore.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(eng, store, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	h, err := svc.Admit(context.Background(), api.Request{Prompt: "p"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return svc, h
}

// floodEngine's run emits large events until emit fails or ctx ends.
type floodEngine struct{}

func (floodEngine) Admit(context.Context, api.Request, func(int)) (api.Run, error) {
	return floodEngine{}, nil
}
func (floodEngine) Health(context.Context) api.Health { return api.Health{} }
func (floodEngine) Start(ctx context.Context, emit api.Emit) (api.Outcome, error) {
	ev := api.Marshal(api.LineEvent{Type: api.TypeStdout, Line: strings.Repeat("x", 64<<10)})
	for range 1000 {
		if ctx.Err() != nil {
			_ = emit(api.NewError(api.CodeCancelled, "run cancelled: "+context.Cause(ctx).Error()))
			return api.Outcome{Code: api.CodeCancelled}, nil
		}
		if err := emit(ev); err != nil {
			return api.Outcome{Code: api.CodeCancelled}, err
		}
	}
	return api.Outcome{}, nil
}

// TestStoreFull: a run whose events cannot be recorded ends, and its
// client is told why.
func TestStoreFull(t *testing.T) {
	_, h := admitted(t, floodEngine{}, testenv.SmallDisk(t, "4m"))
	var codes []string
	n := 0
	_, _ = h.Start(context.Background(), func(_ int64, ev json.RawMessage) error {
		n++
		var e api.ErrorEvent
		if json.Unmarshal(ev, &e) == nil && e.Type == api.TypeError {
			codes = append(codes, string(e.Code))
		}
		return nil
	})
	if n >= 1000 || len(codes) == 0 || codes[0] != string(api.CodeStoreUnavailable) {
		t.Errorf("after %d events, errors %v; want the run stopped with %s first", n, codes, api.CodeStoreUnavailable)
	}
}

// eventsEngine's run emits its events and fails as the agent did.
type eventsEngine []json.RawMessage

func (e eventsEngine) Admit(context.Context, api.Request, func(int)) (api.Run, error) { return e, nil }
func (eventsEngine) Health(context.Context) api.Health                                { return api.Health{} }
func (e eventsEngine) Start(_ context.Context, emit api.Emit) (api.Outcome, error) {
	for _, ev := range e {
		if err := emit(ev); err != nil {
			return api.Outcome{}, err
		}
	}
	return api.Outcome{Code: api.CodeAgentFailed}, nil
}

// typeLast re-encodes v with its keys in alphabetical order, which puts
// "type" after most of them: the record must not depend on where it stands.
func typeLast(t *testing.T, v any) json.RawMessage {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(api.Marshal(v), &m); err != nil {
		t.Fatal(err)
	}
	return api.Marshal(m)
}

// TestRecordedEvents: the record takes the sandbox, the files and the last
// error from the events that say them, whatever the order of their fields.
func TestRecordedEvents(t *testing.T) {
	warm := true
	created := api.NewSandboxEvent(api.SandboxCreated, "ds-1", "s-1", "docker", 0)
	created.Warm = &warm
	content := "print('hi')\n"
	file := api.FileEvent{Type: api.TypeFile, OutputFile: api.OutputFile{Path: "hello.py", Size: int64(len(content)), SHA256: "ab", Mode: "0644", Content: &content}}
	events := []any{
		created,
		api.NewSandboxEvent(api.SandboxStarted, "ds-2", "s-1", "podman", 0),
		map[string]any{"type": "assistant", "message": map[string]any{"content": "x"}},
		file,
		api.ErrorEvent{Type: api.TypeError, Code: api.CodeAgentFailed, Message: "the agent gave up"},
	}
	encodings := map[string]func(t *testing.T, v any) json.RawMessage{
		"as api writes them": func(_ *testing.T, v any) json.RawMessage { return api.Marshal(v) },
		"type last":          typeLast,
	}
	for name, encode := range encodings {
		t.Run(name, func(t *testing.T) {
			var engine eventsEngine
			for _, ev := range events {
				engine = append(engine, encode(t, ev))
			}
			svc, h := admitted(t, engine, t.TempDir())
			if _, err := h.Start(context.Background(), nil); err != nil {
				t.Fatal(err)
			}
			r, err := svc.Get(context.Background(), h.ID)
			if err != nil {
				t.Fatal(err)
			}
			if r.Backend != "docker" || r.SandboxID != "ds-1" || r.Warm == nil || !*r.Warm || r.ErrorMessage != "the agent gave up" {
				t.Errorf("record: backend %q sandbox %q warm %v error %q; want docker, ds-1, warm, the error event's message", r.Backend, r.SandboxID, r.Warm, r.ErrorMessage)
			}
			files, err := svc.Files(context.Background(), h.ID)
			if err != nil || len(files) != 1 || files[0].Path != "hello.py" || files[0].Content == nil || *files[0].Content != content {
				t.Errorf("files %+v (%v), want hello.py with its content", files, err)
			}
		})
	}
}
