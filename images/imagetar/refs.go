package imagetar

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// References reads the image references an image tar carries (its
// index.json annotations), so a caller can tell whether a backend already
// holds exactly this image. Blob contents are skipped by seeking.
func References(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("image tar: %w", err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("image tar %s: no index.json", path)
		}
		if err != nil {
			return nil, fmt.Errorf("image tar %s: %w", path, err)
		}
		if h.Name != "index.json" {
			continue
		}
		var idx struct {
			Manifests []struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"manifests"`
		}
		if err := json.NewDecoder(tr).Decode(&idx); err != nil {
			return nil, fmt.Errorf("image tar %s: index.json: %w", path, err)
		}
		var refs []string
		for _, m := range idx.Manifests {
			if r := m.Annotations[AnnotationRefName]; r != "" {
				refs = append(refs, r)
			}
		}
		return refs, nil
	}
}
