package modelserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// maxBody bounds a request body; the CLI's long conversations stay far below.
const maxBody = 32 << 20

// Server answers the Messages API from a Scenario. It is an http.Handler;
// Listen serves it on a TCP address.
type Server struct {
	// Logf, when set, gets one line per request, with no secret in it. Set
	// it before the server takes requests.
	Logf func(format string, args ...any)

	scenario Scenario

	mu        sync.Mutex
	next      int // index of the next turn
	exhausted int // requests answered after the turns ran out
	requests  []Request
}

// NewServer returns a server at the scenario's first turn. A scenario built
// in Go gets the checks and defaults of ParseScenario; an invalid one panics,
// as it is a bug in the test that wrote it.
func NewServer(s Scenario) *Server {
	// The JSON round trip also deep-copies s, so the caller may reuse it.
	data, err := json.Marshal(s)
	if err == nil {
		s, err = ParseScenario(data)
	}
	if err != nil {
		panic(fmt.Sprintf("modelserver: NewServer: invalid scenario: %v", err))
	}
	return &Server{scenario: s}
}

// Requests returns a copy of every request recorded so far, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		out[i] = r.clone()
	}
	return out
}

// ToolResults returns the tool results the model received, in the order they
// first appeared. The agent resends the whole conversation each time, so a
// result counts once per tool_use id.
func (s *Server) ToolResults() []ToolResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []ToolResult
	for _, r := range s.requests {
		for _, m := range r.Messages {
			for _, p := range m.Content {
				if p.Type != "tool_result" || seen[p.ToolUseID] {
					continue
				}
				seen[p.ToolUseID] = true
				out = append(out, ToolResult{ToolUseID: p.ToolUseID, Content: p.Text, IsError: p.IsError})
			}
		}
	}
	return out
}

// Exhausted is how many requests came after the scenario's turns ran out.
func (s *Server) Exhausted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exhausted
}

// ServeHTTP answers POST /v1/messages, POST /v1/messages/count_tokens and
// GET or HEAD /api/hello; anything else is a 404 in the API's format.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := newRequest(r)
	s.mu.Lock()
	rec.Seq = len(s.requests) + 1
	s.requests = append(s.requests, rec)
	s.mu.Unlock()
	// The real API names every answer; the CLI logs it with errors.
	w.Header().Set("request-id", fmt.Sprintf("req_sandstorm_%06d", rec.Seq))

	var status int
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/messages":
		status = s.messages(w, r, rec.Seq)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/messages/count_tokens":
		status = s.countTokens(w, r, rec.Seq)
	case (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.URL.Path == "/api/hello":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, `{"message":"hello"}`)
		}
		status = http.StatusOK
	default:
		status = writeError(w, APIError{Status: http.StatusNotFound, Type: "not_found_error",
			Message: "Not found: " + r.Method + " " + r.URL.Path})
	}

	var done Request
	s.update(rec.Seq, func(r *Request) {
		r.Status = status
		done = *r
	})
	if s.Logf != nil {
		s.Logf("modelserver: %s", done.summary())
	}
}

// summary is the log line for a request: no header values, no bodies.
func (r Request) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %s %s", r.Seq, r.Method, r.Path)
	if r.Query != "" {
		b.WriteString("?" + r.Query)
	}
	if r.Model != "" {
		fmt.Fprintf(&b, " model=%s stream=%t messages=%d tools=%d", r.Model, r.Stream, len(r.Messages), len(r.Tools))
	}
	if r.Credential != "" {
		fmt.Fprintf(&b, " credential=%s(%s)", r.Credential, r.Fingerprint)
	}
	switch {
	case r.Exhausted:
		b.WriteString(" turn=exhausted")
	case r.Turn >= 0:
		fmt.Fprintf(&b, " turn=%d", r.Turn)
	}
	fmt.Fprintf(&b, " -> %d", r.Status)
	return b.String()
}

// update changes the record of request seq under the lock.
func (s *Server) update(seq int, f func(*Request)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.requests[seq-1])
}

