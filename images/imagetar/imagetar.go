// Package imagetar writes a container image as one tar file that every
// runtime sandstorm supports can import without a registry:
// `ctr images import` and containerd's client.Import, `podman load` and
// `docker load` (checked against containerd 1.6, Podman 4.3, Docker 20.10).
//
// The tar is an OCI image layout (oci-layout, index.json, blobs/sha256/...)
// that also carries a Docker manifest.json pointing at the same blobs:
// Docker 20.10 refuses a plain OCI layout, while a plain docker-archive makes
// containerd synthesize a different manifest. containerd prefers the OCI
// layout when both are present, and Docker reads only manifest.json.
package imagetar

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"
)

// Annotations on the index.json manifest descriptor that name the image.
// containerd reads the first, Podman (and containerd as a fallback) the
// second; both carry the full reference so no runtime invents a name.
const (
	AnnotationContainerdImageName = "io.containerd.image.name"
	AnnotationRefName             = "org.opencontainers.image.ref.name"
)

const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
)

// Config is the part of the OCI image configuration sandstorm sets.
type Config struct {
	Env        []string
	Entrypoint []string
	Cmd        []string
	User       string
	WorkingDir string
	Labels     map[string]string

	// Architecture defaults to runtime.GOARCH and OS to "linux": the
	// layers are normally built from binaries of the build host.
	Architecture string
	OS           string
	// Created defaults to the Unix epoch so that rebuilding from the same
	// inputs gives the same image ID.
	Created time.Time
}

