package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/sandstorm-dev/sandstorm/images/agentimage"
	"github.com/sandstorm-dev/sandstorm/images/serverimage"
	"github.com/sandstorm-dev/sandstorm/runtime/backends"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

func newImage() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Build and import sandbox images"}
	cmd.AddCommand(newImageBuild(), newImageImport())
	return cmd
}

func newImageBuild() *cobra.Command {
	var (
		o        agentimage.Options
		rt       string
		noImport bool
		server   bool
	)
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the agent image offline and import it into the backend",
		Long: `Build the agent image (Debian bookworm, Node, npm, git, curl, ripgrep, python3,
pip, the pinned Claude Agent SDK and sandstorm's runner) with no registry and no
Docker daemon: debootstrap, apt, npm ci of the committed lockfile. The result is
one tar (default build/sandstorm-agent.tar) that containerd, Docker and Podman all
import; it is then imported into the selected backend unless it already holds it.
Stages are cached under /var/cache/sandstorm/agent-image: with unchanged inputs a
rebuild takes seconds. The build lists the largest paths of each layer and fails
when the tar is over its budget (images/agentimage/CHANGELOG.md). Needs root.

With --server it builds the image of ds serve itself instead (default
build/sandstorm-server.tar, localhost/sandstorm-server): this ds binary, the C
library it links and the host's CA certificates, nothing else; see
deploy/compose.yaml.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Log = cmd.ErrOrStderr()
			var path string
			if server {
				out := o.Output
				if !cmd.Flags().Changed("output") {
					out = serverimage.DefaultOutput
				}
				res, err := serverimage.Build(cmd.Context(), serverimage.Options{Output: out, Log: o.Log})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "==> image built: %s (%.1f MB) %v\n", res.Path, float64(res.Size)/1e6, res.References)
				path = res.Path
			} else {
				res, err := agentimage.Build(cmd.Context(), o)
				if err != nil {
					return err
				}
				state := "built"
				if res.Cached {
					state = "up to date"
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "==> image %s: %s (%.1f MB) %v\n", state, res.Path, float64(res.Size)/1e6, res.References)
				path = res.Path
			}
			if noImport {
				return nil
			}
			r, err := backends.Open(cmd.Context(), rt, backends.FromEnv())
			if err != nil {
				return err
			}
			defer r.Close()
			return sandbox.EnsureImage(cmd.Context(), r, path, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.BoolVar(&server, "server", false, "build the image of ds serve itself (this binary) instead of the agent image")
	f.StringVarP(&o.Output, "output", "o", agentimage.DefaultOutput, "where to write the image tar")
	f.BoolVar(&o.Rebuild, "rebuild", false, "ignore every cache")
	f.StringVar(&o.Mirror, "mirror", "", "Debian mirror URL (default: the one the host's apt uses)")
	f.Int64Var(&o.MaxSize, "max-size", 0, "fail if the image tar is larger than this many bytes (0: its budget, the newest size in images/agentimage/CHANGELOG.md plus 1%; negative: no limit)")
	f.StringVar(&rt, "runtime", envOr("SANDBOX_BACKEND", backends.Auto), "backend to import into: "+fmt.Sprint(backends.Names)+" or auto (env SANDBOX_BACKEND)")
	f.BoolVar(&noImport, "no-import", false, "only build the tar")
	return cmd
}

func newImageImport() *cobra.Command {
	var rt string
	cmd := &cobra.Command{
		Use:   "import TAR",
		Short: "Import an image tar (OCI layout with a Docker manifest.json) unless the backend already holds it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := os.Stat(args[0]); err != nil {
				return err
			}
			r, err := backends.Open(cmd.Context(), rt, backends.FromEnv())
			if err != nil {
				return err
			}
			defer r.Close()
			return sandbox.EnsureImage(cmd.Context(), r, args[0], cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&rt, "runtime", envOr("SANDBOX_BACKEND", backends.Auto), "container backend (env SANDBOX_BACKEND)")
	return cmd
}
