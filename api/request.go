package api

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"
)

// Request limits, as the README and openapi.json document them.
const (
	MaxPromptChars  = 1_000_000
	MaxFiles        = 20
	MaxFilesBytes   = 10 << 20
	MinTimeout      = 5
	MaxTimeout      = 3600
	DefaultTimeout  = 300
	MaxTurnsAllowed = 1000
	// MaxBudgetUSDAllowed bounds max_budget_usd (dollars).
	MaxBudgetUSDAllowed = 10000
)

// Request is one agent run as a client asks for it.
type Request struct {
	Prompt   string `json:"prompt"`
	Model    string `json:"model,omitempty"`
	MaxTurns int    `json:"max_turns,omitempty"`
	// MaxBudgetUSD bounds the run's model spend at the gateway (list prices);
	// it may narrow the limits file's max_budget_usd, never widen it.
	MaxBudgetUSD float64 `json:"max_budget_usd,omitempty"`
	// Egress narrows the host's egress policy for this run: with Allow,
	// only what it names (and the host's policy allows) is reached.
	Egress       *RequestEgress  `json:"egress,omitempty"`
	Timeout      int             `json:"timeout,omitempty"`
	OutputFormat json.RawMessage `json:"output_format,omitempty"`
	// Files maps a path relative to the workspace to its content.
	Files map[string]string `json:"files,omitempty"`
	// BinaryFiles are files whose content is not text (the CLI's -f).
	BinaryFiles      []WorkspaceFile `json:"-"`
	AnthropicAPIKey  string          `json:"anthropic_api_key,omitempty"`
	OpenRouterAPIKey string          `json:"openrouter_api_key,omitempty"`
	// WebhookURL gets the run's summary when it ends (instead of the limits
	// file's webhook_url).
	WebhookURL string `json:"webhook_url,omitempty"`
	// NoOutput: hand back no files. OutputCaches: hand back cache
	// directories (.npm, .cache, node_modules, ...) too.
	NoOutput     bool `json:"no_output,omitempty"`
	OutputCaches bool `json:"output_caches,omitempty"`
	// Output is where the run's files go; the run service sets it.
	Output *OutputTarget `json:"-"`
}

// WorkspaceFile is one file a request places in the workspace (the
// sandbox.File).
type WorkspaceFile struct {
	// Path is relative to the workspace.
	Path    string
	Content []byte
	// Mode is the permission bits; 0 means 0644.
	Mode fs.FileMode
}

// OutputTarget is where a run's handed-back files are written, and the URL
// prefix their file events name.
type OutputTarget struct {
	Dir string
	URL string
}

// Stored is the request as the run store keeps it: no keys, and each
// file's path and size instead of its content.
func (r Request) Stored() json.RawMessage {
	type file struct {
		Path string `json:"path"`
		Size int    `json:"size"`
	}
	s := struct {
		Request
		Files []file `json:"files,omitempty"`
	}{Request: r}
	s.AnthropicAPIKey, s.OpenRouterAPIKey = "", ""
	for _, f := range r.WorkspaceFiles() {
		s.Files = append(s.Files, file{Path: f.Path, Size: len(f.Content)})
	}
	return Marshal(s)
}

// String never shows the keys.
func (r Request) String() string {
	return fmt.Sprintf("Request{prompt:%d chars model:%q max_turns:%d timeout:%d files:%d}",
		len(r.Prompt), r.Model, r.MaxTurns, r.Timeout, len(r.Files)+len(r.BinaryFiles))
}

// modelAliases are the names the Claude Code CLI resolves itself.
var modelAliases = map[string]bool{"sonnet": true, "opus": true, "haiku": true, "default": true, "opusplan": true, "sonnet[1m]": true}

// A provider-qualified id (OpenRouter, e.g. "anthropic/claude-sonnet-4") or
// a Claude id ("claude-sonnet-4-5-20250929", Bedrock/Vertex forms included).
var modelID = regexp.MustCompile(`^([a-z0-9][a-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._:@-]*|(claude-|anthropic\.claude-|us\.anthropic\.claude-)[A-Za-z0-9._:@-]+)$`)

// ValidateModel accepts the CLI's aliases, Claude model ids and
// provider-qualified ids; anything else is an unknown model.
func ValidateModel(m string) error {
	if m == "" || modelAliases[m] || (len(m) <= 128 && modelID.MatchString(m)) {
		return nil
	}
	return Invalid("model", "unknown model %q (use sonnet, opus, haiku, a claude-* model id, or provider/model for OpenRouter)", m)
}

// RequestEgress is a request's narrowing of the egress policy.
type RequestEgress struct {
	Allow []string `json:"allow"`
}

// Validate checks the fields against the request's own bounds, naming the
// first bad one. What the packages acting on a request require of its parts
// (egress rules, webhook URL, output format, file paths) they check
// themselves (admission.Validate checks it all).
func (r Request) Validate() error {
	n := utf8.RuneCountInString(r.Prompt)
	switch {
	case strings.TrimSpace(r.Prompt) == "":
		return Invalid("prompt", "is required")
	case n > MaxPromptChars:
		return Invalid("prompt", "%d characters is over the limit of %d", n, MaxPromptChars)
	case r.MaxTurns < 0 || r.MaxTurns > MaxTurnsAllowed:
		return Invalid("max_turns", "%d is outside 1..%d", r.MaxTurns, MaxTurnsAllowed)
	case r.Timeout != 0 && (r.Timeout < MinTimeout || r.Timeout > MaxTimeout):
		return Invalid("timeout", "%d is outside %d..%d seconds", r.Timeout, MinTimeout, MaxTimeout)
	case r.MaxBudgetUSD < 0 || r.MaxBudgetUSD > MaxBudgetUSDAllowed:
		return Invalid("max_budget_usd", "%g is outside 0..%g", r.MaxBudgetUSD, float64(MaxBudgetUSDAllowed))
	}
	if err := ValidateModel(r.Model); err != nil {
		return err
	}
	if r.Egress != nil && len(r.Egress.Allow) == 0 {
		return Invalid("egress.allow", "is empty: name what the run may reach, or leave egress out")
	}
	files := r.WorkspaceFiles()
	if len(files) > MaxFiles {
		return Invalid("files", "%d files is over the limit of %d", len(files), MaxFiles)
	}
	total := 0
	for _, f := range files {
		total += len(f.Content)
	}
	if total > MaxFilesBytes {
		return Invalid("files", "%d bytes in all is over the limit of %d", total, MaxFilesBytes)
	}
	return nil
}

// WorkspaceFiles returns every file of the request, text and binary.
func (r Request) WorkspaceFiles() []WorkspaceFile {
	files := append([]WorkspaceFile(nil), r.BinaryFiles...)
	for _, p := range sortedKeys(r.Files) {
		files = append(files, WorkspaceFile{Path: p, Content: []byte(r.Files[p])})
	}
	return files
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}
