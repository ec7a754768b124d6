package session

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/gateway"
)

// ErrBusy: every slot is taken and the queue is full, or the wait ran out.
var ErrBusy = errors.New("all agent slots are busy")

// ForwardedEnv is passed into the sandbox: the model aliases (OpenRouter
// maps sonnet/opus/haiku to its model ids with them). Keys are never
// forwarded: the model is reached through the gateway only, which is also
// why the cloud-provider switches (Vertex, Bedrock, Foundry) are not.
var ForwardedEnv = []string{
	"ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL",
}

// Manager runs requests with at most Limits.MaxConcurrentAgents at a time.
type Manager struct {
	runner  *agent.Runner
	limits  config.Limits
	project config.Project
	creds   gateway.Credentials
	env     []string

	slots *Slots
}

// NewManager makes a manager. creds are the process's credentials, used
// when a request brings none; slotDir holds the host-wide slot locks
// (DefaultSlotDir), shared by every sandstorm process on the host.
func NewManager(r *agent.Runner, l config.Limits, p config.Project, creds gateway.Credentials, slotDir string) (*Manager, error) {
	var env []string
	for _, k := range ForwardedEnv {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	slots, err := NewSlots(slotDir, l.MaxConcurrentAgents, l.QueueSize, time.Duration(l.QueueWaitSeconds)*time.Second)
	if err != nil {
		return nil, err
	}
	return &Manager{runner: r, limits: l, project: p, creds: creds, env: env, slots: slots}, nil
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
	return agent.Job{Config: c, Files: req.WorkspaceFiles(), Timeout: time.Duration(timeout) * time.Second,
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
