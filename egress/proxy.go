package egress

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TypeEvent is the event type of an egress event in the run's stream.
const TypeEvent = "egress"

// Decisions, in an event's "decision".
const (
	Allow = "allow"
	Deny  = "deny"
)

// Event is one connection attempt: type "egress". An allowed one is
// reported when it ends, with what it moved; a denied one at once.
type Event struct {
	Type       string `json:"type"`
	Host       string `json:"host"`
	Port       int    `json:"port"`
	IP         string `json:"ip,omitempty"`
	Decision   string `json:"decision"`
	Rule       string `json:"rule"`
	BytesOut   int64  `json:"bytes_out"`
	BytesIn    int64  `json:"bytes_in"`
	DurationMS int64  `json:"duration_ms"`
	// Error says why an allowed connection failed (no address, refused, ...).
	Error string `json:"error,omitempty"`
	// Intercepted: the proxy terminated TLS to swap secrets in (a host with
	// secret rules); Secrets names those it put in. Other tunnels stay end to end.
	Intercepted bool     `json:"intercepted,omitempty"`
	Secrets     []string `json:"secrets,omitempty"`
}

// Resolver looks up a name's addresses (net.DefaultResolver is one).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Dialer opens a connection to a checked address (a net.Dialer is one).
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Options are a proxy's parts; zero values take the real ones.
type Options struct {
	Resolver Resolver
	Dialer   Dialer
	// Emit receives every event; it must be safe for concurrent use.
	Emit   func(Event)
	Logger *slog.Logger
	// Secrets are swapped into requests to their hosts, which the proxy
	// intercepts with certificates of CA (needed when there are secrets).
	Secrets []Secret
	CA      *CA
	// UpstreamRoots verify intercepted hosts; nil is the system's roots.
	UpstreamRoots *x509.CertPool
}

// Proxy is one session's egress proxy: CONNECT tunnels (TLS stays end to
// end) and plain-HTTP forwarding.
type Proxy struct {
	policy   Policy
	resolver Resolver
	dialer   Dialer
	emit     func(Event)
	log      *slog.Logger
	secrets  []Secret
	ca       *CA
	roots    *x509.CertPool
	// used is the bytes moved so far, both ways, against policy.MaxBytes.
	used atomic.Int64

	mu     sync.Mutex
	open   map[net.Conn]struct{}
	closed bool
}

// track keeps conns until untrack, so Close can cut them; false once closed.
func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range conns {
		p.open[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.open, c)
	}
}

// Close cuts every connection still open (tunnels outlive the HTTP server
// that hijacked them) and refuses new ones: the session is over.
func (p *Proxy) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for c := range p.open {
		_ = c.Close()
	}
	p.open = nil
	return nil
}

const (
	resolveTimeout = 5 * time.Second
	dialTimeout    = 10 * time.Second
)

// New makes a proxy for one session.
func New(p Policy, o Options) *Proxy {
	if o.Resolver == nil {
		o.Resolver = net.DefaultResolver
	}
	if o.Dialer == nil {
		o.Dialer = &net.Dialer{Timeout: dialTimeout}
	}
	if o.Emit == nil {
		o.Emit = func(Event) {}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Proxy{policy: p, resolver: o.Resolver, dialer: o.Dialer, emit: o.Emit, log: o.Logger, open: map[net.Conn]struct{}{},
		secrets: o.Secrets, ca: o.CA, roots: o.UpstreamRoots}
}

// HostAddrs are this host's own addresses, for Policy.Host.
func HostAddrs() []netip.Addr {
	addrs, _ := net.InterfaceAddrs()
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}

// ServeHTTP implements http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodConnect:
		p.connect(w, r)
	case r.URL.IsAbs() && r.URL.Scheme == "http":
		p.forward(w, r)
	default:
		http.Error(w, "sandstorm egress: this is an HTTP proxy: CONNECT host:port, or an absolute http:// URL", http.StatusBadRequest)
	}
}

