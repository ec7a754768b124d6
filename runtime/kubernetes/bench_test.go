package kubernetes

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
)

// kubectl is $SANDSTORM_KUBECTL, the one on PATH, or the one
// scripts/k8s-build.sh built.
func kubectl(b *testing.B) string {
	if k := os.Getenv("SANDSTORM_KUBECTL"); k != "" {
		return k
	}
	if k, err := exec.LookPath("kubectl"); err == nil {
		return k
	}
	k := "/var/cache/sandstorm/k8s/v" + cmp.Or(os.Getenv("K8S_VERSION"), "1.35.4") + "/bin/kubectl"
	if _, err := os.Stat(k); err != nil {
		b.Skipf("no kubectl (SANDSTORM_KUBECTL, PATH, %s)", k)
	}
	return k
}

// BenchmarkRunTrue times create → start → wait → remove of `true` as a
// sandstorm Pod against `kubectl run --rm` of the same image with the same
// limits and Pod Security settings (kubectl attaches, waits and deletes the
// Pod, as sandstorm does), alternating the two in every iteration.
func BenchmarkRunTrue(b *testing.B) {
	rt := connect(b)
	k := kubectl(b)
	policy := oci.Policy{MemoryBytes: 256 << 20, CPUs: 1}.WithDefaults()
	seccomp := map[string]any{"type": "RuntimeDefault"}
	if rt.cfg.SeccompProfile != "" {
		seccomp = map[string]any{"type": "Localhost", "localhostProfile": rt.cfg.SeccompProfile}
	}
	no := false
	conformance.CompareRunTrue(b, rt, policy, "kubectl-run", func(i int) []string {
		name := fmt.Sprintf("bench-kubectl-%d-%d", os.Getpid(), i)
		overrides, _ := json.Marshal(map[string]any{"spec": map[string]any{
			"automountServiceAccountToken": false, "enableServiceLinks": false, "terminationGracePeriodSeconds": 0,
			"securityContext": map[string]any{"runAsNonRoot": true, "runAsUser": policy.UID, "runAsGroup": policy.GID, "seccompProfile": seccomp},
			"containers": []map[string]any{{
				"name": name, "image": conformance.TestImage, "imagePullPolicy": "Never", "command": []string{"true"},
				"stdin": true, "stdinOnce": true,
				"resources": map[string]any{"limits": map[string]any{"cpu": "1", "memory": "256Mi"}},
				"securityContext": map[string]any{"allowPrivilegeEscalation": &no, "readOnlyRootFilesystem": true,
					"capabilities": map[string]any{"drop": []string{"ALL"}}},
			}},
		}})
		return []string{k, "-n", rt.cfg.Namespace, "run", name, "--rm", "-i", "--quiet", "--restart=Never",
			"--image", conformance.TestImage, "--overrides", string(overrides)}
	})
}
