package gateway

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// upstreamWithUsage answers like the Messages API: streamed (SSE) when the
// request asks, whole JSON otherwise, each reporting its usage.
func upstreamWithUsage(t *testing.T, in, out int) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Stream bool `json:"stream"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		if !req.Stream {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"type":"message","content":[],"usage":{"input_tokens":%d,"output_tokens":%d}}`, in, out)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":%d,\"output_tokens\":1}}}\n\n", in)
		w.(http.Flusher).Flush()
		fmt.Fprintf(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":%d}}\n\n", out/2)
		fmt.Fprintf(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":%d}}\n\n", out)
		fmt.Fprint(w, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	}))
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
	body := fmt.Sprintf(`{"model":"claude-sonnet-4-5","stream":%t}`, stream)
	req, _ := http.NewRequest("POST", "http://sandbox/v1/messages", strings.NewReader(body))
	req.Header.Set("x-api-key", s.Token)
	resp, err := client(s).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
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
