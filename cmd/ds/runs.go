package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/client"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/engine"
	"github.com/sandstorm-dev/sandstorm/outfiles"
	"github.com/sandstorm-dev/sandstorm/render"
	"github.com/sandstorm-dev/sandstorm/runs"
	"github.com/sandstorm-dev/sandstorm/runstore"
)

const stateDirHelp = "where the run store is kept (default $SANDSTORM_STATE_DIR, then the limits file's state_dir, then /var/lib/sandstorm for root or ~/.local/state/sandstorm)"

// runSource is where the run commands find runs: the local store, or a
// server (--server).
type runSource interface {
	List(ctx context.Context, f runstore.Filter) (api.RunList, error)
	Get(ctx context.Context, id string) (api.RunView, error)
	Follow(ctx context.Context, id string, after int64, emit func(int64, json.RawMessage) error) error
	Cancel(ctx context.Context, id string) (api.RunView, error)
	Files(ctx context.Context, id string) ([]outfiles.File, error)
	OpenFile(ctx context.Context, id, path string) (io.ReadCloser, outfiles.File, error)
}

var (
	_ runSource = (*runs.Service)(nil)
	_ runSource = (*client.Client)(nil)
)

// sourceFlags choose the run source.
type sourceFlags struct {
	server, stateDir, config string
}

func (f *sourceFlags) register(cmd *cobra.Command) {
	fl := cmd.PersistentFlags()
	fl.StringVar(&f.server, "server", os.Getenv("SANDSTORM_SERVER"), "a ds serve URL to ask instead of this host's run store (env SANDSTORM_SERVER; its key from SANDSTORM_API_KEY)")
	fl.StringVar(&f.stateDir, "state-dir", "", stateDirHelp)
	fl.StringVar(&f.config, "config", "", "limits file, for its state_dir (default $SANDSTORM_CONFIG, then ./config/limits.yaml)")
}

// with runs fn on the source the flags name, and closes it.
func (f *sourceFlags) with(cmd *cobra.Command, fn func(context.Context, runSource) error) error {
	source, done, err := f.open(cmd.Context())
	if err != nil {
		return err
	}
	defer done()
	return fn(cmd.Context(), source)
}

// open returns the source and what to close when done.
func (f *sourceFlags) open(ctx context.Context) (runSource, func(), error) {
	if f.server != "" {
		key, _, _ := strings.Cut(os.Getenv("SANDSTORM_API_KEY"), ",")
		return client.New(f.server, strings.TrimSpace(key)), func() {}, nil
	}
	limits, _, err := config.LoadLimits(config.FindLimits(f.config))
	if err != nil {
		return nil, nil, err
	}
	store, err := runstore.Open(ctx, engine.StateDir(f.stateDir, limits))
	if err != nil {
		return nil, nil, err
	}
	// Reading and cancelling need no engine: the run's owner does the work.
	svc, err := runs.New(nil, store, runs.Options{})
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	return svc, func() { svc.Close() }, nil
}

