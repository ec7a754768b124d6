// Package gateway serves the model API to sandboxes. Each session gets its
// own Unix socket (mounted into its sandbox) and a token; the gateway checks
// the token, swaps in the real credentials and forwards to the upstream,
// streaming. The real key never enters a sandbox. The same socket serves
// the runner its config, so no file holds the prompt at rest. For
// sandboxes on other hosts, which no socket reaches (Pods), one TCP
// listener (ServeTCP, TLS optional) serves every session: a connection
// names its session's token and service, and is then served as one to
// that session's socket.
package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sandstorm-dev/sandstorm/runnerproto"
)

// DefaultUpstream is the public Anthropic API.
const DefaultUpstream = "https://api.anthropic.com"

// DefaultDir holds the session directories.
const DefaultDir = "/run/sandstorm/sessions"

// ownerFile names the process a session directory belongs to (see Sweep).
const ownerFile = "owner"

// maxBody bounds one request from a sandbox.
const maxBody = 32 << 20

// Credentials authenticate the gateway to the upstream. The OpenRouter key
// is sent as a bearer token, the Anthropic key as x-api-key; with both set,
// OpenRouter wins (as in the Python sandstorm-docker this re-implements).
type Credentials struct {
	AnthropicKey  string
	OpenRouterKey string
}

// Empty reports whether no credential is set.
func (c Credentials) Empty() bool { return c.AnthropicKey == "" && c.OpenRouterKey == "" }

// String never shows a key.
func (c Credentials) String() string {
	return fmt.Sprintf("Credentials{anthropic:%t openrouter:%t}", c.AnthropicKey != "", c.OpenRouterKey != "")
}

// Config configures a Gateway.
type Config struct {
	// Upstream is the model API base URL; default DefaultUpstream.
	Upstream string
	// Dir holds one directory per session; default DefaultDir.
	Dir string
	// Transport reaches the upstream; default http.DefaultTransport.
	Transport http.RoundTripper
	Logger    *slog.Logger
	// Hooks are told of each model call (the server's metrics).
	Hooks Hooks
}

// Hooks, each optional, are told of the model calls of every session.
type Hooks struct {
	// Call is a Messages API call's answer status (the gateway's own
	// refusals and failures included).
	Call func(status int)
	// UpstreamError is a call that never reached the provider.
	UpstreamError func()
	// Usage is one answer's usage, priced.
	Usage func(Usage)
}

func (h Hooks) call(status int) {
	if h.Call != nil {
		h.Call(status)
	}
}

// Gateway hands out sessions.
type Gateway struct {
	cfg      Config
	upstream *url.URL
	front    front
}

// New checks the configuration and prepares the session directory.
func New(cfg Config) (*Gateway, error) {
	if cfg.Upstream == "" {
		cfg.Upstream = DefaultUpstream
	}
	if cfg.Dir == "" {
		cfg.Dir = DefaultDir
	}
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	u, err := url.Parse(cfg.Upstream)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("gateway: upstream %q is not an http(s) URL", cfg.Upstream)
	}
	// Sandboxes (possibly in a user namespace) must traverse to their socket.
	if err := os.MkdirAll(cfg.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if err := os.Chmod(cfg.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return &Gateway{cfg: cfg, upstream: u}, nil
}

// Dir holds the session directories.
func (g *Gateway) Dir() string { return g.cfg.Dir }

// Session is one sandbox's access to the model.
type Session struct {
	// Dir is the session's host directory: mount it into the sandbox. It
	// holds the socket; callers may add files (such as the runner's config).
	Dir string
	// Token authenticates the sandbox; it is worthless outside this session.
	Token string

	srv    *http.Server
	egress *http.Server
	// modelTCP and egressTCP receive the session's connections from the
	// gateway's TCP side (ServeTCP).
	modelTCP, egressTCP *connListener
	front               *front
	meter               *meter
	mu                  sync.Mutex
	closed              bool
	// active is closed once the session serves a run (at Open, or at
	// Activate for a pending one); done when the session is closed.
	active, done  chan struct{}
	creds         Credentials
	config, files []byte
	// waiting counts the runner's config requests waiting for Activate;
	// asked is closed at the first.
	waiting   int
	asked     chan struct{}
	askedOnce sync.Once
	log       *slog.Logger
}

// Waiting reports whether the session's runner waits for its run now: a
// warm sandbox ready for one (its process is gone when not).
func (s *Session) Waiting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiting > 0
}

