// Package egress is the sandbox's only way out to the network: an HTTP
// proxy the gateway serves to each session, which resolves every name
// itself, checks the address against the policy and dials only that
// address (so DNS rebinding cannot slip through), and reports every
// attempt as an event.
package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
)

// ErrInvalid marks a bad egress configuration.
var ErrInvalid = errors.New("invalid egress policy")

// HostName names the operator's host (its loopback) for a sandbox, whose
// own localhost is itself. It is still denied unless an explicit rule opens
// the address and port.
const HostName = "host.sandstorm.internal"

// DefaultPorts are the ports open to public addresses by default.
var DefaultPorts = []int{80, 443}

// metadata are the cloud metadata addresses: never opened by any rule.
var metadata = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"),
	netip.MustParseAddr("fd00:ec2::254"),
	netip.MustParseAddr("100.100.100.200"),
	netip.MustParseAddr("168.63.129.16"),
}

// denied are the ranges no destination may be in by default, whatever its name.
var denied = []struct {
	name   string
	prefix netip.Prefix
}{
	{"this network", netip.MustParsePrefix("0.0.0.0/8")},
	{"loopback", netip.MustParsePrefix("127.0.0.0/8")},
	{"private", netip.MustParsePrefix("10.0.0.0/8")},
	{"private", netip.MustParsePrefix("172.16.0.0/12")},
	{"private", netip.MustParsePrefix("192.168.0.0/16")},
	{"carrier-grade NAT", netip.MustParsePrefix("100.64.0.0/10")},
	{"link-local", netip.MustParsePrefix("169.254.0.0/16")},
	{"multicast", netip.MustParsePrefix("224.0.0.0/4")},
	{"reserved", netip.MustParsePrefix("240.0.0.0/4")}, // and broadcast
	{"unspecified", netip.MustParsePrefix("::/128")},
	{"loopback", netip.MustParsePrefix("::1/128")},
	{"IPv4-compatible", netip.MustParsePrefix("::/96")},
	{"local-use NAT64", netip.MustParsePrefix("64:ff9b:1::/48")},
	{"Teredo", netip.MustParsePrefix("2001::/32")},
	{"link-local", netip.MustParsePrefix("fe80::/10")},
	{"unique local", netip.MustParsePrefix("fc00::/7")},
	{"multicast", netip.MustParsePrefix("ff00::/8")},
}

// Prefixes whose addresses embed an IPv4 address a gateway on the path
// may translate to: an address in them is judged as that IPv4 address too.
var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// embedded4 is the IPv4 address a NAT64 or 6to4 address leads to.
func embedded4(addr netip.Addr) (netip.Addr, bool) {
	b := addr.As16()
	switch {
	case nat64.Contains(addr):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToFour.Contains(addr):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	}
	return netip.Addr{}, false
}

// Internal names the class of addr when it is one that no connection of
// sandstorm's own should reach by default (what the proxy denies by
// default: this host's loopback, private and link-local ranges, cloud
// metadata, ..., also as the IPv4 address a NAT64 or 6to4 address leads
// to, and any zoned address), or "" for a public address.
func Internal(addr netip.Addr) string {
	addr = addr.Unmap()
	if addr.Zone() != "" {
		return "zoned address"
	}
	views := []netip.Addr{addr}
	if v4, ok := embedded4(addr); ok {
		views = append(views, v4)
	}
	for _, a := range views {
		if slices.Contains(metadata, a) {
			return "metadata address"
		}
		if name := defaultDenied(a, nil); name != "" {
			return name
		}
	}
	return ""
}

