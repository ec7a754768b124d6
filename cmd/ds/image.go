package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/sandstorm-dev/sandstorm/progress"
	"github.com/sandstorm-dev/sandstorm/runtime/backends"
)

func newImage() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Manage sandbox images"}
	var rt string
	imp := &cobra.Command{
		Use:   "import TAR",
		Short: "Import an image tar (OCI layout with a Docker manifest.json) into the backend",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := backends.Open(cmd.Context(), rt, backends.FromEnv())
			if err != nil {
				return err
			}
			defer r.Close()
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			done := progress.Reporter{W: cmd.ErrOrStderr()}.Phase("import " + args[0] + " into " + r.Name())
			names, err := r.ImportImage(cmd.Context(), f)
			done(err)
			for _, n := range names {
				fmt.Fprintln(cmd.OutOrStdout(), n)
			}
			return err
		},
	}
	imp.Flags().StringVar(&rt, "runtime", envOr("SANDBOX_BACKEND", backends.Auto), "container backend (env SANDBOX_BACKEND)")
	cmd.AddCommand(imp)
	return cmd
}
