// Command testimage writes sandstorm's runtime test image
// (localhost/sandstorm-test:latest) as a tar that `ctr images import`,
// `docker load` and `podman load` all accept.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/sandstorm-dev/sandstorm/images/imagetar"
	"github.com/sandstorm-dev/sandstorm/images/testimage"
)

func main() {
	out := flag.String("o", "build/sandstorm-test.tar", "output `path` of the image tar")
	busybox := flag.String("busybox", testimage.DefaultBusybox, "`path` of a statically linked busybox")
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *out, *busybox); err != nil {
		fmt.Fprintln(os.Stderr, "testimage:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, busybox string) (err error) {
	phase := func(name string, f func() error) error {
		start := time.Now()
		if err := f(); err != nil {
			return err
		}
		fmt.Printf("%-8s %v\n", name, time.Since(start).Round(time.Millisecond))
		return nil
	}

	dir, err := os.MkdirTemp("", "sandstorm-testimage-*")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()

	if err := phase("rootfs", func() error { return testimage.BuildRootfs(ctx, dir, busybox) }); err != nil {
		return err
	}
	if err := phase("probe", func() error { return buildProbe(ctx, dir) }); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := phase("write", func() error {
		return imagetar.WriteFile(ctx, out, testimage.Ref, testimage.Config(), testimage.Layer(dir))
	}); err != nil {
		return err
	}
	fmt.Printf("wrote %s as %s\n", out, testimage.Ref)
	return nil
}

// buildProbe compiles cmd/sandstorm-probe as a static binary into the
// rootfs at dir, with the go command running this one.
func buildProbe(ctx context.Context, dir string) error {
	bin := filepath.Join(dir, "probe.bin")
	goCmd := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goCmd); err != nil {
		goCmd = "go"
	}
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-o", bin, "github.com/sandstorm-dev/sandstorm/cmd/sandstorm-probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build the probe: %w", err)
	}
	defer os.Remove(bin)
	return testimage.AddProbe(dir, bin)
}
