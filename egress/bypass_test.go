package egress

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

// denyClasses are one address of each class denied by default, with what
// the deny rule names.
var denyClasses = []struct{ addr, rule string }{
	{"0.1.2.3", "this network"},
	{"127.0.0.1", "loopback"},
	{"10.0.0.1", "private"},
	{"172.16.5.4", "private"},
	{"192.168.1.1", "private"},
	{"100.64.0.1", "carrier-grade NAT"},
	{"169.254.0.1", "link-local"},
	{"169.254.169.254", "metadata"},
	{"100.100.100.200", "metadata"},
	{"168.63.129.16", "metadata"},
	{"224.0.0.1", "multicast"},
	{"240.0.0.1", "reserved"},
	{"255.255.255.255", "broadcast"},
	{"203.0.113.7", "this host's address"},
	{"::", "unspecified"},
	{"::1", "loopback"},
	{"fe80::1", "link-local"},
	{"fc00::1", "unique local"},
	{"fd00:ec2::254", "metadata"},
	{"ff02::1", "multicast"},
	{"::7f00:1", "IPv4-compatible"},
	{"64:ff9b:1::7f00:1", "local-use NAT64"},
	{"2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"},
}

// disguise is one way of writing a denied destination: host is what the
// client asks for, rule what the deny must name.
type disguise struct {
	form, host, rule string
}

// disguises are the ways a sandbox can write the address of each class:
// the literal, with a zone, IPv4-mapped, through NAT64 and 6to4, and with a
// trailing dot (of the literal, and of a name that resolves to it).
func disguises(tbl names) []disguise {
	var out []disguise
	for i, c := range denyClasses {
		a := netip.MustParseAddr(c.addr)
		name := fmt.Sprintf("d%d.example.org", i)
		tbl[name] = []string{c.addr}
		out = append(out, disguise{"plain", c.addr, c.rule}, disguise{"name with a trailing dot", name + ".", c.rule})
		if a.Is6() {
			out = append(out, disguise{"zoned", c.addr + "%lo", "zoned"})
			continue
		}
		b := a.As4()
		nat64 := netip.AddrFrom16([16]byte{0: 0x00, 1: 0x64, 2: 0xff, 3: 0x9b, 12: b[0], 13: b[1], 14: b[2], 15: b[3]})
		sixToFour := netip.AddrFrom16([16]byte{0: 0x20, 1: 0x02, 2: b[0], 3: b[1], 4: b[2], 5: b[3], 15: 1})
		out = append(out,
			disguise{"zoned, IPv4-mapped", "::ffff:" + c.addr + "%eth0", c.rule},
			disguise{"IPv4-mapped", "::ffff:" + c.addr, c.rule},
			disguise{"NAT64", nat64.String(), c.rule},
			disguise{"6to4", sixToFour.String(), c.rule},
			disguise{"literal with a trailing dot", c.addr + ".", c.rule},
		)
	}
	return out
}

