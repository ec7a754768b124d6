// Package serverimage builds the image of ds serve itself, offline like
// the agent image (no registry, no daemon): the ds binary, the C library
// and loader it links, the host's CA certificates, and nothing else — no
// shell, no package manager. deploy/compose.yaml runs it.
package serverimage

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sandstorm-dev/sandstorm/images/imagetar"
	"github.com/sandstorm-dev/sandstorm/internal/progress"
)

// Repo and Ref name the image; each build is also tagged with its
// binary's digest.
const (
	Repo = "localhost/sandstorm-server"
	Ref  = Repo + ":latest"
)

// DefaultOutput is where the image tar goes.
const DefaultOutput = "build/sandstorm-server.tar"

// CACertificates is the host's bundle, copied into the image for the
// model providers' TLS.
const CACertificates = "/etc/ssl/certs/ca-certificates.crt"

// libDirs are where the binary's libraries are looked for, in order.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/lib", "/usr/lib"}

// Options configure a build.
type Options struct {
	// Binary is the ds to put in; default the running one.
	Binary string
	// Output is the tar's path; default DefaultOutput.
	Output string
	// Log gets a line per phase; default stderr.
	Log io.Writer
}

// Result is what a build made.
type Result struct {
	Path       string
	References []string
	Size       int64
}

// Config is the image's configuration: ds serve on every interface of
// the container, JSON logs, the configuration read from /etc/sandstorm.
func Config() imagetar.Config {
	return imagetar.Config{
		Entrypoint: []string{"/usr/local/bin/ds"},
		Cmd:        []string{"serve", "--host", "0.0.0.0", "--port", "8000", "--log-format", "json"},
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=" + CACertificates},
		WorkingDir: "/etc/sandstorm",
		Labels:     map[string]string{"org.opencontainers.image.title": "sandstorm-server"},
	}
}

// Build writes the image tar.
func Build(ctx context.Context, o Options) (Result, error) {
	if o.Log == nil {
		o.Log = os.Stderr
	}
	if o.Output == "" {
		o.Output = DefaultOutput
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return Result{}, fmt.Errorf("serverimage: %w", err)
		}
		o.Binary = exe
	}
	rep := progress.Reporter{W: o.Log}
	stage, err := os.MkdirTemp("", "sandstorm-server-image-")
	if err != nil {
		return Result{}, fmt.Errorf("serverimage: %w", err)
	}
	defer os.RemoveAll(stage)

	done := rep.Phase("stage " + o.Binary + " and the libraries it links")
	digest, err := stageFiles(stage, o.Binary)
	done(err)
	if err != nil {
		return Result{}, fmt.Errorf("serverimage: %w", err)
	}
	res := Result{References: []string{Ref, Repo + ":" + digest[:12]}}
	if res.Path, err = filepath.Abs(o.Output); err != nil {
		return res, err
	}
	if err := os.MkdirAll(filepath.Dir(res.Path), 0o755); err != nil {
		return res, fmt.Errorf("serverimage: %w", err)
	}
	layer := imagetar.Layer{Dir: stage, Compression: imagetar.Gzip, ModTime: time.Unix(0, 0),
		Override: func(_ string, a *imagetar.Attr) { a.UID, a.GID = 0, 0 }}
	done = rep.Phase("write " + res.Path)
	err = imagetar.WriteFileRefs(ctx, res.Path, res.References, Config(), layer)
	done(err)
	if err != nil {
		return res, fmt.Errorf("serverimage: %w", err)
	}
	if st, err := os.Stat(res.Path); err == nil {
		res.Size = st.Size()
	}
	return res, nil
}

// stageFiles lays out the image's tree in dir and returns the binary's
// sha256.
func stageFiles(dir, binary string) (string, error) {
	for _, d := range []string{"usr/local/bin", "etc/ssl/certs", "etc/sandstorm/config", "tmp", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return "", err
	}
	sum, err := copyFile(binary, filepath.Join(dir, "usr/local/bin/ds"), 0o755)
	if err != nil {
		return "", err
	}
	libs, err := linked(binary)
	if err != nil {
		return "", err
	}
	for _, lib := range libs {
		if _, err := copyFile(lib, filepath.Join(dir, lib), 0o755); err != nil {
			return "", err
		}
	}
	if _, err := copyFile(CACertificates, filepath.Join(dir, CACertificates), 0o644); err != nil {
		return "", err
	}
	for name, content := range map[string]string{
		"etc/passwd":        "root:x:0:0:root:/root:/usr/sbin/nologin\n",
		"etc/group":         "root:x:0:\n",
		"etc/hosts":         "127.0.0.1 localhost\n::1 localhost\n",
		"etc/nsswitch.conf": "hosts: files dns\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	return sum, nil
}

// linked is the ELF interpreter and every shared library binary needs,
// transitively, as paths on this host.
func linked(binary string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var visit func(path string) error
	visit = func(path string) error {
		f, err := elf.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				b := make([]byte, p.Filesz)
				if _, err := p.ReadAt(b, 0); err != nil {
					return err
				}
				interp := string(b[:len(b)-1]) // NUL-terminated
				if !seen[interp] {
					seen[interp] = true
					out = append(out, interp)
				}
			}
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			return err
		}
		for _, name := range needed {
			lib := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(d, name)); err == nil {
					lib = filepath.Join(d, name)
					break
				}
			}
			if lib == "" {
				return fmt.Errorf("%s needs %s, which is in none of %v", path, name, libDirs)
			}
			if seen[lib] {
				continue
			}
			seen[lib] = true
			out = append(out, lib)
			if err := visit(lib); err != nil {
				return err
			}
		}
		return nil
	}
	return out, visit(binary)
}

// copyFile copies src (following symlinks) to dst and returns its sha256.
func copyFile(src, dst string, mode os.FileMode) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
		out.Close()
		return "", err
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), os.Chmod(dst, mode)
}
