// Package engine assembles a working sandstorm from settings: the backend,
// the model gateway (with the scripted model when no key is set), the
// configuration files and the session manager. The CLI and the HTTP server
// both start from here.
package engine

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sandstorm-dev/sandstorm/admission"
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
	"github.com/sandstorm-dev/sandstorm/runtime/backends"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
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
	// $SANDSTORM_SLOT_DIR, then admission.DefaultSlotDir. Every process
	// sharing it shares max_concurrent_agents.
	SlotDir string
	// Kubeconfig selects the cluster of the kubernetes backend.
	Kubeconfig string
	// GatewayListen, HOST:PORT, also serves the gateway on TCP, for
	// sandboxes that cannot have its socket mounted (Pods): HOST must be
	// an address of this host they reach. GatewayTLS serves TLS there,
	// with a certificate of a CA made at start that the sandboxes trust.
	GatewayListen string
	GatewayTLS    bool
	Logger        *slog.Logger
}

// SlotDirEnv overrides where the host-wide slots are kept.
const SlotDirEnv = "SANDSTORM_SLOT_DIR"

// Engine is a ready sandstorm; it implements api.Engine for the CLI and
// the HTTP server.
type Engine struct {
	Runtime  sandbox.Runtime
	Gateway  *gateway.Gateway
	Scripted *modelserver.Server
	// Metrics counts what the engine's runs, gateway and sweeps do.
	Metrics *metrics.Metrics
	// Notices are things the user should be told once (scripted model,
	// config warnings).
	Notices []string
	stop    func()
	log     *slog.Logger
	opts    Options
	slotDir string
	// gatewayAddr and gatewayCA are where sandboxes that cannot have the
	// gateway's socket mounted dial its TCP side, and the CA of its TLS
	// certificate.
	gatewayAddr string
	gatewayCA   []byte

	// mu guards what a reload replaces: the settings and the manager of
	// new runs (running ones keep theirs; the manager holds the warm
	// pool), and the pool's context while one is wanted.
	mu       sync.Mutex
	settings settings
	manager  *admission.Manager
	poolCtx  context.Context
	// reloading makes reloads (SIGHUP and a file change at once) one at a time.
	reloading sync.Mutex
	// draining counts pools a reload replaced that are still being removed.
	draining sync.WaitGroup
}

// settings are what the configuration files say, with the flags applied.
type settings struct {
	limits   config.Limits
	project  config.Project
	warnings []string
}

// load reads and checks the limits file and sandstorm.json.
func (o Options) load() (settings, error) {
	limits, warnings, err := config.LoadLimits(o.limitsPath())
	if err != nil {
		return settings{}, err
	}
	if o.Isolation != "" {
		limits.Isolation = o.Isolation
	}
	limits.AllowUnenforced = append(limits.AllowUnenforced, o.AllowUnenforced...)
	if err := limits.Validate(); err != nil {
		return settings{}, err
	}
	project, more, err := config.LoadProject(o.projectDir())
	if err != nil {
		return settings{}, err
	}
	if limits.NetworkMode == string(oci.NetworkBridge) {
		more = append(more, "network_mode: bridge gives every sandbox unrestricted network access, to this host's services and the private network included; network_mode: proxy (the default) goes through sandstorm's egress policy")
	}
	return settings{limits: limits, project: project, warnings: append(warnings, more...)}, nil
}

func (o Options) limitsPath() string { return config.FindLimits(o.ConfigPath) }

func (o Options) projectDir() string { return cmp.Or(o.ProjectDir, ".") }

