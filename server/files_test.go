package server

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/client"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// makeFiles is an agent that leaves a binary file, a changed upload, one
// file over the bounds, symlinks out of the workspace, a fifo and caches.
var makeFiles = modelserver.Scenario{Name: "make-files", Turns: []modelserver.Turn{
	{ToolUse: &modelserver.ToolUse{Name: "Bash", Input: api.Marshal(map[string]any{"command": strings.Join([]string{
		"mkdir -p out/sub .cache node_modules",
		"head -c 70000 /dev/urandom > out/sub/data.bin",
		"sha256sum out/sub/data.bin | cut -d' ' -f1 > sum.txt",
		"printf changed > up-changed.txt",
		"head -c 3000000 /dev/zero > big.bin",
		"ln -s /etc/passwd leak && ln -s /etc esc && mkfifo pipe",
		"echo c > .cache/c && echo m > node_modules/m",
	}, " && "), "description": "make files"})}},
	{Text: "made them"},
}}

// TestFilesHandedBack: what the agent made is handed back through the API,
// byte for byte, within the bounds, and nothing outside the workspace.
func TestFilesHandedBack(t *testing.T) {
	for _, backend := range backendsUnderTest {
		t.Run(backend, func(t *testing.T) {
			h := start(t, backend, testenv.ScenarioFile(t, makeFiles), "max_output_files: 10\nmax_output_bytes: 1mb\n")
			c := client.New(h.url, "")
			r, err := c.Detach(context.Background(), api.Request{Prompt: "make files", Timeout: 120,
				Files: map[string]string{"up-same.txt": "same", "up-changed.txt": "before"}})
			if err != nil {
				t.Fatal(err)
			}
			var types []string
			events := map[string]json.RawMessage{}
			err = c.Follow(context.Background(), r.ID, 0, func(_ int64, ev json.RawMessage) error {
				var m struct{ Type, Event, Path string }
				json.Unmarshal(ev, &m)
				types = append(types, m.Type+m.Event)
				events[m.Type+":"+m.Path] = ev
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			// File events come after the exit, before the usage and the removal.
			iFile, iExit, iUsage := slices.Index(types, "file"), slices.Index(types, "sandboxexited"), slices.Index(types, "model_usage")
			if iFile < iExit || iFile > iUsage || !slices.Contains(types, "sandboxremoved") {
				t.Errorf("event order %v", types)
			}
			var got []string
			for k := range events {
				if p, ok := strings.CutPrefix(k, "file:"); ok {
					got = append(got, p)
				}
			}
			slices.Sort(got)
			if want := []string{"out/sub/data.bin", "sum.txt", "up-changed.txt"}; !slices.Equal(got, want) {
				t.Errorf("handed back %v, want %v", got, want)
			}
			var skipped api.FilesSkippedEvent
			json.Unmarshal(events["files_skipped:"], &skipped)
			reasons := map[string]string{}
			for _, s := range skipped.Skipped {
				reasons[s.Path] = s.Reason
			}
			if reasons["big.bin"] != "max_output_bytes" || reasons["leak"] != "symlink" || reasons["esc"] != "symlink" || reasons["pipe"] != "not_regular" {
				t.Errorf("skipped %+v", skipped.Skipped)
			}
			var sum api.FileEvent
			json.Unmarshal(events["file:sum.txt"], &sum)
			if sum.Content == nil {
				t.Fatalf("small text file without inline content: %s", events["file:sum.txt"])
			}
			var bin api.FileEvent
			json.Unmarshal(events["file:out/sub/data.bin"], &bin)
			data := download(t, h.url, bin.URL)
			digest := sha256.Sum256(data)
			if got := hex.EncodeToString(digest[:]); len(data) != 70000 || got != strings.TrimSpace(*sum.Content) {
				t.Errorf("data.bin: %d bytes, sha256 %s; the sandbox saw %s", len(data), got, *sum.Content)
			}
			if bin.SHA256 != strings.TrimSpace(*sum.Content) || bin.Content != nil || bin.Mode != "0644" {
				t.Errorf("data.bin event %+v", bin)
			}
			// The archive holds exactly the files handed back.
			resp, err := http.Get(h.url + "/runs/" + r.ID + "/files.tar.gz")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			gz, err := gzip.NewReader(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			tr := tar.NewReader(gz)
			for {
				hd, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				names = append(names, hd.Name)
			}
			slices.Sort(names)
			if !slices.Equal(names, got) {
				t.Errorf("archive holds %v, want %v", names, got)
			}
			// Nothing but what the run lists is served.
			for _, p := range []string{"leak", "esc/passwd", "big.bin", "../../runs.db", "%2e%2e/%2e%2e/runs.db", "up-same.txt", ".cache/c"} {
				resp, err := http.Get(h.url + "/runs/" + r.ID + "/files/" + p)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 404 || strings.Contains(string(body), "root:") {
					t.Errorf("files/%s: %d %.80s", p, resp.StatusCode, body)
				}
			}
			h.noSandboxes(t, 30*time.Second)
		})
	}
}

func download(t *testing.T, base, path string) []byte {
	t.Helper()
	resp, err := http.Get(base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, data)
	}
	return data
}