// canonical is host as the policy judges and the proxy resolves it: lower
// case, without the trailing dot of a fully qualified name, so that
// "A.Example.org." meets the rules for a.example.org.
func canonical(host string) string {
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

// Rule is one allow or deny entry: a domain ("example.org", "*.example.org"),
// an address or CIDR ("10.1.2.3", "10.0.0.0/8", "::1"), either with a
// ":port" ("127.0.0.1:8080", "[::1]:8080", "api.github.com:443").
type Rule struct {
	Text   string
	domain string
	prefix netip.Prefix
	port   int
}

// ParseRule reads one rule, naming what is wrong with it.
func ParseRule(s string) (Rule, error) {
	r := Rule{Text: s}
	text := strings.TrimSpace(strings.ToLower(s))
	if text == "" {
		return r, fmt.Errorf("%w: empty rule", ErrInvalid)
	}
	host := text
	if h, p, ok := cutPort(text); ok {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return r, fmt.Errorf("%w: rule %q: port %q is not 1..65535", ErrInvalid, s, p)
		}
		host, r.port = h, n
	}
	if pfx, err := netip.ParsePrefix(host); err == nil {
		r.prefix = pfx.Masked()
		return r, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		r.prefix = netip.PrefixFrom(a, a.BitLen())
		return r, nil
	}
	name := strings.TrimPrefix(host, "*.")
	if !validDomain(name) {
		return r, fmt.Errorf("%w: rule %q: not a domain (such as example.org or *.example.org), an address, or a CIDR", ErrInvalid, s)
	}
	r.domain = host
	return r, nil
}

// cutPort splits "host:port" and "[v6]:port"; a bare IPv6 address or a
// CIDR has no port.
func cutPort(s string) (host, port string, ok bool) {
	if strings.HasPrefix(s, "[") {
		h, p, found := strings.Cut(s[1:], "]:")
		return h, p, found
	}
	if strings.Count(s, ":") != 1 {
		return s, "", false
	}
	return strings.Cut(s, ":")
}