// Files are the configuration files a reload re-reads: the limits file
// (empty when the built-in defaults are used) and sandstorm.json (which
// may not exist yet).
func (e *Engine) Files() (limits, project string) {
	return e.opts.limitsPath(), filepath.Join(e.opts.projectDir(), config.ProjectFile)
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
	e := &Engine{stop: func() {}, log: log, Metrics: metrics.New(), opts: o}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	st, err := o.load()
	if err != nil {
		return nil, err
	}
	e.Notices = append(e.Notices, st.warnings...)
	isolation, _ := sandbox.ParseIsolation(st.limits.Isolation)

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
	// On a cluster, max_concurrent_agents also bounds the sandboxes of every
	// sandstorm using it (counted from its Pods), not only this host's.
	bopts.Isolation, bopts.Kubeconfig, bopts.MaxSandboxes = isolation, o.Kubeconfig, st.limits.MaxConcurrentAgents
	e.Runtime, err = backends.Open(ctx, o.Runtime, bopts)
	if err != nil {
		return nil, err
	}
	e.Gateway, err = gateway.New(gateway.Config{Upstream: upstream, Dir: o.GatewayDir, Logger: log,
		Hooks: gateway.Hooks{Call: e.Metrics.ModelCall, UpstreamError: e.Metrics.UpstreamError, Usage: e.Metrics.Usage}})
	if err != nil {
		return nil, err
	}
	if err := e.listenGateway(ctx); err != nil {
		return nil, err
	}
	e.slotDir = cmp.Or(o.SlotDir, os.Getenv(SlotDirEnv), admission.DefaultSlotDir)
	if e.manager, err = e.newManager(st); err != nil {
		return nil, err
	}
	e.settings = st
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

// listenGateway serves the gateway on TCP when asked to, and refuses a
// backend whose sandboxes need that when it is not.
func (e *Engine) listenGateway(ctx context.Context) error {
	caps, err := e.Runtime.Enforcement(ctx)
	if err != nil {
		return err
	}
	addr := e.opts.GatewayListen
	if addr == "" {
		if !caps.Enforced(sandbox.ItemBindMounts) {
			return fmt.Errorf("%w: the %s backend's sandboxes cannot have the gateway's socket mounted: serve it on TCP with --gateway-listen HOST:PORT, "+
				"HOST an address of this host they reach (--gateway-tls to encrypt it)", config.ErrInvalid, e.Runtime.Name())
		}
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: --gateway-listen %q: %w", config.ErrInvalid, addr, err)
	}
	if ip, _ := netip.ParseAddr(host); host == "" || ip.IsUnspecified() {
		return fmt.Errorf("%w: --gateway-listen %q: name the address sandboxes reach this host at, not every interface", config.ErrInvalid, addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("gateway: listen on %s: %w", addr, err)
	}
	// Sandboxes that can have the socket mounted keep it (theirs may have
	// no network at all); the others dial this address.
	if !caps.Enforced(sandbox.ItemBindMounts) {
		e.gatewayAddr = l.Addr().String()
	}
	if e.opts.GatewayTLS {
		ca, _, err := egress.NewCA("sandstorm gateway")
		if err != nil {
			l.Close()
			return err
		}
		leaf, err := ca.Leaf(host)
		if err != nil {
			l.Close()
			return fmt.Errorf("gateway: TLS certificate: %w", err)
		}
		e.gatewayCA = ca.CertPEM()
		l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{*leaf}, MinVersion: tls.VersionTLS12})
	}
	go func() {
		if err := e.Gateway.ServeTCP(l); err != nil {
			e.log.Error("gateway: TCP side stopped", "err", err)
		}
	}()
	stop := e.stop
	e.stop = func() { l.Close(); stop() }
	e.log.Debug("gateway: serving sessions on TCP", "addr", l.Addr().String(), "tls", e.opts.GatewayTLS)
	return nil
}

// newManager builds the runner and the manager of runs under st.
func (e *Engine) newManager(st settings) (*admission.Manager, error) {
	allow, _ := sandbox.ParseItems(st.limits.AllowUnenforced)
	egressPolicy, err := st.limits.EgressPolicy()
	if err != nil {
		return nil, err
	}
	secrets, err := st.limits.LoadSecrets()
	if err != nil {
		return nil, err
	}
	var ca *egress.CA
	if len(secrets) > 0 {
		if ca, err = egress.LoadOrCreateCA(egress.DefaultCADir); err != nil {
			return nil, err
		}
	}
	runner := &agent.Launcher{Runtime: e.Runtime, Gateway: e.Gateway, Image: st.limits.Image, Policy: st.limits.Policy(), AllowUnenforced: allow,
		Egress: egressPolicy, Secrets: secrets, CA: ca, GatewayAddr: e.gatewayAddr, GatewayCA: e.gatewayCA, Logger: e.log}
	return admission.NewManager(runner, st.limits, st.project, e.opts.Credentials, e.slotDir)
}

// Limits are the limits new runs get.
func (e *Engine) Limits() config.Limits {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.settings.limits
}

