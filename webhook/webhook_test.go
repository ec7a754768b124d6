package webhook

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	testSecret = []byte("s3cret-hmac-key")
	testBody   = []byte(`{"run":"r-1","status":"succeeded"}`)
)

// syncBuffer collects log output written from delivery goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newSender returns a fast-retrying Sender and the buffer its logs go to.
func newSender(t *testing.T, attempts int) (*Sender, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	s := &Sender{
		Allow:    loopback,
		Secret:   testSecret,
		Attempts: attempts,
		Backoff:  time.Millisecond,
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	t.Cleanup(func() { s.Close(0) })
	return s, logs
}

func TestDeliverSigned(t *testing.T) {
	tests := []struct {
		name   string
		secret []byte
	}{
		{"signed", testSecret},
		{"unsigned", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type received struct {
				header http.Header
				body   []byte
			}
			got := make(chan received, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				got <- received{r.Header.Clone(), body}
			}))
			defer srv.Close()

			s, _ := newSender(t, 1)
			s.Secret = tt.secret
			if err := s.Deliver(t.Context(), srv.URL+"/hook", testBody); err != nil {
				t.Fatalf("Deliver: %v", err)
			}
			r := <-got
			if !bytes.Equal(r.body, testBody) {
				t.Errorf("body = %q, want %q", r.body, testBody)
			}
			if ev := r.header.Get(HeaderEvent); ev != EventRunFinished {
				t.Errorf("%s = %q, want %q", HeaderEvent, ev, EventRunFinished)
			}
			ts, err := strconv.ParseInt(r.header.Get(HeaderTimestamp), 10, 64)
			if err != nil || time.Since(time.Unix(ts, 0)).Abs() > time.Minute {
				t.Errorf("%s = %q, want current unix seconds", HeaderTimestamp, r.header.Get(HeaderTimestamp))
			}
			if tt.secret == nil {
				if sig := r.header.Get(HeaderSignature); sig != "" {
					t.Errorf("unsigned delivery has %s = %q", HeaderSignature, sig)
				}
				return
			}
			if err := Verify(tt.secret, r.header, r.body, time.Now(), time.Minute); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

func TestDeliverRetries(t *testing.T) {
	tests := []struct {
		name      string
		statuses  []int // per call; the last repeats
		attempts  int
		wantCalls int32
		wantErr   bool
	}{
		{"two 500s then success", []int{500, 500, 200}, 5, 3, false},
		{"429 with Retry-After retried", []int{429, 204}, 5, 2, false},
		{"400 not retried", []int{400}, 5, 1, true},
		{"attempts exhausted", []int{503}, 3, 3, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := int(calls.Add(1))
				body, _ := io.ReadAll(r.Body)
				// Every attempt, retries included, must be independently valid.
				if err := Verify(testSecret, r.Header, body, time.Now(), time.Minute); err != nil {
					t.Errorf("attempt %d: Verify: %v", n, err)
				}
				w.Header().Set("Retry-After", "0")
				w.WriteHeader(tt.statuses[min(n, len(tt.statuses))-1])
			}))
			defer srv.Close()

			s, _ := newSender(t, tt.attempts)
			err := s.Deliver(t.Context(), srv.URL, testBody)
			if (err != nil) != tt.wantErr {
				t.Errorf("Deliver error = %v, wantErr %v", err, tt.wantErr)
			}
			if got := calls.Load(); got != tt.wantCalls {
				t.Errorf("calls = %d, want %d", got, tt.wantCalls)
			}
		})
	}
}

func TestDeliverRedirectNotFollowed(t *testing.T) {
	var targetHits, redirectHits atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		targetHits.Add(1)
	}))
	defer target.Close()
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		redirectHits.Add(1)
		http.Redirect(w, r, target.URL, http.StatusTemporaryRedirect)
	}))
	defer redirector.Close()

	s, _ := newSender(t, 3)
	err := s.Deliver(t.Context(), redirector.URL, testBody)
	if err == nil || !strings.Contains(err.Error(), "redirect") {
		t.Errorf("Deliver error = %v, want a redirect failure", err)
	}
	if got := redirectHits.Load(); got != 1 {
		t.Errorf("redirector calls = %d, want 1 (redirects are not retried)", got)
	}
	if got := targetHits.Load(); got != 0 {
		t.Errorf("redirect target calls = %d, want 0", got)
	}
}

