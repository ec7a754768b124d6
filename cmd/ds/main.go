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

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/errcode"
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
		os.Exit(errcode.ExitCode(err))
	}
}

func newRoot() *cobra.Command {
	q := &queryFlags{}
	root := &cobra.Command{
		Use:   "ds [PROMPT]",
		Short: "Run AI agents in hardened, disposable sandboxes",
		Long: `ds runs AI agents (the Claude Agent SDK) in fresh, hardened, disposable OCI
containers, one per request, streaming every step live and leaving nothing behind.

"ds PROMPT" runs one agent (the same as "ds query PROMPT").`,
		Args:          cobra.MaximumNArgs(1),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return runQuery(cmd, q, args[0])
		},
	}
	q.register(root)
	root.AddCommand(newQuery(), newServe(), newRuntimes(), newVersion(), newSandbox(), newImage(), newRuns(), newLogs(), newCancel())
	// A wrong command line exits 64 (usage), whichever command it is for.
	root.SetFlagErrorFunc(usageError)
	markUsage(root)
	return root
}

// usageError is a wrong command line for cmd: exit 64, and where to look.
func usageError(cmd *cobra.Command, err error) error {
	return api.Usage(fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath()))
}

// markUsage makes every command's argument errors usage errors.
func markUsage(cmd *cobra.Command) {
	if check := cmd.Args; check != nil {
		cmd.Args = func(c *cobra.Command, args []string) error {
			if err := check(c, args); err != nil {
				return usageError(c, err)
			}
			return nil
		}
	}
	for _, c := range cmd.Commands() {
		markUsage(c)
	}
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
