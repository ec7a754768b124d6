package egress

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// benchTarget serves size bytes from 127.0.0.1, and a policy opening it.
func benchTarget(b *testing.B, size int) (string, Policy) {
	payload := strings.Repeat("x", size)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, payload) }))
	b.Cleanup(srv.Close)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	p, err := Config{Allow: []string{fmt.Sprintf("127.0.0.1:%d", port)}}.Policy()
	if err != nil {
		b.Fatal(err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d/", port), p
}

// compare fetches u with a fresh connection each time, directly and through
// the proxy, alternating, and reports both and the difference per fetch.
func compare(b *testing.B, u string, p Policy, size int) {
	prx := httptest.NewServer(New(p, Options{}))
	b.Cleanup(prx.Close)
	pu, _ := url.Parse(prx.URL)
	direct := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	proxied := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: http.ProxyURL(pu)}}
	fetch := func(c *http.Client) time.Duration {
		start := time.Now()
		resp, err := c.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n != int64(size) {
			b.Fatalf("got %d bytes", n)
		}
		return time.Since(start)
	}
	var d, x time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d += fetch(direct)
		x += fetch(proxied)
	}
	b.StopTimer()
	per := func(t time.Duration) float64 { return float64(t.Microseconds()) / float64(b.N) }
	b.ReportMetric(per(d), "direct-us/op")
	b.ReportMetric(per(x), "proxy-us/op")
	b.ReportMetric(per(x-d), "added-us/op")
	if size >= 1<<20 {
		mb := float64(size) / (1 << 20) * float64(b.N)
		b.ReportMetric(mb/d.Seconds(), "direct-MiB/s")
		b.ReportMetric(mb/x.Seconds(), "proxy-MiB/s")
	}
}

// BenchmarkConnectionLatency: what the proxy adds to a new connection and
// a small answer (resolve, policy, dial, forward) on loopback.
func BenchmarkConnectionLatency(b *testing.B) {
	u, p := benchTarget(b, 100)
	compare(b, u, p, 100)
}

// BenchmarkThroughput: a 64 MiB download directly and through the proxy.
func BenchmarkThroughput(b *testing.B) {
	u, p := benchTarget(b, 64<<20)
	compare(b, u, p, 64<<20)
}
