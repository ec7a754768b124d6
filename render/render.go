// Package render turns a run's events into what a person reads on a
// terminal: assistant text as it comes, one line per tool call, shortened
// tool results, sandstorm's own events, and a closing summary.
package render

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/egress"
)

// maxResult bounds how much of a tool result is shown.
const maxResult = 300

// Human renders events for people. It is safe for concurrent use.
type Human struct {
	mu      sync.Mutex
	w       io.Writer
	spinner *spinner
	// Verbose shows stderr lines and sandbox lifecycle events.
	Verbose bool
	result  *resultMsg
	// lastText is the last assistant text shown, so the summary does not
	// repeat it as the result.
	lastText string
	// connections and denied count egress attempts, for the summary.
	connections, denied int
	// usage is the gateway's count of the run's model calls.
	usage *api.UsageEvent
}

// NewHuman writes to w; with tty set, a spinner shows while waiting. What
// it writes of a run passes through inert: the agent chooses its text,
// tool input, file names and hosts.
func NewHuman(w io.Writer, tty bool) *Human {
	h := &Human{w: inert{w}}
	if tty {
		h.spinner = newSpinner(w)
	}
	return h
}

// inert writes what it is given with every control character but newline
// and tab spelled out (ESC as \x1b), and every byte that is not UTF-8 so:
// an escape sequence in an agent's output would otherwise drive the
// reader's terminal (retitle it, clear it, rewrite earlier lines, and on
// some terminals answer a query with keystrokes).
type inert struct{ w io.Writer }

func (t inert) Write(p []byte) (int, error) {
	var b strings.Builder
	for i := 0; i < len(p); {
		r, size := utf8.DecodeRune(p[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, p[i])
		case r == '\n' || r == '\t':
			b.WriteRune(r)
		case unicode.IsControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.Write(p[i : i+size])
		}
		i += size
	}
	if _, err := io.WriteString(t.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}

type message struct {
	Type    string          `json:"type"`
	Subtype string          `json:"subtype"`
	Model   string          `json:"model"`
	Event   string          `json:"event"`
	Line    string          `json:"line"`
	Code    string          `json:"code"`
	Message json.RawMessage `json:"message"`
	// sandbox events
	SandboxID  string   `json:"sandbox_id"`
	Runtime    string   `json:"runtime"`
	DurationMS int64    `json:"duration_ms"`
	Unenforced []string `json:"unenforced"`
	RunID      string   `json:"run_id"`
	// egress events
	Host     string `json:"host"`
	Port     int    `json:"port"`
	IP       string `json:"ip"`
	Decision string `json:"decision"`
	Rule     string `json:"rule"`
	Error    string `json:"error"`
}

type content struct {
	Content []block `json:"content"`
}

type block struct {
	Type    string          `json:"type"`
	Text    string          `json:"text"`
	Name    string          `json:"name"`
	Input   map[string]any  `json:"input"`
	Content json.RawMessage `json:"content"`
	IsError bool            `json:"is_error"`
}

type resultMsg struct {
	Subtype          string          `json:"subtype"`
	IsError          bool            `json:"is_error"`
	Result           string          `json:"result"`
	NumTurns         int             `json:"num_turns"`
	DurationMS       int64           `json:"duration_ms"`
	TotalCostUSD     float64         `json:"total_cost_usd"`
	StructuredOutput json.RawMessage `json:"structured_output"`
}

// Event renders one event.
func (h *Human) Event(ev json.RawMessage) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.spinner.clear()
	defer h.spinner.resume()
	var m message
	if err := json.Unmarshal(ev, &m); err != nil {
		return
	}
	switch m.Type {
	case "system":
		if m.Subtype == "init" {
			fmt.Fprintf(h.w, "● agent started (model %s)\n", orDash(m.Model))
		}
	case "assistant":
		var c content
		_ = json.Unmarshal(m.Message, &c)
		for _, b := range c.Content {
			switch b.Type {
			case "text":
				if t := strings.TrimSpace(b.Text); t != "" {
					fmt.Fprintln(h.w, t)
					h.lastText = t
				}
			case "tool_use":
				fmt.Fprintf(h.w, "→ %s %s\n", b.Name, keyArg(b.Name, b.Input))
			}
		}
	case "user":
		var c content
		_ = json.Unmarshal(m.Message, &c)
		for _, b := range c.Content {
			if b.Type == "tool_result" {
				mark := "←"
				if b.IsError {
					mark = "← error:"
				}
				fmt.Fprintf(h.w, "  %s %s\n", mark, shorten(toolText(b.Content), maxResult))
			}
		}
	case "result":
		var r resultMsg
		if json.Unmarshal(ev, &r) == nil {
			h.result = &r
		}
	case api.TypeSandbox:
		if len(m.Unenforced) > 0 && m.Event == api.SandboxCreated {
			fmt.Fprintf(h.w, "! %s does not enforce %s here (allowed by configuration)\n", m.Runtime, strings.Join(m.Unenforced, ", "))
		}
		if h.Verbose {
			fmt.Fprintf(h.w, "· sandbox %s %s on %s (%dms)\n", m.SandboxID, m.Event, m.Runtime, m.DurationMS)
		}
	case api.TypeStderr, api.TypeStdout:
		if h.Verbose {
			fmt.Fprintf(h.w, "· %s: %s\n", m.Type, m.Line)
		}
	case api.TypeModelUsage:
		var u api.UsageEvent
		if json.Unmarshal(ev, &u) == nil {
			h.usage = &u
		}
	case egress.TypeEvent:
		h.connections++
		switch {
		case m.Decision == egress.Deny:
			h.denied++
			fmt.Fprintf(h.w, "⊘ egress denied: %s:%d %s(%s)\n", m.Host, m.Port, ipOf(m.IP, m.Host), m.Rule)
		case m.Error != "":
			fmt.Fprintf(h.w, "⊘ egress failed: %s:%d: %s\n", m.Host, m.Port, m.Error)
		case h.Verbose:
			fmt.Fprintf(h.w, "· egress %s:%d %s(%s)\n", m.Host, m.Port, ipOf(m.IP, m.Host), m.Rule)
		}
	case api.TypeFile:
		var f api.FileEvent
		if json.Unmarshal(ev, &f) == nil {
			fmt.Fprintf(h.w, "↓ %s (%s)\n", f.Path, bytesOf(f.Size))
		}
	case api.TypeFilesSkipped:
		var f api.FilesSkippedEvent
		if json.Unmarshal(ev, &f) == nil {
			for _, s := range f.Skipped {
				fmt.Fprintf(h.w, "! not handed back: %s (%s)\n", s.Path, s.Reason)
			}
		}
	case api.TypeRun:
		if h.Verbose {
			fmt.Fprintf(h.w, "· run %s\n", m.RunID)
		}
	case api.TypeError:
		var msg string
		_ = json.Unmarshal(m.Message, &msg)
		fmt.Fprintf(h.w, "✗ error (%s): %s\n", m.Code, msg)
	}
}