// Manager is the manager of new runs.
func (e *Engine) Manager() *admission.Manager {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.manager
}

// ErrRestart: a reload changed a setting only a restart applies.
var ErrRestart = errors.New("needs a restart")

// Reload re-reads the limits file and sandstorm.json. Valid settings apply
// to the runs that start from now on (running ones keep theirs) and the
// warm pool is started afresh with them; on an error nothing changes. It
// returns the keys that changed (limits' and sandstorm.json's).
func (e *Engine) Reload(ctx context.Context) ([]string, error) {
	e.reloading.Lock()
	defer e.reloading.Unlock()
	st, err := e.opts.load()
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	old := e.settings
	e.mu.Unlock()
	changed := config.Diff(old.limits, st.limits)
	for _, k := range changed {
		if slices.Contains(config.RestartOnly(), k) {
			return nil, fmt.Errorf("%w: %s: changing it %w (the rest of the file is not applied either)", config.ErrInvalid, k, ErrRestart)
		}
	}
	for _, k := range config.Diff(old.project, st.project) {
		changed = append(changed, config.ProjectFile+": "+k)
	}
	if len(changed) == 0 {
		return nil, nil
	}
	m, err := e.newManager(st)
	if err != nil {
		return nil, err
	}
	for _, w := range st.warnings {
		e.log.Warn(w)
	}
	e.mu.Lock()
	oldPool, poolCtx := e.manager.Pool(), e.poolCtx
	e.settings, e.manager = st, m
	e.mu.Unlock()
	if oldPool != nil {
		// Its idle sandboxes run the old settings: they go, new ones come.
		e.draining.Add(1)
		go func() { defer e.draining.Done(); oldPool.Close() }()
	}
	if poolCtx != nil {
		e.StartPool(poolCtx)
	}
	return changed, nil
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
	rts := []sandbox.Runtime{e.Runtime}
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
		ids, err := sandbox.Sweep(ctx, rt)
		s.Sandboxes = append(s.Sandboxes, ids...)
		errs = append(errs, err)
	}
	dirs, err := gateway.Sweep(e.Gateway.Dir(), sandbox.Orphaned)
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
	return e.Manager().Admit(ctx, req, queued)
}

// Health implements api.Engine.
func (e *Engine) Health(ctx context.Context) api.Health {
	m, limits := e.Manager(), e.Limits()
	creds := m.Credentials()
	h := api.Health{
		Status:              api.HealthOK,
		Backend:             e.Runtime.Name(),
		APIKeys:             api.KeysSet{Anthropic: creds.AnthropicKey != "", OpenRouter: creds.OpenRouterKey != ""},
		ScriptedModel:       e.Scripted != nil,
		Running:             m.Running(),
		Queued:              m.Queued(),
		MaxConcurrentAgents: limits.MaxConcurrentAgents,
	}
	if p := m.Pool(); p != nil {
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
// is 0), and again with each reload; ClosePool removes it.
func (e *Engine) StartPool(ctx context.Context) *pool.Pool {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.poolCtx = ctx
	l := e.settings.limits
	if l.Pool.Size == 0 {
		return nil
	}
	return e.manager.StartPool(ctx, pool.Config{Size: l.Pool.Size, MaxRefill: l.Pool.MaxRefillConcurrency}, e.log)
}

// ClosePool removes the warm pool's sandboxes (and those of pools a
// reload replaced) and stops refilling it.
func (e *Engine) ClosePool() {
	e.mu.Lock()
	p := e.manager.Pool()
	e.poolCtx = nil
	e.mu.Unlock()
	if p != nil {
		p.Close()
	}
	e.draining.Wait()
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
	limits := e.Limits()
	store, err := runstore.Open(ctx, StateDir(dir, limits))
	if err != nil {
		return nil, err
	}
	svc, err := runs.New(e, store, runs.Options{WebhookURL: limits.WebhookURL, Logger: e.log, Metrics: e.Metrics,
		Webhooks: &webhook.Sender{Secret: []byte(os.Getenv(WebhookSecretEnv)), Logger: e.log, Allow: limits.WebhookAllow}})
	if err != nil {
		store.Close()
		return nil, err
	}
	svc.Tidy(ctx, time.Duration(limits.RunRetention), int64(limits.RunStoreMaxBytes))
	return svc, nil
}
