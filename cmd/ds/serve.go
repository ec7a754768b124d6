package main

import (
	"os"
	"time"

	"github.com/spf13/cobra"

	// Named apart from the tests' serve, which starts a ds serve.
	dsserve "github.com/sandstorm-dev/sandstorm/serve"
	"github.com/sandstorm-dev/sandstorm/server"
)

// newServe wires ds serve's flags and environment to package serve.
func newServe() *cobra.Command {
	var (
		ef engineFlags
		o  dsserve.Options
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the HTTP API: POST /query streams a run as Server-Sent Events",
		Long:  dsserve.Help(),
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Engine = ef.options()
			o.APIKeys, o.CORSOrigins = os.Getenv("SANDSTORM_API_KEY"), os.Getenv("CORS_ORIGINS")
			o.Log = cmd.ErrOrStderr()
			return dsserve.Run(cmd.Context(), o)
		},
	}
	ef.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&o.LogFormat, "log-format", "text", "log lines as text (key=value) or json (one object per line); lines about a run carry its run_id and the request's request_id")
	fl.BoolVar(&o.Reload, "reload", false, "re-read sandstorm.json and the limits file when they change (SIGHUP always does): valid changes apply to new runs, running ones keep theirs; an invalid file is logged and the running configuration kept")
	fl.StringVar(&o.Host, "host", "127.0.0.1", "address to listen on (0.0.0.0 for every interface: needs SANDSTORM_API_KEY or --insecure)")
	fl.StringVar(&o.StateDir, "state-dir", "", stateDirHelp)
	fl.BoolVar(&o.Insecure, "insecure", false, "listen on a non-loopback address without SANDSTORM_API_KEY")
	fl.IntVar(&o.Port, "port", 8000, "port to listen on")
	fl.DurationVar(&o.Grace, "shutdown-grace", 30*time.Second, "on SIGTERM, how long running agents may finish before they are cancelled")
	fl.DurationVar(&o.WriteTimeout, "write-timeout", server.DefaultWriteTimeout, "cut a client that accepts no stream data for this long; its run is cancelled and removed")
	fl.DurationVar(&o.SweepEvery, "sweep-interval", time.Minute, "how often to remove, on every backend of the host, what crashed sandstorm processes left behind")
	return cmd
}
