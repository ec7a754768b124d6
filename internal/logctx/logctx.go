// Package logctx carries log attributes in a context: a run's id, an HTTP
// request's id. Records logged with that context (the slog *Context
// methods) through Handler get them, however deep the call that logs.
package logctx

import (
	"context"
	"log/slog"
	"slices"
)

type key struct{}

// With returns ctx carrying args (slog's key-value pairs or Attrs) on top
// of those it carries already; a key it carries already takes the new
// value, so a line never names one thing twice.
func With(ctx context.Context, args ...any) context.Context {
	r := slog.Record{}
	r.Add(args...)
	attrs := append([]slog.Attr(nil), Attrs(ctx)...)
	r.Attrs(func(a slog.Attr) bool {
		attrs = slices.DeleteFunc(attrs, func(old slog.Attr) bool { return old.Key == a.Key })
		attrs = append(attrs, a)
		return true
	})
	return context.WithValue(ctx, key{}, attrs)
}

// Attrs are the attributes ctx carries.
func Attrs(ctx context.Context) []slog.Attr {
	if ctx == nil {
		return nil
	}
	a, _ := ctx.Value(key{}).([]slog.Attr)
	return a
}

// Args are Attrs as slog's arguments, for Logger.With.
func Args(ctx context.Context) []any {
	var out []any
	for _, a := range Attrs(ctx) {
		out = append(out, a)
	}
	return out
}

// Handler adds the context's attributes to every record.
type Handler struct{ slog.Handler }

// Handle implements slog.Handler.
func (h Handler) Handle(ctx context.Context, r slog.Record) error {
	if attrs := Attrs(ctx); len(attrs) > 0 {
		r = r.Clone()
		r.AddAttrs(attrs...)
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return Handler{h.Handler.WithAttrs(attrs)}
}

// WithGroup implements slog.Handler.
func (h Handler) WithGroup(name string) slog.Handler {
	return Handler{h.Handler.WithGroup(name)}
}
