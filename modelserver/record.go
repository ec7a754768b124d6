package modelserver

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Redacted replaces every secret in what the server records and logs.
const Redacted = "[redacted]"

// Request is what the server recorded of one request, secrets redacted.
type Request struct {
	Seq    int // 1-based order of arrival
	Time   time.Time
	Method string
	Path   string
	Query  string
	// Header holds every request header; credentials and anything that looks
	// like a key are Redacted.
	Header http.Header
	// Credential names the kinds of credential that came: "x-api-key",
	// "bearer" (Authorization: Bearer), "authorization" (another scheme),
	// comma-joined in that order when several did; "" when none.
	Credential string
	// Fingerprint is Fingerprint() of each credential, in Credential's order,
	// so a test can tell which key arrived without the key being stored.
	Fingerprint string

	// The parsed body, for POST /v1/messages and /v1/messages/count_tokens.
	Model     string
	System    []string // text of each system block
	Messages  []Message
	Tools     []string // names of the tools offered
	Stream    bool
	MaxTokens int

	// Turn is the index of the scenario turn answered, -1 when none was.
	Turn int
	// Exhausted is set when the scenario had no turn left for this request.
	Exhausted bool
	// Status is the HTTP status answered; 0 while the answer is under way.
	Status int
}

// Message is one message of a recorded request.
type Message struct {
	Role    string
	Content []Part
}

// Part is one content block of a recorded message. Text holds a text block's
// text and a tool_result's content (its text blocks joined by newlines).
type Part struct {
	Type      string
	Text      string
	ID        string          // tool_use
	Name      string          // tool_use
	Input     json.RawMessage // tool_use
	ToolUseID string          // tool_result
	IsError   bool            // tool_result
}

// ToolResult is a tool's output as the model received it.
type ToolResult struct {
	ToolUseID string
	Content   string
	IsError   bool
}

// Fingerprint is a short, non-reversible name for a secret: the first 8 hex
// digits of its SHA-256.
func Fingerprint(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:4])
}

// secretPattern matches values that look like credentials wherever they
// appear: Anthropic keys, other sk- keys, bearer tokens.
var secretPattern = regexp.MustCompile(`sk-ant-[A-Za-z0-9_-]+|\bsk-[A-Za-z0-9_-]{16,}|(?i:\bbearer\s+[A-Za-z0-9._~+/=-]+)`)

func redact(s string) string {
	return secretPattern.ReplaceAllString(s, Redacted)
}

// sensitiveHeader reports headers whose whole value is a secret, whatever
// it looks like.
func sensitiveHeader(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "authorization", "proxy-authorization", "cookie", "set-cookie":
		return true
	}
	for _, w := range []string{"key", "token", "secret", "auth", "password"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}

// newRequest records the envelope of r: headers (redacted) and credentials.
func newRequest(r *http.Request) Request {
	rec := Request{
		Time:   time.Now(),
		Method: r.Method,
		Path:   redact(r.URL.Path),
		Query:  redact(r.URL.RawQuery),
		Header: make(http.Header, len(r.Header)),
		Turn:   -1,
	}
	for name, vals := range r.Header {
		for _, v := range vals {
			if sensitiveHeader(name) {
				v = Redacted
			} else {
				v = redact(v)
			}
			rec.Header[name] = append(rec.Header[name], v)
		}
	}
	var kinds, prints []string
	if k := r.Header.Get("X-Api-Key"); k != "" {
		kinds, prints = append(kinds, "x-api-key"), append(prints, Fingerprint(k))
	}
	if a := r.Header.Get("Authorization"); a != "" {
		scheme, token, ok := strings.Cut(a, " ")
		if ok && strings.EqualFold(scheme, "bearer") {
			kinds, prints = append(kinds, "bearer"), append(prints, Fingerprint(strings.TrimSpace(token)))
		} else {
			kinds, prints = append(kinds, "authorization"), append(prints, Fingerprint(a))
		}
	}
	rec.Credential = strings.Join(kinds, ",")
	rec.Fingerprint = strings.Join(prints, ",")
	return rec
}

// clone deep-copies r so callers cannot change the server's records.
func (r Request) clone() Request {
	r.Header = r.Header.Clone()
	r.System = slices.Clone(r.System)
	r.Tools = slices.Clone(r.Tools)
	r.Messages = slices.Clone(r.Messages)
	for i, m := range r.Messages {
		r.Messages[i].Content = slices.Clone(m.Content)
		for j, p := range r.Messages[i].Content {
			r.Messages[i].Content[j].Input = slices.Clone(p.Input)
		}
	}
	return r
}

// The request body as the API defines it, as far as the records need it.
type wireRequest struct {
	Model     string          `json:"model"`
	MaxTokens int             `json:"max_tokens"`
	Messages  []wireMessage   `json:"messages"`
	System    json.RawMessage `json:"system"`
	Tools     []struct {
		Name string `json:"name"`
	} `json:"tools"`
	Stream bool `json:"stream"`
}

type wireMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type wireBlock struct {
	Type      string          `json:"type"`
	Text      string          `json:"text"`
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Input     json.RawMessage `json:"input"`
	ToolUseID string          `json:"tool_use_id"`
	Content   json.RawMessage `json:"content"`
	IsError   bool            `json:"is_error"`
}

// parseBlocks reads a content field, which the API allows to be a string or
// an array of blocks.
func parseBlocks(raw json.RawMessage) ([]wireBlock, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return []wireBlock{{Type: "text", Text: s}}, nil
	}
	var bs []wireBlock
	if err := json.Unmarshal(raw, &bs); err != nil {
		return nil, errors.New("not a string or an array of content blocks")
	}
	return bs, nil
}

// fill parses the body into rec, redacting every string that looks like a
// secret. The error names the bad field, as the API's 400s do.
func (w wireRequest) fill(rec *Request) error {
	rec.Model, rec.Stream, rec.MaxTokens = redact(w.Model), w.Stream, w.MaxTokens
	for _, t := range w.Tools {
		rec.Tools = append(rec.Tools, t.Name)
	}
	sys, err := parseBlocks(w.System)
	if err != nil {
		return fmt.Errorf("system: %w", err)
	}
	for _, b := range sys {
		rec.System = append(rec.System, redact(b.Text))
	}
	for i, m := range w.Messages {
		bs, err := parseBlocks(m.Content)
		if err != nil {
			return fmt.Errorf("messages.%d.content: %w", i, err)
		}
		msg := Message{Role: m.Role}
		for _, b := range bs {
			p := Part{Type: b.Type, Text: redact(b.Text), ID: b.ID, Name: b.Name, ToolUseID: b.ToolUseID, IsError: b.IsError}
			if b.Input != nil {
				p.Input = json.RawMessage(redact(string(b.Input)))
			}
			if b.Type == "tool_result" {
				inner, err := parseBlocks(b.Content)
				if err != nil {
					return fmt.Errorf("messages.%d.content: tool_result content: %w", i, err)
				}
				var texts []string
				for _, ib := range inner {
					if ib.Type == "text" {
						texts = append(texts, ib.Text)
					}
				}
				p.Text = redact(strings.Join(texts, "\n"))
			}
			msg.Content = append(msg.Content, p)
		}
		rec.Messages = append(rec.Messages, msg)
	}
	return nil
}
