// Package agent runs one agent: a sandbox with the agent image, the runner
// and its config, the model reached through a gateway session, and every
// SDK message streamed out as it is printed. Whatever ends the run, the
// sandbox and the gateway session are removed.
package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/errcode"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/images/agentimage"
	"github.com/sandstorm-dev/sandstorm/internal/linewriter"
	"github.com/sandstorm-dev/sandstorm/internal/logctx"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/outfiles"
	"github.com/sandstorm-dev/sandstorm/runnerproto"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// maxLine bounds one stdout/stderr line; longer lines arrive in pieces.
const maxLine = 16 << 20

// Config is what the runner reads: the task, and the agent's options as
// sandstorm.json names them (merged with the request's). Its JSON is a
// runnerproto.Config (a test says so).
type Config struct {
	Prompt string `json:"prompt"`
	config.Project
}

// Job is one run.
type Job struct {
	Config Config
	Files  []sandbox.File
	// Timeout ends the run with a timeout error; 0 means none.
	Timeout     time.Duration
	Credentials gateway.Credentials
	// Env is forwarded into the sandbox (provider switches; never keys).
	Env []string
	// Budget bounds the run's model calls at the gateway.
	Budget gateway.Budget
	// EgressAllow narrows the runner's egress policy for this run.
	EgressAllow []egress.Rule
	// Output, if set, hands back the files the agent made.
	Output *Output
	// WarmMiss, on a cold run while a warm pool is on, says why no warm
	// sandbox fit (in the created event).
	WarmMiss string
}

// Output is where a job's files are handed back: after the process exits,
// the workspace's new and changed files are copied to Dir (within the
// bounds) and each gets a file event naming URL + its path.
type Output struct {
	Dir, URL string
	Options  outfiles.Options
}

// Launcher runs agents on one backend: a job's sandbox, its gateway
// session and the runner inside it (runner.mjs), cold or warm. (The runner
// is the program in the agent image; sandbox.Run is the loop that runs any
// command in a sandbox.)
type Launcher struct {
	Runtime sandbox.Runtime
	Gateway *gateway.Gateway
	// Image is the agent image; default agentimage.Ref.
	Image           string
	Policy          oci.Policy
	AllowUnenforced []sandbox.Item
	// Egress, if set, is the policy of the run's egress proxy (network
	// mode proxy), the sandbox's only way out where its backend gives it
	// no network of its own (loopback only); a Pod is always on its
	// cluster's network, which this does not close.
	Egress *egress.Policy
	// Secrets (with Egress) are given to the sandbox as placeholders and
	// put in at the proxy, which intercepts their hosts with CA's
	// certificates; EgressRoots verify those hosts (nil: the system's).
	Secrets     []egress.Secret
	CA          *egress.CA
	EgressRoots *x509.CertPool
	// GatewayAddr, if set, is where the sandboxes reach the gateway over
	// TCP (gateway.ServeTCP) instead of through its socket mounted into
	// them: for a backend that cannot mount it (Pods on other hosts; the
	// engine sets it for those only). GatewayCA, when the gateway serves
	// TLS there, is the CA they verify it with.
	GatewayAddr string
	GatewayCA   []byte
	Logger      *slog.Logger
}

// placeholders gives each secret this run's placeholder, and the sandbox's
// environment that holds them.
func placeholders(secrets []egress.Secret) ([]egress.Secret, []string, error) {
	out := make([]egress.Secret, len(secrets))
	var env []string
	for i, s := range secrets {
		b := make([]byte, 12)
		if _, err := rand.Read(b); err != nil {
			return nil, nil, err
		}
		s.Placeholder = "sandstorm-placeholder-" + s.Name + "-" + hex.EncodeToString(b)
		out[i] = s
		env = append(env, s.Name+"="+s.Placeholder)
	}
	return out, env, nil
}