// WriteRefs writes the image made of cfg and layers (lowest first) to w as
// one tar, under refs, e.g. "localhost/name:latest" plus a tag naming the
// build's inputs. The same inputs give byte-identical output.
//
// Each ref must be a full reference with a registry host and a tag: a short
// name would be expanded differently by each runtime (docker.io/library/...
// by Docker and containerd's Docker importer, localhost/... by Podman).
//
// Layers are staged in temporary files (under os.TempDir) to compute their
// digests, so memory use does not grow with layer size. The image is
// stored once; index.json lists its manifest once per reference (containerd
// and Podman create one image name per entry) and manifest.json lists every
// reference in RepoTags (Docker). Checked with containerd 1.6, Podman 4.3
// and Docker 20.10: each runtime ends up with every name.
func WriteRefs(ctx context.Context, w io.Writer, refs []string, cfg Config, layers ...Layer) (err error) {
	if len(refs) == 0 {
		return errors.New("imagetar: an image needs at least one reference")
	}
	seenRef := make(map[string]bool, len(refs))
	for _, ref := range refs {
		if err := ValidateRef(ref); err != nil {
			return err
		}
		if seenRef[ref] {
			return fmt.Errorf("imagetar: reference %q given twice", ref)
		}
		seenRef[ref] = true
	}
	if len(layers) == 0 {
		return errors.New("imagetar: an image needs at least one layer")
	}

	tmpDir, err := os.MkdirTemp("", "imagetar-*")
	if err != nil {
		return fmt.Errorf("imagetar: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(tmpDir); rerr != nil && err == nil {
			err = fmt.Errorf("imagetar: remove temp dir: %w", rerr)
		}
	}()

	blobs := make([]blob, len(layers))
	for i, l := range layers {
		if blobs[i], err = l.stage(ctx, tmpDir); err != nil {
			return fmt.Errorf("imagetar: stage layer %d: %w", i, err)
		}
	}

	arch := cfg.Architecture
	if arch == "" {
		arch = runtime.GOARCH
	}
	goos := cfg.OS
	if goos == "" {
		goos = "linux"
	}
	created := cfg.Created
	if created.IsZero() {
		created = time.Unix(0, 0)
	}
	created = created.UTC()

	configJSON, err := json.Marshal(imageConfig(cfg, arch, goos, created, blobs))
	if err != nil {
		return fmt.Errorf("imagetar: encode config: %w", err)
	}
	configDesc := descriptor{MediaType: mediaTypeConfig, Digest: digestOf(configJSON), Size: int64(len(configJSON))}

	mf := manifest{SchemaVersion: 2, MediaType: mediaTypeManifest, Config: configDesc}
	for _, b := range blobs {
		mf.Layers = append(mf.Layers, descriptor{MediaType: b.mediaType, Digest: b.digest, Size: b.size})
	}
	manifestJSON, err := json.Marshal(mf)
	if err != nil {
		return fmt.Errorf("imagetar: encode manifest: %w", err)
	}

	manifestDigest := digestOf(manifestJSON)
	idx := index{SchemaVersion: 2, MediaType: mediaTypeIndex}
	for _, ref := range refs {
		idx.Manifests = append(idx.Manifests, descriptor{
			MediaType: mediaTypeManifest,
			Digest:    manifestDigest,
			Size:      int64(len(manifestJSON)),
			Annotations: map[string]string{
				AnnotationContainerdImageName: ref,
				AnnotationRefName:             ref,
			},
			// Lets containerd's platform filter match without opening the config.
			Platform: &platform{Architecture: arch, OS: goos},
		})
	}
	indexJSON, err := json.Marshal(idx)
	if err != nil {
		return fmt.Errorf("imagetar: encode index: %w", err)
	}

	dm := dockerManifest{Config: blobPath(configDesc.Digest), RepoTags: append([]string(nil), refs...)}
	for _, b := range blobs {
		dm.Layers = append(dm.Layers, blobPath(b.digest))
	}
	dockerJSON, err := json.Marshal([]dockerManifest{dm})
	if err != nil {
		return fmt.Errorf("imagetar: encode manifest.json: %w", err)
	}

	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	out := outerTar{tw: tw, mtime: created}
	if err := out.file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := out.dir("blobs/"); err != nil {
		return err
	}
	if err := out.dir("blobs/sha256/"); err != nil {
		return err
	}
	written := make(map[string]bool)
	for _, b := range blobs {
		if written[b.digest] {
			continue // identical layers share one blob
		}
		written[b.digest] = true
		if err := out.blobFile(ctx, b); err != nil {
			return err
		}
	}
	if err := out.file(blobPath(configDesc.Digest), configJSON); err != nil {
		return err
	}
	if err := out.file(blobPath(manifestDigest), manifestJSON); err != nil {
		return err
	}
	if err := out.file("index.json", indexJSON); err != nil {
		return err
	}
	if err := out.file("manifest.json", dockerJSON); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("imagetar: finish tar: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("imagetar: write: %w", err)
	}
	return nil
}

// WriteFile is Write to a file at path. The file is written under a
// temporary name and renamed into place, so a failed or interrupted build
// never leaves a truncated tar that looks valid.
func WriteFile(ctx context.Context, path, ref string, cfg Config, layers ...Layer) error {
	return WriteFileRefs(ctx, path, []string{ref}, cfg, layers...)
}

