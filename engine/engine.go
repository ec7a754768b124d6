// Package engine assembles a working sandstorm from settings: the backend,
// the model gateway (with the scripted model when no key is set), the
// configuration files and the session manager. The CLI and the HTTP server
// both start from here.
package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/metrics"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/pool"
	"github.com/sandstorm-dev/sandstorm/runs"
	"github.com/sandstorm-dev/sandstorm/runstore"
	"github.com/sandstorm-dev/sandstorm/runtime"
	"github.com/sandstorm-dev/sandstorm/runtime/backends"
	"github.com/sandstorm-dev/sandstorm/session"
	"github.com/sandstorm-dev/sandstorm/webhook"
)

// DemoScenario is the scripted model's script when no key is set.
const DemoScenario = "demo"

// Options are the settings an engine starts from.
type Options struct {
	// Runtime names the backend ("auto" or "" tries each).
	Runtime string
	// Isolation, if set, overrides the limits file's (runc or gvisor).
	Isolation string
	// AllowUnenforced adds to the limits file's allow_unenforced.
	AllowUnenforced []string
	// ConfigPath is the limits file flag (see config.FindLimits).
	ConfigPath string
	// ProjectDir holds sandstorm.json; default the working directory.
	ProjectDir string
	// Credentials default to ANTHROPIC_API_KEY and OPENROUTER_API_KEY.
	Credentials gateway.Credentials
	// Upstream is the model API; default ANTHROPIC_BASE_URL or the public API.
	Upstream string
	// ScriptedModel, a builtin scenario name or a scenario file, serves the
	// model from sandstorm's scripted server instead of a provider. Used
	// automatically (with DemoScenario) when no credential is set.
	ScriptedModel string
	// GatewayDir holds session sockets; default /run/sandstorm/sessions.
	GatewayDir string
	// SlotDir holds the host-wide concurrency slots; default
	// $SANDSTORM_SLOT_DIR, then session.DefaultSlotDir. Every process
	// sharing it shares max_concurrent_agents.
	SlotDir string
	Logger  *slog.Logger
}

// SlotDirEnv overrides where the host-wide slots are kept.
const SlotDirEnv = "SANDSTORM_SLOT_DIR"

// Engine is a ready sandstorm; it implements api.Engine for the CLI and
// the HTTP server.
type Engine struct {
	Runtime  runtime.Runtime
	Manager  *session.Manager
	Limits   config.Limits
	Gateway  *gateway.Gateway
	Scripted *modelserver.Server
	// Metrics counts what the engine's runs, gateway and sweeps do.
	Metrics *metrics.Metrics
	// Notices are things the user should be told once (scripted model,
	// config warnings).
	Notices []string
	stop    func()
	log     *slog.Logger
}

// CredentialsFromEnv reads the provider keys from the environment.
func CredentialsFromEnv() gateway.Credentials {
	return gateway.Credentials{AnthropicKey: os.Getenv("ANTHROPIC_API_KEY"), OpenRouterKey: os.Getenv("OPENROUTER_API_KEY")}
}

