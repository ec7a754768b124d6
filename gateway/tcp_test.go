package gateway

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/runnerproto"
)

// tcpGateway serves a session on 127.0.0.1 over TCP (wrapped by wrap, if set).
func tcpGateway(t *testing.T, wrap func(net.Listener) net.Listener) (*Session, string) {
	t.Helper()
	g, err := New(Config{Upstream: "http://127.0.0.1:1", Dir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if wrap != nil {
		l = wrap(l)
	}
	go g.ServeTCP(l)
	t.Cleanup(func() { l.Close() })
	s, err := g.Open("sess-tcp", SessionOptions{RunnerConfig: []byte(`{"prompt":"p"}`), Owner: "me"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, addr
}

// getConfig asks for the runner's config on a connection opened with hello.
func getConfig(t *testing.T, c net.Conn, hello, token string) (int, string, error) {
	t.Helper()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, hello); err != nil {
		return 0, "", err
	}
	req, _ := http.NewRequest("GET", "http://sandbox"+runnerproto.Docs.Config, nil)
	req.Header.Set("x-api-key", token)
	if err := req.Write(c); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestTCPFront(t *testing.T) {
	s, addr := tcpGateway(t, nil)
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if code, body, err := getConfig(t, dial(), runnerproto.Hello.Line(s.Token, runnerproto.Hello.Model), s.Token); err != nil || code != 200 || body != `{"prompt":"p"}` {
		t.Errorf("with the session's token: %d %q %v", code, body, err)
	}
	for name, hello := range map[string]string{
		"unknown token":       runnerproto.Hello.Magic + " sandstorm-session-guess model\n",
		"no egress here":      runnerproto.Hello.Magic + " " + s.Token + " egress\n",
		"unknown service":     runnerproto.Hello.Magic + " " + s.Token + " upstream\n",
		"wrong magic":         "HELLO " + s.Token + " model\n",
		"plain HTTP, no line": "GET " + runnerproto.Docs.Config + " HTTP/1.1\r\nHost: x\r\nx-api-key: " + s.Token + "\r\n\r\n",
	} {
		if code, _, err := getConfig(t, dial(), hello, s.Token); err == nil {
			t.Errorf("%s: answered %d, want the connection closed", name, code)
		}
	}
	s.Close()
	if _, _, err := getConfig(t, dial(), runnerproto.Hello.Line(s.Token, runnerproto.Hello.Model), s.Token); err == nil {
		t.Error("a closed session's token still opens a connection")
	}
}

func TestTCPFrontTLS(t *testing.T) {
	ca, _, err := egress.NewCA("sandstorm gateway test")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Leaf("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	s, addr := tcpGateway(t, func(l net.Listener) net.Listener {
		return tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{*leaf}})
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	if code, body, err := getConfig(t, c, runnerproto.Hello.Line(s.Token, runnerproto.Hello.Model), s.Token); err != nil || code != 200 || body != `{"prompt":"p"}` {
		t.Errorf("over TLS: %d %q %v", code, body, err)
	}
	if _, err := tls.Dial("tcp", addr, &tls.Config{}); err == nil {
		t.Error("a client that does not trust the gateway's certificate connected")
	}
}
