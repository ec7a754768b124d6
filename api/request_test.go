package api

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	long := strings.Repeat("x", MaxPromptChars+1)
	tests := []struct {
		name  string
		req   Request
		field string
	}{
		{"ok", Request{Prompt: "hi", Model: "sonnet", Timeout: 60, MaxTurns: 3}, ""},
		{"claude id", Request{Prompt: "hi", Model: "claude-sonnet-4-5-20250929"}, ""},
		{"openrouter id", Request{Prompt: "hi", Model: "deepseek/deepseek-r1"}, ""},
		{"empty prompt", Request{Prompt: "  "}, "prompt"},
		{"huge prompt", Request{Prompt: long}, "prompt"},
		{"unknown model", Request{Prompt: "hi", Model: "gpt-4"}, "model"},
		{"model injection", Request{Prompt: "hi", Model: "sonnet; rm -rf /"}, "model"},
		{"timeout low", Request{Prompt: "hi", Timeout: 4}, "timeout"},
		{"timeout high", Request{Prompt: "hi", Timeout: 3601}, "timeout"},
		{"max_turns", Request{Prompt: "hi", MaxTurns: -1}, "max_turns"},
		{"max_budget_usd", Request{Prompt: "hi", MaxBudgetUSD: -1}, "max_budget_usd"},
		{"egress empty", Request{Prompt: "hi", Egress: &RequestEgress{}}, "egress.allow"},
		{"too many files", Request{Prompt: "hi", Files: manyFiles(21)}, "files"},
		{"too large files", Request{Prompt: "hi", Files: map[string]string{"a": strings.Repeat("x", MaxFilesBytes+1)}}, "files"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("error %v does not name %q", err, tt.field)
			}
		})
	}
}

func manyFiles(n int) map[string]string {
	m := map[string]string{}
	for i := 0; i < n; i++ {
		m[string(rune('a'+i%26))+strings.Repeat("x", i)] = "x"
	}
	return m
}
