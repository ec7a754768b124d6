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
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/images/agentimage"
	"github.com/sandstorm-dev/sandstorm/internal/linewriter"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/outfiles"
	"github.com/sandstorm-dev/sandstorm/runtime"
)

// maxLine bounds one stdout/stderr line; longer lines arrive in pieces.
const maxLine = 16 << 20

// Config is what the runner reads: the task, and the agent's options as
// sandstorm.json names them (merged with the request's).
type Config struct {
	Prompt string `json:"prompt"`
	config.Project
}

// Job is one run.
type Job struct {
	Config Config
	Files  []runtime.File
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
}

// Output is where a job's files are handed back: after the process exits,
// the workspace's new and changed files are copied to Dir (within the
// bounds) and each gets a file event naming URL + its path.
type Output struct {
	Dir, URL string
	Options  outfiles.Options
}

// Runner runs jobs on one backend.
type Runner struct {
	Runtime runtime.Runtime
	Gateway *gateway.Gateway
	// Image is the agent image; default agentimage.Ref.
	Image           string
	Policy          oci.Policy
	AllowUnenforced []runtime.Item
	// Egress, if set, is the policy of the run's egress proxy (network
	// mode proxy); the sandbox's own network is then loopback only.
	Egress *egress.Policy
	// Secrets (with Egress) are given to the sandbox as placeholders and
	// put in at the proxy, which intercepts their hosts with CA's
	// certificates; EgressRoots verify those hosts (nil: the system's).
	Secrets     []egress.Secret
	CA          *egress.CA
	EgressRoots *x509.CertPool
	Logger      *slog.Logger
}

// caFile is the egress CA's certificate in the session directory, which the
// runner adds to the sandbox's trust.
const caFile = "ca.pem"

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
func (r *Runner) Run(ctx context.Context, job Job, emit api.Emit) (out api.Outcome, err error) {
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Events come from the stdout and stderr copiers and from the hooks.
	var mu sync.Mutex
	var emitErr error
	send := func(ev json.RawMessage) {
		mu.Lock()
		defer mu.Unlock()
		if emitErr != nil {
			return
		}
		if emitErr = emit(ev); emitErr != nil {
			cancel(fmt.Errorf("%w: client stopped reading: %w", context.Canceled, emitErr))
		}
	}

	var declared []egress.Rule
	if r.Egress != nil {
		// The MCP servers the configuration names are reached through the proxy.
		if job.Config.MCPServers, declared, err = reachMCP(job.Config.MCPServers); err != nil {
			return out, fmt.Errorf("%w: %w", runtime.ErrInvalidSpec, err)
		}
	}
	config, err := json.Marshal(job.Config)
	if err != nil {
		return out, fmt.Errorf("%w: runner config: %w", runtime.ErrInvalidSpec, err)
	}
	owner, err := runtime.Self()
	if err != nil {
		return out, fmt.Errorf("session owner: %w", err)
	}
	sessionID := runtime.NewID()
	opts := gateway.SessionOptions{Credentials: job.Credentials, RunnerConfig: config, Owner: owner.String(), Budget: job.Budget}
	var secretEnv []string
	if r.Egress != nil {
		p := *r.Egress
		p.Host, p.Narrow, p.Declared = egress.HostAddrs(), job.EgressAllow, declared
		secrets, env, err := placeholders(r.Secrets)
		if err != nil {
			return out, fmt.Errorf("secret placeholders: %w", err)
		}
		secretEnv = env
		opts.Egress = egress.New(p, egress.Options{Logger: log, Emit: func(ev egress.Event) { send(api.Marshal(ev)) },
			Secrets: secrets, CA: r.CA, UpstreamRoots: r.EgressRoots})
	}
	sess, err := r.Gateway.Open(sessionID, opts)
	if err != nil {
		return out, fmt.Errorf("open model gateway session: %w", err)
	}
	defer func() {
		if cerr := sess.Close(); cerr != nil {
			log.Warn("close gateway session", "session", sessionID, "err", cerr)
		}
	}()
	if r.Egress != nil && r.CA != nil {
		if err := os.WriteFile(filepath.Join(sess.Dir, caFile), r.CA.CertPEM(), 0o644); err != nil {
			return out, fmt.Errorf("egress CA certificate: %w", err)
		}
	}

	// Output waits for the "started" event: a process can print before its
	// Start has returned, and the stream must say it started first. There
	// is no output without a successful Start, which opens the gate.
	started := make(chan struct{})
	openGate := sync.OnceFunc(func() { close(started) })
	defer openGate()
	var result json.RawMessage
	stdout := linewriter.New(maxLine, func(line []byte, truncated bool) error {
		<-started
		if !truncated && json.Valid(line) && isObject(line) {
			msg := json.RawMessage(append([]byte(nil), line...))
			if messageType(msg) == "result" {
				mu.Lock()
				result = msg
				mu.Unlock()
			}
			send(msg)
		} else {
			send(api.Marshal(api.LineEvent{Type: api.TypeStdout, Line: string(line), Truncated: truncated}))
		}
		return nil
	})
	stderr := linewriter.New(maxLine, func(line []byte, truncated bool) error {
		<-started
		send(api.Marshal(api.LineEvent{Type: api.TypeStderr, Line: string(line), Truncated: truncated}))
		return nil
	})

	image := r.Image
	if image == "" {
		image = agentimage.Ref
	}
	policy := r.Policy
	policy.Mounts = append(append([]oci.Mount(nil), policy.Mounts...), oci.Mount{Source: sess.Dir, Target: agentimage.MountDir, ReadOnly: true})
	spec := runtime.Spec{
		SessionID:       sessionID,
		Image:           image,
		Args:            agentimage.RunnerCommand(),
		Env:             append(append([]string{agentimage.TokenEnv + "=" + sess.Token}, job.Env...), secretEnv...),
		Files:           job.Files,
		Policy:          policy,
		AllowUnenforced: r.AllowUnenforced,
	}
	name := r.Runtime.Name()
	var sandboxID string
	var sandbox runtime.Sandbox
	exited := false
	var removeErr error
	hooks := runtime.Hooks{
		Created: func(sb runtime.Sandbox, d time.Duration) {
			sandboxID, sandbox = sb.ID(), sb
			ev := api.NewSandboxEvent(api.SandboxCreated, sandboxID, sessionID, name, d)
			ev.Unenforced = sb.Unenforced()
			send(api.Marshal(ev))
		},
		Started: func(d time.Duration) {
			send(api.Marshal(api.NewSandboxEvent(api.SandboxStarted, sandboxID, sessionID, name, d)))
			openGate()
		},
		Exited: func(st runtime.ExitStatus, waitErr error, d time.Duration) {
			exited = true
			_ = stdout.Flush()
			_ = stderr.Flush()
			ev := api.NewSandboxEvent(api.SandboxExited, sandboxID, sessionID, name, d)
			if st.Known {
				code := st.Code
				ev.ExitCode, ev.Signal, ev.OOMKilled = &code, st.Signal, st.OOMKilled
			}
			send(api.Marshal(ev))
			if job.Output != nil {
				r.handBack(ctx, sandbox, job, send)
			}
			mu.Lock()
			out = api.Outcome{Result: result, Exit: st}
			mu.Unlock()
			code2, msg := ending(ctx, st, waitErr, out.Result, job.Timeout)
			usage := sess.Usage()
			send(api.Marshal(api.UsageEvent{Type: api.TypeModelUsage, Usage: usage, Budget: job.Budget}))
			if usage.Exceeded != "" && (code2 == "" || code2 == api.CodeAgentFailed) {
				code2, msg = api.CodeBudgetExceeded, "the gateway refused a model call over the run's budget: "+usage.Exceeded
			}
			if code2 != "" {
				out.Code = code2
				send(api.NewError(code2, msg))
			}
		},
		Removed: func(d time.Duration, err error) {
			if err != nil {
				log.Error("remove sandbox", "sandbox", sandboxID, "err", err)
				removeErr = err
				return
			}
			send(api.Marshal(api.NewSandboxEvent(api.SandboxRemoved, sandboxID, sessionID, name, d)))
		},
	}
	_, err = runtime.Run(ctx, r.Runtime, spec, runtime.IO{Stdout: stdout, Stderr: stderr}, job.Timeout, hooks)
	if !exited {
		if errors.Is(err, runtime.ErrNotFound) {
			err = fmt.Errorf("%w (build and import the agent image with `ds image build`)", err)
		}
		return out, err
	}
	mu.Lock()
	defer mu.Unlock()
	if emitErr != nil {
		return out, errors.Join(fmt.Errorf("stream to client: %w", emitErr), removeErr)
	}
	return out, removeErr
}