// New builds an engine. Close it to stop the scripted model and the backend client.
func New(ctx context.Context, o Options) (_ *Engine, err error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	e := &Engine{stop: func() {}, log: log, Metrics: metrics.New()}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	limits, warnings, err := config.LoadLimits(config.FindLimits(o.ConfigPath))
	if err != nil {
		return nil, err
	}
	if o.Isolation != "" {
		limits.Isolation = o.Isolation
	}
	limits.AllowUnenforced = append(limits.AllowUnenforced, o.AllowUnenforced...)
	if err := limits.Validate(); err != nil {
		return nil, err
	}
	isolation, _ := runtime.ParseIsolation(limits.Isolation)
	allow, _ := runtime.ParseItems(limits.AllowUnenforced)
	e.Limits = limits
	e.Notices = append(e.Notices, warnings...)
	dir := o.ProjectDir
	if dir == "" {
		dir = "."
	}
	project, warnings, err := config.LoadProject(dir)
	if err != nil {
		return nil, err
	}
	e.Notices = append(e.Notices, warnings...)

	upstream := o.Upstream
	if upstream == "" {
		upstream = os.Getenv("ANTHROPIC_BASE_URL")
	}
	scripted := o.ScriptedModel
	switch {
	case scripted == "" && o.Credentials.Empty():
		scripted = DemoScenario
		e.Notices = append(e.Notices, "no ANTHROPIC_API_KEY or OPENROUTER_API_KEY set: using sandstorm's scripted demo model (offline, canned answers; no real model is called)")
	case scripted != "":
		e.Notices = append(e.Notices, fmt.Sprintf("using sandstorm's scripted model %q (canned answers; no real model is called)", scripted))
	}
	if scripted != "" {
		sc, err := loadScenario(scripted)
		if err != nil {
			return nil, fmt.Errorf("%w: scripted model: %w", config.ErrInvalid, err)
		}
		e.Scripted = modelserver.NewServer(sc)
		url, stop, err := e.Scripted.Listen(context.WithoutCancel(ctx), "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("start scripted model: %w", err)
		}
		e.stop = stop
		upstream = url
	}
	// The backend first: a daemon that does not answer is the likeliest failure.
	bopts := backends.FromEnv()
	bopts.Isolation = isolation
	e.Runtime, err = backends.Open(ctx, o.Runtime, bopts)
	if err != nil {
		return nil, err
	}
	e.Gateway, err = gateway.New(gateway.Config{Upstream: upstream, Dir: o.GatewayDir, Logger: log,
		Hooks: gateway.Hooks{Call: e.Metrics.ModelCall, UpstreamError: e.Metrics.UpstreamError, Usage: e.Metrics.Usage}})
	if err != nil {
		return nil, err
	}
	egressPolicy, err := limits.EgressPolicy()
	if err != nil {
		return nil, err
	}
	if limits.NetworkMode == string(oci.NetworkBridge) {
		e.Notices = append(e.Notices, "network_mode: bridge gives every sandbox unrestricted network access, to this host's services and the private network included; network_mode: proxy (the default) goes through sandstorm's egress policy")
	}
	secrets, err := limits.LoadSecrets()
	if err != nil {
		return nil, err
	}
	var ca *egress.CA
	if len(secrets) > 0 {
		if ca, err = egress.LoadOrCreateCA(egress.DefaultCADir); err != nil {
			return nil, err
		}
	}
	runner := &agent.Runner{Runtime: e.Runtime, Gateway: e.Gateway, Image: limits.Image, Policy: limits.Policy(), AllowUnenforced: allow,
		Egress: egressPolicy, Secrets: secrets, CA: ca, Logger: log}
	slotDir := cmp.Or(o.SlotDir, os.Getenv(SlotDirEnv), session.DefaultSlotDir)
	e.Manager, err = session.NewManager(runner, limits, project, o.Credentials, slotDir)
	if err != nil {
		return nil, err
	}
	e.Metrics.Watch(e.Runtime.Name(), func() api.Health { return e.Health(context.Background()) })
	swept, err := e.Sweep(ctx, false)
	if err != nil {
		log.Warn("sweep of what crashed sandstorm processes left", "err", err)
	}
	if n := swept.Count(); n > 0 {
		e.Notices = append(e.Notices, fmt.Sprintf("removed %s left by sandstorm processes that are gone", swept))
	}
	return e, nil
}

// Swept is what a sweep removed.
type Swept struct {
	Sandboxes []string
	Sessions  []string
}

// Count is how many objects were removed.
func (s Swept) Count() int { return len(s.Sandboxes) + len(s.Sessions) }

func (s Swept) String() string {
	return fmt.Sprintf("%d sandbox(es) and %d gateway session(s)", len(s.Sandboxes), len(s.Sessions))
}