func newRuns() *cobra.Command {
	var (
		src    sourceFlags
		status []string
		limit  int
		before string
	)
	cmd := &cobra.Command{
		Use:   "runs",
		Short: "List runs, newest first (from this host's run store, or --server)",
		Long: `List runs, newest first: id, status, age, duration, cost and the start of the
prompt. Every run of "ds" and "ds serve" on this host is in the run store.
"ds runs show ID" prints one, "ds runs files ID" downloads what it made,
"ds logs ID" replays its events and "ds cancel ID" stops it.`,
		Example: `  ds runs
  ds runs --status running,queued
  ds runs --server http://127.0.0.1:8000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := runstore.Filter{Limit: limit, Before: before}
			for _, s := range status {
				st := api.RunStatus(s)
				if !st.Valid() {
					return api.Usage(fmt.Errorf("--status: %q is not one of %v", s, api.RunStatuses))
				}
				f.Status = append(f.Status, st)
			}
			return src.with(cmd, func(ctx context.Context, source runSource) error {
				page, err := source.List(ctx, f)
				if err != nil {
					return err
				}
				printRuns(cmd.OutOrStdout(), page, time.Now())
				return nil
			})
		},
	}
	src.register(cmd)
	cmd.Flags().StringSliceVar(&status, "status", nil, "only runs with these statuses (queued, running, succeeded, failed, cancelled, timeout, interrupted)")
	cmd.Flags().IntVar(&limit, "limit", 20, "at most this many runs")
	cmd.Flags().StringVar(&before, "before", "", "only runs older than this run id (the next page)")
	cmd.AddCommand(newRunsShow(&src), newRunsFiles(&src))
	return cmd
}

func printRuns(w io.Writer, page api.RunList, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tAGE\tDURATION\tCOST\tPROMPT")
	for _, r := range page.Runs {
		prompt := strings.Join(strings.Fields(r.Prompt), " ")
		if len([]rune(prompt)) > 40 {
			prompt = string([]rune(prompt)[:39]) + "…"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t$%.4f\t%s\n", r.ID, r.Status, roundDur(now.Sub(r.CreatedAt)), roundDur(r.Duration(now)), r.TotalCostUSD, prompt)
	}
	tw.Flush()
	if page.Next != "" {
		fmt.Fprintf(w, "more: --before %s\n", page.Next)
	}
}

func roundDur(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}

func newRunsShow(src *sourceFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show RUN-ID",
		Short: "Print one run's record as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return src.with(cmd, func(ctx context.Context, source runSource) error {
				r, err := source.Get(ctx, args[0])
				if err != nil {
					return err
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			})
		},
	}
}

func newRunsFiles(src *sourceFlags) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "files RUN-ID",
		Short: "Download the files a run's agent created or changed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return src.with(cmd, func(ctx context.Context, source runSource) error {
				out, n, err := download(ctx, source, args[0], dir)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "ds: %d file(s) of %s in %s\n", n, args[0], out)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&dir, "output-dir", "o", "", "write them here (default ./sandstorm-out/RUN-ID/)")
	return cmd
}

// download writes the files run id handed back under dir (default
// ./sandstorm-out/ID): only paths the run lists, checked, and never
// through a symlink out of dir.
func download(ctx context.Context, source runSource, id, dir string) (string, int, error) {
	if dir == "" {
		dir = filepath.Join("sandstorm-out", id)
	}
	files, err := source.Files(ctx, id)
	if err != nil || len(files) == 0 {
		return dir, 0, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return dir, 0, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return dir, 0, err
	}
	defer root.Close()
	for _, f := range files {
		if err := saveOne(ctx, source, root, id, f); err != nil {
			return dir, 0, err
		}
	}
	return dir, len(files), nil
}

func saveOne(ctx context.Context, source runSource, root *os.Root, id string, f outfiles.File) error {
	if !filepath.IsLocal(f.Path) {
		return fmt.Errorf("run %s lists a file outside its directory: %q", id, f.Path)
	}
	rc, _, err := source.OpenFile(ctx, id, f.Path)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := root.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
		return err
	}
	out, err := root.OpenFile(f.Path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, rc); err != nil {
		out.Close()
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	return out.Close()
}

// saveOutput writes the files a local run handed back; "" when there were none.
func saveOutput(ctx context.Context, svc *runs.Service, id, dir string) (string, error) {
	out, n, err := download(ctx, svc, id, dir)
	if n == 0 {
		return "", err
	}
	return out, err
}

func newLogs() *cobra.Command {
	var (
		src     sourceFlags
		follow  bool
		raw     bool
		verbose bool
		after   int64
	)
	cmd := &cobra.Command{
		Use:   "logs RUN-ID",
		Short: "Replay a run's events, rendered as ds renders them; -f follows it live",
		Long: `Replay a run's events from its start (or after --after N), rendered as "ds"
renders a run, or as JSON lines with --raw. With -f, keep following the run
until it ends, resuming by itself if a --server connection drops.`,
		Example: `  ds logs -f run-0193...
  ds logs --raw run-0193... | jq -c 'select(.type == "result")'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return src.with(cmd, func(ctx context.Context, source runSource) error {
				id := args[0]
				stdout := cmd.OutOrStdout()
				human := render.NewHuman(stdout, isTerminal(os.Stdout))
				human.Verbose = verbose
				emit := func(_ int64, ev json.RawMessage) error {
					if raw {
						_, err := fmt.Fprintf(stdout, "%s\n", ev)
						return err
					}
					human.Event(ev)
					return nil
				}
				parent := ctx
				if !follow {
					r, err := source.Get(ctx, id)
					if err != nil {
						return err
					}
					if !r.Status.Done() {
						// Replay what is there now, and stop.
						var cancel context.CancelFunc
						ctx, cancel = context.WithCancel(ctx)
						defer cancel()
						last := r.Events
						inner := emit
						emit = func(seq int64, ev json.RawMessage) error {
							err := inner(seq, ev)
							if seq >= last {
								cancel()
							}
							return err
						}
						if last <= after {
							return nil
						}
					}
				}
				err := source.Follow(ctx, id, after, emit)
				if ctx.Err() != nil && parent.Err() == nil {
					return nil // stopped at the last event there was
				}
				return err
			})
		},
	}
	src.register(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the run live until it ends")
	cmd.Flags().BoolVar(&raw, "raw", false, "print one JSON event per line")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "also show the runner's stderr and sandbox lifecycle events")
	cmd.Flags().Int64Var(&after, "after", 0, "start after this event number")
	return cmd
}

func newCancel() *cobra.Command {
	var src sourceFlags
	cmd := &cobra.Command{
		Use:   "cancel RUN-ID",
		Short: "Cancel a run, wherever on this host (or --server) it runs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return src.with(cmd, func(ctx context.Context, source runSource) error {
				r, err := source.Cancel(ctx, args[0])
				if err != nil {
					return err
				}
				if r.Status.Done() {
					fmt.Fprintf(cmd.ErrOrStderr(), "ds: %s had already ended: %s\n", r.ID, r.Status)
					return nil
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "ds: cancel of %s requested; its stream ends with a cancelled error\n", r.ID)
				return nil
			})
		},
	}
	src.register(cmd)
	return cmd
}
