package gateway

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/sandstorm-dev/sandstorm/runnerproto"
)

// Sandboxes that cannot have a session's socket mounted (Pods on other
// hosts) reach the gateway over TCP instead: one listener for every
// session, where each connection first names its session's token and the
// service it wants, in one line (runnerproto.Hello),
//
//	SANDSTORM/1 <token> model|egress\n
//
// and is then served exactly as a connection to that session's socket.
// An unknown token or a bad line closes the connection. The model key
// still never leaves the host: the token is worth only its session.

// maxHello bounds the opening line; helloTimeout bounds its arrival.
const (
	maxHello     = 256
	helloTimeout = 10 * time.Second
)

// front is the gateway's TCP side: sessions by the hash of their token.
type front struct {
	mu       sync.Mutex
	sessions map[[32]byte]*Session
}

func (f *front) add(s *Session) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sessions == nil {
		f.sessions = map[[32]byte]*Session{}
	}
	f.sessions[sha256.Sum256([]byte(s.Token))] = s
}

func (f *front) remove(s *Session) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.sessions, sha256.Sum256([]byte(s.Token)))
}

func (f *front) lookup(token []byte) *Session {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sessions[sha256.Sum256(token)]
}

// ServeTCP serves sessions on l (TCP, or TLS around it) until l is closed.
func (g *Gateway) ServeTCP(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go g.hello(c)
	}
}

// hello reads a connection's opening line and hands it to its session.
func (g *Gateway) hello(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(helloTimeout))
	line, err := readLine(c)
	if err != nil {
		g.cfg.Logger.Warn("gateway: TCP connection without a valid opening line", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	fields := bytes.Fields(line)
	if len(fields) != 3 || string(fields[0]) != runnerproto.Hello.Magic {
		g.cfg.Logger.Warn("gateway: TCP connection with a malformed opening line", "remote", c.RemoteAddr().String())
		c.Close()
		return
	}
	s := g.front.lookup(fields[1])
	if s == nil {
		g.cfg.Logger.Warn("gateway: TCP connection with an unknown session token", "remote", c.RemoteAddr().String())
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	var l *connListener
	switch string(fields[2]) {
	case runnerproto.Hello.Model:
		l = s.modelTCP
	case runnerproto.Hello.Egress:
		l = s.egressTCP
	}
	if l == nil {
		g.cfg.Logger.Warn("gateway: TCP connection asks for a service its session does not have", "service", string(fields[2]))
		c.Close()
		return
	}
	l.deliver(c)
}

// readLine reads up to '\n', one byte at a time so that nothing after the
// line is consumed.
func readLine(c net.Conn) ([]byte, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) < maxHello {
		if _, err := c.Read(b); err != nil {
			return nil, err
		}
		if b[0] == '\n' {
			return line, nil
		}
		line = append(line, b[0])
	}
	return nil, fmt.Errorf("opening line longer than %d bytes", maxHello)
}

// connListener is a listener whose connections are handed to it: what a
// session's servers accept from the TCP front.
type connListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newConnListener() *connListener {
	return &connListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return tcpFrontAddr{} }

type tcpFrontAddr struct{}

func (tcpFrontAddr) Network() string { return "tcp" }
func (tcpFrontAddr) String() string  { return "gateway-tcp" }
