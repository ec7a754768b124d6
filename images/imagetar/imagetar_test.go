package imagetar

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const testRef = "localhost/imagetar-test:v1"

// entry is one tar member as read back.
type entry struct {
	hdr  tar.Header
	data []byte
}

func readTar(t *testing.T, b []byte) ([]string, map[string]entry) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var names []string
	m := make(map[string]entry)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %s: %v", h.Name, err)
		}
		if _, dup := m[h.Name]; dup {
			t.Fatalf("duplicate tar entry %s", h.Name)
		}
		names = append(names, h.Name)
		m[h.Name] = entry{hdr: *h, data: data}
	}
	return names, m
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// makeTree builds a directory exercising every entry kind the layer handles.
func makeTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "empty"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "a", "file"), []byte("hello\n"), 0o640))
	must(os.WriteFile(filepath.Join(dir, "a", "b", "exec"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Chmod(filepath.Join(dir, "a", "b", "exec"), 0o755|fs.ModeSetuid))
	must(os.Link(filepath.Join(dir, "a", "file"), filepath.Join(dir, "a", "hard")))
	must(os.Symlink("a/file", filepath.Join(dir, "link")))
	must(os.Mkdir(filepath.Join(dir, "sticky"), 0o755))
	must(os.Chmod(filepath.Join(dir, "sticky"), 0o777|fs.ModeSticky))
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Logf("no fifo: %v", err)
	}
	return dir
}

func writeImage(t *testing.T, cfg Config, layers ...Layer) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteRefs(context.Background(), &buf, []string{testRef}, cfg, layers...); err != nil {
		t.Fatalf("WriteRefs: %v", err)
	}
	return buf.Bytes()
}

