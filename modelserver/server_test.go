package modelserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// sseEvent is one parsed server-sent event.
type sseEvent struct {
	Name string
	Data json.RawMessage
}

// readSSE parses a text/event-stream body: "event:" and "data:" lines, an
// event ending at a blank line.
func readSSE(t *testing.T, r io.Reader) []sseEvent {
	t.Helper()
	var out []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.Name != "" || cur.Data != nil {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			cur.Name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			cur.Data = append(cur.Data, strings.TrimPrefix(line, "data: ")...)
		default:
			t.Fatalf("unexpected SSE line %q", line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur.Name != "" {
		t.Fatalf("stream ends inside event %q", cur.Name)
	}
	return out
}

// answer is a response reassembled from its stream or its JSON.
type answer struct {
	ID, Model, StopReason string
	Blocks                []Block
	OutputTokens          int
}

// reassemble checks the event order of the Messages stream and rebuilds the
// message the way a client does.
func reassemble(t *testing.T, events []sseEvent) answer {
	t.Helper()
	var a answer
	var partial []string // accumulated input JSON per block
	open := -1           // index of the open block
	for i, e := range events {
		var d struct {
			Type    string `json:"type"`
			Index   *int   `json:"index"`
			Message struct {
				ID         string          `json:"id"`
				Type       string          `json:"type"`
				Role       string          `json:"role"`
				Model      string          `json:"model"`
				Content    json.RawMessage `json:"content"`
				StopReason *string         `json:"stop_reason"`
				Usage      map[string]int  `json:"usage"`
			} `json:"message"`
			ContentBlock struct {
				Type  string          `json:"type"`
				Text  *string         `json:"text"`
				ID    string          `json:"id"`
				Name  string          `json:"name"`
				Input json.RawMessage `json:"input"`
			} `json:"content_block"`
			Delta struct {
				Type        string `json:"type"`
				Text        string `json:"text"`
				PartialJSON string `json:"partial_json"`
				StopReason  string `json:"stop_reason"`
			} `json:"delta"`
			Usage map[string]int `json:"usage"`
		}
		if err := json.Unmarshal(e.Data, &d); err != nil {
			t.Fatalf("event %d %q: bad data %s: %v", i, e.Name, e.Data, err)
		}
		if d.Type != e.Name {
			t.Fatalf("event %d: name %q but data type %q", i, e.Name, d.Type)
		}
		if (i == 0) != (e.Name == "message_start") || (i == len(events)-1) != (e.Name == "message_stop") {
			t.Fatalf("event %d is %q: a stream starts with message_start and ends with message_stop", i, e.Name)
		}
		switch e.Name {
		case "message_start":
			m := d.Message
			if m.Type != "message" || m.Role != "assistant" || string(m.Content) != "[]" || m.StopReason != nil || m.Usage["input_tokens"] < 1 {
				t.Fatalf("message_start: %s", e.Data)
			}
			a.ID, a.Model = m.ID, m.Model
		case "ping":
		case "content_block_start":
			if open != -1 || d.Index == nil || *d.Index != len(a.Blocks) {
				t.Fatalf("content_block_start out of order: %s", e.Data)
			}
			open = *d.Index
			cb := d.ContentBlock
			switch cb.Type {
			case "text":
				if cb.Text == nil || *cb.Text != "" {
					t.Fatalf("text block starts with text: %s", e.Data)
				}
			case "tool_use":
				if string(cb.Input) != "{}" || cb.ID == "" || cb.Name == "" {
					t.Fatalf("tool_use block start: %s", e.Data)
				}
			default:
				t.Fatalf("block type %q", cb.Type)
			}
			a.Blocks = append(a.Blocks, Block{Type: cb.Type, ID: cb.ID, Name: cb.Name})
			partial = append(partial, "")
		case "content_block_delta":
			if d.Index == nil || *d.Index != open {
				t.Fatalf("delta for a block that is not open: %s", e.Data)
			}
			b := &a.Blocks[open]
			switch {
			case d.Delta.Type == "text_delta" && b.Type == "text":
				b.Text += d.Delta.Text
			case d.Delta.Type == "input_json_delta" && b.Type == "tool_use":
				partial[open] += d.Delta.PartialJSON
			default:
				t.Fatalf("delta %q in a %q block", d.Delta.Type, b.Type)
			}
		case "content_block_stop":
			if d.Index == nil || *d.Index != open {
				t.Fatalf("stop for a block that is not open: %s", e.Data)
			}
			if b := &a.Blocks[open]; b.Type == "tool_use" {
				if !json.Valid([]byte(partial[open])) {
					t.Fatalf("tool input %q is not JSON", partial[open])
				}
				b.Input = json.RawMessage(partial[open])
			}
			open = -1
		case "message_delta":
			if open != -1 || d.Delta.StopReason == "" {
				t.Fatalf("message_delta: %s", e.Data)
			}
			a.StopReason, a.OutputTokens = d.Delta.StopReason, d.Usage["output_tokens"]
		case "message_stop":
			if a.StopReason == "" {
				t.Fatal("message_stop before message_delta")
			}
		default:
			t.Fatalf("unknown event %q", e.Name)
		}
	}
	return a
}

// fromJSON reads a non-streaming Message object.
func fromJSON(t *testing.T, body []byte) answer {
	t.Helper()
	var m struct {
		ID         string         `json:"id"`
		Type       string         `json:"type"`
		Role       string         `json:"role"`
		Model      string         `json:"model"`
		Content    []Block        `json:"content"`
		StopReason string         `json:"stop_reason"`
		Usage      map[string]int `json:"usage"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("message %s: %v", body, err)
	}
	if m.Type != "message" || m.Role != "assistant" || m.Usage["input_tokens"] < 1 || m.Usage["output_tokens"] < 1 {
		t.Fatalf("not a Message: %s", body)
	}
	return answer{ID: m.ID, Model: m.Model, StopReason: m.StopReason, Blocks: m.Content, OutputTokens: m.Usage["output_tokens"]}
}

// sameBlocks compares blocks, tool input as JSON values; an id is compared
// only where the scenario fixed it.
func sameBlocks(t *testing.T, got, want []Block) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d blocks %+v, want %d %+v", len(got), got, len(want), want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Type != w.Type || g.Text != w.Text || g.Name != w.Name {
			t.Errorf("block %d: got %+v, want %+v", i, g, w)
		}
		if w.Type != "tool_use" {
			continue
		}
		if (w.ID != "" && g.ID != w.ID) || !strings.HasPrefix(g.ID, "toolu_") {
			t.Errorf("block %d: id %q, want %q", i, g.ID, w.ID)
		}
		var gv, wv any
		if json.Unmarshal(g.Input, &gv) != nil || json.Unmarshal(w.Input, &wv) != nil || !reflect.DeepEqual(gv, wv) {
			t.Errorf("block %d: input %s, want %s", i, g.Input, w.Input)
		}
	}
}

func messagesBody(stream bool) string {
	return fmt.Sprintf(`{"model":"claude-test-1","max_tokens":1024,"stream":%t,"messages":[{"role":"user","content":"hi"}]}`, stream)
}

// post sends body to url+path and returns the status and the whole body.
func post(t *testing.T, url, path, body string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Anthropic-Version", "2023-06-01")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

func mustParse(t *testing.T, js string) Scenario {
	t.Helper()
	sc, err := ParseScenario([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

// TestAnswers checks each kind of turn both streamed and as JSON: the blocks
// a client rebuilds are the scenario's.
func TestAnswers(t *testing.T) {
	tests := []struct {
		name, turn, stop string
	}{
		{"text", `{"text":"Hello there, this is a scripted answer."}`, "end_turn"},
		{"text and tool_use", `{"text":"Writing it.","tool_use":{"name":"Write","input":{"file_path":"h.py","content":"print(\"héllo ✓ 日本語\")\n","n":[1,2,{"x":null}]}}}`, "tool_use"},
		{"tool_use only, no input", `{"tool_use":{"name":"Noop"}}`, "tool_use"},
		{"content list", `{"content":[{"type":"text","text":"one"},{"type":"tool_use","id":"toolu_fixed","name":"Bash","input":{"command":"ls"}},{"type":"text","text":"two ✓"},{"type":"tool_use","name":"Read","input":{"file_path":"/x"}}]}`, "tool_use"},
		{"short text", `{"text":"k"}`, "end_turn"},
		{"stop_reason override", `{"text":"cut","stop_reason":"max_tokens"}`, "max_tokens"},
	}
	for _, tt := range tests {
		for _, stream := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/stream=%t", tt.name, stream), func(t *testing.T) {
				sc := mustParse(t, `{"name":"t","turns":[`+tt.turn+`]}`)
				srv := NewServer(sc)
				ts := httptest.NewServer(srv)
				defer ts.Close()
				resp, body := post(t, ts.URL, "/v1/messages?beta=true", messagesBody(stream), nil)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
				var a answer
				if stream {
					if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
						t.Fatalf("Content-Type %q", ct)
					}
					events := readSSE(t, bytes.NewReader(body))
					a = reassemble(t, events)
					checkChunked(t, events)
				} else {
					if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
						t.Fatalf("Content-Type %q", ct)
					}
					a = fromJSON(t, body)
				}
				sameBlocks(t, a.Blocks, sc.Turns[0].blocks())
				if a.StopReason != tt.stop || a.Model != "claude-test-1" || !strings.HasPrefix(a.ID, "msg_") || a.OutputTokens < 1 {
					t.Errorf("stop %q model %q id %q output tokens %d", a.StopReason, a.Model, a.ID, a.OutputTokens)
				}
				reqs := srv.Requests()
				if len(reqs) != 1 || reqs[0].Turn != 0 || reqs[0].Exhausted || reqs[0].Status != 200 || reqs[0].Stream != stream || reqs[0].Query != "beta=true" {
					t.Errorf("recorded %+v", reqs)
				}
			})
		}
	}
}

// checkChunked checks that a long text or input arrives in several deltas,
// so the live path is exercised.
func checkChunked(t *testing.T, events []sseEvent) {
	t.Helper()
	deltas := map[string]int{}
	sizes := map[string]int{}
	for _, e := range events {
		if e.Name != "content_block_delta" {
			continue
		}
		var d struct {
			Index int
			Delta struct{ Text, PartialJSON string } `json:"delta"`
		}
		_ = json.Unmarshal(e.Data, &d)
		k := fmt.Sprint(d.Index)
		deltas[k]++
		sizes[k] += len(d.Delta.Text) + len(d.Delta.PartialJSON)
	}
	for k, n := range deltas {
		if sizes[k] >= 6 && n < 2 {
			t.Errorf("block %s: %d bytes in %d delta", k, sizes[k], n)
		}
	}
}

// flushCounter is a ResponseWriter that counts flushes.
type flushCounter struct {
	*httptest.ResponseRecorder
	flushes int
}

func (f *flushCounter) Flush() { f.flushes++ }

func TestStreamFlushesEveryEvent(t *testing.T) {
	srv := NewServer(mustParse(t, `{"turns":[{"text":"a longer text to split","tool_use":{"name":"Bash","input":{"command":"echo hi"}}}]}`))
	w := &flushCounter{ResponseRecorder: httptest.NewRecorder()}
	srv.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(messagesBody(true))))
	events := readSSE(t, w.Body)
	if len(events) < 10 || w.flushes != len(events) {
		t.Errorf("%d events, %d flushes", len(events), w.flushes)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		turn        string
		status      int
		typ, substr string
	}{
		{`{"error":{"status":429,"type":"rate_limit_error","message":"slow down"}}`, 429, "rate_limit_error", "slow down"},
		{`{"error":{"status":500}}`, 500, "api_error", "scripted"},
		{`{"error":{"status":529}}`, 529, "overloaded_error", "overloaded"},
		{`{"error":{"status":401,"message":"invalid x-api-key"}}`, 401, "authentication_error", "invalid x-api-key"},
	}
	for _, tt := range tests {
		for _, stream := range []bool{true, false} {
			t.Run(fmt.Sprintf("%d/stream=%t", tt.status, stream), func(t *testing.T) {
				srv := NewServer(mustParse(t, `{"turns":[`+tt.turn+`]}`))
				ts := httptest.NewServer(srv)
				defer ts.Close()
				resp, body := post(t, ts.URL, "/v1/messages", messagesBody(stream), nil)
				checkAPIError(t, resp, body, tt.status, tt.typ, tt.substr)
				if r := srv.Requests()[0]; r.Status != tt.status || r.Turn != 0 {
					t.Errorf("recorded status %d turn %d", r.Status, r.Turn)
				}
			})
		}
	}
}

// checkAPIError checks an answer is the API's error object with status.
func checkAPIError(t *testing.T, resp *http.Response, body []byte, status int, typ, substr string) {
	t.Helper()
	var e struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %s: %v", body, err)
	}
	if resp.StatusCode != status || resp.Header.Get("Content-Type") != "application/json" || e.Type != "error" ||
		e.Error.Type != typ || !strings.Contains(e.Error.Message, substr) {
		t.Errorf("got %d %s, want %d %s containing %q", resp.StatusCode, body, status, typ, substr)
	}
}

func TestExhausted(t *testing.T) {
	t.Run("finish", func(t *testing.T) {
		srv := NewServer(mustParse(t, `{"turns":[{"text":"only"}]}`))
		ts := httptest.NewServer(srv)
		defer ts.Close()
		for i, want := range []string{"only", FinishedText, FinishedText} {
			resp, body := post(t, ts.URL, "/v1/messages", messagesBody(i%2 == 0), nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			var a answer
			if i%2 == 0 {
				a = reassemble(t, readSSE(t, bytes.NewReader(body)))
			} else {
				a = fromJSON(t, body)
			}
			if len(a.Blocks) != 1 || a.Blocks[0].Text != want || a.StopReason != "end_turn" {
				t.Errorf("answer %d: %+v", i, a)
			}
		}
		reqs := srv.Requests()
		if srv.Exhausted() != 2 || reqs[0].Exhausted || !reqs[1].Exhausted || reqs[1].Turn != -1 {
			t.Errorf("exhausted %d, records %+v", srv.Exhausted(), reqs)
		}
	})
	t.Run("error", func(t *testing.T) {
		srv := NewServer(mustParse(t, `{"name":"e","on_exhausted":"error","turns":[{"text":"only"}]}`))
		ts := httptest.NewServer(srv)
		defer ts.Close()
		post(t, ts.URL, "/v1/messages", messagesBody(true), nil)
		resp, body := post(t, ts.URL, "/v1/messages", messagesBody(true), nil)
		checkAPIError(t, resp, body, 500, "api_error", `scenario "e" has no turn left (1 used)`)
	})
	t.Run("model-error", func(t *testing.T) {
		sc, err := Builtin("model-error")
		if err != nil {
			t.Fatal(err)
		}
		srv := NewServer(sc)
		ts := httptest.NewServer(srv)
		defer ts.Close()
		for range 3 {
			resp, body := post(t, ts.URL, "/v1/messages", messagesBody(true), nil)
			checkAPIError(t, resp, body, 500, "api_error", "Internal server error (scripted)")
		}
		if srv.Exhausted() != 3 {
			t.Errorf("exhausted %d", srv.Exhausted())
		}
	})
}

func TestOtherEndpoints(t *testing.T) {
	srv := NewServer(mustParse(t, `{"turns":[{"text":"first"}]}`))
	ts := httptest.NewServer(srv)
	defer ts.Close()

	resp, body := post(t, ts.URL, "/v1/messages/count_tokens", `{"model":"m","messages":[{"role":"user","content":"`+strings.Repeat("word ", 400)+`"}]}`, nil)
	var ct struct {
		InputTokens int `json:"input_tokens"`
	}
	if err := json.Unmarshal(body, &ct); resp.StatusCode != 200 || err != nil || ct.InputTokens < 400 || ct.InputTokens > 1000 {
		t.Errorf("count_tokens: %d %s", resp.StatusCode, body)
	}
	resp, body = post(t, ts.URL, "/v1/messages/count_tokens", `{"model":"m"}`, nil)
	checkAPIError(t, resp, body, 400, "invalid_request_error", "messages")

	for _, method := range []string{http.MethodGet, http.MethodHead} {
		req, _ := http.NewRequest(method, ts.URL+"/api/hello", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s /api/hello: %d", method, resp.StatusCode)
		}
	}

	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/v1/messages"}, {http.MethodPost, "/v1/complete"}, {http.MethodGet, "/"}, {http.MethodPost, "/api/hello"},
	} {
		req, _ := http.NewRequest(c.method, ts.URL+c.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		checkAPIError(t, resp, body, 404, "not_found_error", c.path)
	}

	// None of those consumed a turn.
	_, body = post(t, ts.URL, "/v1/messages", messagesBody(false), nil)
	if a := fromJSON(t, body); a.Blocks[0].Text != "first" {
		t.Errorf("first messages request got %+v", a)
	}
}

func TestBadRequests(t *testing.T) {
	tests := []struct {
		name, body string
		status     int
		typ, want  string
	}{
		{"bad json", `{"model":`, 400, "invalid_request_error", "invalid JSON"},
		{"not an object", `[1]`, 400, "invalid_request_error", "invalid JSON"},
		{"no model", `{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, 400, "invalid_request_error", "model: Field required"},
		{"no messages", `{"model":"m","max_tokens":5}`, 400, "invalid_request_error", "messages: Field required"},
		{"bad role", `{"model":"m","max_tokens":5,"messages":[{"role":"robot","content":"hi"}]}`, 400, "invalid_request_error", "messages.0.role"},
		{"bad content", `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"},{"role":"user","content":5}]}`, 400, "invalid_request_error", "messages.1.content"},
		{"bad system", `{"model":"m","max_tokens":5,"system":7,"messages":[{"role":"user","content":"hi"}]}`, 400, "invalid_request_error", "system"},
		{"no max_tokens", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, 400, "invalid_request_error", "max_tokens"},
		{"too large", `{"model":"` + strings.Repeat("m", maxBody) + `"}`, 413, "request_too_large", "size limit"},
	}
	srv := NewServer(mustParse(t, `{"turns":[{"text":"first"}]}`))
	ts := httptest.NewServer(srv)
	defer ts.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := post(t, ts.URL, "/v1/messages", tt.body, nil)
			checkAPIError(t, resp, body, tt.status, tt.typ, tt.want)
		})
	}
	_, body := post(t, ts.URL, "/v1/messages", messagesBody(false), nil)
	if a := fromJSON(t, body); a.Blocks[0].Text != "first" {
		t.Errorf("a bad request consumed a turn: %+v", a)
	}
}