// Run runs job and streams its events to emit. The returned error is
// non-nil only when the run could not take place or the stream was cut;
// agent failures are reported as an error event and in Outcome.Code.
func (r *Launcher) Run(ctx context.Context, job Job, emit api.Emit) (api.Outcome, error) {
	ctx, run := newStream(ctx, emit)
	defer run.cancel(nil)
	m, err := r.begin(ctx, job, run.send)
	if err != nil {
		if errors.Is(err, sandbox.ErrNotFound) {
			err = fmt.Errorf("%w (build and import the agent image with `ds image build`)", err)
		}
		return api.Outcome{}, err
	}
	return r.finish(ctx, m, job, run)
}

// Warm starts a sandbox for a run to come, as Run would for job (its agent
// options, environment, egress), without its prompt, files, credentials or
// budget: its runner loads the SDK and waits. RunOn hands it a request;
// Remove removes one never used. Its gateway token reaches nothing until
// then.
func (r *Launcher) Warm(ctx context.Context, job Job) (*Member, error) {
	job.Config.Prompt, job.Files, job.Credentials, job.Budget = "", nil, gateway.Credentials{}, gateway.Budget{}
	m, err := r.begin(ctx, job, nil)
	if err != nil {
		return nil, err
	}
	// Ready once its runner, the SDK loaded and the CLI spawned, asks for its run.
	t := time.NewTimer(WarmTimeout)
	defer t.Stop()
	select {
	case <-m.sess.Asked():
		return m, nil
	case <-ctx.Done():
		err = context.Cause(ctx)
	case <-t.C:
		err = fmt.Errorf("its runner did not get ready within %v", WarmTimeout)
	}
	return nil, errors.Join(fmt.Errorf("warm sandbox %s: %w", m.id, err), m.Remove(ctx))
}

// WarmTimeout bounds how long a warm sandbox may take to get ready.
const WarmTimeout = time.Minute

// Ready reports whether m's runner still waits for a run (a sandbox whose
// process died, as when its daemon restarted, is not).
func (m *Member) Ready() bool { return m.sess.Waiting() }

// RunOn runs job in member m, started by Warm with job's agent options:
// its session is activated with the job's credentials, config and files,
// which the runner writes into the workspace before it sends the prompt.
// The job's timeout counts from here. m is used once; it is removed after.
func (r *Launcher) RunOn(ctx context.Context, m *Member, job Job, emit api.Emit) (api.Outcome, error) {
	ctx, run := newStream(ctx, emit)
	defer run.cancel(nil)
	t := time.Now()
	config, err := json.Marshal(m.config(job.Config))
	if err == nil {
		m.log = m.log.With(logctx.Args(ctx)...)
		err = m.sess.Activate(gateway.Grant{Credentials: job.Credentials, RunnerConfig: config, Files: wireFiles(job.Files), Budget: job.Budget,
			Logger: m.log.With("session_id", m.sessionID)})
	}
	if err != nil {
		m.Remove(ctx)
		return api.Outcome{}, fmt.Errorf("hand a warm sandbox its run: %w", err)
	}
	m.handOff = time.Since(t)
	m.setSink(run.send)
	created := api.NewSandboxEvent(api.SandboxCreated, m.id, m.sessionID, m.backend, m.createTook)
	created.Unenforced, created.Warm = m.unenforced, &m.warm
	run.send(api.Marshal(created))
	run.send(api.Marshal(api.NewSandboxEvent(api.SandboxStarted, m.id, m.sessionID, m.backend, m.startTook)))
	m.openGate()
	return r.finish(ctx, m, job, run)
}

// wireFiles are files as the runner of a warm sandbox fetches them (it
// writes them itself, as the agent user: on every backend and isolation,
// and wherever the sandbox runs).
func wireFiles(files []sandbox.File) []byte {
	out := make([]runnerproto.File, 0, len(files))
	for _, f := range files {
		mode := uint32(f.Mode.Perm())
		if mode == 0 {
			mode = 0o644
		}
		out = append(out, runnerproto.File{Path: f.Path, Mode: mode, Content: f.Content})
	}
	return api.Marshal(out)
}