// Asked is closed once the runner first asked for its run.
func (s *Session) Asked() <-chan struct{} { return s.asked }

// ErrNotPending: Activate on a session that is active already or closed.
var ErrNotPending = errors.New("gateway: session is not waiting to be activated")

// Grant is what Activate hands a pending session.
type Grant struct {
	Credentials  Credentials
	RunnerConfig []byte
	// Files, if set, are served at runnerproto.Docs.Files: the workspace files the
	// runner writes itself (it runs as the agent user, on any backend).
	Files  []byte
	Budget Budget
	// Logger, if set, logs the session's failures from now on (with the
	// run's attributes).
	Logger *slog.Logger
}

// Activate hands a pending session its run. Until then the session's
// token reaches nothing: the model answers 403 and the config waits.
func (s *Session) Activate(g Grant) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.isActive() {
		return ErrNotPending
	}
	s.creds, s.config, s.files = g.Credentials, g.RunnerConfig, g.Files
	if g.Logger != nil {
		s.log = g.Logger
	}
	s.meter.setBudget(g.Budget)
	close(s.active)
	return nil
}

func (s *Session) isActive() bool {
	select {
	case <-s.active:
		return true
	default:
		return false
	}
}

func (s *Session) logger() *slog.Logger {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log
}

func (s *Session) credentials() Credentials {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.creds
}

// Usage is what the session's model calls used so far, and whether a
// bound of its budget refused one.
func (s *Session) Usage() Usage { return s.meter.snapshot() }

// SocketPath is the host path of the session's socket.
func (s *Session) SocketPath() string {
	return filepath.Join(s.Dir, runnerproto.SessionDir.ModelSocket)
}

// SessionOptions are what a session serves and who it belongs to.
type SessionOptions struct {
	Credentials Credentials
	// RunnerConfig is served at runnerproto.Docs.Config to a request with the token.
	RunnerConfig []byte
	// Owner names the process the session belongs to; Sweep removes the
	// directories of owners that are gone.
	Owner string
	// Budget bounds the session's model calls.
	Budget Budget
	// Egress, if set, is served on runnerproto.SessionDir.EgressSocket: the sandbox's only
	// way to the network. Like the socket's directory, it is the
	// sandbox's alone; the proxy's policy is what guards it.
	Egress http.Handler
	// Pending opens the session without a run: Credentials, RunnerConfig
	// and Budget are ignored, and Activate gives them later (a warm
	// sandbox waiting for a request).
	Pending bool
	// WarmConfig (pending only) is served at once at runnerproto.Docs.Warm: the
	// agent options a warm sandbox's runner starts its CLI with.
	WarmConfig []byte
	// Logger, if set, logs the session's failures (default the gateway's,
	// with the session's id).
	Logger *slog.Logger
}

// Open starts a session: a directory with a listening socket, its owner,
// and a fresh token.
func (g *Gateway) Open(id string, o SessionOptions) (*Session, error) {
	if id == "" || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
		return nil, fmt.Errorf("gateway: bad session id %q", id)
	}
	dir := filepath.Join(g.cfg.Dir, id)
	if err := os.Mkdir(dir, 0o711); err != nil {
		return nil, fmt.Errorf("gateway: session directory: %w", err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("gateway: session directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(o.Owner), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("gateway: session directory: %w", err)
	}
	tok := make([]byte, 32)
	if _, err := rand.Read(tok); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("gateway: token: %w", err)
	}
	s := &Session{Dir: dir, Token: "sandstorm-session-" + hex.EncodeToString(tok), meter: newMeter(),
		active: make(chan struct{}), done: make(chan struct{}), asked: make(chan struct{}), log: o.Logger}
	if s.log == nil {
		s.log = g.cfg.Logger.With("session_id", id)
	}
	if !o.Pending {
		_ = s.Activate(Grant{Credentials: o.Credentials, RunnerConfig: o.RunnerConfig, Budget: o.Budget})
	}
	l, err := net.Listen("unix", s.SocketPath())
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("gateway: listen: %w", err)
	}
	// Any uid inside the sandbox must be able to connect.
	if err := os.Chmod(s.SocketPath(), 0o666); err != nil {
		l.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("gateway: %w", err)
	}
	s.srv = &http.Server{
		Handler:           g.handler(s, o.WarmConfig),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(g.cfg.Logger.Handler(), slog.LevelWarn),
	}
	s.modelTCP, s.front = newConnListener(), &g.front
	go func() { _ = s.srv.Serve(l) }()
	go func() { _ = s.srv.Serve(s.modelTCP) }()
	if o.Egress != nil {
		if err := s.serveEgress(o.Egress, g.cfg.Logger); err != nil {
			s.Close()
			return nil, err
		}
	}
	g.front.add(s)
	return s, nil
}