// WriteFileRefs is WriteRefs to a file at path, written like WriteFile.
func WriteFileRefs(ctx context.Context, path string, refs []string, cfg Config, layers ...Layer) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".imagetar-*")
	if err != nil {
		return fmt.Errorf("imagetar: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := WriteRefs(ctx, f, refs, cfg, layers...); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("imagetar: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("imagetar: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("imagetar: %w", err)
	}
	return nil
}

var (
	// Docker's reference grammar (github.com/distribution/reference),
	// restricted to name:tag with an explicit registry host.
	domainComponent = `(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])`
	pathComponent   = `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
	refRE           = regexp.MustCompile(`^(` + domainComponent + `(?:\.` + domainComponent + `)*(?::[0-9]+)?)` +
		`/(` + pathComponent + `(?:/` + pathComponent + `)*)` +
		`:([\w][\w.-]{0,127})$`)
)

// ValidateRef reports whether ref is a full image reference of the form
// host[:port]/path:tag whose host Docker also recognizes as a registry
// (it contains a dot or a port, or is "localhost"). Such a reference names
// the image identically in containerd, Docker and Podman.
func ValidateRef(ref string) error {
	m := refRE.FindStringSubmatch(ref)
	if m == nil {
		return fmt.Errorf("imagetar: invalid image reference %q: want host/name:tag, e.g. localhost/sandstorm-test:latest", ref)
	}
	host := m[1]
	if !strings.ContainsAny(host, ".:") && host != "localhost" {
		return fmt.Errorf("imagetar: image reference %q has no registry host (Docker would read %q as a path component): use e.g. localhost/%s", ref, host, ref)
	}
	if name := ref[:len(ref)-len(m[3])-1]; len(name) > 255 {
		return fmt.Errorf("imagetar: image reference %q: name longer than 255 characters", ref)
	}
	return nil
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

type ociConfig struct {
	Created      string       `json:"created"`
	Architecture string       `json:"architecture"`
	OS           string       `json:"os"`
	Config       execConfig   `json:"config"`
	RootFS       rootFS       `json:"rootfs"`
	History      []historyEnt `json:"history"`
}

type execConfig struct {
	User       string            `json:"User,omitempty"`
	Env        []string          `json:"Env,omitempty"`
	Entrypoint []string          `json:"Entrypoint,omitempty"`
	Cmd        []string          `json:"Cmd,omitempty"`
	WorkingDir string            `json:"WorkingDir,omitempty"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type historyEnt struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

func imageConfig(cfg Config, arch, goos string, created time.Time, blobs []blob) ociConfig {
	ts := created.Format(time.RFC3339Nano)
	c := ociConfig{
		Created:      ts,
		Architecture: arch,
		OS:           goos,
		Config: execConfig{
			User:       cfg.User,
			Env:        cfg.Env,
			Entrypoint: cfg.Entrypoint,
			Cmd:        cfg.Cmd,
			WorkingDir: cfg.WorkingDir,
			Labels:     cfg.Labels,
		},
		RootFS: rootFS{Type: "layers"},
	}
	for _, b := range blobs {
		c.RootFS.DiffIDs = append(c.RootFS.DiffIDs, b.diffID)
		// One history entry per layer keeps `docker history` and tools that
		// pair history with layers consistent.
		c.History = append(c.History, historyEnt{Created: ts, CreatedBy: "sandstorm imagetar"})
	}
	return c
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func blobPath(digest string) string {
	return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:")
}

// outerTar writes the entries of the image tar with fixed metadata.
type outerTar struct {
	tw    *tar.Writer
	mtime time.Time
}

func (o outerTar) header(name string, typ byte, mode, size int64) error {
	if err := o.tw.WriteHeader(&tar.Header{
		Typeflag: typ,
		Name:     name,
		Mode:     mode,
		Size:     size,
		ModTime:  o.mtime,
	}); err != nil {
		return fmt.Errorf("imagetar: write %s: %w", name, err)
	}
	return nil
}

func (o outerTar) dir(name string) error {
	return o.header(name, tar.TypeDir, 0o755, 0)
}

func (o outerTar) file(name string, data []byte) error {
	if err := o.header(name, tar.TypeReg, 0o644, int64(len(data))); err != nil {
		return err
	}
	if _, err := o.tw.Write(data); err != nil {
		return fmt.Errorf("imagetar: write %s: %w", name, err)
	}
	return nil
}

func (o outerTar) blobFile(ctx context.Context, b blob) error {
	name := blobPath(b.digest)
	if err := o.header(name, tar.TypeReg, 0o644, b.size); err != nil {
		return err
	}
	if err := copyFile(ctx, o.tw, b.path, b.size); err != nil {
		return fmt.Errorf("imagetar: write %s: %w", name, err)
	}
	return nil
}
