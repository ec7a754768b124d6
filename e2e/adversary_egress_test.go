package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/modelserver"
)

// adversaryProbe asks the sandbox's egress proxy for each target by hand,
// byte for byte as written: CONNECT, a plain-HTTP absolute URL and SOCKS5
// with the literal as a name. One line per attempt: "ATTACK <how> <target>
// status=<HTTP status or SOCKS reply code>".
const adversaryProbe = `import os, socket, struct
from urllib.parse import urlsplit
u = urlsplit(os.environ["HTTP_PROXY"])
proxy = (u.hostname, u.port)
def ask(data):
    s = socket.create_connection(proxy, timeout=30)
    s.sendall(data)
    got = s.recv(4096)
    s.close()
    return got
def http(line):
    got = ask((line + " HTTP/1.1\r\nHost: x\r\n\r\n").encode()).split(b"\r\n")[0].split(b" ")
    return got[1].decode() if len(got) > 1 else "none"
def socks(host, port):
    s = socket.create_connection(proxy, timeout=30)
    s.sendall(b"\x05\x01\x00")
    s.recv(2)
    h = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(h)]) + h + struct.pack(">H", port))
    got = s.recv(10)
    s.close()
    return str(got[1]) if len(got) > 1 else "none"
for authority, name, port in TARGETS:
    print("ATTACK CONNECT", authority, "status=" + http("CONNECT " + authority), flush=True)
    print("ATTACK GET", authority, "status=" + http("GET http://" + authority + "/"), flush=True)
    print("ATTACK SOCKS", authority, "status=" + socks(name, port), flush=True)
`

var attackLine = regexp.MustCompile(`ATTACK (\S+) (\S+) status=(\w+)`)

// adversaryEgressScenario: the agent's own code tries to reach listeners on
// the host's loopback ([::1] and 127.0.0.1) through the egress proxy with
// every disguise of a loopback address: a zone, IPv4-mapped, NAT64, 6to4,
// a trailing dot. The policy opens both ports to public addresses, so only
// the loopback deny stands between them; every attempt must be denied, and
// the listeners see nothing.
func adversaryEgressScenario(t *testing.T, b backend) {
	var hits atomic.Int64
	listen := func(network, addr string) int {
		l, err := net.Listen(network, addr)
		if err != nil {
			t.Fatalf("listen on the host's %s: %v", addr, err)
		}
		s := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		s.Listener.Close()
		s.Listener = l
		s.Config.ConnState = func(net.Conn, http.ConnState) { hits.Add(1) }
		s.Start()
		t.Cleanup(s.Close)
		return l.Addr().(*net.TCPAddr).Port
	}
	p6, p4 := listen("tcp6", "[::1]:0"), listen("tcp4", "127.0.0.1:0")

	targets := [][]any{
		{fmt.Sprintf("[::1%%25lo]:%d", p6), "::1%lo", p6},
		{fmt.Sprintf("[::1]:%d", p6), "::1", p6},
		{fmt.Sprintf("[::ffff:127.0.0.1]:%d", p4), "::ffff:127.0.0.1", p4},
		{fmt.Sprintf("[::ffff:127.0.0.1%%25lo]:%d", p4), "::ffff:127.0.0.1%lo", p4},
		{fmt.Sprintf("[64:ff9b::7f00:1]:%d", p4), "64:ff9b::7f00:1", p4},
		{fmt.Sprintf("[64:ff9b:1::7f00:1]:%d", p4), "64:ff9b:1::7f00:1", p4},
		{fmt.Sprintf("[2002:7f00:1::1]:%d", p4), "2002:7f00:1::1", p4},
		{fmt.Sprintf("127.0.0.1.:%d", p4), "127.0.0.1.", p4},
		{fmt.Sprintf("%s.:%d", egress.HostName, p4), egress.HostName + ".", p4},
		{fmt.Sprintf("localhost.:%d", p4), "localhost.", p4},
	}
	list, err := json.Marshal(targets)
	if err != nil {
		t.Fatal(err)
	}
	probe := strings.Replace(adversaryProbe, "TARGETS", string(list), 1)
	script := fmt.Sprintf(`python3 - <<'EOF'
%s
EOF
curl -s -o /dev/null -w 'curl plain %%{http_code}\n' --noproxy '' -x "$HTTP_PROXY" -g 'http://[::1%%25lo]:%[2]d/'
curl -s -o /dev/null -w 'curl tunnel %%{http_connect}\n' --noproxy '' -x "$HTTP_PROXY" --proxytunnel -g 'http://[::1%%25lo]:%[2]d/'
curl -s -o /dev/null -w 'curl socks %%{http_code}\n' --noproxy '' -x "$ALL_PROXY" 'http://%[3]s.:%[4]d/'
echo probed`, probe, p6, egress.HostName, p4)
	sc := modelserver.Scenario{Turns: []modelserver.Turn{
		{ToolUse: &modelserver.ToolUse{Name: "Bash", Input: []byte(fmt.Sprintf(`{"command": %q}`, script))}},
		{Text: "probed"},
	}}
	policy, err := egress.Config{Ports: []int{p6, p4}}.Policy()
	if err != nil {
		t.Fatal(err)
	}
	events, out, _, _ := runWith(t, b, sc, agent.Job{Config: agent.Config{Prompt: "probe the host"}}, func(r *agent.Launcher) { r.Egress = &policy })
	if !out.Success() {
		t.Fatalf("run failed: %s", out.Code)
	}
	res := toolResults(events)
	if !strings.Contains(res, "probed") {
		t.Fatalf("the probe did not run: %s", res)
	}
	attempts := attackLine.FindAllStringSubmatch(res, -1)
	if len(attempts) != 3*len(targets) {
		t.Errorf("%d attempts reported, want %d: %s", len(attempts), 3*len(targets), res)
	}
	for _, a := range attempts {
		want := "403"
		if a[1] == "SOCKS" {
			want = "2" // not allowed by ruleset
		}
		if a[3] != want {
			t.Errorf("%s %s answered %s, want %s", a[1], a[2], a[3], want)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the host's loopback listeners saw %d connections", n)
	}
	denied := 0
	for _, e := range find(events, egress.TypeEvent) {
		if e["decision"] != egress.Deny {
			t.Errorf("egress event %v, want every attempt denied", e)
			continue
		}
		denied++
	}
	if denied < len(attempts) {
		t.Errorf("%d deny events for %d attempts", denied, len(attempts))
	}
}
