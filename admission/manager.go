// Package admission turns a request into an agent run: it merges the
// request with sandstorm.json and limits.yaml (an explicit request value
// always wins) and takes a host-wide slot, waiting in a bounded queue when
// all are busy.
package admission

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/outfiles"
	"github.com/sandstorm-dev/sandstorm/pool"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

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
func forwardedEnv(l config.Limits) (env []string, files []sandbox.File, err error) {
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
				files = append(files, sandbox.File{Path: gcloudCredentials, Content: data, Mode: 0o600})
				env = append(env, "GOOGLE_APPLICATION_CREDENTIALS="+oci.Workspace+"/"+gcloudCredentials)
			}
		}
	}
	return env, files, nil
}

// Manager runs requests with at most Limits.MaxConcurrentAgents at a time.
type Manager struct {
	runner  *agent.Launcher
	limits  config.Limits
	project config.Project
	creds   gateway.Credentials
	env     []string
	files   []sandbox.File

	slots *Slots
	pool  *pool.Pool
}

// PoolJob is the job every warm sandbox is started for: this host's agent
// options (sandstorm.json) and environment, no prompt.
func (m *Manager) PoolJob() agent.Job {
	job, _ := m.Job(api.Request{Prompt: "warm"})
	job.Config.Prompt, job.Files, job.Output = "", nil, nil
	return job
}

// StartPool keeps cfg.Size warm sandboxes for the requests that fit them;
// Close it to remove them. Members hold host slots: members plus running
// agents never exceed max_concurrent_agents.
func (m *Manager) StartPool(ctx context.Context, cfg pool.Config, log *slog.Logger) *pool.Pool {
	m.pool = pool.New(cfg, m.runner, m.PoolJob(), m.slots.Spare, log)
	m.pool.Start(ctx)
	return m.pool
}

// Pool is the warm pool, or nil.
func (m *Manager) Pool() *pool.Pool { return m.pool }

// fits says why job cannot run in a warm sandbox ("" when it can): warm
// sandboxes run sandstorm.json's agent options as they are (PoolJob).
func (m *Manager) fits(job agent.Job) string {
	mine, _ := json.Marshal(job.Config.Project)
	theirs, _ := json.Marshal(m.project)
	switch {
	case len(job.EgressAllow) > 0:
		return "egress.allow narrows the egress policy; warm sandboxes run the host's"
	case !bytes.Equal(mine, theirs):
		return "agent options (model, max_turns, output_format) differ from sandstorm.json's, which warm sandboxes run"
	}
	return ""
}

