// Command ds runs AI agents and commands in hardened, disposable sandboxes.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sandstorm-dev/sandstorm/status"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a sandboxed process's own exit code out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	err := root.ExecuteContext(ctx)
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(ee.code)
	default:
		fmt.Fprintln(os.Stderr, "ds:", err)
		os.Exit(status.ExitCode(err))
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "ds",
		Short: "Run AI agents in hardened, disposable sandboxes",
		Long: `ds runs work in fresh, hardened, disposable OCI containers on containerd
(more backends and the agent itself arrive in later releases), one per request,
streaming output live and leaving nothing behind.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersion(), newSandbox(), newImage())
	return root
}

func newVersion() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of ds",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "ds", version)
		},
	}
}