func TestVerify(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	signed := func(ts int64, body []byte) http.Header {
		h := http.Header{}
		h.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
		h.Set(HeaderSignature, Sign(testSecret, ts, body))
		return h
	}
	without := func(key string) http.Header {
		h := signed(now.Unix(), testBody)
		h.Del(key)
		return h
	}
	malformedTS := signed(now.Unix(), testBody)
	malformedTS.Set(HeaderTimestamp, "yesterday")

	tests := []struct {
		name    string
		secret  []byte
		header  http.Header
		body    []byte
		wantErr error
	}{
		{"valid", testSecret, signed(now.Unix(), testBody), testBody, nil},
		{"valid within max age", testSecret, signed(now.Unix()-299, testBody), testBody, nil},
		{"tampered body", testSecret, signed(now.Unix(), testBody), []byte(`{"run":"r-2"}`), ErrBadSignature},
		{"wrong secret", []byte("other"), signed(now.Unix(), testBody), testBody, ErrBadSignature},
		{"stale timestamp", testSecret, signed(now.Unix()-301, testBody), testBody, ErrStale},
		{"future timestamp", testSecret, signed(now.Unix()+301, testBody), testBody, ErrStale},
		{"missing signature", testSecret, without(HeaderSignature), testBody, ErrBadSignature},
		{"missing timestamp", testSecret, without(HeaderTimestamp), testBody, ErrBadSignature},
		{"malformed timestamp", testSecret, malformedTS, testBody, ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(tt.secret, tt.header, tt.body, now, 5*time.Minute)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Verify = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestGoCloseWaitsForDelivery(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(100 * time.Millisecond)
		hits.Add(1)
	}))
	defer srv.Close()

	s, logs := newSender(t, 1)
	s.Go(srv.URL, testBody)
	s.Close(10 * time.Second)
	if got := hits.Load(); got != 1 {
		t.Errorf("deliveries = %d, want 1", got)
	}
	if !strings.Contains(logs.String(), "webhook delivered") {
		t.Error("logs lack the delivery outcome")
	}
}

func TestGoAfterCloseDropped(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		hits.Add(1)
	}))
	defer srv.Close()

	s, logs := newSender(t, 1)
	s.Close(0)
	s.Go(srv.URL, testBody)
	if got := hits.Load(); got != 0 {
		t.Errorf("deliveries after Close = %d, want 0", got)
	}
	if !strings.Contains(logs.String(), "webhook dropped") {
		t.Error("logs lack the drop")
	}
}

func TestCloseCutsPendingDelivery(t *testing.T) {
	tests := []struct {
		name    string
		handler func(w http.ResponseWriter, r *http.Request)
	}{
		{"waiting backoff", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first := make(chan struct{}, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case first <- struct{}{}:
				default:
				}
				tt.handler(w, r)
			}))
			defer srv.Close()

			s, logs := newSender(t, 5)
			// A backoff far longer than the bound below: only a cut ends it.
			s.Backoff = time.Hour
			s.Go(srv.URL, testBody)
			select {
			case <-first:
			case <-time.After(5 * time.Second):
				t.Fatal("first attempt never arrived")
			}

			start := time.Now()
			s.Close(10 * time.Millisecond)
			if d := time.Since(start); d > 30*time.Second {
				t.Errorf("Close took %s, want it to cut the delivery", d)
			}
			if !strings.Contains(logs.String(), ErrClosed.Error()) {
				t.Error("logs lack the cut delivery")
			}
		})
	}
}

func TestValidURL(t *testing.T) {
	tests := []struct {
		name    string
		url     string
		wantErr string // substring; "" means valid
	}{
		{"http", "http://example.com/hook", ""},
		{"https with port and query", "https://example.com:8443/hook?token=x", ""},
		{"ftp", "ftp://example.com/hook", "scheme"},
		{"relative", "/hook", "absolute"},
		{"empty", "", "absolute"},
		{"empty host", "http:///hook", "no host"},
		{"port only", "http://:8080/hook", "no host"},
		{"too long", "https://example.com/" + strings.Repeat("a", 2048), "too long"},
		{"malformed with userinfo", "http://user:pw-secret@example.com:bad/", "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidURL(tt.url)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("ValidURL = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ValidURL = %v, want error containing %q", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "pw-secret") {
				t.Errorf("ValidURL error echoes userinfo: %v", err)
			}
		})
	}
}