func TestWriteLayout(t *testing.T) {
	dir := makeTree(t)
	cfg := Config{
		Env:        []string{"PATH=/bin", "A=b"},
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"echo hi"},
		User:       "1000:1000",
		WorkingDir: "/home/user",
		Labels:     map[string]string{"z": "1", "a": "2"},
	}
	layer := Layer{Dir: dir, Override: func(p string, a *Attr) {
		a.UID, a.GID = 0, 0
		if p == "a/file" {
			a.UID, a.GID = 42, 43
		}
		if p == "empty" {
			a.Mode = 0o750
		}
	}}
	names, m := readTar(t, writeImage(t, cfg, layer))

	// Everything a runtime needs is there, blobs before the documents that
	// reference them.
	for _, n := range []string{"oci-layout", "index.json", "manifest.json", "blobs/", "blobs/sha256/"} {
		if _, ok := m[n]; !ok {
			t.Errorf("missing %s in %v", n, names)
		}
	}
	if names[0] != "oci-layout" || names[len(names)-1] != "manifest.json" {
		t.Errorf("entry order %v", names)
	}
	for n, e := range m {
		if !e.hdr.ModTime.Equal(time.Unix(0, 0)) || e.hdr.Uid != 0 || e.hdr.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d", n, e.hdr.ModTime, e.hdr.Uid, e.hdr.Gid)
		}
		if strings.HasPrefix(n, "blobs/sha256/") && e.hdr.Typeflag == tar.TypeReg {
			if got := "sha256:" + strings.TrimPrefix(n, "blobs/sha256/"); got != sha(e.data) {
				t.Errorf("blob %s has digest %s", n, sha(e.data))
			}
		}
	}
	if got := string(m["oci-layout"].data); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %s", got)
	}

	var idx index
	if err := json.Unmarshal(m["index.json"].data, &idx); err != nil {
		t.Fatal(err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != mediaTypeIndex || len(idx.Manifests) != 1 {
		t.Fatalf("index = %+v", idx)
	}
	md := idx.Manifests[0]
	if md.Annotations[AnnotationContainerdImageName] != testRef || md.Annotations[AnnotationRefName] != testRef {
		t.Errorf("index annotations = %v", md.Annotations)
	}
	if md.Platform == nil || md.Platform.OS != "linux" || md.Platform.Architecture != runtime.GOARCH {
		t.Errorf("index platform = %+v", md.Platform)
	}
	mfBytes := m[blobPath(md.Digest)].data
	if md.MediaType != mediaTypeManifest || int64(len(mfBytes)) != md.Size {
		t.Fatalf("manifest descriptor %+v, blob %d bytes", md, len(mfBytes))
	}
	var mf manifest
	if err := json.Unmarshal(mfBytes, &mf); err != nil {
		t.Fatal(err)
	}
	if mf.SchemaVersion != 2 || mf.MediaType != mediaTypeManifest || mf.Config.MediaType != mediaTypeConfig || len(mf.Layers) != 1 {
		t.Fatalf("manifest = %+v", mf)
	}
	cfgBytes := m[blobPath(mf.Config.Digest)].data
	layerBytes := m[blobPath(mf.Layers[0].Digest)].data
	if int64(len(cfgBytes)) != mf.Config.Size || int64(len(layerBytes)) != mf.Layers[0].Size {
		t.Errorf("descriptor sizes do not match blobs")
	}
	if mf.Layers[0].MediaType != mediaTypeLayer {
		t.Errorf("layer media type %s", mf.Layers[0].MediaType)
	}

	var dms []dockerManifest
	if err := json.Unmarshal(m["manifest.json"].data, &dms); err != nil {
		t.Fatal(err)
	}
	if len(dms) != 1 || dms[0].Config != blobPath(mf.Config.Digest) ||
		!slices.Equal(dms[0].Layers, []string{blobPath(mf.Layers[0].Digest)}) ||
		!slices.Equal(dms[0].RepoTags, []string{testRef}) {
		t.Errorf("manifest.json = %+v", dms)
	}

	var ic ociConfig
	if err := json.Unmarshal(cfgBytes, &ic); err != nil {
		t.Fatal(err)
	}
	if ic.OS != "linux" || ic.Architecture != runtime.GOARCH || ic.Created != "1970-01-01T00:00:00Z" {
		t.Errorf("config platform/created = %s/%s %s", ic.OS, ic.Architecture, ic.Created)
	}
	want := execConfig{User: cfg.User, Env: cfg.Env, Entrypoint: cfg.Entrypoint, Cmd: cfg.Cmd, WorkingDir: cfg.WorkingDir, Labels: cfg.Labels}
	gotJSON, _ := json.Marshal(ic.Config)
	wantJSON, _ := json.Marshal(want)
	if !bytes.Equal(gotJSON, wantJSON) {
		t.Errorf("config.config = %s, want %s", gotJSON, wantJSON)
	}
	if ic.RootFS.Type != "layers" || !slices.Equal(ic.RootFS.DiffIDs, []string{sha(layerBytes)}) || len(ic.History) != 1 {
		t.Errorf("rootfs = %+v history = %+v", ic.RootFS, ic.History)
	}

	lnames, lm := readTar(t, layerBytes)
	wantNames := []string{"a/", "a/b/", "a/b/exec", "a/file", "a/hard", "empty/", "link", "sticky/"}
	if !slices.Equal(lnames, wantNames) {
		t.Fatalf("layer entries %v, want %v (sorted, no fifo)", lnames, wantNames)
	}
	check := func(name string, typ byte, mode int64, uid int) {
		t.Helper()
		h := lm[name].hdr
		if h.Typeflag != typ || h.Mode != mode || h.Uid != uid || !h.ModTime.Equal(time.Unix(0, 0)) || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: type %c mode %o uid %d mtime %v uname %q, want type %c mode %o uid %d",
				name, h.Typeflag, h.Mode, h.Uid, h.ModTime, h.Uname, typ, mode, uid)
		}
	}
	check("a/", tar.TypeDir, 0o755, 0)
	check("a/file", tar.TypeReg, 0o640, 42)
	check("a/b/exec", tar.TypeReg, 0o4755, 0)
	check("empty/", tar.TypeDir, 0o750, 0)
	check("sticky/", tar.TypeDir, 0o1777, 0)
	if h := lm["a/file"].hdr; h.Gid != 43 || string(lm["a/file"].data) != "hello\n" {
		t.Errorf("a/file gid %d data %q", h.Gid, lm["a/file"].data)
	}
	if h := lm["a/hard"].hdr; h.Typeflag != tar.TypeLink || h.Linkname != "a/file" {
		t.Errorf("a/hard: type %c link %q, want hard link to a/file", h.Typeflag, h.Linkname)
	}
	if h := lm["link"].hdr; h.Typeflag != tar.TypeSymlink || h.Linkname != "a/file" {
		t.Errorf("link: type %c target %q", h.Typeflag, h.Linkname)
	}
}

