package gateway

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// upstreamWithUsage answers like the Messages API: streamed (SSE) when the
// request asks, whole JSON otherwise, each reporting its usage.
func upstreamWithUsage(t *testing.T, in, out int) *httptest.Server {
	return httptest.NewServer(fakeMessages(in, out, 0, true))
}

// fakeMessages answers like the Messages API, after a delay: it names the
// model it read (by its exact key, as the API does) and reports the usage;
// a stream not whole ends after its message_start.
func fakeMessages(in, out int, delay time.Duration, whole bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req map[string]json.RawMessage
		_ = json.NewDecoder(r.Body).Decode(&req)
		var model string
		var stream bool
		_ = json.Unmarshal(req["model"], &model)
		_ = json.Unmarshal(req["stream"], &stream)
		time.Sleep(delay)
		if !stream {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"type":"message","model":%q,"content":[],"usage":{"input_tokens":%d,"output_tokens":%d}}`, model, in, out)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":%q,\"usage\":{\"input_tokens\":%d,\"output_tokens\":1}}}\n\n", model, in)
		w.(http.Flusher).Flush()
		if !whole {
			return
		}
		fmt.Fprintf(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":%d}}\n\n", out/2)
		fmt.Fprintf(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":%d}}\n\n", out)
		fmt.Fprint(w, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	})
}

func openBudget(t *testing.T, upstream string, b Budget) *Session {
	t.Helper()
	g, err := New(Config{Upstream: upstream, Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s, err := g.Open("sess-b", SessionOptions{Budget: b, Owner: "me"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func call(t *testing.T, s *Session, stream bool) (int, string) {
	t.Helper()
	code, body, err := send(s, fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":200,"stream":%t}`, stream))
	if err != nil {
		t.Fatal(err)
	}
	return code, body
}

// send posts one Messages call over the session's socket.
func send(s *Session, body string) (int, string, error) {
	req, _ := http.NewRequest("POST", "http://sandbox/v1/messages", strings.NewReader(body))
	req.Header.Set("x-api-key", s.Token)
	resp, err := client(s).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), err
}

func TestUsageSummed(t *testing.T) {
	up := upstreamWithUsage(t, 1000, 200)
	defer up.Close()
	s := openBudget(t, up.URL, Budget{})
	for _, stream := range []bool{true, false} {
		if code, body := call(t, s, stream); code != 200 {
			t.Fatalf("stream %v: %d %s", stream, code, body)
		}
	}
	u := s.Usage()
	// sonnet: $3 in, $15 out per million tokens.
	wantCost := 2 * (1000*3 + 200*15) / 1e6
	if u.Requests != 2 || u.InputTokens != 2000 || u.OutputTokens != 400 || u.CostUSD < wantCost-1e-9 || u.CostUSD > wantCost+1e-9 || u.Exceeded != "" {
		t.Errorf("usage %+v, want 2 requests, 2000 in, 400 out, $%.4f", u, wantCost)
	}
}

func TestBudgetRefuses(t *testing.T) {
	up := upstreamWithUsage(t, 1000, 200)
	defer up.Close()
	for _, tt := range []struct {
		name   string
		budget Budget
		calls  int // answered before the refusal
		why    string
	}{
		{"requests", Budget{MaxRequests: 2}, 2, "2 model requests"},
		{"output tokens", Budget{MaxOutputTokens: 300}, 2, "400 output tokens of 300"},
		{"cost", Budget{MaxUSD: 0.005}, 1, "spent of $0.0050"},
		{"worst case over what is left", Budget{MaxUSD: 0.002}, 0, "held by calls in flight of $0.0020; this call may cost"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := openBudget(t, up.URL, tt.budget)
			for i := 0; i < tt.calls; i++ {
				if code, body := call(t, s, true); code != 200 {
					t.Fatalf("call %d: %d %s", i+1, code, body)
				}
			}
			code, body := call(t, s, true)
			if code != http.StatusBadRequest || !strings.Contains(body, "budget exceeded") || !strings.Contains(body, tt.why) || !strings.Contains(body, "invalid_request_error") {
				t.Fatalf("over budget: %d %s", code, body)
			}
			if u := s.Usage(); u.Requests != tt.calls || !strings.Contains(u.Exceeded, tt.why) {
				t.Errorf("usage %+v", u)
			}
		})
	}
}

