package egress

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	realValue   = "ghp_REAL-secret-value-never-in-a-sandbox"
	placeholder = "sandstorm-placeholder-GITHUB_TOKEN-0123abcd"
)

// tlsUpstream is an HTTPS server for HostName, with a certificate of its
// own CA (which the proxy is told to trust), recording what it was sent.
func tlsUpstream(t *testing.T) (*httptest.Server, *CA, *[]string) {
	t.Helper()
	ca, _, err := NewCA("test upstream CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Leaf(HostName)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization")+"|"+r.Header.Get("X-Token"))
		mu.Unlock()
		io.WriteString(w, "secret checked")
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, ca, &seen
}

// proxyClient serves prx and is a client that uses it, trusting ca.
func proxyClient(t *testing.T, prx *Proxy, ca *CA) *http.Client {
	srv := httptest.NewServer(prx)
	t.Cleanup(srv.Close)
	pu, _ := url.Parse(srv.URL)
	return &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
}

func TestSecretSwappedForItsHostOnly(t *testing.T) {
	up, upCA, seen := tlsUpstream(t)
	upPort := up.Listener.Addr().(*net.TCPAddr).Port
	var plainSeen []string
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		plainSeen = append(plainSeen, r.Header.Get("Authorization"))
	}))
	defer plain.Close()
	plainPort := plain.Listener.Addr().(*net.TCPAddr).Port

	hostRule, err := ParseRule(fmt.Sprintf("%s:%d", HostName, upPort))
	if err != nil {
		t.Fatal(err)
	}
	proxyCA, _, err := NewCA("test proxy CA")
	if err != nil {
		t.Fatal(err)
	}
	var events []Event
	var mu sync.Mutex
	p := policy(t, Config{Allow: []string{fmt.Sprintf("127.0.0.1:%d", upPort), fmt.Sprintf("127.0.0.1:%d", plainPort)}})
	prx := New(p, Options{
		Secrets:       []Secret{{Name: "GITHUB_TOKEN", Placeholder: placeholder, Value: realValue, Hosts: []Rule{hostRule}}},
		CA:            proxyCA,
		UpstreamRoots: upCA.Pool(),
		Emit:          func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() },
	})
	cl := proxyClient(t, prx, proxyCA)

	req, _ := http.NewRequest("GET", fmt.Sprintf("https://%s:%d/", HostName, upPort), nil)
	req.Header.Set("Authorization", "Bearer "+placeholder)
	req.Header.Set("X-Token", placeholder)
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "secret checked" {
		t.Fatalf("through the interception: %d %q", resp.StatusCode, body)
	}
	// Basic auth carries it too, base64-encoded.
	req, _ = http.NewRequest("GET", fmt.Sprintf("https://%s:%d/", HostName, upPort), nil)
	req.SetBasicAuth("x-access-token", placeholder)
	if resp, err = cl.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(*seen) != 2 || (*seen)[0] != "Bearer "+realValue+"|"+realValue {
		t.Errorf("upstream saw %q, want the real value in both headers", *seen)
	}
	if want := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+realValue)); !strings.HasPrefix((*seen)[1], want) {
		t.Errorf("basic auth arrived as %q", (*seen)[1])
	}

	// The placeholder sent anywhere else stays the placeholder.
	req, _ = http.NewRequest("GET", fmt.Sprintf("http://%s:%d/", HostName, plainPort), nil)
	req.Header.Set("Authorization", "Bearer "+placeholder)
	if resp, err = cl.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(plainSeen) != 1 || plainSeen[0] != "Bearer "+placeholder {
		t.Errorf("another host saw %q, want the placeholder", plainSeen)
	}
	// The tunnel's event comes when it ends.
	cl.CloseIdleConnections()
	var intercepted *Event
	for deadline := time.Now().Add(5 * time.Second); intercepted == nil && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		for i, e := range events {
			if e.Intercepted {
				intercepted = &events[i]
			}
		}
		mu.Unlock()
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range events {
		b := fmt.Sprintf("%+v", e)
		if strings.Contains(b, realValue) {
			t.Errorf("an event holds the secret: %s", b)
		}
	}
	if intercepted == nil || len(intercepted.Secrets) != 1 || intercepted.Secrets[0] != "GITHUB_TOKEN" {
		t.Errorf("events %+v, want an intercepted one naming GITHUB_TOKEN", events)
	}
}

// TestUpstreamVerified: an intercepted host whose certificate the proxy
// cannot verify gets no request, so no secret.
func TestUpstreamVerified(t *testing.T) {
	up, _, seen := tlsUpstream(t)
	upPort := up.Listener.Addr().(*net.TCPAddr).Port
	hostRule, _ := ParseRule(HostName)
	proxyCA, _, _ := NewCA("test proxy CA")
	got := make(chan Event, 1)
	prx := New(policy(t, Config{Allow: []string{fmt.Sprintf("127.0.0.1:%d", upPort)}}), Options{
		Secrets: []Secret{{Name: "T", Placeholder: placeholder, Value: realValue, Hosts: []Rule{hostRule}}},
		CA:      proxyCA, Emit: func(e Event) { got <- e },
	})
	cl := proxyClient(t, prx, proxyCA)
	req, _ := http.NewRequest("GET", fmt.Sprintf("https://%s:%d/", HostName, upPort), nil)
	req.Header.Set("Authorization", "Bearer "+placeholder)
	if resp, err := cl.Do(req); err == nil {
		resp.Body.Close()
	}
	select {
	case e := <-got:
		if !strings.Contains(e.Error, "certificate") {
			t.Errorf("event %+v, want one naming the certificate error", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	if len(*seen) != 0 {
		t.Errorf("an unverified upstream got %q", *seen)
	}
}
