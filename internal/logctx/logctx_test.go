package logctx

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"
)

func TestHandler(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(Handler{slog.NewJSONHandler(&buf, nil)}).With("component", "test")
	ctx := With(context.Background(), "request_id", "r-1")
	ctx = With(ctx, slog.String("run_id", "run-1"))
	log.InfoContext(ctx, "hello", "n", 1)
	log.Info("no context")
	dec := json.NewDecoder(&buf)
	var first, second map[string]any
	if err := dec.Decode(&first); err != nil {
		t.Fatal(err)
	}
	if err := dec.Decode(&second); err != nil {
		t.Fatal(err)
	}
	if first["request_id"] != "r-1" || first["run_id"] != "run-1" || first["component"] != "test" || first["n"] != 1.0 {
		t.Errorf("with a context: %v", first)
	}
	if _, ok := second["run_id"]; ok {
		t.Errorf("without one: %v", second)
	}
	// A context's attributes are its own: its parent's are untouched.
	if n := len(Attrs(With(ctx, "x", 1))); n != 3 || len(Attrs(ctx)) != 2 {
		t.Errorf("attrs %d and %d", n, len(Attrs(ctx)))
	}
	// A key given again takes the new value, once.
	again := Attrs(With(ctx, "run_id", "run-2"))
	if len(again) != 2 || again[1].Key != "run_id" || again[1].Value.String() != "run-2" || Attrs(ctx)[1].Value.String() != "run-1" {
		t.Errorf("run_id given again: %v (parent %v)", again, Attrs(ctx))
	}
}
