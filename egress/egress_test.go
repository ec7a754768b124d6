package egress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// recorder is a dialer that never dials: it records what it was asked.
type recorder struct {
	mu    sync.Mutex
	dials []string
}

func (r *recorder) DialContext(_ context.Context, _, addr string) (net.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dials = append(r.dials, addr)
	return nil, errors.New("recorder: never dials")
}

// names resolves from a table: DNS without a network.
type names map[string][]string

func (n names) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range n[host] {
		out = append(out, netip.MustParseAddr(s))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no such host %s", host)
	}
	return out, nil
}

func policy(t *testing.T, c Config) Policy {
	t.Helper()
	p, err := c.Policy()
	if err != nil {
		t.Fatal(err)
	}
	p.Host = []netip.Addr{netip.MustParseAddr("203.0.113.7")}
	return p
}

// TestDefaultDenies proves every range denied by default, whatever the
// name, with a dialer that never dials: nothing is dialed for any of them.
func TestDefaultDenies(t *testing.T) {
	targets := []string{
		"0.1.2.3", "127.0.0.1", "127.9.9.9", "10.0.0.1", "172.16.5.4", "172.31.255.255", "192.168.1.1",
		"100.64.0.1", "100.127.255.254", "169.254.0.1", "169.254.169.254", "100.100.100.200", "168.63.129.16",
		"224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1",
		"::", "::1", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1",
		"203.0.113.7", // this host's own address
	}
	p := policy(t, Config{})
	for _, ip := range targets {
		for _, port := range []int{80, 443} {
			d := p.Decide("x.example.org", netip.MustParseAddr(ip), port)
			if d.Allowed {
				t.Errorf("%s:%d allowed by default (%s)", ip, port, d.Rule)
			}
		}
	}
	// Through the proxy: a name resolving to each (DNS rebinding) is refused
	// and never dialed.
	rec := &recorder{}
	tbl := names{}
	for i, ip := range targets {
		tbl[fmt.Sprintf("h%d.example.org", i)] = []string{ip}
	}
	var events []Event
	var mu sync.Mutex
	prx := New(p, Options{Resolver: tbl, Dialer: rec, Emit: func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() }})
	srv := httptest.NewServer(prx)
	defer srv.Close()
	for i := range targets {
		host := fmt.Sprintf("h%d.example.org:443", i)
		if code := connectStatus(t, srv.URL, host); code != http.StatusForbidden {
			t.Errorf("CONNECT %s (%s): status %d, want 403", host, targets[i], code)
		}
	}
	if len(rec.dials) != 0 {
		t.Errorf("dialed %v", rec.dials)
	}
	if len(events) != len(targets) {
		t.Fatalf("%d events for %d attempts", len(events), len(targets))
	}
	for _, e := range events {
		if e.Type != TypeEvent || e.Decision != Deny || e.IP == "" || e.Rule == "" {
			t.Errorf("event %+v", e)
		}
	}
}

func TestDecide(t *testing.T) {
	pub := "93.184.216.34"
	tests := []struct {
		name      string
		cfg       Config
		host, ip  string
		port      int
		allowed   bool
		ruleHasIt string
	}{
		{"public 443", Config{}, "example.org", pub, 443, true, "default"},
		{"public 22", Config{}, "example.org", pub, 22, false, "port 22"},
		{"ports widened", Config{Ports: []int{22}}, "example.org", pub, 22, true, "default"},
		{"deny a domain", Config{Deny: []string{"*.example.org"}}, "a.example.org", pub, 443, false, "deny *.example.org"},
		{"deny the apex too", Config{Deny: []string{"*.example.org"}}, "example.org", pub, 443, false, "deny"},
		{"deny a cidr", Config{Deny: []string{"93.184.0.0/16"}}, "example.org", pub, 443, false, "deny 93.184.0.0/16"},
		{"allow list shuts the rest", Config{Allow: []string{"github.com"}}, "example.org", pub, 443, false, "not in allow"},
		{"allow list lets its own", Config{Allow: []string{"github.com"}}, "github.com", pub, 443, true, "allow github.com"},
		{"deny beats allow", Config{Allow: []string{"github.com"}, Deny: []string{"github.com"}}, "github.com", pub, 443, false, "deny github.com"},
		{"a domain does not open loopback", Config{Allow: []string{"evil.example.org"}}, "evil.example.org", "127.0.0.1", 443, false, "loopback"},
		{"host:port opens loopback", Config{Allow: []string{"127.0.0.1:8080"}}, HostName, "127.0.0.1", 8080, true, "allow 127.0.0.1:8080"},
		{"but only that port", Config{Allow: []string{"127.0.0.1:8080"}}, HostName, "127.0.0.1", 8081, false, ""},
		{"a cidr opens private", Config{Allow: []string{"10.1.0.0/16"}}, "db", "10.1.2.3", 443, true, "allow 10.1.0.0/16"},
		{"metadata never", Config{Allow: []string{"169.254.0.0/16", "169.254.169.254:80"}}, "m", "169.254.169.254", 80, false, "metadata"},
		{"v6 with port", Config{Allow: []string{"[::1]:9000"}}, "x", "::1", 9000, true, "allow [::1]:9000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := policy(t, tt.cfg).Decide(tt.host, netip.MustParseAddr(tt.ip), tt.port)
			if d.Allowed != tt.allowed || !strings.Contains(d.Rule, tt.ruleHasIt) {
				t.Errorf("Decide = %+v, want allowed %v by a rule naming %q", d, tt.allowed, tt.ruleHasIt)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Allow: []string{"exa mple.org"}}, `allow: invalid egress policy: rule "exa mple.org"`},
		{Config{Deny: []string{"10.0.0.0/33"}}, "deny:"},
		{Config{Allow: []string{"x.org:99999"}}, "port"},
		{Config{Allow: []string{""}}, "empty"},
		{Config{Ports: []int{0}}, "ports: 0"},
		{Config{MaxBytes: -1}, "max_bytes"},
	} {
		if _, err := c.cfg.Policy(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %q", c.cfg, err, c.want)
		}
	}
}

