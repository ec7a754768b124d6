// Package runnerproto is the protocol between sandstorm and the runner in
// the agent image (images/agentimage/runner.mjs, run by Node): the one
// description of it. The Go side (agent, gateway) uses these names and
// types; runner.mjs carries a block generated from Describe; the runner's
// tests drive the real runner.mjs against the real gateway and check every
// line it prints, every request and variable it reads, against this.
//
// The protocol, in order:
//
//   - The host starts the runner with Env set (the session token always).
//   - The runner reaches the gateway through the session directory mounted
//     at SessionDir.Mount, or, with Env.GatewayAddr, over TCP, where every
//     connection opens with the Hello line.
//   - It GETs its Config at Docs.Config with the token in Docs.TokenHeader;
//     a warm sandbox's runner first GETs Docs.Warm, starts the CLI, then
//     waits at Docs.Config for its run and GETs the run's File list at
//     Docs.Files.
//   - stdout: one JSON object per line, each with a type (Line): every SDK
//     message as the SDK gave it, and the runner's own ErrorLine when it
//     fails. The SDK's Result message ends a run.
//   - stderr: diagnostics; with Env.Timings=1 also TimingPrefix lines.
//   - Exit status: Exit.
package runnerproto

import (
	"reflect"
	"strings"
)

// EnvNames are the environment variables the runner reads.
type EnvNames struct {
	// Token is the gateway session's token; the host always sets it.
	Token string `json:"token"`
	// GatewayAddr, for a sandbox on another host, is the gateway's TCP
	// address (host:port); GatewayCA the PEM of the CA its TLS certificate
	// is verified with; GatewayEgress=1 says the session has an egress
	// proxy there, EgressCA the PEM of the CA that proxy intercepts with.
	GatewayAddr   string `json:"gateway_addr"`
	GatewayCA     string `json:"gateway_ca"`
	GatewayEgress string `json:"gateway_egress"`
	EgressCA      string `json:"egress_ca"`
	// Wait=1 makes the runner of a warm sandbox wait for its run as long as
	// it takes (the gateway answers when a request claims the sandbox).
	Wait string `json:"wait"`
	// Timings=1 prints TimingPrefix lines on stderr (make bench, e2e).
	Timings string `json:"timings"`
	// The rest are overrides for tests and tools: the model socket's path,
	// a config file instead of the gateway's, the workspace, the Claude
	// Code CLI.
	Socket           string `json:"socket"`
	ConfigFile       string `json:"config_file"`
	Workspace        string `json:"workspace"`
	ClaudeExecutable string `json:"claude_executable"`
}

// Env names the variables.
var Env = EnvNames{
	Token:            "SANDSTORM_MODEL_TOKEN",
	GatewayAddr:      "SANDSTORM_GATEWAY_ADDR",
	GatewayCA:        "SANDSTORM_GATEWAY_CA",
	GatewayEgress:    "SANDSTORM_GATEWAY_EGRESS",
	EgressCA:         "SANDSTORM_EGRESS_CA",
	Wait:             "SANDSTORM_RUNNER_WAIT",
	Timings:          "SANDSTORM_RUNNER_TIMINGS",
	Socket:           "SANDSTORM_MODEL_SOCKET",
	ConfigFile:       "SANDSTORM_RUNNER_CONFIG",
	Workspace:        "SANDSTORM_WORKSPACE",
	ClaudeExecutable: "SANDSTORM_CLAUDE_EXECUTABLE",
}

// SessionDirFiles are the names in a gateway session's directory.
type SessionDirFiles struct {
	// Mount is where the directory is mounted in the sandbox.
	Mount string `json:"mount"`
	// ModelSocket serves the model API and the documents (Docs).
	ModelSocket string `json:"model_socket"`
	// EgressSocket, when the session has one, is its egress proxy.
	EgressSocket string `json:"egress_socket"`
	// EgressCA, when present, is the certificate of the CA the egress
	// proxy intercepts hosts with secrets by.
	EgressCA string `json:"egress_ca"`
}

// SessionDir names them.
var SessionDir = SessionDirFiles{Mount: "/run/sandstorm", ModelSocket: "model.sock", EgressSocket: "egress.sock", EgressCA: "ca.pem"}

// DefaultWorkspace is the runner's working directory unless
// Env.Workspace says otherwise: the sandbox policy's workspace.
const DefaultWorkspace = "/home/user"

// Documents are the paths where the model socket serves the runner, to a
// GET with the session token in TokenHeader.
type Documents struct {
	// Config is the run's Config; a warm session's waits for its run.
	Config string `json:"config"`
	// Warm is a warm session's Config without its prompt, at once.
	Warm string `json:"warm"`
	// Files is the run's []File, for a warm sandbox to write itself.
	Files       string `json:"files"`
	TokenHeader string `json:"token_header"`
}

// Docs names them.
var Docs = Documents{Config: "/sandstorm/runner.json", Warm: "/sandstorm/warm.json", Files: "/sandstorm/files.json", TokenHeader: "x-api-key"}