// NewManager makes a manager. creds are the process's credentials, used
// when a request brings none; slotDir holds the host-wide slot locks
// (DefaultSlotDir), shared by every sandstorm process on the host.
func NewManager(r *agent.Launcher, l config.Limits, p config.Project, creds gateway.Credentials, slotDir string) (*Manager, error) {
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

// Credentials returns the process's default credentials.
func (m *Manager) Credentials() gateway.Credentials { return m.creds }

// Job merges req with the project config and limits. An explicit request
// value always wins; an absent one falls back to sandstorm.json.
func (m *Manager) Job(req api.Request) (agent.Job, error) {
	if err := Validate(req); err != nil {
		return agent.Job{}, err
	}
	c := agent.Config{Prompt: req.Prompt, Project: m.project}
	c.Model = firstNonEmpty(req.Model, m.project.Model)
	if req.MaxTurns != 0 {
		c.MaxTurns = req.MaxTurns
	}
	if len(req.OutputFormat) != 0 {
		c.OutputFormat = req.OutputFormat
	}
	timeout := req.Timeout
	if timeout == 0 {
		timeout = api.DefaultTimeout
	}
	// The host's limit caps what a request may ask for.
	timeout = min(timeout, m.limits.SessionTimeoutSeconds)
	budget := gateway.Budget{MaxUSD: m.limits.MaxBudgetUSD, MaxRequests: m.limits.MaxModelRequests, MaxOutputTokens: m.limits.MaxOutputTokens}
	if req.MaxBudgetUSD > 0 {
		if budget.MaxUSD > 0 && req.MaxBudgetUSD > budget.MaxUSD {
			return agent.Job{}, api.Invalid("max_budget_usd", "%g is over this host's max_budget_usd of %g", req.MaxBudgetUSD, budget.MaxUSD)
		}
		budget.MaxUSD = req.MaxBudgetUSD
	}
	narrow, err := egressRules(req)
	if err != nil {
		return agent.Job{}, err
	}
	if len(narrow) > 0 && m.limits.NetworkMode != config.NetworkProxy {
		return agent.Job{}, api.Invalid("egress", "needs network_mode: proxy on this host (it is %s)", m.limits.NetworkMode)
	}
	creds := m.creds
	if req.AnthropicAPIKey != "" || req.OpenRouterAPIKey != "" {
		creds = gateway.Credentials{AnthropicKey: req.AnthropicAPIKey, OpenRouterKey: req.OpenRouterAPIKey}
	}
	job := agent.Job{Config: c, Files: append(workspaceFiles(req), m.files...), Timeout: time.Duration(timeout) * time.Second,
		Credentials: creds, Env: append([]string(nil), m.env...), Budget: budget, EgressAllow: narrow}
	if req.Output != nil && !req.NoOutput && m.limits.MaxOutputFiles > 0 && m.limits.MaxOutputBytes > 0 {
		job.Output = &agent.Output{Dir: req.Output.Dir, URL: req.Output.URL, Options: outfiles.Options{
			MaxFiles: m.limits.MaxOutputFiles, MaxBytes: int64(m.limits.MaxOutputBytes), IncludeCaches: req.OutputCaches, InlineMax: InlineMax}}
	}
	return job, nil
}

// InlineMax is the size up to which a text file's content is in its file event.
const InlineMax = 4096

// Queued is told the queue position while a request waits for a slot.
type Queued func(position int)

// Admit validates and merges req, then takes a slot (waiting in the bounded
// queue). Its errors come before any event; the run it returns starts once.
func (m *Manager) Admit(ctx context.Context, req api.Request, queued func(position int)) (api.Run, error) {
	job, err := m.Job(req)
	if err != nil {
		return nil, err
	}
	if m.pool != nil {
		if job.WarmMiss = m.fits(job); job.WarmMiss == "" {
			if member, ok := m.pool.Claim(); ok {
				return &admitted{runner: m.runner, job: job, release: member.Release, member: member.Member}, nil
			}
			job.WarmMiss = "no warm sandbox was ready"
		}
		// A slot an idle member holds goes to the request.
		if !m.slots.Free() {
			m.pool.Evict()
		}
	}
	release, err := m.slots.Acquire(ctx, queued)
	if err != nil {
		return nil, err
	}
	return &admitted{runner: m.runner, job: job, release: release}, nil
}

// admitted is a job holding a slot, and the warm sandbox it runs in if any.
type admitted struct {
	runner  *agent.Launcher
	job     agent.Job
	release func()
	member  *agent.Member
}

// Start implements api.Run.
func (a *admitted) Start(ctx context.Context, emit api.Emit) (api.Outcome, error) {
	defer a.release()
	if a.member != nil {
		return a.runner.RunOn(ctx, a.member, a.job, emit)
	}
	return a.runner.Run(ctx, a.job, emit)
}

// Running is how many runs hold a slot on this host (warm sandboxes of
// this process not counted).
func (m *Manager) Running() int {
	n := m.slots.Running()
	if m.pool != nil {
		st := m.pool.Stats()
		n -= st.Ready + st.Refilling
	}
	return max(n, 0)
}

// Queued is how many requests wait for a slot on this host.
func (m *Manager) Queued() int { return m.slots.Waiting() }

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if strings.TrimSpace(v) != "" {
			return v
		}
	}
	return ""
}
