// Package api is sandstorm's vocabulary, shared by the engine and its front
// ends (the ds CLI, the HTTP server, the Go client): the request a client
// sends, the events of sandstorm's own a run streams back (next to the
// SDK's messages), a run's record, the error and exit codes, and the small
// interface a front end runs requests through. Like moby's api/types it
// imports the standard library only: the packages that own the other side
// convert to its types, package errcode maps their errors to its codes, and
// admission.Validate checks what they require of a request's parts.
package api

import (
	"context"
	"encoding/json"
)

// Emit receives each event of a run, in order. An error from Emit (the
// client went away) cancels the run.
type Emit func(json.RawMessage) error

// Outcome is how a run ended; how its process exited is in the sandbox's
// "exited" event.
type Outcome struct {
	// Result is the SDK's final result message, if one arrived.
	Result json.RawMessage
	// Code is the error code when the run failed ("" on success).
	Code Code
}

// Success reports whether the agent finished with a successful result.
func (o Outcome) Success() bool { return o.Code == "" }

// Engine is what a front end asks of sandstorm.
type Engine interface {
	// Admit validates req, merges it with the configuration and takes a
	// slot, waiting in the bounded queue (queued, if set, is told the
	// position). Its errors come before any event: an invalid request, a
	// busy host.
	Admit(ctx context.Context, req Request, queued func(position int)) (Run, error)
	// Health reports the backend and the host's slots.
	Health(ctx context.Context) Health
}

// Run is an admitted request holding a slot.
type Run interface {
	// Start runs it once, streaming its events to emit, and frees its slot.
	// The error is non-nil only when the run could not take place (no
	// terminal event was sent; Code says which) or the stream was cut;
	// agent failures are an error event and Outcome.Code.
	Start(ctx context.Context, emit Emit) (Outcome, error)
}

// Health is GET /health's body; key values are never in it.
type Health struct {
	Status              string  `json:"status"`
	Backend             string  `json:"sandbox_backend"`
	RuntimeVersion      string  `json:"runtime_version"`
	Rootless            bool    `json:"rootless"`
	APIKeys             KeysSet `json:"api_keys"`
	ScriptedModel       bool    `json:"scripted_model"`
	Running             int     `json:"running"`
	Queued              int     `json:"queued"`
	MaxConcurrentAgents int     `json:"max_concurrent_agents"`
	// Pool is the warm pool's state, when there is one.
	Pool  *PoolHealth `json:"pool,omitempty"`
	Error string      `json:"error,omitempty"`
}

// PoolHealth is the warm pool's state: members kept, ready, being started.
type PoolHealth struct {
	Size      int `json:"size"`
	Ready     int `json:"ready"`
	Refilling int `json:"refilling"`
}

// KeysSet says which provider keys the server has, never their values.
type KeysSet struct {
	Anthropic  bool `json:"anthropic"`
	OpenRouter bool `json:"openrouter"`
}

// Health statuses.
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded"
)
