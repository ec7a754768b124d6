// Package serve is ds serve's life, from start to stop: it builds the
// engine, opens the run store, starts the warm pool, the sweeps and the
// reloads (SIGHUP, or a changed file), and serves the HTTP API until its
// context ends; then it lets the runs finish for a grace period, cancels
// the rest and removes their sandboxes.
package serve

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

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/dashboard"
	"github.com/sandstorm-dev/sandstorm/engine"
	"github.com/sandstorm-dev/sandstorm/internal/logctx"
	"github.com/sandstorm-dev/sandstorm/internal/watch"
	"github.com/sandstorm-dev/sandstorm/server"
)

// minKeyLen is the shortest API key accepted: a key must not be guessable.
const minKeyLen = 32

// Options are ds serve's settings; the errors about them name its flags.
type Options struct {
	Engine engine.Options
	// Host and Port are where the API listens. Without API keys, a Host
	// that is not loopback needs Insecure.
	Host     string
	Port     int
	Insecure bool
	// APIKeys is $SANDSTORM_API_KEY: keys separated by commas, each at
	// least minKeyLen characters.
	APIKeys string
	// CORSOrigins is $CORS_ORIGINS (see server.Config).
	CORSOrigins string
	// Grace is how long running agents may finish once ctx ends.
	Grace time.Duration
	// WriteTimeout cuts a client that accepts no stream data for this long.
	WriteTimeout time.Duration
	// SweepEvery is how often what crashed processes left is removed.
	SweepEvery time.Duration
	// StateDir is the run store's directory (see engine.StateDir).
	StateDir string
	// Reload also reloads when a configuration file changes (SIGHUP
	// always does).
	Reload bool
	// LogFormat is text or json; the lines go to Log.
	LogFormat string
	Log       io.Writer
}

// Run serves until ctx ends, then shuts down gracefully.
func Run(ctx context.Context, o Options) error {
	keys, err := o.check()
	if err != nil {
		return err
	}
	log, err := newLogger(o.Log, o.LogFormat)
	if err != nil {
		return err
	}
	o.Engine.Logger = log
	eng, err := engine.New(ctx, o.Engine)
	if err != nil {
		return err
	}
	defer eng.Close()
	for _, n := range eng.Notices {
		log.Warn(n)
	}
	svc, err := eng.OpenRuns(ctx, o.StateDir)
	if err != nil {
		return err
	}
	defer svc.Close()
	limits := eng.Limits()
	if warm := eng.StartPool(ctx); warm != nil {
		log.Info("warm pool on", "size", limits.Pool.Size, "max_refill_concurrency", max(1, limits.Pool.MaxRefillConcurrency))
	}
	defer eng.ClosePool()
	// The upkeep outlives ctx: it goes on while the runs drain.
	upkeep, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	go eng.SweepEvery(upkeep, o.SweepEvery)
	go svc.Maintain(upkeep, o.SweepEvery, time.Duration(limits.RunRetention), int64(limits.RunStoreMaxBytes))
	if err := reloadOn(upkeep, eng, log, o.Reload); err != nil {
		return err
	}
	srv := server.New(eng, svc, server.Config{CORSOrigins: o.CORSOrigins, APIKeys: keys, Host: o.Host, WriteTimeout: o.WriteTimeout, Metrics: eng.Metrics.Handler(), Logger: log})
	l, err := net.Listen("tcp", net.JoinHostPort(o.Host, strconv.Itoa(o.Port)))
	if err != nil {
		return err
	}
	url := "http://" + l.Addr().String()
	log.Info("sandstorm serving", "addr", url, "dashboard", url+dashboard.Prefix, "backend", eng.Runtime.Name(), "state_dir", svc.Store().Dir(),
		"max_concurrent_agents", limits.MaxConcurrentAgents, "image", limits.Image)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: no new requests; waiting for running agents", "grace", o.Grace)
	if err := srv.Shutdown(o.Grace); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	eng.ClosePool()
	log.Info("shut down; every sandbox removed")
	return nil
}

// check refuses settings ds serve cannot start with, before anything
// starts, and returns the API keys. No error shows a key.
func (o Options) check() ([]string, error) {
	if o.Port < 1 || o.Port > 65535 {
		return nil, api.Usage(fmt.Errorf("--port: %d is outside 1..65535", o.Port))
	}
	if o.SweepEvery < time.Second {
		return nil, api.Usage(fmt.Errorf("--sweep-interval: %v is below 1s", o.SweepEvery))
	}
	var keys []string
	for i, k := range strings.Split(o.APIKeys, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		if len(k) < minKeyLen {
			return nil, api.Usage(fmt.Errorf("SANDSTORM_API_KEY: key %d has %d characters, want at least %d", i+1, len(k), minKeyLen))
		}
		keys = append(keys, k)
	}
	if ip := net.ParseIP(o.Host); len(keys) == 0 && !o.Insecure && (ip == nil || !ip.IsLoopback()) && o.Host != "localhost" {
		return nil, api.Usage(fmt.Errorf("--host %s: anyone who can reach it could run agents; set SANDSTORM_API_KEY, or pass --insecure", o.Host))
	}
	return keys, nil
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

// reloadOn reloads eng's configuration on SIGHUP and, with watchFiles, when
// its files change, until ctx ends.
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