// dial resolves host once, picks the first address the policy allows and
// dials exactly that address. The event it returns is filled but for the
// traffic; conn is nil when denied or failed.
func (p *Proxy) dial(ctx context.Context, host string, port int) (net.Conn, Event) {
	host = canonical(host)
	ev := Event{Type: TypeEvent, Host: host, Port: port, Decision: Deny}
	if p.policy.MaxBytes > 0 && p.used.Load() >= p.policy.MaxBytes {
		ev.Rule = fmt.Sprintf("byte budget of %d spent", p.policy.MaxBytes)
		return nil, ev
	}
	addrs, err := p.resolve(ctx, host)
	if err != nil {
		ev.Rule, ev.Error = "no address", err.Error()
		return nil, ev
	}
	var allowed []netip.Addr
	for _, a := range addrs {
		d := p.policy.Decide(host, a, port)
		if ev.IP == "" || d.Allowed && len(allowed) == 0 {
			ev.IP, ev.Rule = a.String(), d.Rule
		}
		if d.Allowed {
			allowed = append(allowed, a)
		}
	}
	if len(allowed) == 0 {
		return nil, ev
	}
	ev.Decision = Allow
	var errs []error
	for _, a := range allowed {
		dctx, cancel := context.WithTimeout(ctx, dialTimeout)
		conn, err := p.dialer.DialContext(dctx, "tcp", netip.AddrPortFrom(a, uint16(port)).String())
		cancel()
		if err == nil {
			ev.IP = a.String()
			return conn, ev
		}
		errs = append(errs, err)
	}
	ev.Error = errors.Join(errs...).Error()
	return nil, ev
}

func (p *Proxy) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if host == HostName {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	addrs, err := p.resolver.LookupNetIP(ctx, "ip", host)
	if err == nil && len(addrs) == 0 {
		err = fmt.Errorf("%s has no address", host)
	}
	// Dialled as judged: an IPv4-mapped answer is the IPv4 address.
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	return addrs, err
}

// refuse answers a denied or failed attempt and reports it.
func (p *Proxy) refuse(w http.ResponseWriter, ev Event, start time.Time) {
	ev.DurationMS = time.Since(start).Milliseconds()
	p.emit(ev)
	status, msg := http.StatusForbidden, fmt.Sprintf("sandstorm egress: %s:%d denied (%s)", ev.Host, ev.Port, ev.Rule)
	if ev.Decision == Allow {
		status, msg = http.StatusBadGateway, fmt.Sprintf("sandstorm egress: %s:%d unreachable: %s", ev.Host, ev.Port, ev.Error)
	}
	w.Header().Set("X-Sandstorm-Egress", ev.Decision)
	http.Error(w, msg, status)
}

// splitHostPort reads "host:port" and "[v6]:port", and with a default port
// "host" and "[v6]" too: a bracketed literal is an address, not a name.
func splitHostPort(hostport string, defaultPort int) (string, int, error) {
	host, portText, err := net.SplitHostPort(hostport)
	if err != nil {
		if defaultPort == 0 {
			return "", 0, err
		}
		host, portText = hostport, strconv.Itoa(defaultPort)
		if inner, ok := strings.CutPrefix(hostport, "["); ok {
			if host, ok = strings.CutSuffix(inner, "]"); !ok {
				return "", 0, fmt.Errorf("bad host %q", hostport)
			}
		}
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 1 || port > 65535 || host == "" {
		return "", 0, fmt.Errorf("bad host:port %q", hostport)
	}
	return host, port, nil
}

func (p *Proxy) connect(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	host, port, err := splitHostPort(r.Host, 0)
	if err != nil {
		http.Error(w, "sandstorm egress: CONNECT needs host:port: "+err.Error(), http.StatusBadRequest)
		return
	}
	upstream, ev := p.dial(r.Context(), host, port)
	if upstream == nil {
		p.refuse(w, ev, start)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		upstream.Close()
		http.Error(w, "sandstorm egress: cannot tunnel", http.StatusInternalServerError)
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		upstream.Close()
		return
	}
	// What the client sent after CONNECT comes first.
	client := &prefixed{Conn: conn, r: buf.Reader}
	c, end, ok := p.begin(upstream, &ev, start, client)
	if !ok {
		return
	}
	defer end()
	if _, err := client.Write([]byte("HTTP/1.1 200 Connection Established\r\n\r\n")); err != nil {
		return
	}
	if secrets := p.secretsFor(ev.Host, port); len(secrets) > 0 && p.ca != nil {
		ev.Intercepted = true
		if err := p.intercept(client, c, ev.Host, secrets, &ev); err != nil {
			ev.Error = err.Error()
		}
		return
	}
	pipe(client, c)
}

// begin counts upstream's traffic and tracks it and peers, so Close can cut
// them; end closes them all and reports the connection, with what it
// moved. ok is false once the proxy is closed (they are closed then).
func (p *Proxy) begin(upstream net.Conn, ev *Event, start time.Time, peers ...net.Conn) (c *counted, end func(), ok bool) {
	c = p.count(upstream)
	conns := append([]net.Conn{c}, peers...)
	closeAll := func() {
		for _, x := range conns {
			_ = x.Close()
		}
	}
	if !p.track(conns...) {
		closeAll()
		return nil, nil, false
	}
	return c, func() {
		p.untrack(conns...)
		closeAll()
		ev.BytesOut, ev.BytesIn = c.out.Load(), c.in.Load()
		ev.DurationMS = time.Since(start).Milliseconds()
		p.emit(*ev)
	}, true
}

// pipe copies both ways until each side has ended, passing each end on as
// a half-close.
func pipe(client, upstream net.Conn) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(upstream, client)
		_ = halfClose(upstream)
		close(done)
	}()
	_, _ = io.Copy(client, upstream)
	_ = halfClose(client)
	<-done
}

