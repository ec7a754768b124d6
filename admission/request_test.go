package admission

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/sandstorm-dev/sandstorm/api"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		req   api.Request
		field string
	}{
		{"ok", api.Request{Prompt: "hi", Egress: &api.RequestEgress{Allow: []string{"github.com"}}, WebhookURL: "https://example.com/hook",
			OutputFormat: json.RawMessage(`{"type":"json_schema","schema":{"type":"object"}}`), Files: map[string]string{"src/a.py": "x"}}, ""},
		{"own bounds first", api.Request{Prompt: " ", Files: map[string]string{"/etc/passwd": "x"}}, "prompt"},
		{"egress rule", api.Request{Prompt: "hi", Egress: &api.RequestEgress{Allow: []string{"github.com", "not a host"}}}, "egress.allow[1]"},
		{"webhook url", api.Request{Prompt: "hi", WebhookURL: "ftp://example.com/hook"}, "webhook_url"},
		{"bad output format", api.Request{Prompt: "hi", OutputFormat: json.RawMessage(`{"type":"text"}`)}, "output_format.type"},
		{"absolute file", api.Request{Prompt: "hi", Files: map[string]string{"/etc/passwd": "x"}}, "files"},
		{"dotdot file", api.Request{Prompt: "hi", Files: map[string]string{"../x": "x"}}, "files"},
		{"binary file mode", api.Request{Prompt: "hi", BinaryFiles: []api.WorkspaceFile{{Path: "a", Mode: 0o4755}}}, "files"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.req)
			if tt.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var fe *api.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("error %v, want one naming %q", err, tt.field)
			}
		})
	}
}