func (s *Session) serveEgress(h http.Handler, log *slog.Logger) error {
	path := filepath.Join(s.Dir, runnerproto.SessionDir.EgressSocket)
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("gateway: egress: listen: %w", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return fmt.Errorf("gateway: egress: %w", err)
	}
	s.egressTCP = newConnListener()
	var tcp net.Listener = s.egressTCP
	// A proxy that serves more than HTTP (SOCKS5) takes its share first.
	if w, ok := h.(interface {
		Listener(net.Listener) net.Listener
	}); ok {
		l, tcp = w.Listener(l), w.Listener(tcp)
	}
	s.egress = &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() { _ = s.egress.Serve(l) }()
	go func() { _ = s.egress.Serve(tcp) }()
	return nil
}

// Close kills the token, stops the socket and removes the session directory.
// In-flight requests are cut: the sandbox is going away.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.front.remove(s)
	err := s.srv.Close()
	if s.egress != nil {
		err = errors.Join(err, s.egress.Close())
		// Tunnels are hijacked connections, which the server's Close leaves open.
		if c, ok := s.egress.Handler.(io.Closer); ok {
			err = errors.Join(err, c.Close())
		}
	}
	return errors.Join(err, os.RemoveAll(s.Dir))
}

func (s *Session) authorized(r *http.Request) bool {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return false
	}
	got := r.Header.Get(runnerproto.Docs.TokenHeader)
	if got == "" {
		got, _ = strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(s.Token)) == 1
}

// allowedPath keeps the socket to the model API: nothing else of the
// upstream is reachable from a sandbox.
func allowedPath(p string) bool {
	return p == "/v1/messages" || p == "/v1/messages/count_tokens" || p == "/api/hello"
}

