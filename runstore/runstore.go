// Package runstore keeps every run and its event log in SQLite under a state
// directory: what was asked, where it ran, how it ended, and every event in
// order with its sequence number, so a stream can be replayed or resumed
// and a crash leaves a record. Several sandstorm processes on a host share
// one store (WAL mode, busy timeout); each run is written by its owner.
package runstore

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	// The SQLite driver is already in the binary (the Podman bindings' image
	// cache uses it): no second SQLite.
	_ "github.com/mattn/go-sqlite3"

	"github.com/sandstorm-dev/sandstorm/api"
)

// DefaultDir is the state directory of a root sandstorm.
const DefaultDir = "/var/lib/sandstorm"

// DirEnv overrides the state directory.
const DirEnv = "SANDSTORM_STATE_DIR"

// Errors of the store.
var (
	ErrNotFound = errors.New("no such run")
	// ErrNotFinished: the run is still queued or running.
	ErrNotFinished = errors.New("run has not finished")
	// ErrUnavailable: the store cannot be opened or written.
	ErrUnavailable = errors.New("run store unavailable")
)

// Run is one run's record: what the API shows of it, and what only the
// store and the run's owner need.
type Run struct {
	api.RunRecord
	// Owner is the process running it (sandbox.Owner's form).
	Owner      string `json:"-"`
	WebhookURL string `json:"-"`
}

// Event is one event of a run's log.
type Event struct {
	Seq  int64
	Data json.RawMessage
}

// Store is an open run store.
type Store struct {
	db  *sql.DB
	dir string
}

const schema = `
CREATE TABLE IF NOT EXISTS runs (
	id TEXT PRIMARY KEY,
	status TEXT NOT NULL,
	request TEXT NOT NULL,
	prompt TEXT NOT NULL,
	detached INTEGER NOT NULL DEFAULT 0,
	backend TEXT NOT NULL DEFAULT '',
	sandbox_id TEXT NOT NULL DEFAULT '',
	owner TEXT NOT NULL DEFAULT '',
	created_at INTEGER NOT NULL,
	started_at INTEGER,
	finished_at INTEGER,
	result TEXT,
	total_cost_usd REAL NOT NULL DEFAULT 0,
	num_turns INTEGER NOT NULL DEFAULT 0,
	error_code TEXT NOT NULL DEFAULT '',
	error_message TEXT NOT NULL DEFAULT '',
	files TEXT,
	webhook_url TEXT NOT NULL DEFAULT '',
	cancel_requested INTEGER NOT NULL DEFAULT 0,
	bytes INTEGER NOT NULL DEFAULT 0,
	warm INTEGER
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, id);
CREATE TABLE IF NOT EXISTS events (
	run_id TEXT NOT NULL,
	seq INTEGER NOT NULL,
	data BLOB NOT NULL,
	PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
`

// Open opens (creating it) the store in dir: dir/runs.db, and dir/runs/ID
// for each run's files.
func Open(ctx context.Context, dir string) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, "runs"), 0o700); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	path := filepath.Join(dir, "runs.db")
	// The store holds prompts and outputs: its file is the owner's alone
	// before SQLite opens it, which gives the write-ahead log and its
	// index the database file's mode as it makes them.
	if err := private(path); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// Immediate transactions and a busy timeout: writers of several
	// processes wait for each other instead of failing.
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_synchronous=NORMAL&_busy_timeout=10000&_txlock=immediate&_foreign_keys=on")
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, path, err)
	}
	if _, err := db.ExecContext(ctx, schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, path, err)
	}
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, path, err)
	}
	return &Store{db: db, dir: dir}, nil
}

