package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/modelserver"
)

// egressScenario: the agent's Bash reaches a server on the host's loopback
// through the egress proxy with curl, Python's urllib and git (smart HTTP,
// git http-backend), where a rule opens that one port; a second server,
// which no rule opens, is refused by the proxy (fast, with a clear error
// and a deny event) and sees nothing.
func egressScenario(t *testing.T, b backend) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "egress ok "+r.URL.Path) })
	mux.Handle("/git/", http.StripPrefix("/git", &cgi.Handler{Path: "/usr/lib/git-core/git-http-backend",
		Env: []string{"GIT_PROJECT_ROOT=" + gitRepo(t), "GIT_HTTP_EXPORT_ALL=1"}}))
	open := httptest.NewServer(mux)
	defer open.Close()
	var closedHits atomic.Int64
	closed := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	closed.Config.ConnState = func(net.Conn, http.ConnState) { closedHits.Add(1) }
	closed.Start()
	defer closed.Close()
	openPort := open.Listener.Addr().(*net.TCPAddr).Port
	closedPort := closed.Listener.Addr().(*net.TCPAddr).Port

	h := egress.HostName
	script := fmt.Sprintf(`curl -sS http://%[1]s:%[2]d/curl; echo
python3 -c "import urllib.request; print(urllib.request.urlopen('http://%[1]s:%[2]d/urllib').read().decode())"
curl -sS --proxy "$ALL_PROXY" http://%[1]s:%[2]d/socks; echo
git clone -q http://%[1]s:%[2]d/git/repo.git /tmp/clone && cat /tmp/clone/README
echo "denied status: $(curl -s -o /dev/null -w '%%{http_code}' http://%[1]s:%[3]d/)"
curl -sS https://%[1]s:%[3]d/ 2>&1 | head -c 200; echo
echo "proxy: $HTTPS_PROXY"`, h, openPort, closedPort)
	input := fmt.Sprintf(`{"command": %q}`, script)
	sc := modelserver.Scenario{Turns: []modelserver.Turn{
		{ToolUse: &modelserver.ToolUse{Name: "Bash", Input: []byte(input)}},
		{Text: "fetched"},
	}}
	policy, err := egress.Config{Allow: []string{fmt.Sprintf("127.0.0.1:%d", openPort)}}.Policy()
	if err != nil {
		t.Fatal(err)
	}
	events, out, _, _ := runWith(t, b, sc, agent.Job{Config: agent.Config{Prompt: "fetch"}}, func(r *agent.Launcher) { r.Egress = &policy })
	if !out.Success() {
		t.Fatalf("run failed: %s", out.Code)
	}
	res := toolResults(events)
	for _, want := range []string{"egress ok /curl", "egress ok /urllib", "egress ok /socks", "cloned through the proxy", "denied status: 403", "proxy: http://127.0.0.1:"} {
		if !strings.Contains(res, want) {
			t.Errorf("tool result lacks %q: %s", want, res)
		}
	}
	if closedHits.Load() != 0 {
		t.Errorf("the server no rule opens saw %d connections", closedHits.Load())
	}
	var allowed, denied int
	for _, e := range find(events, egress.TypeEvent) {
		port := int(e["port"].(float64))
		switch {
		case e["decision"] == egress.Allow && port == openPort:
			allowed++
			if e["ip"] != "127.0.0.1" || e["host"] != h || e["bytes_in"].(float64) == 0 || e["bytes_out"].(float64) == 0 {
				t.Errorf("allow event %v", e)
			}
		case e["decision"] == egress.Deny && port == closedPort:
			denied++
			if e["rule"] != "not in allow" {
				t.Errorf("deny event %v", e)
			}
		default:
			t.Errorf("unexpected egress event %v", e)
		}
	}
	// curl, urllib, SOCKS, and git's requests.
	if allowed < 5 || denied != 2 {
		t.Errorf("%d allow and %d deny events, want at least 5 and 2", allowed, denied)
	}
}

