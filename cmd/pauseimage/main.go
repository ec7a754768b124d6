// Command pauseimage is the pod sandbox ("pause") image of sandstorm's
// Kubernetes test cluster, which has no registry to pull
// registry.k8s.io/pause from. Run as pauseimage -o TAR, it writes an image
// whose /pause is a copy of itself; run as /pause (PID 1 of a pod's
// sandbox), it waits for SIGTERM or SIGINT and reaps orphaned children.
// Build it static (CGO_ENABLED=0): the image holds nothing else.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/sandstorm-dev/sandstorm/images/imagetar"
)

// Ref is the name containerd's CRI looks for (its sandbox_image).
const Ref = "registry.k8s.io/pause:3.10"

func main() {
	if filepath.Base(os.Args[0]) == "pause" {
		pause()
		return
	}
	out := flag.String("o", "build/sandstorm-pause.tar", "output `path` of the image tar")
	flag.Parse()
	if err := write(*out); err != nil {
		fmt.Fprintln(os.Stderr, "pauseimage:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s as %s\n", *out, Ref)
}

func pause() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, _ := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 {
				break
			}
		}
	}
}

func write(out string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "sandstorm-pause-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	data, err := os.ReadFile(self)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "pause"), data, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return imagetar.WriteFile(context.Background(), out, Ref, imagetar.Config{Entrypoint: []string{"/pause"}},
		imagetar.Layer{Dir: dir, Override: func(_ string, a *imagetar.Attr) { a.UID, a.GID = 0, 0 }})
}