// TCPHello is the line a TCP connection to the gateway opens with:
// "<Magic> <token> <service>\n", the service Model or Egress.
type TCPHello struct {
	Magic  string `json:"magic"`
	Model  string `json:"model"`
	Egress string `json:"egress"`
}

// Hello names its words.
var Hello = TCPHello{Magic: "SANDSTORM/1", Model: "model", Egress: "egress"}

// Line opens a connection to token's session's service.
func (h TCPHello) Line(token, service string) string {
	return h.Magic + " " + token + " " + service + "\n"
}

// Config is the run's config document: the prompt and the agent's
// options. The runner refuses a field not here.
type Config struct {
	// Prompt is required but in the warm document (Docs.Warm).
	Prompt       string `json:"prompt"`
	Model        string `json:"model,omitempty"`
	MaxTurns     int    `json:"max_turns,omitempty"`
	SystemPrompt any    `json:"system_prompt,omitempty"`
	// OutputFormat is {"type": "json_schema", "schema": {...}}.
	OutputFormat any `json:"output_format,omitempty"`
	// Agents maps names to {"description", "prompt", ...}.
	Agents map[string]any `json:"agents,omitempty"`
	// MCPServers maps names to the SDK's server configs.
	MCPServers             map[string]any `json:"mcp_servers,omitempty"`
	AllowedTools           []string       `json:"allowed_tools,omitempty"`
	IncludePartialMessages bool           `json:"include_partial_messages,omitempty"`
}

// File is one of a warm sandbox's run's workspace files.
type File struct {
	// Path is relative to the workspace; the runner refuses one that
	// leaves it or a file already there.
	Path string `json:"path"`
	// Mode is the permission bits.
	Mode uint32 `json:"mode"`
	// Content is base64 in JSON.
	Content []byte `json:"content"`
}

// Line is what every stdout line is at least.
type Line struct {
	Type string `json:"type"`
}

// The line types sandstorm reads; every other is an SDK message it passes on.
const (
	TypeError  = "error"
	TypeResult = "result"
)

// ErrorLine is the runner's own line when it fails, the last it prints
// (unencodable_message aside: the run goes on). It has the shape of
// sandstorm's own error event, so that a client reads both alike.
type ErrorLine struct {
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Codes are an ErrorLine's codes.
var Codes = []string{
	"invalid_config",      // the config, the token or the workspace is wrong
	"model_unreachable",   // no model socket, or a bad gateway address
	"forwarder_failed",    // cannot listen on the sandbox's loopback
	"sdk_missing",         // the SDK cannot be loaded
	"sdk_error",           // the SDK's query failed
	"no_result",           // the query ended without a result message
	"aborted",             // a signal ended the query
	"unencodable_message", // an SDK message that is not JSON (the run goes on)
	"internal",            // anything else
}

// Result is the SDK's result message as sandstorm reads it.
type Result struct {
	Type    string   `json:"type"`
	Subtype string   `json:"subtype"`
	IsError bool     `json:"is_error"`
	Result  string   `json:"result,omitempty"`
	Errors  []string `json:"errors,omitempty"`
}

// Succeeded reports whether the run did what it was asked.
func (r Result) Succeeded() bool { return r.Subtype == "success" && !r.IsError }

// TimingPrefix starts a stderr line "<prefix><phase> <unix ms>".
const TimingPrefix = "sandstorm-runner timing "

// Phases are the timing lines' phases (only a warm run has settled and
// released).
var Phases = []string{"runner_started", "config_received", "sdk_loaded", "query_called", "settled", "released"}

// ExitCodes are the runner's exit statuses: Succeeded when the result
// succeeded, Failed otherwise, SignalBase+n after signal n aborted it.
type ExitCodes struct {
	Succeeded  int `json:"succeeded"`
	Failed     int `json:"failed"`
	SignalBase int `json:"signal_base"`
}

// Exit gives them.
var Exit = ExitCodes{Succeeded: 0, Failed: 1, SignalBase: 128}

// Description is the protocol as data: what runner.mjs's generated block holds.
type Description struct {
	Env          EnvNames        `json:"env"`
	SessionDir   SessionDirFiles `json:"session_dir"`
	Workspace    string          `json:"default_workspace"`
	Docs         Documents       `json:"docs"`
	Hello        TCPHello        `json:"hello"`
	ConfigFields []string        `json:"config_fields"`
	ErrorType    string          `json:"error_type"`
	ResultType   string          `json:"result_type"`
	Codes        []string        `json:"error_codes"`
	TimingPrefix string          `json:"timing_prefix"`
	Phases       []string        `json:"timing_phases"`
	Exit         ExitCodes       `json:"exit"`
}

// Describe describes the protocol.
func Describe() Description {
	return Description{Env: Env, SessionDir: SessionDir, Workspace: DefaultWorkspace, Docs: Docs, Hello: Hello, ConfigFields: jsonNames(Config{}),
		ErrorType: TypeError, ResultType: TypeResult, Codes: Codes, TimingPrefix: TimingPrefix, Phases: Phases, Exit: Exit}
}

// jsonNames are the JSON names of v's fields, in order.
func jsonNames(v any) []string {
	t := reflect.TypeOf(v)
	names := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		names = append(names, name)
	}
	return names
}
