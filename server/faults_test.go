package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// waitQueued waits until the host's queue holds n requests.
func (h *harness) waitQueued(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := testenv.Health(t, h.url).Queued
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %d requests queued, want %d", within, got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// holdSlot starts a slow run and returns once it holds the only slot.
func holdSlot(t *testing.T, h *harness) {
	t.Helper()
	first := post(t, h.url, `{"prompt":"slow"}`)
	t.Cleanup(func() { first.Body.Close() })
	h.events(t, first.Body, func(ev map[string]any) bool { return ev["type"] != "system" })
}

// queuedLeaves: a client that leaves while it waits for a slot frees its
// place in the queue at once, so the next client waits instead of getting 429.
func queuedLeaves(t *testing.T, backend string) {
	h := start(t, backend, "slow-steps", "max_concurrent_agents: 1\nqueue_size: 1\nqueue_wait_seconds: 120\n")
	holdSlot(t, h)
	for i := 0; i < 2; i++ {
		ctx, leave := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "POST", h.url+"/query", strings.NewReader(`{"prompt":"queued"}`))
		req.Header.Set("Content-Type", "application/json")
		errc := make(chan error, 1)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				err = fmt.Errorf("answered %d while it should still wait", resp.StatusCode)
				resp.Body.Close()
			}
			errc <- err
		}()
		h.waitQueued(t, 1, 10*time.Second)
		leave()
		if err := <-errc; !strings.Contains(err.Error(), "context canceled") {
			t.Fatalf("client %d: %v", i, err)
		}
		h.waitQueued(t, 0, 2*time.Second)
	}
}

// shutdownQueued: a request still waiting for a slot when the grace period
// ends is answered 503 with the code cancelled.
func shutdownQueued(t *testing.T, backend string) {
	h := start(t, backend, "slow-steps", "max_concurrent_agents: 1\nqueue_size: 1\nqueue_wait_seconds: 120\n")
	holdSlot(t, h)
	type answer struct {
		status int
		body   apiError
		err    error
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := http.Post(h.url+"/query", "application/json", strings.NewReader(`{"prompt":"queued"}`))
		if err != nil {
			got <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		var a answer
		a.status = resp.StatusCode
		a.err = json.NewDecoder(resp.Body).Decode(&a.body)
		got <- a
	}()
	h.waitQueued(t, 1, 10*time.Second)
	h.srv.Shutdown(100 * time.Millisecond)
	a := <-got
	if a.err != nil || a.status != 503 || a.body.Error != api.CodeCancelled {
		t.Errorf("queued request at shutdown: %d %+v %v; want 503 cancelled", a.status, a.body, a.err)
	}
	h.noSandboxes(t, 5*time.Second)
}

// smallBuffers accepts connections whose send buffer is a few KB, so a
// client that stops reading blocks the stream's writes soon.
func smallBuffers(network, addr string) (net.Listener, error) {
	l, err := net.Listen(network, addr)
	return smallListener{l}, err
}

type smallListener struct{ net.Listener }

func (l smallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// dialStalled sends a query and never reads the answer, with a receive
// buffer of a few KB.
func dialStalled(t *testing.T, url, body string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST /query HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", conn.RemoteAddr(), len(body), body)
	return conn
}

// stalledReader: a client that stops reading (and keeps its connection
// open) is cut after the write timeout; its run is cancelled and removed
// and its slot freed, as on a disconnect.
func stalledReader(t *testing.T, backend string) {
	scenario := testenv.ScenarioFile(t, testenv.LongAnswer(480_000))
	h := startWith(t, backend, scenario, "", Config{WriteTimeout: time.Second}, smallBuffers)
	conn := dialStalled(t, h.url, `{"prompt":"slow","timeout":300}`)
	deadline := time.Now().Add(10 * time.Second)
	for h.eng.Manager().Running() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// The run fills the buffers, is cut, and leaves nothing, though the
	// client still holds its connection.
	h.noSandboxes(t, 20*time.Second)
	// What the client can still read was cut short: the stream never got
	// to the sandbox's removal.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(conn)
	if strings.Contains(string(got), `"event":"removed"`) {
		t.Errorf("the stream was not cut: the stalled client got the whole run (%d bytes)", len(got))
	}
}

// leaveDuringStartup: clients that disconnect at any moment of their run's
// start-up (queued, creating, starting, running) leave nothing behind.
func leaveDuringStartup(t *testing.T, backend string) {
	h := start(t, backend, "slow-steps", "max_concurrent_agents: 4\nqueue_size: 20\n")
	const clients = 12
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(1500))*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", h.url+"/query", strings.NewReader(`{"prompt":"slow"}`))
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			h.events(t, resp.Body, func(map[string]any) bool { return ctx.Err() == nil })
		}()
	}
	wg.Wait()
	h.noSandboxes(t, 30*time.Second)
}
