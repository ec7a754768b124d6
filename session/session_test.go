package session

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/gateway"
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
		{"absolute file", Request{Prompt: "hi", Files: map[string]string{"/etc/passwd": "x"}}, "files"},
		{"dotdot file", Request{Prompt: "hi", Files: map[string]string{"../x": "x"}}, "files"},
		{"too many files", Request{Prompt: "hi", Files: manyFiles(21)}, "files"},
		{"too large files", Request{Prompt: "hi", Files: map[string]string{"a": strings.Repeat("x", MaxFilesBytes+1)}}, "files"},
		{"bad output format", Request{Prompt: "hi", OutputFormat: json.RawMessage(`{"type":"text"}`)}, "output_format"},
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

func TestJobMerge(t *testing.T) {
	limits := config.DefaultLimits()
	limits.SessionTimeoutSeconds = 120
	project := config.Project{Model: "opus", MaxTurns: 7, SystemPrompt: "Be concise",
		OutputFormat: json.RawMessage(`{"type":"json_schema","schema":{"type":"object"}}`)}
	m, err := NewManager(nil, limits, project, gateway.Credentials{AnthropicKey: "process-key"}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	j, err := m.Job(Request{Prompt: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if j.Config.Model != "opus" || j.Config.MaxTurns != 7 || j.Config.SystemPrompt != "Be concise" || len(j.Config.OutputFormat) == 0 {
		t.Errorf("absent values did not fall back to sandstorm.json: %+v", j.Config)
	}
	if j.Timeout != 120*time.Second || j.Credentials.AnthropicKey != "process-key" {
		t.Errorf("default timeout 300 not capped by limits, or creds lost: %v %v", j.Timeout, j.Credentials)
	}

	j, err = m.Job(Request{Prompt: "p", Model: "haiku", MaxTurns: 2, Timeout: 30, OpenRouterAPIKey: "req-key"})
	if err != nil {
		t.Fatal(err)
	}
	if j.Config.Model != "haiku" || j.Config.MaxTurns != 2 || j.Timeout != 30*time.Second {
		t.Errorf("request values did not win: %+v %v", j.Config, j.Timeout)
	}
	if j.Credentials.OpenRouterKey != "req-key" || j.Credentials.AnthropicKey != "" {
		t.Errorf("request credentials did not replace the process's: %v", j.Credentials)
	}
	if s := (Request{Prompt: "p", AnthropicAPIKey: "sk-ant-secret"}).String(); strings.Contains(s, "secret") {
		t.Errorf("String shows the key: %s", s)
	}
}

func TestQueue(t *testing.T) {
	limits := config.DefaultLimits()
	limits.MaxConcurrentAgents, limits.QueueSize, limits.QueueWaitSeconds = 1, 1, 1
	m, err := NewManager(nil, limits, config.Project{}, gateway.Credentials{}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	release, err := m.Acquire(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// One waits in the queue; the next finds it full.
	got := make(chan error, 1)
	queuedAt := make(chan int, 1)
	go func() {
		r, err := m.Acquire(ctx, func(p int) { queuedAt <- p })
		if err == nil {
			r()
		}
		got <- err
	}()
	if p := <-queuedAt; p != 1 {
		t.Errorf("queue position %d", p)
	}
	if _, err := m.Acquire(ctx, nil); !errors.Is(err, ErrBusy) {
		t.Errorf("full queue: got %v, want ErrBusy", err)
	}
	release()
	if err := <-got; err != nil {
		t.Errorf("queued request did not get the freed slot: %v", err)
	}
	// Waiting longer than queue_wait_seconds is busy too.
	release, _ = m.Acquire(ctx, nil)
	defer release()
	if _, err := m.Acquire(ctx, nil); !errors.Is(err, ErrBusy) {
		t.Errorf("wait ran out: got %v, want ErrBusy", err)
	}
}

func TestProviderForwarding(t *testing.T) {
	for _, k := range []string{"CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_FOUNDRY", "GOOGLE_APPLICATION_CREDENTIALS"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
	t.Setenv("ANTHROPIC_DEFAULT_SONNET_MODEL", "anthropic/claude-sonnet-4")
	bridge := config.DefaultLimits()
	bridge.NetworkMode = "bridge"

	// No provider: only the model aliases, never a cloud secret.
	env, files, err := forwardedEnv(bridge)
	if err != nil || strings.Contains(strings.Join(env, " "), "aws-secret") || len(files) != 0 || !slices.Contains(env, "ANTHROPIC_DEFAULT_SONNET_MODEL=anthropic/claude-sonnet-4") {
		t.Errorf("no provider: %v %v %v", env, files, err)
	}
	// Bedrock on: its settings and credentials go along, but only with egress.
	t.Setenv("CLAUDE_CODE_USE_BEDROCK", "1")
	if _, _, err := forwardedEnv(config.DefaultLimits()); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "network_mode: bridge") {
		t.Errorf("bedrock with network none: %v", err)
	}
	env, _, err = forwardedEnv(bridge)
	if err != nil || !slices.Contains(env, "CLAUDE_CODE_USE_BEDROCK=1") || !slices.Contains(env, "AWS_SECRET_ACCESS_KEY=aws-secret") {
		t.Errorf("bedrock: %v %v", env, err)
	}
	// Vertex on: the credentials file is copied into the workspace.
	t.Setenv("CLAUDE_CODE_USE_BEDROCK", "")
	t.Setenv("CLAUDE_CODE_USE_VERTEX", "1")
	gac := filepath.Join(t.TempDir(), "sa.json")
	os.WriteFile(gac, []byte(`{"type":"service_account"}`), 0o600)
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", gac)
	env, files, err = forwardedEnv(bridge)
	if err != nil || len(files) != 1 || string(files[0].Content) != `{"type":"service_account"}` ||
		!slices.Contains(env, "GOOGLE_APPLICATION_CREDENTIALS=/home/user/"+gcloudCredentials) {
		t.Errorf("vertex: %v %v %v", env, files, err)
	}
}
