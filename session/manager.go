package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime"
)

// ErrBusy: every slot is taken and the queue is full, or the wait ran out.
var ErrBusy = errors.New("all agent slots are busy")

// ForwardedEnv is always passed into the sandbox: the model aliases
// (OpenRouter maps sonnet/opus/haiku to its model ids with them).
var ForwardedEnv = []string{
	"ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL",
}

// providers are the cloud-provider modes. With a switch on, the CLI talks to
// that provider directly, so its settings and credentials go into the
// sandbox with it, and the sandbox needs network egress; otherwise nothing
// of a provider is forwarded and the model is reached through the gateway.
var providers = []struct {
	Switch string
	Vars   []string
}{
	{"CLAUDE_CODE_USE_VERTEX", []string{"CLOUD_ML_REGION", "ANTHROPIC_VERTEX_PROJECT_ID", "ANTHROPIC_VERTEX_BASE_URL"}},
	{"CLAUDE_CODE_USE_BEDROCK", []string{"AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "ANTHROPIC_BEDROCK_BASE_URL"}},
	{"CLAUDE_CODE_USE_FOUNDRY", []string{"AZURE_FOUNDRY_RESOURCE", "AZURE_API_KEY"}},
}

// gcloudCredentials is where the GOOGLE_APPLICATION_CREDENTIALS file lands in the workspace.
const gcloudCredentials = ".config/gcloud/application_default_credentials.json"

// forwardedEnv reads what goes into every sandbox from the environment.
func forwardedEnv(l config.Limits) (env []string, files []runtime.File, err error) {
	pass := func(k string) {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	for _, k := range ForwardedEnv {
		pass(k)
	}
	for _, p := range providers {
		if v := os.Getenv(p.Switch); v == "" || v == "0" {
			continue
		}
		if l.NetworkMode != string(oci.NetworkBridge) {
			return nil, nil, fmt.Errorf("%w: %s is set: the CLI then reaches the provider directly, which needs network_mode: bridge in limits.yaml", config.ErrInvalid, p.Switch)
		}
		pass(p.Switch)
		for _, k := range p.Vars {
			pass(k)
		}
		if p.Switch == "CLAUDE_CODE_USE_VERTEX" {
			if path := os.Getenv("GOOGLE_APPLICATION_CREDENTIALS"); path != "" {
				data, err := os.ReadFile(path)
				if err != nil {
					return nil, nil, fmt.Errorf("%w: GOOGLE_APPLICATION_CREDENTIALS: %w", config.ErrInvalid, err)
				}
				files = append(files, runtime.File{Path: gcloudCredentials, Content: data, Mode: 0o600})
				env = append(env, "GOOGLE_APPLICATION_CREDENTIALS="+oci.Workspace+"/"+gcloudCredentials)
			}
		}
	}
	return env, files, nil
}

// Manager runs requests with at most Limits.MaxConcurrentAgents at a time.
type Manager struct {
	runner  *agent.Runner
	limits  config.Limits
	project config.Project
	creds   gateway.Credentials
	env     []string
	files   []runtime.File

	slots *Slots
}

// NewManager makes a manager. creds are the process's credentials, used
// when a request brings none; slotDir holds the host-wide slot locks
// (DefaultSlotDir), shared by every sandstorm process on the host.
func NewManager(r *agent.Runner, l config.Limits, p config.Project, creds gateway.Credentials, slotDir string) (*Manager, error) {
	env, files, err := forwardedEnv(l)
	if err != nil {
		return nil, err
	}
	slots, err := NewSlots(slotDir, l.MaxConcurrentAgents, l.QueueSize, time.Duration(l.QueueWaitSeconds)*time.Second)
	if err != nil {
		return nil, err
	}
	return &Manager{runner: r, limits: l, project: p, creds: creds, env: env, files: files, slots: slots}, nil
}

// Limits returns the limits in force.
func (m *Manager) Limits() config.Limits { return m.limits }

// Credentials returns the process's default credentials.
func (m *Manager) Credentials() gateway.Credentials { return m.creds }

// Job merges req with the project config and limits. An explicit request
// value always wins; an absent one falls back to sandstorm.json.
func (m *Manager) Job(req Request) (agent.Job, error) {
	if err := req.Validate(); err != nil {
		return agent.Job{}, err
	}
	c := agent.Config{
		Prompt:       req.Prompt,
		Model:        firstNonEmpty(req.Model, m.project.Model),
		MaxTurns:     req.MaxTurns,
		SystemPrompt: m.project.SystemPrompt,
		OutputFormat: req.OutputFormat,
		Agents:       m.project.Agents,
		MCPServers:   m.project.MCPServers,
	}
	if c.MaxTurns == 0 {
		c.MaxTurns = m.project.MaxTurns
	}
	if len(c.OutputFormat) == 0 {
		c.OutputFormat = m.project.OutputFormat
	}
	timeout := req.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	// The host's limit caps what a request may ask for.
	timeout = min(timeout, m.limits.SessionTimeoutSeconds)
	creds := m.creds
	if req.AnthropicAPIKey != "" || req.OpenRouterAPIKey != "" {
		creds = gateway.Credentials{AnthropicKey: req.AnthropicAPIKey, OpenRouterKey: req.OpenRouterAPIKey}
	}
	return agent.Job{Config: c, Files: append(req.WorkspaceFiles(), m.files...), Timeout: time.Duration(timeout) * time.Second,
		Credentials: creds, Env: append([]string(nil), m.env...)}, nil
}

// Queued is told the queue position while a request waits for a slot.
type Queued func(position int)

// Run validates and runs req, waiting for a slot if needed. Errors before
// the run starts (validation, busy) are returned without any event.
func (m *Manager) Run(ctx context.Context, req Request, queued Queued, emit agent.Emit) (agent.Outcome, error) {
	job, err := m.Job(req)
	if err != nil {
		return agent.Outcome{}, err
	}
	release, err := m.Acquire(ctx, queued)
	if err != nil {
		return agent.Outcome{}, err
	}
	defer release()
	return m.Start(ctx, job, emit)
}

// Start runs a job that holds a slot (see Acquire).
func (m *Manager) Start(ctx context.Context, job agent.Job, emit agent.Emit) (agent.Outcome, error) {
	return m.runner.Run(ctx, job, emit)
}

// Acquire takes a slot, waiting in the bounded queue; call release when the
// run is over. Servers acquire before answering, so a busy host answers 429.
func (m *Manager) Acquire(ctx context.Context, queued Queued) (release func(), err error) {
	return m.slots.Acquire(ctx, queued)
}

// Running is how many runs hold a slot on this host.
func (m *Manager) Running() int { return m.slots.Running() }

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if strings.TrimSpace(v) != "" {
			return v
		}
	}
	return ""
}
