package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandstorm-dev/sandstorm/admission"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/engine"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/render"
	"github.com/sandstorm-dev/sandstorm/runtime/backends"
)

// engineFlags are shared by query and serve.
type engineFlags struct {
	runtime, config, scripted string
	anthropicKey, openrouter  string
	isolation                 string
	allow                     []string
	kubeconfig, gatewayListen string
	gatewayTLS                bool
}

func (f *engineFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.runtime, "runtime", envOr("SANDBOX_BACKEND", backends.Auto), "container backend: "+fmt.Sprint(backends.Names)+", kubernetes, or auto (the first local one that answers) (env SANDBOX_BACKEND)")
	fl.StringVar(&f.isolation, "isolation", "", isolationHelp+" (default: the limits file's isolation, runc)")
	fl.StringSliceVar(&f.allow, "allow-unenforced", nil, allowHelp+" (adds to the limits file's allow_unenforced)")
	fl.StringVar(&f.config, "config", "", "limits file (default $SANDSTORM_CONFIG, then ./config/limits.yaml, then built-in defaults)")
	fl.StringVar(&f.anthropicKey, "anthropic-key", "", "Anthropic API key (default $ANTHROPIC_API_KEY)")
	fl.StringVar(&f.openrouter, "openrouter-key", "", "OpenRouter API key (default $OPENROUTER_API_KEY)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "the kubernetes backend's cluster (default $KUBECONFIG, ~/.kube/config, or in-cluster)")
	fl.StringVar(&f.gatewayListen, "gateway-listen", os.Getenv("SANDSTORM_GATEWAY_LISTEN"), "also serve the model gateway on TCP at HOST:PORT, HOST an address of this host the sandboxes reach: needed by sandboxes that cannot have its socket mounted (kubernetes) (env SANDSTORM_GATEWAY_LISTEN)")
	fl.BoolVar(&f.gatewayTLS, "gateway-tls", os.Getenv("SANDSTORM_GATEWAY_TLS") == "1", "serve the gateway's TCP side over TLS, with a certificate of a CA made at start that the sandboxes are given (env SANDSTORM_GATEWAY_TLS=1)")
	fl.StringVar(&f.scripted, "scripted-model", "", "serve the model from sandstorm's scripted server: a builtin scenario (demo, hello-python, structured-output, model-error, slow-steps) or a scenario file; used with demo when no key is set")
}

func (f *engineFlags) options() engine.Options {
	creds := engine.CredentialsFromEnv()
	if f.anthropicKey != "" || f.openrouter != "" {
		creds = gateway.Credentials{AnthropicKey: f.anthropicKey, OpenRouterKey: f.openrouter}
	}
	return engine.Options{Runtime: f.runtime, Isolation: f.isolation, AllowUnenforced: f.allow, ConfigPath: f.config, Credentials: creds, ScriptedModel: f.scripted,
		Kubeconfig: f.kubeconfig, GatewayListen: f.gatewayListen, GatewayTLS: f.gatewayTLS}
}

type queryFlags struct {
	engineFlags
	model    string
	maxTurns int
	budget   float64
	timeout  int
	files    []string
	raw      bool
	verbose  bool
	// outputDir receives the files the agent made (noOutput: none).
	outputDir string
	noOutput  bool
	stateDir  string
}

func (q *queryFlags) register(cmd *cobra.Command) {
	q.engineFlags.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&q.model, "model", "", "model: sonnet, opus, haiku, a claude-* id, or provider/model for OpenRouter (default from sandstorm.json)")
	fl.IntVar(&q.maxTurns, "max-turns", 0, "maximum agent turns (default from sandstorm.json, else unlimited)")
	fl.Float64Var(&q.budget, "max-budget-usd", 0, "bound the run's model spend, enforced at the gateway (list prices; at most the limits file's max_budget_usd)")
	fl.IntVar(&q.timeout, "timeout", api.DefaultTimeout, "timeout in seconds, 5-3600, capped by session_timeout_seconds")
	fl.StringArrayVarP(&q.files, "file", "f", nil, "upload a file to the workspace, keeping its path relative to the working directory (repeatable; binary files allowed)")
	fl.BoolVar(&q.raw, "raw", false, "print one JSON event per line instead of formatted output")
	fl.BoolVarP(&q.verbose, "verbose", "v", false, "also show the runner's stderr and sandbox lifecycle events")
	fl.StringVarP(&q.outputDir, "output-dir", "o", "", "write the files the agent created or changed here (default ./sandstorm-out/RUN-ID/)")
	fl.BoolVar(&q.noOutput, "no-output", false, "hand back no files")
	fl.StringVar(&q.stateDir, "state-dir", "", stateDirHelp)
}