// TestRecording checks the parsed request and ToolResults: results count
// once though the agent resends the conversation.
func TestRecording(t *testing.T) {
	srv := NewServer(mustParse(t, `{"turns":[{"text":"a"},{"text":"b"}]}`))
	ts := httptest.NewServer(srv)
	defer ts.Close()
	first := `{"model":"claude-x","max_tokens":100,"stream":true,
		"system":[{"type":"text","text":"sys one"},{"type":"text","text":"sys two"}],
		"tools":[{"name":"Bash","input_schema":{}},{"name":"Write","input_schema":{}}],
		"messages":[{"role":"user","content":"do it"},
			{"role":"assistant","content":[{"type":"text","text":"ok"},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}]},
			{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"file.txt"}]}]}`
	second := `{"model":"claude-x","max_tokens":100,"system":"plain system",
		"messages":[{"role":"user","content":"do it"},
			{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}]},
			{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"file.txt"}]},
			{"role":"assistant","content":[{"type":"tool_use","id":"t2","name":"Bash","input":{"command":"false"}}]},
			{"role":"user","content":[{"type":"tool_result","tool_use_id":"t2","is_error":true,"content":[{"type":"text","text":"exit 1"},{"type":"text","text":"boom"}]}]}]}`
	post(t, ts.URL, "/v1/messages", first, nil)
	post(t, ts.URL, "/v1/messages", second, nil)

	reqs := srv.Requests()
	r := reqs[0]
	if r.Seq != 1 || r.Model != "claude-x" || !r.Stream || r.MaxTokens != 100 ||
		!reflect.DeepEqual(r.System, []string{"sys one", "sys two"}) || !reflect.DeepEqual(r.Tools, []string{"Bash", "Write"}) ||
		len(r.Messages) != 3 || r.Messages[1].Content[1].Name != "Bash" || string(r.Messages[1].Content[1].Input) != `{"command":"ls"}` ||
		r.Header.Get("Anthropic-Version") != "2023-06-01" {
		t.Errorf("first request recorded as %+v", r)
	}
	if reqs[1].Seq != 2 || !reflect.DeepEqual(reqs[1].System, []string{"plain system"}) || reqs[1].Turn != 1 {
		t.Errorf("second request recorded as %+v", reqs[1])
	}
	want := []ToolResult{{ToolUseID: "t1", Content: "file.txt"}, {ToolUseID: "t2", Content: "exit 1\nboom", IsError: true}}
	if got := srv.ToolResults(); !reflect.DeepEqual(got, want) {
		t.Errorf("ToolResults() = %+v, want %+v", got, want)
	}

	// Requests returns copies: changing them leaves the records alone.
	reqs[0].Header.Set("Anthropic-Version", "x")
	reqs[0].Messages[0].Content[0].Text = "x"
	reqs[0].Messages[1].Content[1].Input[0] = 'x'
	reqs[0].Tools[0] = "x"
	again := srv.Requests()[0]
	if again.Header.Get("Anthropic-Version") != "2023-06-01" || again.Messages[0].Content[0].Text != "do it" ||
		string(again.Messages[1].Content[1].Input) != `{"command":"ls"}` || again.Tools[0] != "Bash" {
		t.Errorf("records changed through a copy: %+v", again)
	}
}