func validDomain(s string) bool {
	if s == "" || len(s) > 253 || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// ParseHost reads a rule that must name a host ("api.github.com",
// "*.example.org", "git.example.org:8443"): secrets go by the name asked for.
func ParseHost(s string) (Rule, error) {
	r, err := ParseRule(s)
	if err == nil && r.domain == "" {
		err = fmt.Errorf("%w: %q: a secret's hosts are names, not addresses", ErrInvalid, s)
	}
	return r, err
}

// matches tells whether the rule covers a connection to host (as asked) at addr:port.
func (r Rule) matches(host string, addr netip.Addr, port int) bool {
	if r.port != 0 && r.port != port {
		return false
	}
	if r.domain != "" {
		ok, _ := path.Match(r.domain, strings.ToLower(host))
		return ok || strings.HasPrefix(r.domain, "*.") && strings.EqualFold(host, r.domain[2:])
	}
	return r.prefix.Contains(addr.Unmap())
}

// opens tells whether an allow rule may open a range denied by default:
// only one naming addresses, or a port, does — a domain alone does not,
// so a name that resolves to a private address stays denied.
func (r Rule) opens() bool { return r.domain == "" || r.port != 0 }

// Policy is what a session's sandbox may reach.
type Policy struct {
	// Allow, when not empty, is all that may be reached (besides nothing).
	Allow []Rule
	// Deny always wins.
	Deny []Rule
	// Ports open to addresses no rule names with a port; default DefaultPorts.
	Ports []int
	// MaxBytes bounds the bytes a run may move both ways; 0 is no bound.
	MaxBytes int64
	// Host are the host's own addresses, denied by default like loopback.
	Host []netip.Addr
	// Narrow, when not empty, is a request's own allow list: a connection
	// must match one of these too. It can only take away.
	Narrow []Rule
	// Declared are destinations the operator's configuration names (the
	// MCP servers of sandstorm.json): each is allowed as an explicit allow
	// is (loopback included), without making Allow a list of everything.
	Declared []Rule
}

// Config is the egress block of limits.yaml (and a request's narrowing).
type Config struct {
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
	Ports []int    `json:"ports,omitempty"`
	// MaxBytes is the per-run budget in bytes; 0 is none.
	MaxBytes int64 `json:"-"`
}

// Policy parses and checks the configuration, naming the first bad rule.
func (c Config) Policy() (Policy, error) {
	var p Policy
	for _, s := range c.Allow {
		r, err := ParseRule(s)
		if err != nil {
			return p, fmt.Errorf("allow: %w", err)
		}
		p.Allow = append(p.Allow, r)
	}
	for _, s := range c.Deny {
		r, err := ParseRule(s)
		if err != nil {
			return p, fmt.Errorf("deny: %w", err)
		}
		p.Deny = append(p.Deny, r)
	}
	for _, n := range c.Ports {
		if n < 1 || n > 65535 {
			return p, fmt.Errorf("%w: ports: %d is not 1..65535", ErrInvalid, n)
		}
	}
	p.Ports = slices.Clone(c.Ports)
	if len(p.Ports) == 0 {
		p.Ports = slices.Clone(DefaultPorts)
	}
	if c.MaxBytes < 0 {
		return p, fmt.Errorf("%w: max_bytes: %d is negative", ErrInvalid, c.MaxBytes)
	}
	p.MaxBytes = c.MaxBytes
	return p, nil
}

// Decision is the verdict on one address.
type Decision struct {
	Allowed bool
	// Rule says what decided, e.g. "default: public address", "deny *.example.org",
	// "default-deny: private (10.0.0.0/8)".
	Rule string
}

// Decide judges a connection to host (the name asked for) at addr:port.
// A deny rule, default or configured, holds for the IPv4 address a NAT64 or
// 6to4 address embeds too; an allow rule only for the address itself.
func (p Policy) Decide(host string, addr netip.Addr, port int) Decision {
	host, addr = canonical(host), addr.Unmap()
	deny := func(rule string) Decision { return Decision{Rule: rule} }
	// A zone only scopes link-local and multicast addresses, all denied, and
	// no prefix contains a zoned address: refused, it cannot slip past one.
	if addr.Zone() != "" {
		return deny("zoned address (never opened)")
	}
	views := []netip.Addr{addr}
	if v4, ok := embedded4(addr); ok {
		views = append(views, v4)
	}
	if slices.ContainsFunc(views, func(a netip.Addr) bool { return slices.Contains(metadata, a) }) {
		return deny("metadata address (never opened)")
	}
	for _, r := range p.Deny {
		if slices.ContainsFunc(views, func(a netip.Addr) bool { return r.matches(host, a, port) }) {
			return deny("deny " + r.Text)
		}
	}
	if len(p.Narrow) > 0 && !slices.ContainsFunc(p.Narrow, func(r Rule) bool { return r.matches(host, addr, port) }) {
		return deny("not in the request's egress.allow")
	}
	for _, r := range p.Declared {
		if r.matches(host, addr, port) {
			return Decision{Allowed: true, Rule: "declared " + r.Text}
		}
	}
	var explicit *Rule
	for i, r := range p.Allow {
		if r.matches(host, addr, port) {
			explicit = &p.Allow[i]
			break
		}
	}
	if len(p.Allow) > 0 && explicit == nil {
		return deny("not in allow")
	}
	for _, a := range views {
		if name := defaultDenied(a, p.Host); name != "" && (explicit == nil || !explicit.opens()) {
			return deny("default-deny: " + name)
		}
	}
	if (explicit == nil || explicit.port == 0) && !slices.Contains(p.Ports, port) {
		return deny(fmt.Sprintf("port %d not in ports %v", port, p.Ports))
	}
	if explicit != nil {
		return Decision{Allowed: true, Rule: "allow " + explicit.Text}
	}
	return Decision{Allowed: true, Rule: "default: public address"}
}

func defaultDenied(addr netip.Addr, host []netip.Addr) string {
	if slices.Contains(host, addr) {
		return "this host's address " + addr.String()
	}
	if addr.Is4() && addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return "broadcast"
	}
	for _, d := range denied {
		if d.prefix.Contains(addr) {
			return d.name + " (" + d.prefix.String() + ")"
		}
	}
	return ""
}