// Summary prints the closing summary; wall is the run's duration as seen by ds.
func (h *Human) Summary(wall time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.spinner.stop()
	r := h.result
	if r == nil {
		fmt.Fprintf(h.w, "── no result (%.1fs)\n", wall.Seconds())
		return
	}
	if r.StructuredOutput != nil && string(r.StructuredOutput) != "null" {
		var v any
		if json.Unmarshal(r.StructuredOutput, &v) == nil {
			pretty, _ := json.MarshalIndent(v, "", "  ")
			fmt.Fprintf(h.w, "structured output:\n%s\n", pretty)
		}
	} else if r.Result != "" && !r.IsError && strings.TrimSpace(r.Result) != h.lastText {
		fmt.Fprintf(h.w, "result: %s\n", r.Result)
	}
	status := "done"
	if r.IsError || r.Subtype != "success" {
		status = "failed (" + r.Subtype + ")"
	}
	note := ""
	if u := h.usage; u != nil {
		note = fmt.Sprintf(" · %d model calls", u.Requests)
		if u.Budget.MaxUSD > 0 {
			note += fmt.Sprintf(" ($%.4f of $%.4f at the gateway)", u.CostUSD, u.Budget.MaxUSD)
		}
	}
	if h.connections > 0 {
		note += fmt.Sprintf(" · %d connections (%d denied)", h.connections, h.denied)
	}
	fmt.Fprintf(h.w, "── %s · %d turns · %.1fs · $%.4f%s\n", status, r.NumTurns, wall.Seconds(), r.TotalCostUSD, note)
}

// ipOf shows the address a name resolved to, when it is not the name itself.
func ipOf(ip, host string) string {
	if ip == "" || ip == host {
		return ""
	}
	return "→ " + ip + " "
}

// keyArg is the one argument that says what a tool call does.
func keyArg(tool string, in map[string]any) string {
	keys := map[string]string{
		"Bash": "command", "Read": "file_path", "Write": "file_path", "Edit": "file_path",
		"MultiEdit": "file_path", "NotebookEdit": "notebook_path", "Glob": "pattern", "Grep": "pattern",
		"WebFetch": "url", "WebSearch": "query", "Task": "description", "Agent": "description",
	}
	if k, ok := keys[tool]; ok {
		if s, ok := in[k].(string); ok {
			return shorten(s, 120)
		}
	}
	names := make([]string, 0, len(in))
	for k := range in {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if s, ok := in[k].(string); ok {
			return shorten(k+"="+s, 120)
		}
	}
	return ""
}

// toolText flattens a tool_result's content (a string or text blocks).
func toolText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var blocks []block
	if json.Unmarshal(raw, &blocks) == nil {
		var parts []string
		for _, b := range blocks {
			if b.Type == "text" {
				parts = append(parts, b.Text)
			}
		}
		return strings.Join(parts, " ")
	}
	return ""
}

// shorten keeps one line of at most n runes.
func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	r := []rune(s)
	if len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// bytesOf is a size for people: 512 B, 1.5 KiB, 3.2 MiB.
func bytesOf(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