// readBody parses, checks and records the body. A non-zero status means the
// request was invalid and is already answered with it.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, seq int) (req wireRequest, tokens, status int) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		if tooBig := (*http.MaxBytesError)(nil); errors.As(err, &tooBig) {
			return req, 0, writeError(w, APIError{Status: http.StatusRequestEntityTooLarge, Type: "request_too_large", Message: "request body exceeds the size limit"})
		}
		return req, 0, invalid(w, "reading the body: "+err.Error())
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return req, 0, invalid(w, "body: invalid JSON: "+err.Error())
	}
	var rec Request
	if err := req.fill(&rec); err != nil {
		return req, 0, invalid(w, err.Error())
	}
	s.update(seq, func(r *Request) {
		r.Model, r.System, r.Messages, r.Tools, r.Stream, r.MaxTokens =
			rec.Model, rec.System, rec.Messages, rec.Tools, rec.Stream, rec.MaxTokens
	})
	switch {
	case req.Model == "":
		return req, 0, invalid(w, "model: Field required")
	case len(req.Messages) == 0:
		return req, 0, invalid(w, "messages: Field required")
	}
	for i, m := range req.Messages {
		// The CLI also sends "system" messages mid-conversation (seen in
		// sandboxes, where the default model is chosen by the CLI).
		if m.Role != "user" && m.Role != "assistant" && m.Role != "system" {
			return req, 0, invalid(w, fmt.Sprintf("messages.%d.role: %q is not \"user\", \"assistant\" or \"system\"", i, m.Role))
		}
	}
	// A rough token count: about four bytes a token.
	return req, len(body)/4 + 1, 0
}

// invalid answers a 400 invalid_request_error.
func invalid(w http.ResponseWriter, msg string) int {
	return writeError(w, APIError{Status: http.StatusBadRequest, Type: "invalid_request_error", Message: msg})
}

func (s *Server) countTokens(w http.ResponseWriter, r *http.Request, seq int) int {
	_, tokens, status := s.readBody(w, r, seq)
	if status != 0 {
		return status
	}
	writeJSON(w, http.StatusOK, map[string]int{"input_tokens": tokens})
	return http.StatusOK
}

func (s *Server) messages(w http.ResponseWriter, r *http.Request, seq int) int {
	req, inTokens, status := s.readBody(w, r, seq)
	if status != 0 {
		return status
	}
	if req.MaxTokens < 1 {
		return invalid(w, "max_tokens: Field required (an integer >= 1)")
	}

	turn, idx := s.take()
	s.update(seq, func(r *Request) {
		r.Turn, r.Exhausted = idx, idx < 0
	})
	if turn.DelayMS > 0 {
		t := time.NewTimer(time.Duration(turn.DelayMS) * time.Millisecond)
		select {
		case <-t.C:
		case <-r.Context().Done():
			// The client went away (the write then fails unseen) or Listen's
			// stop was called: a clear error beats an empty 200.
			t.Stop()
			return writeError(w, APIError{Status: http.StatusInternalServerError, Type: "api_error",
				Message: "scripted model: answer cancelled during its delay"})
		}
	}
	if turn.Error != nil {
		// Also for stream:true: the CLI expects an HTTP error before any stream.
		return writeError(w, *turn.Error)
	}

	msg := newMessage(req.Model, seq, idx, turn, inTokens)
	if !req.Stream {
		writeJSON(w, http.StatusOK, msg)
		return http.StatusOK
	}
	stream(w, msg)
	return http.StatusOK
}

// take consumes the next turn. After the last one it returns the exhausted
// answer with index -1.
func (s *Server) take() (Turn, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next < len(s.scenario.Turns) {
		s.next++
		return s.scenario.Turns[s.next-1], s.next - 1
	}
	s.exhausted++
	if s.scenario.OnExhausted == ExhaustError {
		return Turn{Error: s.scenario.ExhaustedError}, -1
	}
	return Turn{Text: FinishedText}, -1
}

// The API's Message object and its parts.
type apiMessage struct {
	ID           string     `json:"id"`
	Type         string     `json:"type"`
	Role         string     `json:"role"`
	Model        string     `json:"model"`
	Content      []apiBlock `json:"content"`
	StopReason   *string    `json:"stop_reason"`
	StopSequence *string    `json:"stop_sequence"`
	Usage        apiUsage   `json:"usage"`
}

type apiBlock struct {
	Type  string          `json:"type"`
	Text  *string         `json:"text,omitempty"`
	ID    string          `json:"id,omitempty"`
	Name  string          `json:"name,omitempty"`
	Input json.RawMessage `json:"input,omitempty"`
}

type apiUsage struct {
	InputTokens              int `json:"input_tokens"`
	CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int `json:"cache_read_input_tokens"`
	OutputTokens             int `json:"output_tokens"`
}

// newMessage builds the full answer for a turn. Generated tool_use ids carry
// the turn and block index, unique within a conversation.
func newMessage(model string, seq, idx int, t Turn, inTokens int) apiMessage {
	msg := apiMessage{
		ID:      fmt.Sprintf("msg_sandstorm_%06d", seq),
		Type:    "message",
		Role:    "assistant",
		Model:   model,
		Content: []apiBlock{},
		Usage:   apiUsage{InputTokens: inTokens, OutputTokens: 1},
	}
	for j, b := range t.blocks() {
		switch b.Type {
		case "text":
			text := b.Text
			msg.Content = append(msg.Content, apiBlock{Type: "text", Text: &text})
			msg.Usage.OutputTokens += len(text) / 4
		case "tool_use":
			id := b.ID
			if id == "" {
				id = fmt.Sprintf("toolu_sandstorm_%d_%d", idx+1, j)
			}
			msg.Content = append(msg.Content, apiBlock{Type: "tool_use", ID: id, Name: b.Name, Input: b.Input})
			msg.Usage.OutputTokens += len(b.Input) / 4
		}
	}
	stop := t.stopReason()
	msg.StopReason = &stop
	return msg
}

