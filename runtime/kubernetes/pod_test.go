package kubernetes

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

var update = flag.Bool("update", false, "rewrite the golden Pod specs")

// TestPodGolden: the Secret (its environment) and the Pod of a sandbox, as
// the API server is sent them, for
// the default policy with sandstorm's seccomp profile and for a policy of
// its own under gVisor.
func TestPodGolden(t *testing.T) {
	for _, tt := range []struct {
		name   string
		cfg    Config
		policy oci.Policy
	}{
		{"default", Config{SeccompProfile: "sandstorm.json"}, oci.Policy{}},
		{"gvisor-limits", Config{Isolation: sandbox.IsolationGVisor, NodeSelector: map[string]string{"pool": "agents"}},
			oci.Policy{UID: 1234, GID: 2345, MemoryBytes: 96 << 20, CPUs: 0.5, NoFile: 1500, TmpBytes: 64 << 20, WritableRoot: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &Runtime{cfg: tt.cfg.withDefaults()}
			prep := sandbox.Prepared{ID: "ds-0123456789abcdef", Policy: tt.policy.WithDefaults()}
			spec := sandbox.Spec{SessionID: "sess-1", Image: "localhost/sandstorm-agent:latest", Args: []string{"tini", "--", "node", "runner.mjs"},
				Env: []string{"SANDSTORM_MODEL_TOKEN=tok", "A=b=c"}}
			labels := oci.Container{SessionID: spec.SessionID, Labels: map[string]string{oci.LabelOwner: "boot.1.2", LabelHost: "h", "team": "a value Kubernetes refuses as a label"}}.AllLabels()
			got, err := json.MarshalIndent([]any{r.secretFor(prep, spec, labels), r.podFor(prep, spec, labels)}, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tt.name+".pod.json")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, append(got, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test ./runtime/kubernetes -run PodGolden -update writes it)", err)
			}
			if !bytes.Equal(bytes.TrimSpace(want), got) {
				t.Errorf("Pod of %s differs from %s:\n%s", tt.name, path, got)
			}
		})
	}
}

// TestNames: only a DNS label names a Pod.
func TestNames(t *testing.T) {
	for id, ok := range map[string]bool{"ds-0123abcd": true, "conf-keep-12": true, "Upper": false, "a_b": false, "a.b": false} {
		if err := checkName(id); (err == nil) != ok {
			t.Errorf("checkName(%q) = %v", id, err)
		}
	}
}