func TestRedaction(t *testing.T) {
	const key = "sk-ant-api03-SECRETkeyMaterial_0123456789-abcdefABCDEF"
	const token = "tok-SECRETbearer.0123456789"
	var logs bytes.Buffer
	var logMu sync.Mutex
	srv := NewServer(mustParse(t, `{"turns":[{"text":"a"},{"text":"b"},{"text":"c"}]}`))
	srv.Logf = func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		fmt.Fprintf(&logs, format+"\n", args...)
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()

	body := `{"model":"m","max_tokens":5,"system":"key ` + key + `",
		"messages":[{"role":"user","content":"my key is ` + key + ` and Bearer ` + token + `"},
		{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"echo ` + key + `"}}]},
		{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"` + key + `"}]}]}`
	post(t, ts.URL, "/v1/messages?key="+key, body, map[string]string{
		"X-Api-Key":      key,
		"X-Goog-Api-Key": "AIzaPlainLookingValue",
		"X-Custom":       "passes " + key,
	})
	post(t, ts.URL, "/v1/messages", messagesBody(false), map[string]string{"Authorization": "Bearer " + token})
	post(t, ts.URL, "/v1/messages", messagesBody(false), map[string]string{"X-Api-Key": key, "Authorization": "Bearer " + token})

	reqs := srv.Requests()
	dump, err := json.Marshal(reqs)
	if err != nil {
		t.Fatal(err)
	}
	// The failure message names the place only, lest a test print a secret.
	for where, text := range map[string]string{"Requests() as JSON": string(dump), "Requests() with %+v": fmt.Sprintf("%+v", reqs), "the log": logs.String()} {
		for _, secret := range []string{"SECRET", "AIzaPlain"} {
			if strings.Contains(text, secret) {
				t.Errorf("secret %q shows in %s", secret, where)
			}
		}
	}
	if !strings.Contains(logs.String(), "credential=x-api-key("+Fingerprint(key)+")") {
		t.Errorf("log lacks the fingerprint: %s", logs.String())
	}
	r := reqs[0]
	if r.Credential != "x-api-key" || r.Fingerprint != Fingerprint(key) || len(r.Fingerprint) != 8 {
		t.Errorf("credential %q fingerprint %q", r.Credential, r.Fingerprint)
	}
	if r.Header.Get("X-Api-Key") != Redacted || r.Header.Get("X-Goog-Api-Key") != Redacted || r.Header.Get("X-Custom") != "passes "+Redacted {
		t.Errorf("headers %v", r.Header)
	}
	if r.Messages[0].Content[0].Text != "my key is "+Redacted+" and "+Redacted || r.System[0] != "key "+Redacted ||
		string(r.Messages[1].Content[0].Input) != `{"command":"echo `+Redacted+`"}` || r.Query != "key="+Redacted {
		t.Errorf("body not redacted: %+v", r)
	}
	if got := srv.ToolResults(); got[0].Content != Redacted {
		t.Errorf("tool result %q", got[0].Content)
	}
	if r := reqs[1]; r.Credential != "bearer" || r.Fingerprint != Fingerprint(token) || r.Header.Get("Authorization") != Redacted {
		t.Errorf("bearer: %q %q %v", r.Credential, r.Fingerprint, r.Header)
	}
	if r := reqs[2]; r.Credential != "x-api-key,bearer" || r.Fingerprint != Fingerprint(key)+","+Fingerprint(token) {
		t.Errorf("both: %q %q", r.Credential, r.Fingerprint)
	}
	if Fingerprint(key) == Fingerprint(token) {
		t.Error("fingerprints collide")
	}
}