func (g *Gateway) handler(s *Session, warm []byte) http.Handler {
	proxy := &httputil.ReverseProxy{
		Transport:     g.cfg.Transport,
		FlushInterval: -1, // stream every chunk as it comes
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(g.upstream)
			pr.Out.Host = g.upstream.Host
			h := pr.Out.Header
			h.Del("x-api-key")
			h.Del("Authorization")
			creds := s.credentials()
			switch {
			case creds.OpenRouterKey != "":
				h.Set("Authorization", "Bearer "+creds.OpenRouterKey)
			case creds.AnthropicKey != "":
				h.Set("x-api-key", creds.AnthropicKey)
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if res, ok := resp.Request.Context().Value(reservationKey{}).(*reservation); ok {
				g.cfg.Hooks.call(resp.StatusCode)
				// A refusal by the upstream is not billed, whole or not.
				refused := resp.StatusCode >= 300
				resp.Body = &usageBody{rc: resp.Body, sse: strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream"),
					done: func(model string, u apiUsage, complete bool) {
						call, settled := res.settle(model, u, complete || refused)
						if settled && g.cfg.Hooks.Usage != nil {
							g.cfg.Hooks.Usage(call)
						}
					}}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if res, ok := r.Context().Value(reservationKey{}).(*reservation); ok {
				// A caller gone before the answer may have left the upstream
				// working on it: that costs the worst case. An upstream not
				// reached costs nothing.
				if r.Context().Err() != nil {
					res.settle("", apiUsage{}, false)
				} else {
					res.release()
				}
			}
			if r.URL.Path == "/v1/messages" {
				g.cfg.Hooks.call(http.StatusBadGateway)
				if g.cfg.Hooks.UpstreamError != nil {
					g.cfg.Hooks.UpstreamError()
				}
			}
			s.logger().Warn("gateway: upstream request failed", "path", r.URL.Path, "err", redact(err.Error(), s.credentials()))
			apiError(w, http.StatusBadGateway, "api_error", "sandstorm gateway: upstream unreachable")
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			apiError(w, http.StatusUnauthorized, "authentication_error", "sandstorm gateway: invalid session token")
			return
		}
		if r.URL.Path == runnerproto.Docs.Warm && r.Method == http.MethodGet && warm != nil {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(warm)
			return
		}
		if r.URL.Path == runnerproto.Docs.Config && r.Method == http.MethodGet {
			// A pending session's runner waits here for its run.
			s.mu.Lock()
			s.waiting++
			s.mu.Unlock()
			s.askedOnce.Do(func() { close(s.asked) })
			select {
			case <-s.active:
			case <-s.done:
			case <-r.Context().Done():
			}
			s.mu.Lock()
			s.waiting--
			s.mu.Unlock()
			if !s.isActive() {
				return
			}
			s.mu.Lock()
			config := s.config
			s.mu.Unlock()
			if config == nil {
				apiError(w, http.StatusNotFound, "not_found_error", "sandstorm gateway: no runner config in this session")
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(config)
			return
		}
		if !s.isActive() {
			apiError(w, http.StatusForbidden, "permission_error", "sandstorm gateway: this sandbox has no run yet")
			return
		}
		if r.URL.Path == runnerproto.Docs.Files && r.Method == http.MethodGet {
			s.mu.Lock()
			files := s.files
			s.mu.Unlock()
			if files == nil {
				files = []byte("[]")
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(files)
			return
		}
		if !allowedPath(r.URL.Path) {
			apiError(w, http.StatusNotFound, "not_found_error", "sandstorm gateway: only the Messages API is served")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		if r.URL.Path == "/v1/messages" {
			// Every call is counted and its usage read from the answer.
			body, err := io.ReadAll(r.Body)
			if err != nil {
				apiError(w, http.StatusRequestEntityTooLarge, "request_too_large", "sandstorm gateway: request too large")
				return
			}
			c, body, err := readCall(body)
			if err != nil {
				apiError(w, http.StatusBadRequest, "invalid_request_error", "sandstorm gateway: "+err.Error())
				return
			}
			res, why, err := s.meter.admit(r.Context(), c)
			if err != nil {
				return // the caller is gone
			}
			if res == nil {
				g.cfg.Hooks.call(http.StatusBadRequest)
				apiError(w, http.StatusBadRequest, "invalid_request_error", "sandstorm gateway: budget exceeded: "+why)
				return
			}
			// Whatever the proxy did not settle (a panic on a cut copy)
			// still frees its hold and slot; a settled one is untouched.
			defer res.settle("", apiUsage{}, false)
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			r = r.WithContext(context.WithValue(r.Context(), reservationKey{}, res))
		}
		proxy.ServeHTTP(w, r)
	})
}

// reservationKey carries a Messages call's reservation to the response's metering.
type reservationKey struct{}

// readCall reads what a Messages call asks for, to price its worst case,
// and returns the body the upstream gets: its fields written once each, so
// that the upstream reads the very model and max_tokens priced here (Go
// keeps the last of duplicate keys; another parser may keep the first).
func readCall(body []byte) (modelCall, []byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return modelCall{}, nil, errors.New("the request body is not a JSON object")
	}
	c := modelCall{bodyBytes: len(body)}
	if json.Unmarshal(fields["model"], &c.model) != nil {
		c.model = ""
	}
	if json.Unmarshal(fields["max_tokens"], &c.maxTokens) != nil {
		c.maxTokens = 0
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(fields); err != nil {
		return modelCall{}, nil, fmt.Errorf("the request body: %w", err)
	}
	return c, out.Bytes(), nil
}

func apiError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"type":"error","error":{"type":%q,"message":%q}}`, typ, msg)
}

// redact removes credential values from text bound for logs.
func redact(s string, c Credentials) string {
	for _, k := range []string{c.AnthropicKey, c.OpenRouterKey} {
		if k != "" {
			s = strings.ReplaceAll(s, k, "[redacted]")
		}
	}
	return s
}

// Sweep removes the session directories under dir whose owner is gone
// (orphaned says so of an owner): what a crashed process left. A directory
// without an owner is left alone; it may be one being opened right now.
func Sweep(dir string, orphaned func(owner string) bool) (removed []string, err error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("gateway: sweep: %w", err)
	}
	var errs []error
	for _, e := range entries {
		dir := filepath.Join(dir, e.Name())
		owner, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if !e.IsDir() || err != nil || !orphaned(string(owner)) {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("gateway: sweep: %w", err))
			continue
		}
		removed = append(removed, dir)
	}
	return removed, errors.Join(errs...)
}