func TestNextDelay(t *testing.T) {
	tests := []struct {
		name       string
		base       time.Duration
		n          int
		retryAfter string
		want       time.Duration
	}{
		{"first retry", time.Second, 1, "", time.Second},
		{"doubled", time.Second, 3, "", 4 * time.Second},
		{"capped", time.Second, 30, "", time.Minute},
		{"base above cap", 2 * time.Minute, 1, "", time.Minute},
		{"retry-after", time.Second, 1, "5", 5 * time.Second},
		{"retry-after capped", time.Second, 1, "999999999999999999", time.Minute},
		{"retry-after not seconds", time.Second, 2, "Wed, 21 Oct 2015 07:28:00 GMT", 2 * time.Second},
		{"retry-after negative", time.Second, 1, "-1", time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextDelay(tt.base, tt.n, tt.retryAfter); got != tt.want {
				t.Errorf("nextDelay = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestSecretNeverLogged(t *testing.T) {
	const (
		password   = "pw-in-userinfo"
		queryToken = "tok-in-query"
	)
	status := func(code int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "0")
			http.Redirect(w, r, "/elsewhere?token="+queryToken, code)
		}
	}
	tests := []struct {
		name    string
		handler http.HandlerFunc
		closed  bool // server shut down: connection refused
	}{
		{"server error", status(http.StatusInternalServerError), false},
		{"client error", status(http.StatusUnauthorized), false},
		{"redirect", status(http.StatusFound), false},
		{"connection refused", status(http.StatusOK), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			hookURL := strings.Replace(srv.URL, "http://", "http://user:"+password+"@", 1) +
				"/hook?token=" + queryToken
			if tt.closed {
				srv.Close()
			}

			s, logs := newSender(t, 2)
			err := s.Deliver(t.Context(), hookURL, testBody)
			if err == nil {
				t.Fatal("Deliver succeeded, want a failure")
			}
			s.Go(hookURL, testBody)
			s.Close(10 * time.Second)

			out := logs.String() + err.Error()
			if !strings.Contains(out, "webhook delivery failed") || !strings.Contains(out, "127.0.0.1") {
				t.Fatal("logs lack the failure and its url, so the leak check would prove nothing")
			}
			// Name the leak rather than print it: test output is a log too.
			leaks := []struct{ what, value string }{
				{"the signing secret", string(testSecret)},
				{"the url password", password},
				{"the url query token", queryToken},
			}
			for _, l := range leaks {
				if strings.Contains(out, l.value) {
					t.Errorf("logs or error contain %s", l.what)
				}
			}
		})
	}
}

// loopback lets the tests' receivers on this host's loopback be reached.
var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// TestInternalAddressRefused: a webhook URL cannot make sandstorm POST to
// this host, its network or a metadata address, whatever name it uses
// (the check is on the address connected to), unless Allow lists it; a
// refusal is not retried, and the receiver sees nothing.
func TestInternalAddressRefused(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	tests := []struct {
		name, url string
		allow     []netip.Prefix
		want      error
	}{
		{"loopback literal", srv.URL, nil, ErrInternal},
		{"loopback by name", fmt.Sprintf("http://localhost:%d/", port), nil, ErrInternal},
		{"IPv4-mapped loopback", fmt.Sprintf("http://[::ffff:127.0.0.1]:%d/", port), nil, ErrInternal},
		{"allowed receiver", srv.URL, loopback, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := hits.Load()
			s, _ := newSender(t, 3)
			s.Allow = tt.allow
			err := s.Deliver(t.Context(), tt.url, testBody)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Deliver: %v, want %v", err, tt.want)
			}
			if got := hits.Load() - before; (tt.want == nil) != (got == 1) {
				t.Errorf("the receiver saw %d requests", got)
			}
		})
	}
	// Never dialled: the check refuses before a packet leaves.
	s, _ := newSender(t, 1)
	s.Allow = nil
	for _, addr := range []string{"169.254.169.254:80", "10.1.2.3:443", "[fe80::1%25eth0]:80", "[64:ff9b::a9fe:a9fe]:80", "192.168.1.1:80"} {
		if err := s.control("tcp", strings.Replace(addr, "%25", "%", 1), nil); !errors.Is(err, ErrInternal) {
			t.Errorf("%s: %v, want refused", addr, err)
		}
	}
	if err := s.control("tcp", "93.184.215.14:443", nil); err != nil {
		t.Errorf("a public address refused: %v", err)
	}
}
