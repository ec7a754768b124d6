// Package agent runs one agent: a sandbox with the agent image, the runner
// and its config, the model reached through a gateway session, and every
// SDK message streamed out as it is printed. Whatever ends the run, the
// sandbox and the gateway session are removed.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/linewriter"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime"
)

// Paths and names the runner inside the image expects.
const (
	// MountDir is where the gateway session directory appears in the sandbox.
	MountDir = "/run/sandstorm"
	// ConfigName is the runner's config file in the session directory.
	ConfigName = "runner.json"
	// TokenEnv passes the session token to the runner.
	TokenEnv = "SANDSTORM_MODEL_TOKEN"
	// DefaultImage is the agent image built by `ds image build`.
	DefaultImage = "localhost/sandstorm-agent:latest"
)

// RunnerCommand starts the runner inside the agent image, under tini: as
// PID 1 it reaps the orphans agent tools leave (they would count against the
// pids limit) and forwards signals to the runner.
var RunnerCommand = []string{"tini", "--", "node", "/opt/sandstorm-agent/runner.mjs"}

// maxLine bounds one stdout/stderr line; longer lines arrive in pieces.
const maxLine = 16 << 20

// Config is what the runner reads: the agent's task and options.
type Config struct {
	Prompt                 string          `json:"prompt"`
	Model                  string          `json:"model,omitempty"`
	MaxTurns               int             `json:"max_turns,omitempty"`
	SystemPrompt           string          `json:"system_prompt,omitempty"`
	OutputFormat           json.RawMessage `json:"output_format,omitempty"`
	Agents                 json.RawMessage `json:"agents,omitempty"`
	MCPServers             json.RawMessage `json:"mcp_servers,omitempty"`
	AllowedTools           []string        `json:"allowed_tools,omitempty"`
	IncludePartialMessages bool            `json:"include_partial_messages,omitempty"`
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
}

// Runner runs jobs on one backend.
type Runner struct {
	Runtime         runtime.Runtime
	Gateway         *gateway.Gateway
	Image           string
	Policy          oci.Policy
	AllowUnenforced []runtime.Item
	Logger          *slog.Logger
}

// Outcome is how a run ended.
type Outcome struct {
	// Result is the SDK's final result message, if one arrived.
	Result json.RawMessage
	Exit   runtime.ExitStatus
	// Code is the error code when the run failed ("" on success).
	Code string
}

// Success reports whether the agent finished with a successful result.
func (o Outcome) Success() bool { return o.Code == "" }

// Emit receives each event of the run, in order. An error from Emit (the
// client went away) cancels the run.
type Emit func(json.RawMessage) error