func connectStatus(t *testing.T, proxyURL, hostport string) int {
	t.Helper()
	u, _ := url.Parse(proxyURL)
	return requestStatus(t, u.Host, "CONNECT "+hostport)
}

// TestProxyToLoopback: a real listener on 127.0.0.1 is reached through the
// proxy only when a rule opens its port, by CONNECT and by plain HTTP; by
// default it sees no connection at all.
func TestProxyToLoopback(t *testing.T) {
	conns := 0
	var mu sync.Mutex
	target := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from the host")
	}))
	target.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	target.Start()
	defer target.Close()
	port := target.Listener.Addr().(*net.TCPAddr).Port

	var events []Event
	emit := func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() }
	get := func(p Policy) (*http.Response, error) {
		srv := httptest.NewServer(New(p, Options{Emit: emit}))
		defer srv.Close()
		pu, _ := url.Parse(srv.URL)
		cl := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
		return cl.Get(fmt.Sprintf("http://%s:%d/", HostName, port))
	}

	resp, err := get(policy(t, Config{}))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || conns != 0 {
		t.Fatalf("default policy: status %d, %d connections reached the listener; want 403 and none", resp.StatusCode, conns)
	}

	resp, err = get(policy(t, Config{Allow: []string{fmt.Sprintf("127.0.0.1:%d", port)}}))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello from the host" {
		t.Fatalf("allowed: %d %q", resp.StatusCode, body)
	}
	if len(events) != 2 || events[0].Decision != Deny || events[1].Decision != Allow || events[1].BytesIn == 0 || events[1].BytesOut == 0 || events[1].IP != "127.0.0.1" {
		t.Errorf("events %+v", events)
	}

	// CONNECT, as HTTPS clients do.
	srv := httptest.NewServer(New(policy(t, Config{Allow: []string{fmt.Sprintf("127.0.0.1:%d", port)}}), Options{Emit: emit}))
	defer srv.Close()
	if code := connectStatus(t, srv.URL, fmt.Sprintf("%s:%d", HostName, port)); code != 200 {
		t.Errorf("CONNECT allowed: %d", code)
	}
}

// TestBudget: once the run's bytes are spent, new connections are refused.
func TestBudget(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 4096))
	}))
	defer target.Close()
	port := target.Listener.Addr().(*net.TCPAddr).Port
	p := policy(t, Config{Allow: []string{fmt.Sprintf("127.0.0.1:%d", port)}, MaxBytes: 1000})
	srv := httptest.NewServer(New(p, Options{}))
	defer srv.Close()
	pu, _ := url.Parse(srv.URL)
	cl := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), DisableKeepAlives: true}}
	u := fmt.Sprintf("http://%s:%d/", HostName, port)
	if resp, err := cl.Get(u); err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := cl.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("after the budget: %d, want 403", resp.StatusCode)
	}
}

// TestNarrow: a request's allow list only takes away.
func TestNarrow(t *testing.T) {
	p := policy(t, Config{})
	gh, _ := ParseRule("*.github.com")
	loop, _ := ParseRule("127.0.0.1:8080")
	p.Narrow = []Rule{gh, loop}
	pub := netip.MustParseAddr("140.82.112.3")
	if d := p.Decide("api.github.com", pub, 443); !d.Allowed {
		t.Errorf("named by the request and allowed by the host: %+v", d)
	}
	if d := p.Decide("example.org", pub, 443); d.Allowed || !strings.Contains(d.Rule, "request") {
		t.Errorf("not named by the request: %+v", d)
	}
	// The request cannot open what the host denies.
	if d := p.Decide(HostName, netip.MustParseAddr("127.0.0.1"), 8080); d.Allowed {
		t.Errorf("a request opened loopback: %+v", d)
	}
}
