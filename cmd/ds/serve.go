package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/dashboard"
	"github.com/sandstorm-dev/sandstorm/engine"
	"github.com/sandstorm-dev/sandstorm/internal/logctx"
	"github.com/sandstorm-dev/sandstorm/internal/watch"
	"github.com/sandstorm-dev/sandstorm/server"
)

// minKeyLen is the shortest API key accepted: a key must not be guessable.
const minKeyLen = 32

// apiKeys reads SANDSTORM_API_KEY: comma-separated keys, each long enough.
// The error never shows a key.
func apiKeys(env string) ([]string, error) {
	var keys []string
	for i, k := range strings.Split(env, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		if len(k) < minKeyLen {
			return nil, api.Usage(fmt.Errorf("SANDSTORM_API_KEY: key %d has %d characters, want at least %d", i+1, len(k), minKeyLen))
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func newServe() *cobra.Command {
	var (
		ef    engineFlags
		host  string
		port  int
		grace time.Duration
		write time.Duration
		sweep time.Duration
		// insecure allows a non-loopback address without API keys.
		insecure  bool
		stateDir  string
		logFormat string
		reload    bool
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the HTTP API: POST /query streams a run as Server-Sent Events",
		Long: `Serve sandstorm's HTTP API.

  POST   /query                 run one agent; the response is a Server-Sent
                                Events stream, one "id: <seq>" + "data: <json>"
                                frame per event (X-Sandstorm-Run-Id names the run)
  POST   /runs                  start a detached run (same body): 202 and its id
  GET    /runs                  runs, newest first (?status=, ?limit=, ?before=)
  GET    /runs/ID               one run
  GET    /runs/ID/events        its events from the start, or after Last-Event-ID
                                or ?after=N, then live until it ends
  POST   /runs/ID/cancel        cancel it (idempotent)
  DELETE /runs/ID               remove a finished run and its files
  GET    /runs/ID/files         the files its agent created or changed
  GET    /runs/ID/files/PATH    one of them; /runs/ID/files.tar.gz all
  GET    /health                status, backend, runtime version, which API keys
                                are set, runs holding a slot and requests queued
  GET    /metrics               Prometheus metrics: runs by outcome, latencies,
                                slots, queue, pool, model calls, tokens, cost
  GET    /openapi.json          the OpenAPI 3.1 document of all of these (no key)
  GET    /ui/                   the dashboard: runs live, a run's events, files,
                                cancel, host state (GET / redirects there)

Every run is recorded in the run store under --state-dir; runs of a server
that died are marked interrupted by the next one to start.

A warm pool (limits.yaml pool.size, default 2; 0 turns it off) keeps sandboxes
started with sandstorm.json's agent options, the CLI waiting: a request with
those options starts in one at once ("warm": true in its sandbox created
event); others run cold and say why (warm_miss). Warm sandboxes hold host slots.

SIGHUP (and, with --reload, any change to sandstorm.json or the limits file)
re-reads both: valid changes apply to the runs that start afterwards, running
ones keep theirs, and the warm pool is started afresh; an invalid file is
logged, naming the key, and the running configuration kept. isolation,
state_dir, run_retention, run_store_max_size and webhook_url need a restart.

A /query client that disconnects, or accepts no stream data for --write-timeout,
cancels its run (or leaves the queue); its sandbox is removed at once.
On SIGTERM or Ctrl-C the server stops accepting requests, lets running agents
finish for up to --shutdown-grace, then cancels the rest (their streams end
with a cancelled error; requests still queued get 503) and removes their
sandboxes before exiting.

With $SANDSTORM_API_KEY set (one or more comma-separated keys, each at least
32 characters), every route but GET /health, GET /openapi.json and the
dashboard's files needs "Authorization: Bearer <key>" (401 otherwise), and
/health tells an unauthenticated caller only its status.
Without keys the server listens only on a loopback address unless --insecure.
Request bodies must be application/json (415 otherwise). Pages of other
origins get nothing (403) unless $CORS_ORIGINS lists them ("*" for any).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if port < 1 || port > 65535 {
				return api.Usage(fmt.Errorf("--port: %d is outside 1..65535", port))
			}
			if sweep < time.Second {
				return api.Usage(fmt.Errorf("--sweep-interval: %v is below 1s", sweep))
			}
			keys, err := apiKeys(os.Getenv("SANDSTORM_API_KEY"))
			if err != nil {
				return err
			}
			if ip := net.ParseIP(host); len(keys) == 0 && !insecure && (ip == nil || !ip.IsLoopback()) && host != "localhost" {
				return api.Usage(fmt.Errorf("--host %s: anyone who can reach it could run agents; set SANDSTORM_API_KEY, or pass --insecure", host))
			}
			log, err := newLogger(cmd.ErrOrStderr(), logFormat)
			if err != nil {
				return err
			}
			opts := ef.options()
			opts.Logger = log
			eng, err := engine.New(cmd.Context(), opts)
			if err != nil {
				return err
			}
			defer eng.Close()
			for _, n := range eng.Notices {
				log.Warn(n)
			}
			svc, err := eng.OpenRuns(cmd.Context(), stateDir)
			if err != nil {
				return err
			}
			defer svc.Close()
			limits := eng.Limits()
			if warm := eng.StartPool(cmd.Context()); warm != nil {
				log.Info("warm pool on", "size", limits.Pool.Size, "max_refill_concurrency", max(1, limits.Pool.MaxRefillConcurrency))
			}
			defer eng.ClosePool()
			sweepCtx, stopSweep := context.WithCancel(context.WithoutCancel(cmd.Context()))
			defer stopSweep()
			go eng.SweepEvery(sweepCtx, sweep)
			go svc.Maintain(sweepCtx, sweep, time.Duration(limits.RunRetention), int64(limits.RunStoreMaxBytes))
			if err := reloadOn(sweepCtx, eng, log, reload); err != nil {
				return err
			}
			srv := server.New(eng, svc, server.Config{CORSOrigins: os.Getenv("CORS_ORIGINS"), APIKeys: keys, WriteTimeout: write, Metrics: eng.Metrics.Handler(), Logger: log})
			addr := net.JoinHostPort(host, strconv.Itoa(port))
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			log.Info("sandstorm serving", "addr", "http://"+l.Addr().String(), "dashboard", "http://"+l.Addr().String()+dashboard.Prefix, "backend", eng.Runtime.Name(), "state_dir", svc.Store().Dir(),
				"max_concurrent_agents", limits.MaxConcurrentAgents, "image", limits.Image)
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(l) }()
			select {
			case err := <-errc:
				return err
			case <-cmd.Context().Done():
			}
			log.Info("shutting down: no new requests; waiting for running agents", "grace", grace)
			if err := srv.Shutdown(grace); err != nil && !errors.Is(err, net.ErrClosed) {
				return err
			}
			eng.ClosePool()
			log.Info("shut down; every sandbox removed")
			return nil
		},
	}
	ef.register(cmd)
	cmd.Flags().StringVar(&logFormat, "log-format", "text", "log lines as text (key=value) or json (one object per line); lines about a run carry its run_id and the request's request_id")
	cmd.Flags().BoolVar(&reload, "reload", false, "re-read sandstorm.json and the limits file when they change (SIGHUP always does): valid changes apply to new runs, running ones keep theirs; an invalid file is logged and the running configuration kept")
	cmd.Flags().StringVar(&host, "host", "127.0.0.1", "address to listen on (0.0.0.0 for every interface: needs SANDSTORM_API_KEY or --insecure)")
	cmd.Flags().StringVar(&stateDir, "state-dir", "", stateDirHelp)
	cmd.Flags().BoolVar(&insecure, "insecure", false, "listen on a non-loopback address without SANDSTORM_API_KEY")
	cmd.Flags().IntVar(&port, "port", 8000, "port to listen on")
	cmd.Flags().DurationVar(&grace, "shutdown-grace", 30*time.Second, "on SIGTERM, how long running agents may finish before they are cancelled")
	cmd.Flags().DurationVar(&write, "write-timeout", server.DefaultWriteTimeout, "cut a client that accepts no stream data for this long; its run is cancelled and removed")
	cmd.Flags().DurationVar(&sweep, "sweep-interval", time.Minute, "how often to remove, on every backend of the host, what crashed sandstorm processes left behind")
	return cmd
}

// newLogger logs to w as text or JSON; records logged with a context get
// its attributes (a run's id, a request's).
func newLogger(w io.Writer, format string) (*slog.Logger, error) {
	switch format {
	case "text":
		return slog.New(logctx.Handler{Handler: slog.NewTextHandler(w, nil)}), nil
	case "json":
		return slog.New(logctx.Handler{Handler: slog.NewJSONHandler(w, nil)}), nil
	}
	return nil, api.Usage(fmt.Errorf("--log-format: %q is neither text nor json", format))
}

// reloadOn reloads eng's configuration on SIGHUP and, with watch, when its
// files change, until ctx ends.
func reloadOn(ctx context.Context, eng *engine.Engine, log *slog.Logger, watchFiles bool) error {
	apply := func(why string) {
		changed, err := eng.Reload(ctx)
		switch {
		case err != nil:
			log.Error("configuration not reloaded; the running one is kept", "trigger", why, "err", err)
		case len(changed) == 0:
			log.Info("configuration reloaded: nothing changed", "trigger", why)
		default:
			log.Info("configuration reloaded: new runs use it, running ones keep theirs", "trigger", why, "changed", changed)
		}
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				apply("SIGHUP")
			}
		}
	}()
	if !watchFiles {
		return nil
	}
	limits, project := eng.Files()
	files := []string{project}
	if limits != "" {
		files = append(files, limits)
	}
	if err := watch.Files(ctx, files, func() { apply("file changed") }); err != nil {
		return err
	}
	log.Info("watching the configuration", "files", files)
	return nil
}