// authority is host:port as a request line writes it: a v6 literal in
// brackets, its zone's "%" escaped.
func authority(host string, port int) string {
	if strings.Contains(host, ":") {
		return fmt.Sprintf("[%s]:%d", strings.ReplaceAll(host, "%", "%25"), port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}

// requestStatus sends the proxy at addr one request line, as a client
// writes it, and returns the answer's status.
func requestStatus(t *testing.T, addr, line string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "%s HTTP/1.1\r\nHost: x\r\n\r\n", line)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestDisguisedDenies: every class denied by default stays denied however
// its address is written, over CONNECT, plain HTTP (with and without a
// port) and SOCKS, for the reason of its class, and nothing is dialled.
func TestDisguisedDenies(t *testing.T) {
	tbl := names{}
	cases := disguises(tbl)
	rec := &recorder{}
	events := make(chan Event, 1)
	prx := New(policy(t, Config{}), Options{Resolver: tbl, Dialer: rec, Emit: func(e Event) { events <- e }})
	proxyAddr := serve(t, prx)

	httpStatus := func(t *testing.T, line string) int { return requestStatus(t, proxyAddr, line) }
	transports := []struct {
		name string
		try  func(t *testing.T, host string) bool // true when refused as denied
	}{
		{"CONNECT", func(t *testing.T, host string) bool {
			return httpStatus(t, "CONNECT "+authority(host, 443)) == http.StatusForbidden
		}},
		{"plain HTTP", func(t *testing.T, host string) bool {
			return httpStatus(t, "GET http://"+authority(host, 80)+"/") == http.StatusForbidden
		}},
		{"plain HTTP without a port", func(t *testing.T, host string) bool {
			h := strings.TrimSuffix(authority(host, 80), ":80")
			return httpStatus(t, "GET http://"+h+"/") == http.StatusForbidden
		}},
		{"SOCKS", func(t *testing.T, host string) bool {
			code, c := socksDial(t, proxyAddr, host, 443)
			c.Close()
			return code == 2
		}},
	}
	for _, tr := range transports {
		for _, d := range cases {
			t.Run(tr.name+"/"+d.form+"/"+d.host, func(t *testing.T) {
				if !tr.try(t, d.host) {
					t.Errorf("not refused as denied")
				}
				if e := <-events; e.Decision != Deny || !strings.Contains(e.Rule, d.rule) {
					t.Errorf("event %+v, want a deny naming %q", e, d.rule)
				}
			})
		}
	}
	if len(rec.dials) != 0 {
		t.Errorf("dialled %v", rec.dials)
	}
}

// TestCanonicalNames: a trailing dot or capitals do not slip past a
// domain rule, nor keep a name from its allow rule or from the host's name.
func TestCanonicalNames(t *testing.T) {
	pub := netip.MustParseAddr("93.184.216.34")
	tests := []struct {
		name    string
		cfg     Config
		host    string
		allowed bool
		rule    string
	}{
		{"deny with a trailing dot", Config{Deny: []string{"*.evil.example"}}, "a.evil.example.", false, "deny *.evil.example"},
		{"deny in capitals", Config{Deny: []string{"*.evil.example"}}, "A.EVIL.Example", false, "deny *.evil.example"},
		{"deny of the apex with a trailing dot", Config{Deny: []string{"*.evil.example"}}, "evil.example.", false, "deny"},
		{"allow with a trailing dot", Config{Allow: []string{"github.com"}}, "github.com.", true, "allow github.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := policy(t, tt.cfg).Decide(tt.host, pub, 443)
			if d.Allowed != tt.allowed || !strings.Contains(d.Rule, tt.rule) {
				t.Errorf("Decide = %+v, want allowed %v by a rule naming %q", d, tt.allowed, tt.rule)
			}
		})
	}
	// The host's own name, written otherwise, is still the host.
	rec := &recorder{}
	prx := New(policy(t, Config{Allow: []string{"127.0.0.1:8080"}}), Options{Resolver: names{}, Dialer: rec})
	for _, h := range []string{HostName + ".", strings.ToUpper(HostName)} {
		if _, ev := prx.dial(t.Context(), h, 8080); ev.Decision != Allow || ev.IP != "127.0.0.1" {
			t.Errorf("%s: %+v, want the host's loopback allowed by its rule", h, ev)
		}
	}
}

// TestBracketedLiteral: a plain-HTTP URL's bracketed IPv6 literal without
// a port is an address, dialled on port 80, not a name to look up.
func TestBracketedLiteral(t *testing.T) {
	tests := []struct {
		hostport, host string
		port           int
		ok             bool
	}{
		{"[::1]", "::1", 80, true},
		{"[2001:db8::1]:8080", "2001:db8::1", 8080, true},
		{"[fe80::1%lo]", "fe80::1%lo", 80, true},
		{"example.org", "example.org", 80, true},
		{"[::1", "", 0, false},
		{"[::1]x", "", 0, false},
	}
	for _, tt := range tests {
		host, port, err := splitHostPort(tt.hostport, 80)
		if host != tt.host || port != tt.port || (err == nil) != tt.ok {
			t.Errorf("splitHostPort(%q) = %q, %d, %v; want %q, %d, ok %v", tt.hostport, host, port, err, tt.host, tt.port, tt.ok)
		}
	}
	rec := &recorder{}
	addr := serve(t, New(policy(t, Config{Allow: []string{"::1"}}), Options{Resolver: names{}, Dialer: rec}))
	requestStatus(t, addr, "GET http://[::1]/")
	if len(rec.dials) != 1 || rec.dials[0] != "[::1]:80" {
		t.Errorf("dialled %v, want [::1]:80", rec.dials)
	}
}