// event is one SSE event's data; each kind of event sets its own fields.
type event struct {
	Type         string      `json:"type"`
	Message      *apiMessage `json:"message,omitempty"`
	Index        *int        `json:"index,omitempty"`
	ContentBlock *apiBlock   `json:"content_block,omitempty"`
	Delta        any         `json:"delta,omitempty"`
	Usage        any         `json:"usage,omitempty"`
}

type blockDelta struct {
	Type        string  `json:"type"`
	Text        *string `json:"text,omitempty"`
	PartialJSON *string `json:"partial_json,omitempty"`
}

type messageDelta struct {
	StopReason   string  `json:"stop_reason"`
	StopSequence *string `json:"stop_sequence"`
}

// stream writes msg as the API's SSE event sequence, flushing every event so
// the agent sees each delta as it is sent. A client that goes away just ends
// the stream.
func stream(w http.ResponseWriter, msg apiMessage) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var failed bool
	send := func(e event) {
		if failed {
			return
		}
		data, err := json.Marshal(e)
		if err == nil {
			_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Type, data)
		}
		if err == nil {
			err = rc.Flush()
		}
		failed = err != nil
	}

	start := msg
	start.Content, start.StopReason = []apiBlock{}, nil
	send(event{Type: "message_start", Message: &start})
	send(event{Type: "ping"})
	for index, b := range msg.Content {
		switch b.Type {
		case "text":
			empty := ""
			send(event{Type: "content_block_start", Index: &index, ContentBlock: &apiBlock{Type: "text", Text: &empty}})
			for _, c := range chunks(*b.Text, 3) {
				send(event{Type: "content_block_delta", Index: &index, Delta: blockDelta{Type: "text_delta", Text: &c}})
			}
		case "tool_use":
			send(event{Type: "content_block_start", Index: &index,
				ContentBlock: &apiBlock{Type: "tool_use", ID: b.ID, Name: b.Name, Input: json.RawMessage("{}")}})
			for _, c := range chunks(string(b.Input), 3) {
				send(event{Type: "content_block_delta", Index: &index, Delta: blockDelta{Type: "input_json_delta", PartialJSON: &c}})
			}
		}
		send(event{Type: "content_block_stop", Index: &index})
	}
	send(event{Type: "message_delta", Delta: messageDelta{StopReason: *msg.StopReason},
		Usage: map[string]int{"output_tokens": msg.Usage.OutputTokens}})
	send(event{Type: "message_stop"})
}

// chunks splits s into at most n pieces of about equal length, on rune
// boundaries so each piece stays valid UTF-8 in its JSON string.
func chunks(s string, n int) []string {
	size := (len(s) + n - 1) / n
	if size == 0 {
		return []string{s}
	}
	var out []string
	for len(s) > 0 {
		end := min(size, len(s))
		for end < len(s) && !utf8.RuneStart(s[end]) {
			end++
		}
		out = append(out, s[:end])
		s = s[end:]
	}
	return out
}

// writeError answers e in the API's error format and returns its status.
func writeError(w http.ResponseWriter, e APIError) int {
	type body struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	writeJSON(w, e.Status, struct {
		Type  string `json:"type"`
		Error body   `json:"error"`
	}{"error", body{e.Type, e.Message}})
	return e.Status
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		// Only our own types reach here, and they all marshal.
		panic(fmt.Sprintf("modelserver: marshal answer: %v", err))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

// Listen serves s on addr (e.g. "127.0.0.1:0") until stop is called or ctx
// ends, and returns its base URL for ANTHROPIC_BASE_URL. stop is idempotent;
// it cancels answers still pausing for a delay.
func (s *Server) Listen(ctx context.Context, addr string) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("modelserver: listen on %s: %w", addr, err)
	}
	base, cancel := context.WithCancel(context.Background())
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && s.Logf != nil {
			s.Logf("modelserver: serve: %v", err)
		}
	}()
	var once sync.Once
	shutdown := func() {
		once.Do(func() {
			cancel()
			sctx, done := context.WithTimeout(context.Background(), 2*time.Second)
			defer done()
			if hs.Shutdown(sctx) != nil {
				_ = hs.Close()
			}
		})
	}
	unhook := context.AfterFunc(ctx, shutdown)
	return "http://" + ln.Addr().String(), func() { unhook(); shutdown() }, nil
}
