package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/images/testimage"
	"github.com/sandstorm-dev/sandstorm/internal/progress"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/backends"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

func newSandbox() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Run commands in hardened sandboxes",
	}
	cmd.AddCommand(newSandboxRun(), newSandboxReap())
	return cmd
}

const (
	isolationHelp = "isolation: runc (the host's kernel, namespaces and seccomp) or gvisor (gVisor's runsc, ptrace platform)"
	allowHelp     = "policy items to run without when the backend cannot enforce them (e.g. pids_limit under gvisor); see ds runtimes"
)

func newSandboxRun() *cobra.Command {
	var (
		spec       sandbox.Spec
		importTar  string
		timeout    time.Duration
		memory, rt string
		files      []string
		allow      []string
		network    string
		isolation  string
	)
	cmd := &cobra.Command{
		Use:   "run [flags] -- COMMAND [ARG...]",
		Short: "Run one command in a fresh hardened sandbox, then remove it",
		Long: `Run one command in a fresh hardened sandbox: no capabilities, no-new-privileges,
sandstorm's seccomp profile, read-only root with a writable /tmp and
workspace (/home/user), uid/gid 1000, memory/CPU/pids limits; with
--isolation gvisor, under gVisor's kernel (runsc). Output streams
live (stdout and stderr separately); the exit code is the command's own.
The sandbox and everything it owns are removed afterwards, also on Ctrl-C.`,
		Example: `  ds sandbox run -- sh -c 'id; cat /proc/self/status | grep -E "Cap|NoNew|Seccomp"'
  ds sandbox run --memory 64m --pids 32 -f script.sh -- sh script.sh`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mem, err := oci.ParseSize(memory)
			if err != nil {
				return fmt.Errorf("%w: --memory: %w", sandbox.ErrInvalidSpec, err)
			}
			spec.Policy.MemoryBytes = mem
			spec.Policy.Network = oci.Network(network)
			spec.Args = args
			spec.SessionID = sandbox.NewID()
			if spec.AllowUnenforced, err = sandbox.ParseItems(allow); err != nil {
				return fmt.Errorf("--allow-unenforced: %w", err)
			}
			opts := backends.FromEnv()
			if opts.Isolation, err = sandbox.ParseIsolation(isolation); err != nil {
				return fmt.Errorf("--isolation: %w", err)
			}
			for _, f := range files {
				file, err := readFile(f)
				if err != nil {
					return err
				}
				spec.Files = append(spec.Files, file)
			}
			r, err := backends.Open(cmd.Context(), rt, opts)
			if err != nil {
				return err
			}
			defer r.Close()
			st, err := runSandbox(cmd.Context(), r, spec, importTar, timeout, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if st.OOMKilled {
				fmt.Fprintln(cmd.ErrOrStderr(), "ds: sandbox was killed: out of memory")
			}
			if st.Code != 0 {
				return exitError{st.Code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&rt, "runtime", envOr("SANDBOX_BACKEND", backends.Auto), "container backend: "+fmt.Sprint(backends.Names)+" or auto (env SANDBOX_BACKEND)")
	f.StringVar(&spec.Image, "image", testimage.Ref, "image reference, already imported")
	f.StringVar(&importTar, "import", "", "import this image tar before running (unless the backend holds it already)")
	f.StringVar(&memory, "memory", "512m", "memory limit (e.g. 256m, 4g)")
	f.Float64Var(&spec.Policy.CPUs, "cpus", 1, "CPU quota in cores")
	f.Int64Var(&spec.Policy.Pids, "pids", oci.DefaultPids, "maximum number of processes")
	f.StringVar(&network, "network", string(oci.NetworkNone), "network mode: none (loopback only) or bridge (NAT egress)")
	f.StringSliceVar(&spec.Policy.Capabilities, "cap", nil, "capability to keep, e.g. CAP_NET_BIND_SERVICE (repeatable); none by default")
	f.StringArrayVarP(&files, "file", "f", nil, "copy a file into the workspace, keeping its relative path (repeatable)")
	f.StringSliceVar(&allow, "allow-unenforced", nil, allowHelp)
	f.StringVar(&isolation, "isolation", string(sandbox.IsolationRunc), isolationHelp)
	f.DurationVar(&timeout, "timeout", 0, "kill the sandbox after this long (e.g. 30s); 0 means no limit")
	return cmd
}

// runSandbox runs one command in a fresh sandbox, importing its image first
// if asked, with a line per phase on stderr.
func runSandbox(ctx context.Context, rt sandbox.Runtime, spec sandbox.Spec, importTar string, timeout time.Duration, stdout, stderr io.Writer) (sandbox.ExitStatus, error) {
	if importTar != "" {
		if err := sandbox.EnsureImage(ctx, rt, importTar, stderr); err != nil {
			return sandbox.ExitStatus{}, err
		}
	}
	rep := progress.Reporter{W: stderr}
	created := rep.Phase("create sandbox on " + rt.Name())
	id := ""
	st, err := sandbox.Run(ctx, rt, spec, sandbox.IO{Stdout: stdout, Stderr: stderr}, timeout, sandbox.Hooks{
		Created: func(sb sandbox.Sandbox, _ time.Duration) {
			id = sb.ID()
			created(nil)
			if u := sb.Unenforced(); len(u) > 0 {
				fmt.Fprintf(stderr, "==> warning: %s does not enforce %v here; running without them as allowed\n", rt.Name(), u)
			}
		},
		Removed: func(d time.Duration, err error) { rep.Done("remove sandbox "+id, d, err) },
	})
	if id == "" {
		created(err)
	}
	return st, err
}

func newSandboxReap() *cobra.Command {
	var (
		rt  string
		all bool
	)
	cmd := &cobra.Command{
		Use:   "reap",
		Short: "Remove what crashed sandstorm processes left behind (sandboxes of every kind of object, gateway sessions)",
		Long: `Remove what sandstorm processes that are gone left behind: their sandboxes
(containers, tasks, snapshots, network namespaces, scratch directories: every
object sandstorm makes, found by its labels) and their gateway session
directories. Sandboxes of sandstorm processes still running on this host are
left alone, unless --all. ds and ds serve do the same at start-up, and ds
serve every --sweep-interval.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := backends.Open(cmd.Context(), rt, backends.FromEnv())
			if err != nil {
				return err
			}
			defer r.Close()
			var n int
			if all {
				n, err = sandbox.Reap(cmd.Context(), r, map[string]string{oci.LabelManaged: "true"})
			} else {
				var ids []string
				ids, err = sandbox.Sweep(cmd.Context(), r)
				n = len(ids)
			}
			// Session directories are not a backend's: only those of owners
			// that are gone go, also with --all (a live process closes its own).
			dirs, gerr := gateway.Sweep(gateway.DefaultDir, sandbox.Orphaned)
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d sandbox(es) from %s and %d gateway session(s)\n", n, r.Name(), len(dirs))
			return errors.Join(err, gerr)
		},
	}
	cmd.Flags().StringVar(&rt, "runtime", envOr("SANDBOX_BACKEND", backends.Auto), "container backend (env SANDBOX_BACKEND)")
	cmd.Flags().BoolVar(&all, "all", false, "remove every sandbox sandstorm made on this backend, also those of processes still running")
	return cmd
}

// readFile reads a file for the workspace, keeping its path relative to the
// working directory.
func readFile(name string) (sandbox.File, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return sandbox.File{}, fmt.Errorf("%w: --file: %w", sandbox.ErrInvalidSpec, err)
	}
	fi, err := os.Stat(name)
	if err != nil {
		return sandbox.File{}, err
	}
	rel := filepath.ToSlash(filepath.Clean(name))
	return sandbox.File{Path: rel, Content: data, Mode: fi.Mode().Perm()}, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