func TestPrice(t *testing.T) {
	for model, want := range map[string]float64{"claude-haiku-4-5": 5, "claude-sonnet-4-5-20250929": 15, "claude-opus-4-5": 25, "claude-opus-4-1": 75, "someone/else": 75} {
		if _, out := Price(model); out != want {
			t.Errorf("%s: output price %v, want %v", model, out, want)
		}
	}
}

// TestConcurrentCallsStayInBudget: calls at once each hold their worst case,
// so together they spend no more than the budget (16 calls of about $0.83
// under $1 were once all answered).
func TestConcurrentCallsStayInBudget(t *testing.T) {
	var seen atomic.Int64
	fake := fakeMessages(50000, 1000, 100*time.Millisecond, true)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		fake.ServeHTTP(w, r)
	}))
	defer up.Close()
	const maxUSD = 1.00
	s := openBudget(t, up.URL, Budget{MaxUSD: maxUSD})
	// About 50k input tokens of an opus model: $0.75 in, $0.075 out at most.
	body := `{"model":"claude-opus-4-1","max_tokens":1000,"stream":true,"messages":[{"role":"user","content":"` + strings.Repeat("a", 150000) + `"}]}`
	var wg sync.WaitGroup
	var answered, refused atomic.Int64
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, text, err := send(s, body)
			switch {
			case err != nil:
				t.Error(err)
			case code == http.StatusOK:
				answered.Add(1)
			case code == http.StatusBadRequest && strings.Contains(text, "budget exceeded"):
				refused.Add(1)
			default:
				t.Errorf("%d %s", code, text)
			}
		}()
	}
	wg.Wait()
	u := s.Usage()
	if u.CostUSD > maxUSD || answered.Load() != 1 || refused.Load() != 15 || seen.Load() != 1 {
		t.Errorf("$%.4f spent of $%.2f: %d answered, %d refused, upstream saw %d", u.CostUSD, maxUSD, answered.Load(), refused.Load(), seen.Load())
	}
}

// TestCallsInFlightBounded: a session has at most maxInFlight calls at the
// upstream; the others wait for a slot.
func TestCallsInFlightBounded(t *testing.T) {
	var now, most atomic.Int64
	fake := fakeMessages(10, 10, 50*time.Millisecond, true)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := now.Add(1)
		defer now.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		fake.ServeHTTP(w, r)
	}))
	defer up.Close()
	s := openBudget(t, up.URL, Budget{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, text, err := send(s, `{"model":"claude-haiku-4-5","max_tokens":10,"stream":true}`); err != nil || code != http.StatusOK {
				t.Errorf("%d %s %v", code, text, err)
			}
		}()
	}
	wg.Wait()
	if most.Load() > maxInFlight || s.Usage().Requests != 8 {
		t.Errorf("%d calls at once at the upstream (bound %d), %d requests", most.Load(), maxInFlight, s.Usage().Requests)
	}
}

// TestSettledPrice: an answer is priced by the model the upstream names, and
// a cut one at its worst case, never at what little it reported.
func TestSettledPrice(t *testing.T) {
	for _, tt := range []struct {
		name    string
		whole   bool
		body    string
		wantUSD float64
	}{
		// The exact key "model" is what the upstream reads; Go's decoding
		// into a struct matches "Model" too, and kept the later haiku.
		{"case variant of the model key", true, `{"model":"claude-opus-4-1","Model":"claude-haiku-4-5","max_tokens":100,"stream":true}`, (1000*15 + 100*75) / 1e6},
		{"upper-case model key, not streamed", true, `{"model":"claude-opus-4-1","MODEL":"claude-haiku-4-5","max_tokens":100,"stream":false}`, (1000*15 + 100*75) / 1e6},
		{"cut stream costs max_tokens", false, `{"model":"claude-sonnet-4-5","max_tokens":4000,"stream":true}`, (1000*3 + 4000*15) / 1e6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			up := httptest.NewServer(fakeMessages(1000, 100, 0, tt.whole))
			defer up.Close()
			s := openBudget(t, up.URL, Budget{})
			if code, text, err := send(s, tt.body); err != nil || code != http.StatusOK {
				t.Fatalf("%d %s %v", code, text, err)
			}
			if u := s.Usage(); u.CostUSD < tt.wantUSD-1e-9 || u.CostUSD > tt.wantUSD+1e-9 {
				t.Errorf("$%.6f, want $%.6f (%+v)", u.CostUSD, tt.wantUSD, u)
			}
		})
	}
}