// prefixed reads what the server buffered after CONNECT before the rest.
type prefixed struct {
	net.Conn
	r *bufio.Reader
}

// CloseWrite half-closes (see halfClose).
func (p *prefixed) CloseWrite() error { return halfClose(p.Conn) }

func (p *prefixed) Read(b []byte) (int, error) {
	if p.r.Buffered() > 0 {
		return p.r.Read(b)
	}
	return p.Conn.Read(b)
}

// halfClose ends c's writing side when it can (Unix and TCP sockets), and
// closes it otherwise.
func halfClose(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// forward proxies one plain-HTTP request to the checked address.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	host, port, err := splitHostPort(r.URL.Host, 80)
	if err != nil {
		http.Error(w, "sandstorm egress: "+err.Error(), http.StatusBadRequest)
		return
	}
	upstream, ev := p.dial(r.Context(), host, port)
	if upstream == nil {
		p.refuse(w, ev, start)
		return
	}
	c, end, ok := p.begin(upstream, &ev, start)
	if !ok {
		http.Error(w, "sandstorm egress: the session is over", http.StatusServiceUnavailable)
		return
	}
	defer end()
	used := false
	rp := &httputil.ReverseProxy{
		// The one connection dialed to the checked address, never another.
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(context.Context, string, string) (net.Conn, error) {
			if used {
				return nil, errors.New("sandstorm egress: one connection per request")
			}
			used = true
			return c, nil
		}},
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = r.URL
			pr.Out.Host = r.Host
			pr.Out.Header.Del("Proxy-Authorization")
			pr.Out.Header.Del("Proxy-Connection")
		},
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			ev.Error = err.Error()
			http.Error(w, fmt.Sprintf("sandstorm egress: %s:%d: %v", host, port, err), http.StatusBadGateway)
		},
	}
	rp.ServeHTTP(w, r)
}

// counted counts what a connection moves, into the proxy's budget too,
// and cuts it when the budget is spent.
type counted struct {
	net.Conn
	p       *Proxy
	in, out atomic.Int64
}

func (p *Proxy) count(c net.Conn) *counted { return &counted{Conn: c, p: p} }

// CloseWrite half-closes (see halfClose).
func (c *counted) CloseWrite() error { return halfClose(c.Conn) }

func (c *counted) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.in.Add(int64(n))
	if err == nil && c.p.spend(n) {
		return n, errBudget
	}
	return n, err
}

func (c *counted) Write(b []byte) (int, error) {
	// Counted before the write: the peer can answer, and the reader report
	// the connection, before a goroutine that wrote gets to count.
	c.out.Add(int64(len(b)))
	n, err := c.Conn.Write(b)
	c.out.Add(int64(n - len(b)))
	if err == nil && c.p.spend(n) {
		return n, errBudget
	}
	return n, err
}

var errBudget = errors.New("sandstorm egress: byte budget spent")

// spend adds n to the bytes used and tells whether that passed the budget.
func (p *Proxy) spend(n int) bool {
	used := p.used.Add(int64(n))
	return p.policy.MaxBytes > 0 && used > p.policy.MaxBytes
}