// stream is one run's event stream: the first failure to emit cancels the
// run, and nothing more is sent.
type stream struct {
	mu      sync.Mutex
	emit    api.Emit
	emitErr error
	cancel  context.CancelCauseFunc
}

func newStream(ctx context.Context, emit api.Emit) (context.Context, *stream) {
	ctx, cancel := context.WithCancelCause(ctx)
	return ctx, &stream{emit: emit, cancel: cancel}
}

func (s *stream) send(ev json.RawMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.emitErr != nil {
		return
	}
	if s.emitErr = s.emit(ev); s.emitErr != nil {
		s.cancel(fmt.Errorf("%w: client stopped reading: %w", context.Canceled, s.emitErr))
	}
}

func (s *stream) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.emitErr
}

// Member is a sandbox with its gateway session and output, started for a
// run: by Run for its job, or ahead of one by Warm.
type Member struct {
	id, sessionID, backend string
	sess                   *gateway.Session
	running                *sandbox.Running
	unenforced             []string
	createTook, startTook  time.Duration
	// handOff is how long RunOn took to hand the member its run.
	handOff time.Duration
	// warm says so in the created event: true for a member of Warm.
	warm bool
	// mcp is the job's MCP servers as the runner reaches them.
	mcp            json.RawMessage
	stdout, stderr *linewriter.Writer
	// Output waits at the gate for the "started" event of its run.
	gate     chan struct{}
	openGate func()
	log      *slog.Logger

	mu     sync.Mutex
	sink   func(json.RawMessage)
	result json.RawMessage
}

// ID is the member's sandbox id.
func (m *Member) ID() string { return m.id }

// HandOff is how long RunOn took to hand the member its run.
func (m *Member) HandOff() time.Duration { return m.handOff }

func (m *Member) setSink(f func(json.RawMessage)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sink = f
}

// send passes an event to the member's run; before it has one, there is
// none to tell.
func (m *Member) send(ev json.RawMessage) {
	m.mu.Lock()
	sink := m.sink
	m.mu.Unlock()
	if sink != nil {
		sink(ev)
	}
}

// config is the runner's config for c, with the MCP servers as reached.
func (m *Member) config(c Config) Config {
	if m.mcp != nil {
		c.MCPServers = m.mcp
	}
	return c
}

// Remove removes a member that got no run (or whose hand-off failed).
func (m *Member) Remove(ctx context.Context) error {
	m.openGate()
	m.running.Sandbox().Kill(context.WithoutCancel(ctx))
	_, err := m.running.Finish(ctx, 0, sandbox.Hooks{})
	return errors.Join(err, m.sess.Close())
}