func newQuery() *cobra.Command {
	q := &queryFlags{}
	cmd := &cobra.Command{
		Use:   "query PROMPT",
		Short: "Run one agent in a fresh sandbox and stream what it does",
		Long: `Run one agent (the Claude Agent SDK) in a fresh hardened sandbox, stream every
step as it happens, then remove the sandbox. "ds PROMPT" is the same.

The files the agent created or changed are written to ./sandstorm-out/RUN-ID/
(--output-dir, --no-output), and the run is recorded in the run store: see
"ds runs" and "ds logs".

Without ANTHROPIC_API_KEY or OPENROUTER_API_KEY, sandstorm's scripted demo model
answers instead of a real one (offline; it says so).`,
		Example: `  ds "Create hello.py that prints a greeting and run it"
  ds query "fix the bug" -f src/app.py --model opus --timeout 600
  ds "summarise" --raw | jq -c 'select(.type == "result")'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runQuery(cmd, q, args[0]) },
	}
	q.register(cmd)
	return cmd
}

func runQuery(cmd *cobra.Command, q *queryFlags, prompt string) error {
	req := api.Request{Prompt: prompt, Model: q.model, MaxTurns: q.maxTurns, Timeout: q.timeout, MaxBudgetUSD: q.budget, NoOutput: q.noOutput}
	for _, f := range q.files {
		file, err := readFile(f)
		if err != nil {
			return err
		}
		req.BinaryFiles = append(req.BinaryFiles, api.WorkspaceFile(file))
	}
	if err := admission.Validate(req); err != nil {
		return err
	}
	stderr, stdout := cmd.ErrOrStderr(), cmd.OutOrStdout()
	opts := q.options()
	// One run's own story is its stream; the log says only what went wrong.
	opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	eng, err := engine.New(cmd.Context(), opts)
	if err != nil {
		return err
	}
	defer eng.Close()
	for _, n := range eng.Notices {
		fmt.Fprintln(stderr, "ds:", n)
	}
	human := render.NewHuman(stdout, isTerminal(os.Stdout))
	human.Verbose = q.verbose
	emit := func(ev json.RawMessage) error {
		if q.raw {
			_, err := fmt.Fprintf(stdout, "%s\n", ev)
			return err
		}
		human.Event(ev)
		return nil
	}
	queued := func(pos int) {
		fmt.Fprintf(stderr, "ds: all %d agent slots busy; waiting for one (position %d, at most %ds)\n",
			eng.Limits().MaxConcurrentAgents, pos, eng.Limits().QueueWaitSeconds)
	}
	svc, err := eng.OpenRuns(cmd.Context(), q.stateDir)
	if err != nil {
		return err
	}
	defer svc.Close()
	start := time.Now()
	run, err := svc.Admit(cmd.Context(), req, queued)
	if err != nil {
		return err
	}
	out, err := run.Start(cmd.Context(), func(_ int64, ev json.RawMessage) error { return emit(ev) })
	dir := ""
	if err == nil && !q.noOutput {
		dir, err = saveOutput(cmd.Context(), svc, run.ID, q.outputDir)
	}
	if !q.raw {
		human.Summary(time.Since(start))
		fmt.Fprintf(stderr, "ds: run %s", run.ID)
		if dir != "" {
			fmt.Fprintf(stderr, "; files in %s", dir)
		}
		fmt.Fprintln(stderr)
	}
	if err != nil {
		return err
	}
	if !out.Success() {
		return &api.RunFailed{Code: out.Code}
	}
	return nil
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