// private makes the database file, or gives the existing one and the log
// files an earlier version left readable, mode 0600.
func private(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// added are the columns later versions added to runs, which a store an
// earlier one made lacks.
var added = map[string]string{"warm": "INTEGER"}

// migrate adds what a store an earlier version made lacks.
func migrate(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, `SELECT name FROM pragma_table_info('runs')`)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return err
		}
		have[name] = true
	}
	rows.Close()
	for name, typ := range added {
		if !have[name] {
			if _, err := db.ExecContext(ctx, `ALTER TABLE runs ADD COLUMN `+name+` `+typ); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// Dir is the state directory.
func (s *Store) Dir() string { return s.dir }

// FilesDir is where run id's files are kept.
func (s *Store) FilesDir(id string) string { return filepath.Join(s.dir, "runs", id, "files") }

var lastID struct {
	sync.Mutex
	ns int64
}

// NewID is a new run id: time-ordered (strictly, within a process), so
// newer runs sort after older ones, with random bits against collisions
// between processes.
func NewID(now time.Time) string {
	lastID.Lock()
	ns := max(now.UnixNano(), lastID.ns+1)
	lastID.ns = ns
	lastID.Unlock()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("run-%016x%s", ns, hex.EncodeToString(b))
}

// ValidID reports whether id has the form NewID gives.
func ValidID(id string) bool {
	rest, ok := strings.CutPrefix(id, "run-")
	if !ok || len(rest) != 24 {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

func wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func millis(t *time.Time) any {
	if t == nil || t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

// Create records a new run.
func (s *Store) Create(ctx context.Context, r Run) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO runs (id, status, request, prompt, detached, owner, created_at, webhook_url) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.Status, string(r.Request), r.Prompt, r.Detached, r.Owner, r.CreatedAt.UnixMilli(), r.WebhookURL)
	return wrap(err)
}

// Append adds event seq of run id. Each run has one writer, which numbers
// its events from 1.
func (s *Store) Append(ctx context.Context, id string, seq int64, data []byte) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO events (run_id, seq, data) VALUES (?, ?, ?)`, id, seq, data)
	return wrap(err)
}

// Started records that run id holds a slot and runs.
func (s *Store) Started(ctx context.Context, id string, at time.Time) error {
	_, err := s.db.ExecContext(ctx, `UPDATE runs SET status = ?, started_at = ? WHERE id = ?`, api.StatusRunning, at.UnixMilli(), id)
	return wrap(err)
}

// Sandbox records where run id runs.
func (s *Store) Sandbox(ctx context.Context, id, backend, sandboxID string, warm *bool) error {
	_, err := s.db.ExecContext(ctx, `UPDATE runs SET backend = ?, sandbox_id = ?, warm = ? WHERE id = ?`, backend, sandboxID, warm, id)
	return wrap(err)
}

// Finish records how run id ended. bytes is the size of its event log.
func (s *Store) Finish(ctx context.Context, r Run, bytes int64) error {
	var result, files any
	if len(r.Result) > 0 {
		result = string(r.Result)
	}
	if len(r.Files) > 0 {
		files = string(r.Files)
	}
	_, err := s.db.ExecContext(ctx, `UPDATE runs SET status = ?, finished_at = ?, result = ?, total_cost_usd = ?, num_turns = ?,
		error_code = ?, error_message = ?, files = ?, bytes = ? WHERE id = ?`,
		r.Status, millis(r.FinishedAt), result, r.TotalCostUSD, r.NumTurns, r.ErrorCode, r.ErrorMessage, files, bytes, r.ID)
	return wrap(err)
}

const columns = `id, status, request, prompt, detached, backend, sandbox_id, owner, created_at, started_at, finished_at,
	result, total_cost_usd, num_turns, error_code, error_message, files, webhook_url, cancel_requested, warm,
	(SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = runs.id)`

func scan(row interface{ Scan(...any) error }) (Run, error) {
	var r Run
	var req string
	var created int64
	var started, finished sql.NullInt64
	var result, files sql.NullString
	var warm sql.NullBool
	err := row.Scan(&r.ID, &r.Status, &req, &r.Prompt, &r.Detached, &r.Backend, &r.SandboxID, &r.Owner, &created, &started, &finished,
		&result, &r.TotalCostUSD, &r.NumTurns, &r.ErrorCode, &r.ErrorMessage, &files, &r.WebhookURL, &r.CancelRequested, &warm, &r.Events)
	if err != nil {
		return r, err
	}
	if warm.Valid {
		r.Warm = &warm.Bool
	}
	r.Request = json.RawMessage(req)
	r.CreatedAt = time.UnixMilli(created).UTC()
	if started.Valid {
		t := time.UnixMilli(started.Int64).UTC()
		r.StartedAt = &t
	}
	if finished.Valid {
		t := time.UnixMilli(finished.Int64).UTC()
		r.FinishedAt = &t
	}
	if result.Valid {
		r.Result = json.RawMessage(result.String)
	}
	if files.Valid {
		r.Files = json.RawMessage(files.String)
	}
	return r, nil
}

// Get returns run id.
func (s *Store) Get(ctx context.Context, id string) (Run, error) {
	r, err := scan(s.db.QueryRowContext(ctx, `SELECT `+columns+` FROM runs WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return r, wrap(err)
}

// Filter selects runs to list.
type Filter struct {
	// Status, if set, keeps only runs with one of these.
	Status []api.RunStatus
	// Before is a cursor: only runs older than this id.
	Before string
	Limit  int
}

// List returns runs newest first, and the cursor of the next page ("" at the end).
func (s *Store) List(ctx context.Context, f Filter) ([]Run, string, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	q := `SELECT ` + columns + ` FROM runs WHERE 1 = 1`
	var args []any
	if len(f.Status) > 0 {
		q += ` AND status IN (?` + strings.Repeat(", ?", len(f.Status)-1) + `)`
		for _, st := range f.Status {
			args = append(args, st)
		}
	}
	if f.Before != "" {
		q += ` AND id < ?`
		args = append(args, f.Before)
	}
	q += ` ORDER BY id DESC LIMIT ?`
	args = append(args, f.Limit+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", wrap(err)
	}
	defer rows.Close()
	var out []Run
	for rows.Next() {
		r, err := scan(rows)
		if err != nil {
			return nil, "", wrap(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, "", wrap(err)
	}
	next := ""
	if len(out) > f.Limit {
		out = out[:f.Limit]
		next = out[len(out)-1].ID
	}
	return out, next, nil
}

// Events returns up to limit events of run id after seq after.
func (s *Store) Events(ctx context.Context, id string, after int64, limit int) ([]Event, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?`, id, after, limit)
	if err != nil {
		return nil, wrap(err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var data []byte
		if err := rows.Scan(&e.Seq, &data); err != nil {
			return nil, wrap(err)
		}
		e.Data = data
		out = append(out, e)
	}
	return out, wrap(rows.Err())
}

// RequestCancel asks the owner of run id to cancel it; it reports whether
// the run was still going.
func (s *Store) RequestCancel(ctx context.Context, id string) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status IN (?, ?)`, id, api.StatusQueued, api.StatusRunning)
	if err != nil {
		return false, wrap(err)
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// CancelRequests returns which of ids someone asked to cancel.
func (s *Store) CancelRequests(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	args := []any{}
	for _, id := range ids {
		args = append(args, id)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM runs WHERE cancel_requested = 1 AND id IN (?`+strings.Repeat(", ?", len(ids)-1)+`)`, args...)
	if err != nil {
		return nil, wrap(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, wrap(err)
		}
		out = append(out, id)
	}
	return out, wrap(rows.Err())
}

// Delete removes finished run id, its events and its files.
func (s *Store) Delete(ctx context.Context, id string) error {
	r, err := s.Get(ctx, id)
	if err != nil {
		return err
	}
	if !r.Status.Done() {
		return fmt.Errorf("%w: %s is %s", ErrNotFinished, id, r.Status)
	}
	return s.Discard(ctx, id)
}

// Discard removes run id whatever its status: a run refused before it ran.
func (s *Store) Discard(ctx context.Context, id string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return wrap(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM events WHERE run_id = ?`, id); err != nil {
		return wrap(err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM runs WHERE id = ?`, id); err != nil {
		return wrap(err)
	}
	if err := tx.Commit(); err != nil {
		return wrap(err)
	}
	return wrap(os.RemoveAll(filepath.Join(s.dir, "runs", id)))
}

// Interrupt marks the runs still queued or running whose owner is gone
// (orphaned reports it) as interrupted, ending each log with the event
// final gives; it returns their ids. What they streamed stays readable.
func (s *Store) Interrupt(ctx context.Context, orphaned func(owner string) bool, final func(Run) []byte) ([]string, error) {
	going, _, err := s.List(ctx, Filter{Status: []api.RunStatus{api.StatusQueued, api.StatusRunning}, Limit: 10000})
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, r := range going {
		if !orphaned(r.Owner) {
			continue
		}
		now := time.Now()
		if err := s.Append(ctx, r.ID, r.Events+1, final(r)); err != nil {
			return ids, err
		}
		r.Status, r.FinishedAt, r.ErrorCode = api.StatusInterrupted, &now, "interrupted"
		r.ErrorMessage = "the sandstorm process running it went away"
		if r.StartedAt == nil {
			r.StartedAt = &now
		}
		if err := s.Finish(ctx, r, 0); err != nil {
			return ids, err
		}
		ids = append(ids, r.ID)
	}
	return ids, nil
}

// Prune removes finished runs older than retention, then the oldest
// finished runs until the store holds at most maxBytes of event logs and
// files. It returns how many it removed.
func (s *Store) Prune(ctx context.Context, retention time.Duration, maxBytes int64) (int, error) {
	cutoff := time.Now().Add(-retention).UnixMilli()
	rows, err := s.db.QueryContext(ctx, `SELECT id, finished_at < ?, bytes FROM runs WHERE status NOT IN (?, ?) ORDER BY id`, cutoff, api.StatusQueued, api.StatusRunning)
	if err != nil {
		return 0, wrap(err)
	}
	type old struct {
		id      string
		expired bool
		bytes   int64
	}
	var finished []old
	var total int64
	for rows.Next() {
		var o old
		if err := rows.Scan(&o.id, &o.expired, &o.bytes); err != nil {
			rows.Close()
			return 0, wrap(err)
		}
		finished = append(finished, o)
		total += o.bytes
	}
	rows.Close()
	n := 0
	for _, o := range finished {
		if !o.expired && total <= maxBytes {
			continue
		}
		if err := s.Discard(ctx, o.id); err != nil {
			return n, err
		}
		total -= o.bytes
		n++
	}
	if n > 0 {
		_, _ = s.db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`)
	}
	return n, nil
}