// Run runs job and streams its events to emit. The returned error is
// non-nil only when the run could not take place or the stream was cut;
// agent failures are reported as an error event and in Outcome.Code.
func (r *Runner) Run(ctx context.Context, job Job, emit Emit) (out Outcome, err error) {
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Events come from the stdout and stderr copiers and from here.
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

	sessionID := runtime.NewID()
	sess, err := r.Gateway.Open(sessionID, job.Credentials)
	if err != nil {
		return out, fmt.Errorf("open model gateway session: %w", err)
	}
	defer func() {
		if cerr := sess.Close(); cerr != nil {
			log.Warn("close gateway session", "session", sessionID, "err", cerr)
		}
	}()
	if err := writeConfig(sess.Dir, job.Config); err != nil {
		return out, err
	}

	policy := r.Policy
	policy.Mounts = append(append([]oci.Mount(nil), policy.Mounts...), oci.Mount{Source: sess.Dir, Target: MountDir, ReadOnly: true})
	start := time.Now()
	sb, err := r.Runtime.Create(ctx, runtime.Spec{
		SessionID:       sessionID,
		Image:           r.Image,
		Args:            RunnerCommand,
		Env:             append([]string{TokenEnv + "=" + sess.Token}, job.Env...),
		Files:           job.Files,
		Policy:          policy,
		AllowUnenforced: r.AllowUnenforced,
	})
	if errors.Is(err, runtime.ErrNotFound) {
		return out, fmt.Errorf("%w (build and import the agent image with `ds image build`)", err)
	}
	if err != nil {
		return out, err
	}
	ev := sandboxEvent("created", sb.ID(), sessionID, r.Runtime.Name(), time.Since(start))
	ev.Unenforced = sb.Unenforced()
	send(mustJSON(ev))
	defer func() {
		t := time.Now()
		rerr := sb.Remove(context.WithoutCancel(ctx))
		if rerr != nil {
			log.Error("remove sandbox", "sandbox", sb.ID(), "err", rerr)
			err = errors.Join(err, rerr)
			return
		}
		send(mustJSON(sandboxEvent("removed", sb.ID(), sessionID, r.Runtime.Name(), time.Since(t))))
	}()

	var result json.RawMessage
	stdout := linewriter.New(maxLine, func(line []byte, truncated bool) error {
		if !truncated && json.Valid(line) && isObject(line) {
			msg := json.RawMessage(append([]byte(nil), line...))
			if messageType(msg) == "result" {
				mu.Lock()
				result = msg
				mu.Unlock()
			}
			send(msg)
		} else {
			send(mustJSON(LineEvent{Type: "stdout", Line: string(line), Truncated: truncated}))
		}
		return nil
	})
	stderr := linewriter.New(maxLine, func(line []byte, truncated bool) error {
		send(mustJSON(LineEvent{Type: "stderr", Line: string(line), Truncated: truncated}))
		return nil
	})
	t := time.Now()
	if err := sb.Start(ctx, runtime.IO{Stdout: stdout, Stderr: stderr}); err != nil {
		return out, err
	}
	send(mustJSON(sandboxEvent("started", sb.ID(), sessionID, r.Runtime.Name(), time.Since(t))))

	wctx := ctx
	if job.Timeout > 0 {
		var c context.CancelFunc
		wctx, c = context.WithTimeout(ctx, job.Timeout)
		defer c()
	}
	st, werr := sb.Wait(wctx)
	if werr != nil {
		// Timeout, cancel or a lost client: kill, then collect the exit so
		// output already printed is still delivered.
		if kerr := sb.Kill(context.WithoutCancel(ctx)); kerr != nil {
			log.Error("kill sandbox", "sandbox", sb.ID(), "err", kerr)
		}
		kctx, c := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		st, _ = sb.Wait(kctx)
		c()
	}
	_ = stdout.Flush()
	_ = stderr.Flush()
	exited := sandboxEvent("exited", sb.ID(), sessionID, r.Runtime.Name(), time.Since(t))
	code := st.Code
	exited.ExitCode, exited.Signal, exited.OOMKilled = &code, st.Signal, st.OOMKilled
	send(mustJSON(exited))

	mu.Lock()
	out = Outcome{Result: result, Exit: st}
	mu.Unlock()
	switch {
	case werr != nil && context.Cause(ctx) != nil && ctx.Err() != nil:
		out.Code = CodeCancelled
		send(NewError(CodeCancelled, "run cancelled: "+context.Cause(ctx).Error()))
	case werr != nil:
		out.Code = CodeTimeout
		send(NewError(CodeTimeout, fmt.Sprintf("run exceeded its timeout of %v and was stopped", job.Timeout)))
	case st.OOMKilled:
		out.Code = CodeOOM
		send(NewError(CodeOOM, "the sandbox ran out of memory and was killed"))
	case st.Code != 0 || !resultSucceeded(out.Result):
		out.Code = CodeAgentFailed
		send(NewError(CodeAgentFailed, failureMessage(st, out.Result)))
	}
	mu.Lock()
	defer mu.Unlock()
	if emitErr != nil {
		return out, fmt.Errorf("stream to client: %w", emitErr)
	}
	return out, nil
}

func writeConfig(dir string, c Config) error {
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("%w: runner config: %w", runtime.ErrInvalidSpec, err)
	}
	// Readable by the sandbox user, whatever uid it maps to.
	if err := os.WriteFile(filepath.Join(dir, ConfigName), data, 0o644); err != nil {
		return fmt.Errorf("write runner config: %w", err)
	}
	return nil
}

func isObject(b []byte) bool {
	s := strings.TrimSpace(string(b))
	return strings.HasPrefix(s, "{")
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