// begin opens job's gateway session and creates and starts its sandbox.
// With send, the sandbox is job's (cold): its session is active and its
// created and started events go to send. Without, it is warm: its session
// is pending and its runner waits for RunOn.
func (r *Launcher) begin(ctx context.Context, job Job, send func(json.RawMessage)) (_ *Member, err error) {
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With(logctx.Args(ctx)...)
	m := &Member{backend: r.Runtime.Name(), log: log, warm: send == nil, sink: send, gate: make(chan struct{})}
	m.openGate = sync.OnceFunc(func() { close(m.gate) })
	var declared []egress.Rule
	if r.Egress != nil {
		// The MCP servers the configuration names are reached through the proxy.
		if m.mcp, declared, err = reachMCP(job.Config.MCPServers); err != nil {
			return nil, fmt.Errorf("%w: %w", sandbox.ErrInvalidSpec, err)
		}
	}
	// A warm sandbox's runner starts the CLI with the options; the run
	// brings the prompt.
	config, err := json.Marshal(m.config(job.Config))
	if err != nil {
		return nil, fmt.Errorf("%w: runner config: %w", sandbox.ErrInvalidSpec, err)
	}
	owner, err := sandbox.Self()
	if err != nil {
		return nil, fmt.Errorf("session owner: %w", err)
	}
	m.sessionID = sandbox.NewID()
	opts := gateway.SessionOptions{Credentials: job.Credentials, RunnerConfig: config, Owner: owner.String(), Budget: job.Budget, Pending: m.warm,
		Logger: log.With("session_id", m.sessionID)}
	if m.warm {
		opts.RunnerConfig, opts.WarmConfig = nil, config
	}
	var secretEnv []string
	if r.Egress != nil {
		p := *r.Egress
		p.Host, p.Narrow, p.Declared = egress.HostAddrs(), job.EgressAllow, declared
		secrets, env, err := placeholders(r.Secrets)
		if err != nil {
			return nil, fmt.Errorf("secret placeholders: %w", err)
		}
		secretEnv = env
		opts.Egress = egress.New(p, egress.Options{Logger: log, Emit: func(ev egress.Event) { m.send(api.Marshal(ev)) },
			Secrets: secrets, CA: r.CA, UpstreamRoots: r.EgressRoots})
	}
	if m.sess, err = r.Gateway.Open(m.sessionID, opts); err != nil {
		return nil, fmt.Errorf("open model gateway session: %w", err)
	}
	defer func() {
		if err != nil {
			if cerr := m.sess.Close(); cerr != nil {
				log.Warn("close gateway session", "session", m.sessionID, "err", cerr)
			}
		}
	}()
	remote := r.GatewayAddr != ""
	if r.Egress != nil && r.CA != nil && !remote {
		if err := os.WriteFile(filepath.Join(m.sess.Dir, runnerproto.SessionDir.EgressCA), r.CA.CertPEM(), 0o644); err != nil {
			return nil, fmt.Errorf("egress CA certificate: %w", err)
		}
	}
	// Output waits for the "started" event: a process can print before its
	// Start has returned, and the stream must say it started first.
	m.stdout = linewriter.New(maxLine, func(line []byte, truncated bool) error {
		<-m.gate
		if !truncated && json.Valid(line) && isObject(line) {
			msg := json.RawMessage(append([]byte(nil), line...))
			if messageType(msg) == runnerproto.TypeResult {
				m.mu.Lock()
				m.result = msg
				m.mu.Unlock()
			}
			m.send(msg)
		} else {
			m.send(api.Marshal(api.LineEvent{Type: api.TypeStdout, Line: string(line), Truncated: truncated}))
		}
		return nil
	})
	m.stderr = linewriter.New(maxLine, func(line []byte, truncated bool) error {
		<-m.gate
		m.send(api.Marshal(api.LineEvent{Type: api.TypeStderr, Line: string(line), Truncated: truncated}))
		return nil
	})
	image := r.Image
	if image == "" {
		image = agentimage.Ref
	}
	policy := r.Policy
	names := runnerproto.Env
	env := append(append([]string{names.Token + "=" + m.sess.Token}, job.Env...), secretEnv...)
	if remote {
		env = append(env, names.GatewayAddr+"="+r.GatewayAddr)
		if len(r.GatewayCA) > 0 {
			env = append(env, names.GatewayCA+"="+string(r.GatewayCA))
		}
		if r.Egress != nil {
			env = append(env, names.GatewayEgress+"=1")
			if r.CA != nil {
				env = append(env, names.EgressCA+"="+string(r.CA.CertPEM()))
			}
		}
	} else {
		policy.Mounts = append(append([]oci.Mount(nil), policy.Mounts...), oci.Mount{Source: m.sess.Dir, Target: runnerproto.SessionDir.Mount, ReadOnly: true})
	}
	if m.warm {
		env = append(env, names.Wait+"=1")
	}
	spec := sandbox.Spec{
		SessionID:       m.sessionID,
		Image:           image,
		Args:            agentimage.RunnerCommand(),
		Env:             env,
		Files:           job.Files,
		Policy:          policy,
		AllowUnenforced: r.AllowUnenforced,
	}
	hooks := sandbox.Hooks{
		Created: func(sb sandbox.Sandbox, d time.Duration) {
			m.id, m.unenforced, m.createTook = sb.ID(), itemNames(sb.Unenforced()), d
			if !m.warm {
				ev := api.NewSandboxEvent(api.SandboxCreated, m.id, m.sessionID, m.backend, d)
				ev.Unenforced, ev.Warm, ev.WarmMiss = m.unenforced, &m.warm, job.WarmMiss
				send(api.Marshal(ev))
			}
		},
		Started: func(d time.Duration) {
			m.startTook = d
			if !m.warm {
				send(api.Marshal(api.NewSandboxEvent(api.SandboxStarted, m.id, m.sessionID, m.backend, d)))
				m.openGate()
			}
		},
		// Only when the create or start failed.
		Removed: func(d time.Duration, err error) {
			if err != nil {
				log.Error("remove sandbox", "sandbox", m.id, "err", err)
				return
			}
			if !m.warm {
				send(api.Marshal(api.NewSandboxEvent(api.SandboxRemoved, m.id, m.sessionID, m.backend, d)))
			}
		},
	}
	if m.running, err = sandbox.Begin(ctx, r.Runtime, spec, sandbox.IO{Stdout: m.stdout, Stderr: m.stderr}, hooks); err != nil {
		m.openGate()
		return nil, err
	}
	return m, nil
}

