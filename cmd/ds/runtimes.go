package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sandstorm-dev/sandstorm/runtime/backends"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

func newRuntimes() *cobra.Command {
	return &cobra.Command{
		Use:   "runtimes",
		Short: "List the container backends found on this host and what each enforces",
		Long: `List every backend found on this host (containerd, Docker, and each Podman
service: root's and every user's rootless one), with each isolation (runc, and
gVisor where it is set up), its version, socket, root or rootless, and a table
of the sandbox policy items it really enforces here; then where a backend's
sandbox differs, seen from the inside, from the one fingerprint all share.
"auto" picks the first that answers, in the order: ` + strings.Join(backends.Names, ", ") + `.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var found []backends.Found
			var isolations []sandbox.Isolation
			for _, iso := range sandbox.Isolations {
				opts := backends.FromEnv()
				opts.Isolation = iso
				for _, f := range backends.Discover(cmd.Context(), opts) {
					found = append(found, f)
					isolations = append(isolations, iso)
				}
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "BACKEND\tISOLATION\tVERSION\tMODE\tSOCKET\tSTATUS")
			var labels []string
			var caps []sandbox.Enforcement
			var diffs []string
			for i, f := range found {
				if f.Err != nil {
					fmt.Fprintf(w, "%s\t%s\t-\t-\t%s\tunavailable: %s\n", f.Name, isolations[i], orDash(f.Socket), firstLine(f.Err.Error()))
					continue
				}
				defer f.Runtime.Close()
				info, err := f.Runtime.Info(cmd.Context())
				if err != nil {
					fmt.Fprintf(w, "%s\t%s\t-\t-\t%s\tunavailable: %s\n", f.Name, isolations[i], orDash(f.Socket), firstLine(err.Error()))
					continue
				}
				c, err := f.Runtime.Enforcement(cmd.Context())
				if err != nil {
					return err
				}
				mode := "root"
				if info.Rootless {
					mode = "rootless"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\tok\n", f.Name, isolations[i], info.Version, mode, info.Socket)
				labels = append(labels, info.Label())
				caps = append(caps, c)
				for _, d := range info.Differences {
					diffs = append(diffs, fmt.Sprintf("%s %s: %s (%s)", info.Label(), d.Line, d.Value, d.Reason))
				}
			}
			w.Flush()
			if len(labels) == 0 {
				return fmt.Errorf("%w: no backend answers on this host (start one, e.g. scripts/host-setup.sh)", sandbox.ErrUnavailable)
			}
			fmt.Fprintln(cmd.OutOrStdout())
			w = tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			header := "POLICY ITEM"
			for _, l := range labels {
				header += "\t" + l
			}
			fmt.Fprintln(w, header)
			var notes []string
			for _, it := range sandbox.AllItems {
				row := string(it)
				for i, c := range caps {
					if c.Enforced(it) {
						row += "\tyes"
						continue
					}
					row += "\tNO"
					notes = append(notes, fmt.Sprintf("%s %s: %s", labels[i], it, c[it].Reason))
				}
				fmt.Fprintln(w, row)
			}
			w.Flush()
			for _, n := range notes {
				fmt.Fprintln(cmd.OutOrStdout(), "  "+n)
			}
			if len(diffs) > 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "\nDifferences from the one sandbox fingerprint (what each cannot do otherwise):")
				for _, d := range diffs {
					fmt.Fprintln(cmd.OutOrStdout(), "  "+d)
				}
			}
			return nil
		},
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	if len(line) > 120 {
		line = line[:119] + "…"
	}
	return line
}

func orDash(s string) string {
	if s == "" {
		return "(default)"
	}
	return s
}