func TestWriteDeterministic(t *testing.T) {
	dir := makeTree(t)
	cfg := Config{Cmd: []string{"/bin/sh"}, Labels: map[string]string{"b": "2", "a": "1", "c": "3"}}
	for _, c := range []Compression{Uncompressed, Gzip} {
		first := writeImage(t, cfg, Layer{Dir: dir, Compression: c})
		// Timestamps on disk must not leak into the image.
		later := time.Now().Add(time.Hour)
		if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.Type()&fs.ModeSymlink != 0 || d.Type()&fs.ModeNamedPipe != 0 {
				return err
			}
			return os.Chtimes(p, later, later)
		}); err != nil {
			t.Fatal(err)
		}
		second := writeImage(t, cfg, Layer{Dir: dir, Compression: c})
		if !bytes.Equal(first, second) {
			t.Errorf("compression %d: two writes of the same inputs differ (%d vs %d bytes)", c, len(first), len(second))
		}
	}
}

func TestGzipLayer(t *testing.T) {
	dir := makeTree(t)
	_, m := readTar(t, writeImage(t, Config{}, Layer{Dir: dir, Compression: Gzip}))
	var mf manifest
	var idx index
	if err := json.Unmarshal(m["index.json"].data, &idx); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(m[blobPath(idx.Manifests[0].Digest)].data, &mf); err != nil {
		t.Fatal(err)
	}
	if mf.Layers[0].MediaType != mediaTypeLayerGzip {
		t.Errorf("media type %s", mf.Layers[0].MediaType)
	}
	stored := m[blobPath(mf.Layers[0].Digest)].data
	zr, err := gzip.NewReader(bytes.NewReader(stored))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var ic ociConfig
	if err := json.Unmarshal(m[blobPath(mf.Config.Digest)].data, &ic); err != nil {
		t.Fatal(err)
	}
	if ic.RootFS.DiffIDs[0] != sha(plain) || ic.RootFS.DiffIDs[0] == mf.Layers[0].Digest {
		t.Errorf("diff_id %s, want digest of the uncompressed tar %s", ic.RootFS.DiffIDs[0], sha(plain))
	}
	var direct bytes.Buffer
	if err := (Layer{Dir: dir}).WriteTar(context.Background(), &direct); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(direct.Bytes(), plain) {
		t.Errorf("gunzipped layer differs from WriteTar output")
	}
}