// finish waits for m's process (at most the job's timeout), hands back its
// files, reports how it ended and removes it with its session.
func (r *Launcher) finish(ctx context.Context, m *Member, job Job, run *stream) (out api.Outcome, err error) {
	defer func() {
		if cerr := m.sess.Close(); cerr != nil {
			m.log.Warn("close gateway session", "session", m.sessionID, "err", cerr)
		}
	}()
	var removeErr error
	hooks := sandbox.Hooks{
		Exited: func(st sandbox.ExitStatus, waitErr error, d time.Duration) {
			_ = m.stdout.Flush()
			_ = m.stderr.Flush()
			ev := api.NewSandboxEvent(api.SandboxExited, m.id, m.sessionID, m.backend, d)
			if st.Known {
				code := st.Code
				ev.ExitCode, ev.Signal, ev.OOMKilled = &code, st.Signal, st.OOMKilled
			}
			run.send(api.Marshal(ev))
			if job.Output != nil {
				r.handBack(ctx, m.running.Sandbox(), job, run.send)
			}
			m.mu.Lock()
			out = api.Outcome{Result: m.result}
			m.mu.Unlock()
			code, msg := ending(ctx, st, waitErr, out.Result, job.Timeout)
			usage := m.sess.Usage()
			run.send(api.Marshal(api.UsageEvent{Type: api.TypeModelUsage, ModelUsage: usage, Budget: job.Budget}))
			if usage.Exceeded != "" && (code == "" || code == api.CodeAgentFailed) {
				code, msg = api.CodeBudgetExceeded, "the gateway refused a model call over the run's budget: "+usage.Exceeded
			}
			if code != "" {
				out.Code = code
				run.send(api.NewError(code, msg))
			}
		},
		Removed: func(d time.Duration, err error) {
			if err != nil {
				m.log.Error("remove sandbox", "sandbox", m.id, "err", err)
				removeErr = err
				return
			}
			run.send(api.Marshal(api.NewSandboxEvent(api.SandboxRemoved, m.id, m.sessionID, m.backend, d)))
		},
	}
	_, _ = m.running.Finish(ctx, job.Timeout, hooks)
	if err := run.err(); err != nil {
		return out, errors.Join(fmt.Errorf("stream to client: %w", err), removeErr)
	}
	return out, removeErr
}