// SweepEvery sweeps every backend on the host now and then every period
// until ctx ends, logging what it removed: a long-running server also
// cleans up after processes that crash while it runs.
func (e *Engine) SweepEvery(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		swept, err := e.Sweep(ctx, true)
		if err != nil {
			e.log.Warn("sweep of what crashed sandstorm processes left", "err", err)
		}
		if swept.Count() > 0 {
			e.log.Info("removed what crashed sandstorm processes left", "sandboxes", swept.Sandboxes, "sessions", len(swept.Sessions))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep removes what sandstorm processes that are gone left behind: their
// sandboxes on this engine's backend (with others, on every backend found
// on the host too) and their gateway session directories. Whatever a live
// process owns is left alone.
func (e *Engine) Sweep(ctx context.Context, others bool) (Swept, error) {
	var s Swept
	var errs []error
	rts := []runtime.Runtime{e.Runtime}
	if others {
		// The engine's own backend is found again: sweep it once, through
		// e.Runtime, which also retries the removals its runs could not do.
		own, _ := e.Runtime.Info(ctx)
		for _, f := range backends.Discover(ctx, backends.FromEnv()) {
			if f.Runtime == nil {
				continue
			}
			defer f.Runtime.Close()
			if info, err := f.Runtime.Info(ctx); err != nil || !info.SameDaemon(own) {
				rts = append(rts, f.Runtime)
			}
		}
	}
	for _, rt := range rts {
		ids, err := runtime.Sweep(ctx, rt)
		s.Sandboxes = append(s.Sandboxes, ids...)
		errs = append(errs, err)
	}
	dirs, err := gateway.Sweep(e.Gateway.Dir(), runtime.Orphaned)
	s.Sessions = dirs
	e.Metrics.Reaped("sandbox", len(s.Sandboxes))
	e.Metrics.Reaped("session", len(s.Sessions))
	return s, errors.Join(append(errs, err)...)
}

func loadScenario(s string) (modelserver.Scenario, error) {
	if strings.ContainsAny(s, "/.") {
		return modelserver.LoadScenario(s)
	}
	return modelserver.Builtin(s)
}

var _ api.Engine = (*Engine)(nil)

// Admit implements api.Engine.
func (e *Engine) Admit(ctx context.Context, req api.Request, queued func(position int)) (api.Run, error) {
	return e.Manager.Admit(ctx, req, queued)
}

// Health implements api.Engine.
func (e *Engine) Health(ctx context.Context) api.Health {
	creds := e.Manager.Credentials()
	h := api.Health{
		Status:              api.HealthOK,
		Backend:             e.Runtime.Name(),
		APIKeys:             api.KeysSet{Anthropic: creds.AnthropicKey != "", OpenRouter: creds.OpenRouterKey != ""},
		ScriptedModel:       e.Scripted != nil,
		Running:             e.Manager.Running(),
		Queued:              e.Manager.Queued(),
		MaxConcurrentAgents: e.Limits.MaxConcurrentAgents,
	}
	if p := e.Manager.Pool(); p != nil {
		st := p.Stats()
		h.Pool = &st
	}
	info, err := e.Runtime.Info(ctx)
	if err != nil {
		h.Status, h.Error = api.HealthDegraded, err.Error()
		return h
	}
	h.RuntimeVersion, h.Rootless = info.Version, info.Rootless
	return h
}

// Close releases the engine's resources.
func (e *Engine) Close() error {
	e.stop()
	if e.Runtime != nil {
		return e.Runtime.Close()
	}
	return nil
}

// StartPool starts the warm pool the limits ask for (nil when pool.size
// is 0); Close it before the engine.
func (e *Engine) StartPool(ctx context.Context) *pool.Pool {
	if e.Limits.Pool.Size == 0 {
		return nil
	}
	return e.Manager.StartPool(ctx, pool.Config{Size: e.Limits.Pool.Size, MaxRefill: e.Limits.Pool.MaxRefillConcurrency}, e.log)
}

// WebhookSecretEnv holds the secret webhooks are signed with.
const WebhookSecretEnv = "SANDSTORM_WEBHOOK_SECRET"

// StateDir is where the run store lives: dir if set, then
// $SANDSTORM_STATE_DIR, the limits' state_dir, and runstore.DefaultDir for
// root or ~/.local/state/sandstorm for a user.
func StateDir(dir string, l config.Limits) string {
	if d := cmp.Or(dir, os.Getenv(runstore.DirEnv), l.StateDir); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return runstore.DefaultDir
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "sandstorm")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state", "sandstorm")
}

// OpenRuns opens the run store in dir (see StateDir) and the run service
// over it, marking runs whose process died interrupted and pruning old
// ones. Close it.
func (e *Engine) OpenRuns(ctx context.Context, dir string) (*runs.Service, error) {
	store, err := runstore.Open(ctx, StateDir(dir, e.Limits))
	if err != nil {
		return nil, err
	}
	svc, err := runs.New(e, store, runs.Options{WebhookURL: e.Limits.WebhookURL, Logger: e.log, Metrics: e.Metrics,
		Webhooks: &webhook.Sender{Secret: []byte(os.Getenv(WebhookSecretEnv)), Logger: e.log}})
	if err != nil {
		store.Close()
		return nil, err
	}
	svc.Tidy(ctx, e.Limits.RunRetention, e.Limits.RunStoreMaxBytes)
	return svc, nil
}
