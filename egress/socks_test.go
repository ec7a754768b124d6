package egress

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// socksDial asks a SOCKS5 proxy at addr to CONNECT to host:port and returns
// the reply code and the connection.
func socksDial(t *testing.T, addr, host string, port int) (byte, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte{5, 1, 0})
	greet := make([]byte, 2)
	if _, err := io.ReadFull(c, greet); err != nil || greet[1] != 0 {
		t.Fatalf("greeting %v %v", greet, err)
	}
	req := append([]byte{5, 1, 0, 3, byte(len(host))}, host...)
	req = binary.BigEndian.AppendUint16(req, uint16(port))
	c.Write(req)
	reply := make([]byte, 10)
	if _, err := io.ReadFull(c, reply); err != nil {
		t.Fatalf("reply: %v", err)
	}
	c.SetDeadline(time.Time{})
	return reply[1], c
}

// serve serves prx as the gateway does, SOCKS and HTTP on one socket,
// until the test ends, and returns its address.
func serve(t *testing.T, prx *Proxy) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: prx}
	go srv.Serve(prx.Listener(l))
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func TestSOCKS(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "over socks") }))
	defer target.Close()
	port := target.Listener.Addr().(*net.TCPAddr).Port
	events := make(chan Event, 4)
	prx := New(policy(t, Config{Allow: []string{fmt.Sprintf("127.0.0.1:%d", port)}}), Options{Emit: func(e Event) { events <- e }})
	addr := serve(t, prx)

	code, c := socksDial(t, addr, HostName, port)
	if code != 0 {
		t.Fatalf("allowed CONNECT answered %d", code)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	c.Close()
	if string(body) != "over socks" {
		t.Errorf("body %q", body)
	}
	if e := <-events; e.Decision != Allow || e.BytesIn == 0 {
		t.Errorf("allow event %+v", e)
	}

	code, c = socksDial(t, addr, "127.0.0.1", port+1)
	c.Close()
	if code != 2 {
		t.Errorf("denied CONNECT answered %d, want 2 (not allowed by ruleset)", code)
	}
	if e := <-events; e.Decision != Deny || !strings.Contains(e.Rule, "not in allow") {
		t.Errorf("deny event %+v", e)
	}
	// HTTP still works on the same listener.
	if got := connectStatus(t, "http://"+addr, fmt.Sprintf("%s:%d", HostName, port)); got != 200 {
		t.Errorf("CONNECT over HTTP on the shared listener: %d", got)
	}
}