func TestMultipleLayers(t *testing.T) {
	lower, upper := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(lower, "l"), []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(upper, "u"), []byte("upper"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The repeated layer must be listed twice but stored once.
	_, m := readTar(t, writeImage(t, Config{}, Layer{Dir: lower}, Layer{Dir: upper}, Layer{Dir: lower}))
	var dms []dockerManifest
	if err := json.Unmarshal(m["manifest.json"].data, &dms); err != nil {
		t.Fatal(err)
	}
	l := dms[0].Layers
	if len(l) != 3 || l[0] != l[2] || l[0] == l[1] {
		t.Fatalf("layers %v", l)
	}
	for i, want := range []string{"l", "u"} {
		names, _ := readTar(t, m[l[i]].data)
		if !slices.Equal(names, []string{want}) {
			t.Errorf("layer %d entries %v", i, names)
		}
	}
}

func TestWriteErrors(t *testing.T) {
	ctx := context.Background()
	dir := makeTree(t)
	if err := WriteRefs(ctx, io.Discard, []string{testRef}, Config{}); err == nil {
		t.Error("no layers: want error")
	}
	if err := WriteRefs(ctx, io.Discard, []string{"sandstorm-test:latest"}, Config{}, Layer{Dir: dir}); err == nil {
		t.Error("short reference: want error")
	}
	missing := filepath.Join(dir, "nope")
	if err := WriteRefs(ctx, io.Discard, []string{testRef}, Config{}, Layer{Dir: missing}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing dir: err %v, want wrapping fs.ErrNotExist", err)
	}
	if err := WriteRefs(ctx, io.Discard, []string{testRef}, Config{}, Layer{Dir: filepath.Join(dir, "a", "file")}); err == nil {
		t.Error("layer from a file: want error")
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := WriteRefs(canceled, io.Discard, []string{testRef}, Config{}, Layer{Dir: dir}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: err %v, want wrapping context.Canceled", err)
	}
}

func TestWriteFile(t *testing.T) {
	dir := makeTree(t)
	out := filepath.Join(t.TempDir(), "img.tar")
	if err := WriteFile(context.Background(), out, testRef, Config{}, Layer{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, writeImage(t, Config{}, Layer{Dir: dir})) {
		t.Error("WriteFile output differs from Write")
	}
	// A failed write leaves neither the target nor a temp file behind.
	bad := filepath.Join(t.TempDir(), "bad.tar")
	if err := WriteFile(context.Background(), bad, "nope", Config{}, Layer{Dir: dir}); err == nil {
		t.Fatal("want error")
	}
	if ents, _ := os.ReadDir(filepath.Dir(bad)); len(ents) != 0 {
		t.Errorf("left behind %v", ents)
	}
}

func TestValidateRef(t *testing.T) {
	good := []string{
		"localhost/sandstorm-test:latest",
		"localhost:5000/a/b:v1.2",
		"registry.example.com/team/agent:2026-11-25",
		"localhost/a__b.c-d:T_1",
	}
	bad := []string{
		"",
		"sandstorm-test:latest",      // no host
		"library/busybox:latest",     // first component is not a host
		"localhost/sandstorm-test",   // no tag
		"localhost/Sandstorm:latest", // upper case in the path
		"localhost/a@sha256:0123",    // digest instead of tag
		"localhost/a:" + strings.Repeat("x", 129),
		"localhost//a:latest",
		"-bad.host/a:latest",
	}
	for _, r := range good {
		if err := ValidateRef(r); err != nil {
			t.Errorf("ValidateRef(%q) = %v", r, err)
		}
	}
	for _, r := range bad {
		if err := ValidateRef(r); err == nil {
			t.Errorf("ValidateRef(%q) = nil, want error", r)
		}
	}
}

func TestWriteRefs(t *testing.T) {
	ctx := context.Background()
	dir := makeTree(t)
	refs := []string{testRef, "localhost/imagetar-test:0123456789ab"}
	var buf bytes.Buffer
	if err := WriteRefs(ctx, &buf, refs, Config{}, Layer{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	_, m := readTar(t, buf.Bytes())
	var idx index
	if err := json.Unmarshal(m["index.json"].data, &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != len(refs) {
		t.Fatalf("index has %d manifests, want one per reference", len(idx.Manifests))
	}
	for i, d := range idx.Manifests {
		if d.Digest != idx.Manifests[0].Digest {
			t.Errorf("manifest %d digest %s, want the same image for every reference", i, d.Digest)
		}
		if d.Annotations[AnnotationContainerdImageName] != refs[i] || d.Annotations[AnnotationRefName] != refs[i] {
			t.Errorf("manifest %d annotations %v, want %s", i, d.Annotations, refs[i])
		}
	}
	var dms []dockerManifest
	if err := json.Unmarshal(m["manifest.json"].data, &dms); err != nil {
		t.Fatal(err)
	}
	if len(dms) != 1 || !slices.Equal(dms[0].RepoTags, refs) {
		t.Errorf("manifest.json %+v, want one image tagged %v", dms, refs)
	}

	// One reference through WriteRefs is exactly Write.
	var one bytes.Buffer
	if err := WriteRefs(ctx, &one, refs[:1], Config{}, Layer{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(one.Bytes(), writeImage(t, Config{}, Layer{Dir: dir})) {
		t.Error("WriteRefs with one reference differs from Write")
	}

	for name, bad := range map[string][]string{
		"none":      nil,
		"duplicate": {testRef, testRef},
		"invalid":   {testRef, "nope"},
	} {
		if err := WriteRefs(ctx, io.Discard, bad, Config{}, Layer{Dir: dir}); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
}