// handBack copies the files the agent made out of the exited sandbox and
// sends a file event for each; what cannot be copied is logged and said.
func (r *Runner) handBack(ctx context.Context, sb runtime.Sandbox, job Job, send func(json.RawMessage)) {
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
		send(api.Marshal(api.FileEvent{Type: api.TypeFile, File: f, URL: job.Output.URL + outfiles.URLPath(f.Path)}))
	}
	if len(res.Skipped) > 0 {
		send(api.Marshal(api.FilesSkippedEvent{Type: api.TypeFilesSkipped, Skipped: res.Skipped}))
	}
	if err != nil {
		log.Warn("hand back the agent's files", "sandbox", sb.ID(), "err", err)
		send(api.Marshal(api.LineEvent{Type: api.TypeStderr, Line: "sandstorm: could not hand back every file: " + err.Error()}))
	}
}

func collect(ctx context.Context, sb runtime.Sandbox, dir string, o outfiles.Options) (outfiles.Result, error) {
	root, err := sb.Workspace()
	if err != nil {
		return outfiles.Result{}, err
	}
	defer root.Close()
	return outfiles.Collect(ctx, root, dir, o)
}

// ending says how a run whose process exited failed, if it did: its error
// code and message.
func ending(ctx context.Context, st runtime.ExitStatus, waitErr error, result json.RawMessage, timeout time.Duration) (api.Code, string) {
	switch {
	case waitErr != nil && ctx.Err() != nil:
		return api.CodeCancelled, "run cancelled: " + context.Cause(ctx).Error()
	case errors.Is(waitErr, runtime.ErrUnavailable):
		// The daemon went away: how the process ended is unknown, and what
		// is left of the sandbox is removed once it is back.
		return api.CodeRuntimeUnavailable, "lost the sandbox: " + waitErr.Error()
	case errors.Is(waitErr, context.DeadlineExceeded):
		return api.CodeTimeout, fmt.Sprintf("run exceeded its timeout of %v and was stopped", timeout)
	case waitErr != nil:
		return api.CodeOf(waitErr), waitErr.Error()
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
	var m struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(msg, &m)
	return m.Type
}

func resultSucceeded(msg json.RawMessage) bool {
	var m struct {
		Subtype string `json:"subtype"`
		IsError bool   `json:"is_error"`
	}
	if msg == nil || json.Unmarshal(msg, &m) != nil {
		return false
	}
	return m.Subtype == "success" && !m.IsError
}

func failureMessage(st runtime.ExitStatus, result json.RawMessage) string {
	var m struct {
		Subtype string   `json:"subtype"`
		Result  string   `json:"result"`
		Errors  []string `json:"errors"`
	}
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