// gitRepo makes a bare repository repo.git holding one commit of README,
// in a directory git http-backend serves.
func gitRepo(t *testing.T) string {
	t.Helper()
	root, work := t.TempDir(), t.TempDir()
	gitEnv := append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.org", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.org", "GIT_CONFIG_NOSYSTEM=1", "HOME="+work)
	git := func(dir string, args ...string) {
		cmd := exec.Command("git", args...)
		cmd.Dir, cmd.Env = dir, gitEnv
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	git(work, "init", "-q", "-b", "main")
	if err := os.WriteFile(filepath.Join(work, "README"), []byte("cloned through the proxy\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(work, "add", "README")
	git(work, "commit", "-q", "-m", "first")
	git(root, "clone", "-q", "--bare", work, "repo.git")
	return root
}

// secretScenario: a secret reaches a local HTTPS server through the proxy,
// which swaps it in for the placeholder the sandbox holds; the placeholder
// sent to another server arrives as it is; nothing in the sandbox holds
// the real value.
func secretScenario(t *testing.T, b backend) {
	real := "ghp_REALVALUE_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	upCA, _, err := egress.NewCA("e2e upstream CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := upCA.Leaf(egress.HostName)
	if err != nil {
		t.Fatal(err)
	}
	secure := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer "+real {
			io.WriteString(w, "secret ok "+r.URL.Path)
			return
		}
		io.WriteString(w, "secret WRONG")
	}))
	secure.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
	secure.StartTLS()
	defer secure.Close()
	var otherSaw atomic.Value
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		otherSaw.Store(r.Header.Get("Authorization"))
	}))
	defer other.Close()
	sp, op := secure.Listener.Addr().(*net.TCPAddr).Port, other.Listener.Addr().(*net.TCPAddr).Port

	h := egress.HostName
	script := fmt.Sprintf(`curl -sS -H "Authorization: Bearer $TEST_TOKEN" https://%[1]s:%[2]d/curl; echo
python3 -c "import os, urllib.request as u; print(u.urlopen(u.Request('https://%[1]s:%[2]d/urllib', headers={'Authorization': 'Bearer ' + os.environ['TEST_TOKEN']})).read().decode())"
curl -sS -o /dev/null -H "Authorization: Bearer $TEST_TOKEN" http://%[1]s:%[3]d/
echo "real value in the sandbox: $(for p in /proc/[0-9]*; do tr '\0' '\n' < $p/environ 2>/dev/null; done | grep -c ghp_REALVALUE)"
echo "placeholder: ${TEST_TOKEN%%%%-*}"`, h, sp, op)
	sc := modelserver.Scenario{Turns: []modelserver.Turn{
		{ToolUse: &modelserver.ToolUse{Name: "Bash", Input: []byte(fmt.Sprintf(`{"command": %q}`, script))}},
		{Text: "used the secret"},
	}}
	policy, err := egress.Config{Allow: []string{fmt.Sprintf("127.0.0.1:%d", sp), fmt.Sprintf("127.0.0.1:%d", op)}}.Policy()
	if err != nil {
		t.Fatal(err)
	}
	host, err := egress.ParseHost(fmt.Sprintf("%s:%d", h, sp))
	if err != nil {
		t.Fatal(err)
	}
	proxyCA, _, err := egress.NewCA("e2e sandstorm egress CA")
	if err != nil {
		t.Fatal(err)
	}
	events, out, _, _ := runWith(t, b, sc, agent.Job{Config: agent.Config{Prompt: "use the token"}}, func(r *agent.Launcher) {
		r.Egress, r.CA, r.EgressRoots = &policy, proxyCA, upCA.Pool()
		r.Secrets = []egress.Secret{{Name: "TEST_TOKEN", Value: real, Hosts: []egress.Rule{host}}}
	})
	if !out.Success() {
		t.Fatalf("run failed: %s", out.Code)
	}
	res := toolResults(events)
	for _, want := range []string{"secret ok /curl", "secret ok /urllib", "real value in the sandbox: 0", "placeholder: sandstorm"} {
		if !strings.Contains(res, want) {
			t.Errorf("tool result lacks %q: %s", want, res)
		}
	}
	if got, _ := otherSaw.Load().(string); !strings.HasPrefix(got, "Bearer sandstorm-placeholder-TEST_TOKEN-") {
		t.Errorf("the other server saw %q, want the placeholder", got)
	}
	for _, e := range events {
		if b, _ := json.Marshal(e); strings.Contains(string(b), real) {
			t.Errorf("an event holds the real value: %s", b)
		}
	}
	intercepted := 0
	for _, e := range find(events, egress.TypeEvent) {
		if e["intercepted"] == true {
			intercepted++
		}
	}
	if intercepted != 2 {
		t.Errorf("%d intercepted connections, want 2 (curl and urllib)", intercepted)
	}
}