// handBack copies the files the agent made out of the exited sandbox and
// sends a file event for each; what cannot be copied is logged and said.
func (r *Launcher) handBack(ctx context.Context, sb sandbox.Sandbox, job Job, send func(json.RawMessage)) {
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	o := job.Output.Options
	o.Uploads = map[string]string{}
	for _, f := range job.Files {
		sum := sha256.Sum256(f.Content)
		o.Uploads[f.Path] = hex.EncodeToString(sum[:])
	}
	res, err := collect(context.WithoutCancel(ctx), sb, job.Output.Dir, o)
	for _, f := range res.Files {
		send(api.Marshal(api.FileEvent{Type: api.TypeFile, OutputFile: f, URL: job.Output.URL + outfiles.URLPath(f.Path)}))
	}
	if len(res.Skipped) > 0 {
		send(api.Marshal(api.FilesSkippedEvent{Type: api.TypeFilesSkipped, Skipped: res.Skipped}))
	}
	if err != nil {
		log.WarnContext(ctx, "hand back the agent's files", "sandbox", sb.ID(), "err", err)
		send(api.Marshal(api.LineEvent{Type: api.TypeStderr, Line: "sandstorm: could not hand back every file: " + err.Error()}))
	}
}

// itemNames are policy items as the sandbox event names them.
func itemNames(items []sandbox.Item) []string {
	names := make([]string, len(items))
	for i, it := range items {
		names[i] = string(it)
	}
	return names
}

func collect(ctx context.Context, sb sandbox.Sandbox, dir string, o outfiles.Options) (outfiles.Result, error) {
	root, err := sb.Workspace()
	if err != nil {
		return outfiles.Result{}, err
	}
	defer root.Close()
	return outfiles.Collect(ctx, root, dir, o)
}

// ending says how a run whose process exited failed, if it did: its error
// code and message.
func ending(ctx context.Context, st sandbox.ExitStatus, waitErr error, result json.RawMessage, timeout time.Duration) (api.Code, string) {
	switch {
	case waitErr != nil && ctx.Err() != nil:
		return api.CodeCancelled, "run cancelled: " + context.Cause(ctx).Error()
	case errors.Is(waitErr, sandbox.ErrUnavailable):
		// The daemon went away: how the process ended is unknown, and what
		// is left of the sandbox is removed once it is back.
		return api.CodeRuntimeUnavailable, "lost the sandbox: " + waitErr.Error()
	case errors.Is(waitErr, context.DeadlineExceeded):
		return api.CodeTimeout, fmt.Sprintf("run exceeded its timeout of %v and was stopped", timeout)
	case waitErr != nil:
		return errcode.Of(waitErr), waitErr.Error()
	case st.OOMKilled:
		return api.CodeOOM, "the sandbox ran out of memory and was killed"
	case st.Code != 0 || !resultSucceeded(result):
		return api.CodeAgentFailed, failureMessage(st, result)
	}
	return "", ""
}

func isObject(b []byte) bool {
	return bytes.HasPrefix(bytes.TrimSpace(b), []byte("{"))
}

func messageType(msg json.RawMessage) string {
	var m runnerproto.Line
	_ = json.Unmarshal(msg, &m)
	return m.Type
}

func resultSucceeded(msg json.RawMessage) bool {
	var m runnerproto.Result
	if msg == nil || json.Unmarshal(msg, &m) != nil {
		return false
	}
	return m.Succeeded()
}

func failureMessage(st sandbox.ExitStatus, result json.RawMessage) string {
	var m runnerproto.Result
	if result != nil && json.Unmarshal(result, &m) == nil {
		msg := "agent finished with " + m.Subtype
		if m.Result != "" {
			msg += ": " + m.Result
		} else if len(m.Errors) > 0 {
			msg += ": " + strings.Join(m.Errors, "; ")
		}
		return msg
	}
	if st.Signal != "" {
		return fmt.Sprintf("agent runner killed by %s before a result", st.Signal)
	}
	return fmt.Sprintf("agent runner exited with code %d before a result", st.Code)
}
