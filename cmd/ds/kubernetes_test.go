package main

import (
	"bufio"
	"cmp"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/kubernetes"
)

// kubernetesAllow are the items a Pod cannot have that the default policy needs.
const kubernetesAllow = "pids_limit,nosuid_mounts,network_none"

// TestServeKubernetes: `ds serve --runtime kubernetes` as the README says
// to run it, its gateway on TCP (TLS) at the node's address of this host:
// a real agent run as a Pod streams to its end, and nothing of it is left
// in the cluster. Without --gateway-listen it refuses to start, saying so.
func TestServeKubernetes(t *testing.T) {
	rt := agentBackend(t, kubernetes.Name)
	dir := t.TempDir()
	if r := ds(t, dir, "hi", "--runtime", kubernetes.Name, "--allow-unenforced", kubernetesAllow); r.code != 78 || !strings.Contains(r.stderr, "--gateway-listen") {
		t.Errorf("kubernetes without --gateway-listen: exit %d, stderr %q; want 78 naming --gateway-listen", r.code, r.stderr)
	}
	if r := ds(t, dir, "hi", "--runtime", kubernetes.Name, "--gateway-listen", "0.0.0.0:0"); r.code != 78 || !strings.Contains(r.stderr, "not every interface") {
		t.Errorf("--gateway-listen 0.0.0.0: exit %d, stderr %q; want 78", r.code, r.stderr)
	}
	host := cmp.Or(os.Getenv("SANDSTORM_K8S_GATEWAY_HOST"), "10.245.0.1")
	s := serve(t, dir, kubernetes.Name, "--gateway-listen", host+":0", "--gateway-tls", "--allow-unenforced", kubernetesAllow)
	resp, err := http.Post(s.url+"/query", "application/json", strings.NewReader(`{"prompt":"Write a haiku"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var stream strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 32<<20)
	for sc.Scan() {
		stream.WriteString(sc.Text() + "\n")
	}
	out := stream.String()
	for _, want := range []string{`"event":"created"`, `"runtime":"kubernetes"`, `"type":"assistant"`, `"subtype":"success"`, `"event":"removed"`} {
		if !strings.Contains(out, want) {
			t.Errorf("the stream has no %s:\n%.3000s", want, out)
		}
	}
	if strings.Contains(out, `"type":"error"`) {
		t.Errorf("the run reported an error:\n%.3000s", out)
	}
	found, err := rt.List(t.Context(), map[string]string{oci.LabelManaged: "true"})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		if f.Labels[kubernetes.LabelHost] != "" && strings.Contains(out, f.ID) {
			t.Errorf("the run's Pod %s is still there", f.ID)
		}
	}
}
