package api

import (
	"encoding/json"
	"slices"
	"time"
)

// RunStatus is where a run is in its life.
type RunStatus string

// Run statuses.
const (
	StatusQueued      RunStatus = "queued"
	StatusRunning     RunStatus = "running"
	StatusSucceeded   RunStatus = "succeeded"
	StatusFailed      RunStatus = "failed"
	StatusCancelled   RunStatus = "cancelled"
	StatusTimeout     RunStatus = "timeout"
	StatusInterrupted RunStatus = "interrupted"
)

// RunStatuses lists every status.
var RunStatuses = []RunStatus{StatusQueued, StatusRunning, StatusSucceeded, StatusFailed, StatusCancelled, StatusTimeout, StatusInterrupted}

// Valid reports whether s is one of RunStatuses.
func (s RunStatus) Valid() bool { return slices.Contains(RunStatuses, s) }

// Done reports whether a run with this status has ended.
func (s RunStatus) Done() bool { return s != StatusQueued && s != StatusRunning }

// RunRecord is one run's record as the API shows it (the run store keeps
// it, with what only the store needs).
type RunRecord struct {
	ID     string    `json:"id"`
	Status RunStatus `json:"status"`
	// Request is the request as given, without keys or file contents.
	Request   json.RawMessage `json:"request"`
	Prompt    string          `json:"prompt"`
	Detached  bool            `json:"detached"`
	Backend   string          `json:"backend,omitempty"`
	SandboxID string          `json:"sandbox_id,omitempty"`
	// Warm says whether its sandbox came from the warm pool (unset until
	// it has one).
	Warm       *bool      `json:"warm,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// Result is the SDK's result message, if one arrived.
	Result       json.RawMessage `json:"result,omitempty"`
	TotalCostUSD float64         `json:"total_cost_usd"`
	NumTurns     int             `json:"num_turns"`
	ErrorCode    string          `json:"error_code,omitempty"`
	ErrorMessage string          `json:"error_message,omitempty"`
	// Events is the sequence number of its last event.
	Events int64 `json:"events"`
	// Files are what the agent handed back (OutputFile's JSON).
	Files json.RawMessage `json:"files,omitempty"`
	// CancelRequested: someone asked its owner to cancel it.
	CancelRequested bool `json:"cancel_requested,omitempty"`
}

// Duration is how long it ran (so far).
func (r RunRecord) Duration(now time.Time) time.Duration {
	if r.StartedAt == nil {
		return 0
	}
	if r.FinishedAt != nil {
		return r.FinishedAt.Sub(*r.StartedAt)
	}
	return now.Sub(*r.StartedAt)
}

// RunURLs are the URLs of run id's resources, relative to the server.
func RunURLs(id string) map[string]string {
	base := "/runs/" + id
	return map[string]string{"run": base, "events": base + "/events", "cancel": base + "/cancel", "files": base + "/files", "archive": base + "/files.tar.gz"}
}

// RunView is a run as the API shows it: its record and its URLs.
type RunView struct {
	RunRecord
	URLs map[string]string `json:"urls"`
}

// ViewOf is r's view.
func ViewOf(r RunRecord) RunView { return RunView{RunRecord: r, URLs: RunURLs(r.ID)} }

// RunList is GET /runs's body: a page, newest first, and the cursor of the
// next one (pass it as ?before=).
type RunList struct {
	Runs []RunView `json:"runs"`
	Next string    `json:"next,omitempty"`
}