// TestConcurrent runs requests in parallel with readers; run it with -race.
// Every turn must be answered exactly once.
func TestConcurrent(t *testing.T) {
	const n = 24
	var turns []string
	for i := range n {
		turns = append(turns, fmt.Sprintf(`{"text":"turn %d"}`, i))
	}
	srv := NewServer(mustParse(t, `{"turns":[`+strings.Join(turns, ",")+`]}`))
	ts := httptest.NewServer(srv)
	defer ts.Close()

	// The goroutines only fetch; parsing (which may t.Fatal) runs here.
	var wg sync.WaitGroup
	bodies := make([][]byte, n)
	for i := range n {
		wg.Go(func() {
			resp, err := http.Post(ts.URL+"/v1/messages", "application/json", strings.NewReader(messagesBody(i%2 == 0)))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			bodies[i], _ = io.ReadAll(resp.Body)
		})
		wg.Go(func() {
			_ = srv.Requests()
			_ = srv.ToolResults()
			_ = srv.Exhausted()
		})
	}
	wg.Wait()
	var got []string
	for i, body := range bodies {
		var a answer
		if i%2 == 0 {
			a = reassemble(t, readSSE(t, bytes.NewReader(body)))
		} else {
			a = fromJSON(t, body)
		}
		got = append(got, a.Blocks[0].Text)
	}
	seen := map[string]bool{}
	for _, s := range got {
		seen[s] = true
	}
	for i := range n {
		if !seen[fmt.Sprintf("turn %d", i)] {
			t.Errorf("turn %d never answered; answers %v", i, got)
		}
	}
	seqs := map[int]bool{}
	for _, r := range srv.Requests() {
		seqs[r.Seq] = true
		if r.Status != 200 {
			t.Errorf("request %d status %d", r.Seq, r.Status)
		}
	}
	if len(seqs) != n || srv.Exhausted() != 0 {
		t.Errorf("%d distinct seqs, exhausted %d", len(seqs), srv.Exhausted())
	}
}

