package runs

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/internal/testenv"
	"github.com/sandstorm-dev/sandstorm/runstore"
)

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
	store, err := runstore.Open(context.Background(), testenv.SmallDisk(t, "4m"))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(floodEngine{}, store, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	h, err := svc.Admit(context.Background(), api.Request{Prompt: "flood"}, nil)
	if err != nil {
		t.Fatal(err)
	}
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
