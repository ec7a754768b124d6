package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/modelserver"
)

// egressScenario: the agent's Bash reaches a server on the host's loopback
// through the egress proxy with curl and Python's urllib, where a rule
// opens that one port; a second server, which no rule opens, is refused by
// the proxy (fast, with a clear error and a deny event) and sees nothing.
func egressScenario(t *testing.T, b backend) {
	open := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "egress ok "+r.URL.Path)
	}))
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
	events, out, _, _ := runWith(t, b, sc, agent.Job{Config: agent.Config{Prompt: "fetch"}}, &policy)
	if !out.Success() {
		t.Fatalf("run failed: %s", out.Code)
	}
	res := toolResults(events)
	for _, want := range []string{"egress ok /curl", "egress ok /urllib", "denied status: 403", "proxy: http://127.0.0.1:"} {
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
	if allowed != 2 || denied != 2 {
		t.Errorf("%d allow and %d deny events, want 2 and 2", allowed, denied)
	}
}
