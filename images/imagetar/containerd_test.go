package imagetar_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/sandstorm-dev/sandstorm/images/imagetar"
)

const ref = "localhost/imagetar-test:v1"

func TestMain(m *testing.M) {
	// The local content store warns about missing fsverity on every open.
	_ = log.SetLevel("error")
	os.Exit(m.Run())
}

func buildImage(t *testing.T) ([]byte, string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "tool"), []byte("tool"), 0o755); err != nil {
		t.Fatal(err)
	}
	var img, layer bytes.Buffer
	l := imagetar.Layer{Dir: dir}
	if err := imagetar.WriteRefs(context.Background(), &img, []string{ref}, imagetar.Config{Cmd: []string{"/bin/tool"}}, l); err != nil {
		t.Fatal(err)
	}
	if err := l.WriteTar(context.Background(), &layer); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(layer.Bytes())
	return img.Bytes(), "sha256:" + hex.EncodeToString(sum[:])
}

// importIndex runs containerd's own importer (what `ctr images import` and
// client.Import use) into a throwaway content store.
func importIndex(t *testing.T, tarball []byte) (content.Store, ocispec.Descriptor, ocispec.Index) {
	t.Helper()
	ctx := context.Background()
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	desc, err := archive.ImportIndex(ctx, store, bytes.NewReader(tarball))
	if err != nil {
		t.Fatalf("ImportIndex: %v", err)
	}
	b, err := content.ReadBlob(ctx, store, desc)
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	return store, desc, idx
}

func checkResolves(t *testing.T, store content.Store, desc ocispec.Descriptor, wantDiffID string) ocispec.Manifest {
	t.Helper()
	ctx := context.Background()
	mf, err := images.Manifest(ctx, store, desc, platforms.Default())
	if err != nil {
		t.Fatalf("resolve manifest for this platform: %v", err)
	}
	diffIDs, err := images.RootFS(ctx, store, mf.Config)
	if err != nil {
		t.Fatal(err)
	}
	if len(diffIDs) != 1 || diffIDs[0].String() != wantDiffID || len(mf.Layers) != 1 {
		t.Fatalf("diff ids %v layers %v, want one layer %s", diffIDs, mf.Layers, wantDiffID)
	}
	if _, err := content.ReadBlob(ctx, store, mf.Layers[0]); err != nil {
		t.Fatalf("layer blob not imported: %v", err)
	}
	return mf
}

func TestContainerdImportsOCILayout(t *testing.T) {
	img, diffID := buildImage(t)
	store, desc, idx := importIndex(t, img)
	if len(idx.Manifests) != 1 {
		t.Fatalf("index has %d manifests; containerd must use index.json, not re-manifest manifest.json", len(idx.Manifests))
	}
	ann := idx.Manifests[0].Annotations
	if ann[images.AnnotationImageName] != ref || ann[ocispec.AnnotationRefName] != ref {
		t.Errorf("annotations %v, want both names %s", ann, ref)
	}
	mf := checkResolves(t, store, desc, diffID)
	if mf.MediaType != ocispec.MediaTypeImageManifest {
		t.Errorf("manifest media type %s", mf.MediaType)
	}
}

// Docker reads only manifest.json; containerd's Docker-archive importer is a
// second, independent reader of that file, so it checks the paths in it.
func TestDockerManifestResolves(t *testing.T) {
	img, diffID := buildImage(t)
	var withoutLayout bytes.Buffer
	tr := tar.NewReader(bytes.NewReader(img))
	tw := tar.NewWriter(&withoutLayout)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "oci-layout" {
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}

	store, desc, idx := importIndex(t, withoutLayout.Bytes())
	if len(idx.Manifests) != 1 || idx.Manifests[0].Annotations[images.AnnotationImageName] != ref {
		t.Fatalf("index from manifest.json = %+v, want one manifest named %s", idx.Manifests, ref)
	}
	checkResolves(t, store, desc, diffID)
}

func TestContainerdImportsEveryRef(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("f"), 0o644); err != nil {
		t.Fatal(err)
	}
	refs := []string{ref, "localhost/imagetar-test:content-tag"}
	var img bytes.Buffer
	if err := imagetar.WriteRefs(context.Background(), &img, refs, imagetar.Config{}, imagetar.Layer{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	_, _, idx := importIndex(t, img.Bytes())
	var names []string
	for _, m := range idx.Manifests {
		names = append(names, m.Annotations[images.AnnotationImageName])
	}
	if len(names) != 2 || names[0] != refs[0] || names[1] != refs[1] {
		t.Fatalf("imported names %v, want %v", names, refs)
	}
}
