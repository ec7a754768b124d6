// Command agentimage builds sandstorm's agent image (the Claude Agent SDK,
// its runner, Node, git, curl, ripgrep, python3 on Debian bookworm) as one
// tar that `ctr images import`, `docker load` and `podman load` accept,
// with no registry and no container engine. It needs root. See package
// images/agentimage.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sandstorm-dev/sandstorm/images/agentimage"
)

func main() {
	var o agentimage.Options
	flag.StringVar(&o.Output, "o", agentimage.DefaultOutput, "output `path` of the image tar")
	flag.StringVar(&o.CacheDir, "cache", agentimage.DefaultCacheDir, "stage cache `dir`ectory")
	flag.StringVar(&o.Mirror, "mirror", "", "Debian mirror `URL` (default: the one the host's apt uses)")
	flag.StringVar(&o.SecurityMirror, "security-mirror", "", "Debian security mirror `URL` (default: the host's)")
	flag.StringVar(&o.NPM, "npm", "npm", "the host's npm `command`")
	flag.BoolVar(&o.Rebuild, "rebuild", false, "ignore every cache")
	flag.Int64Var(&o.MaxSize, "max-size", agentimage.DefaultMaxSize, "fail if the image tar is larger than this many `bytes` (negative: no limit)")
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	o.Log = os.Stdout

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	res, err := agentimage.Build(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	how := "built"
	if res.Cached {
		how = "up to date"
	}
	fmt.Printf("%s %s in %v\n", how, res.Path, time.Since(start).Round(time.Millisecond))
	for _, r := range res.References {
		fmt.Printf("  reference    %s\n", r)
	}
	fmt.Printf("  tar          %.1f MB\n", float64(res.Size)/1e6)
	fmt.Printf("  files        %.1f MB unpacked\n", float64(res.RootfsSize)/1e6)
	for _, k := range []string{"sdk", "claude-code", "node", "python3", "git", "ripgrep", "curl"} {
		if v := res.Versions[k]; v != "" {
			fmt.Printf("  %-12s %s\n", k, v)
		}
	}
	for _, p := range res.Phases {
		d := p.Duration.Round(time.Millisecond).String()
		if p.Cached {
			d = "cached"
		}
		fmt.Printf("  phase        %-60s %s\n", p.Name, d)
	}
}