func TestDelay(t *testing.T) {
	srv := NewServer(mustParse(t, `{"turns":[{"text":"slow","delay_ms":300},{"text":"never","delay_ms":10000}]}`))
	ts := httptest.NewServer(srv)
	defer ts.Close()
	start := time.Now()
	post(t, ts.URL, "/v1/messages", messagesBody(true), nil)
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("answered after %v, want >= 300ms", d)
	}

	// A client that gives up ends the wait at once.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/v1/messages", strings.NewReader(messagesBody(true)))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("request with a 10 s delay answered within 100 ms")
	}
	waitFor(t, func() bool { return srv.Requests()[1].Status == 500 })
}

// waitFor polls cond for up to 3 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 3s")
}

func TestListen(t *testing.T) {
	srv := NewServer(mustParse(t, `{"turns":[{"text":"wait","delay_ms":20000}]}`))
	url, stop, err := srv.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(url + "/api/hello")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("hello: %v %v", resp, err)
	}
	resp.Body.Close()

	// stop ends an answer still in its delay, then the listener.
	done := make(chan int)
	go func() {
		resp, err := http.Post(url+"/v1/messages", "application/json", strings.NewReader(messagesBody(true)))
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	waitFor(t, func() bool { r := srv.Requests(); return len(r) == 2 && r[1].Turn == 0 })
	start := time.Now()
	stop()
	stop() // idempotent
	if status := <-done; status != 500 || time.Since(start) > 2*time.Second {
		t.Errorf("in-flight answer: status %d after %v", status, time.Since(start))
	}
	if _, err := http.Get(url + "/api/hello"); err == nil {
		t.Error("server still answers after stop")
	}

	// Cancelling the context stops it too.
	ctx, cancel := context.WithCancel(context.Background())
	url, _, err = NewServer(mustParse(t, `{"turns":[{"text":"x"}]}`)).Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	waitFor(t, func() bool {
		resp, err := http.Get(url + "/api/hello")
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	})

	if _, _, err := srv.Listen(context.Background(), "256.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "listen on 256.0.0.1:0") {
		t.Errorf("bad address: %v", err)
	}
}

func TestChunks(t *testing.T) {
	for _, s := range []string{"", "a", "ab", "abcdefghij", "日本語テキスト", "é✓x"} {
		parts := chunks(s, 3)
		if strings.Join(parts, "") != s || len(parts) > 3 {
			t.Errorf("chunks(%q) = %q", s, parts)
		}
		for _, p := range parts {
			if !utf8.ValidString(p) {
				t.Errorf("chunks(%q): piece %q splits a rune", s, p)
			}
		}
	}
}
