// Package runs gives every run a record: it writes each run's events to
// the run store as they stream, so a run can be followed, replayed from
// any point, listed and cancelled, by this process or another; it runs
// detached runs that outlive their request, hands back the files the agent
// made, marks runs whose process died as interrupted, and sends webhooks.
// The CLI and the HTTP server both run requests through it.
package runs

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/sandstorm-dev/sandstorm/admission"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/errcode"
	"github.com/sandstorm-dev/sandstorm/internal/logctx"
	"github.com/sandstorm-dev/sandstorm/metrics"
	"github.com/sandstorm-dev/sandstorm/outfiles"
	"github.com/sandstorm-dev/sandstorm/runstore"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
	"github.com/sandstorm-dev/sandstorm/webhook"
)

// ErrCancelRequested is the cause of a run cancelled through Cancel.
var ErrCancelRequested = fmt.Errorf("%w: cancel requested (POST /runs/ID/cancel or ds cancel)", context.Canceled)

// pollEvery is how often a follower looks for events of a run another
// process writes, and an owner for cancel requests of another process.
const pollEvery = 200 * time.Millisecond

// Emit receives each event of a run with its sequence number.
type Emit = func(seq int64, ev json.RawMessage) error

// Options configure a Service.
type Options struct {
	// WebhookURL gets every finished run's summary unless the request names its own.
	WebhookURL string
	Webhooks   *webhook.Sender
	// Metrics, if set, counts every run's events and end.
	Metrics *metrics.Metrics
	Logger  *slog.Logger
}

// Service runs requests through an engine and records them.
type Service struct {
	eng   api.Engine
	store *runstore.Store
	opts  Options
	log   *slog.Logger
	owner string

	mu   sync.Mutex
	live map[string]*live
	// detached counts detached runs still going.
	detached sync.WaitGroup
	stop     chan struct{}
	stopOnce sync.Once
}

// live is a run this process is running.
type live struct {
	cancel context.CancelCauseFunc
	// changed is closed (and replaced) when an event is recorded.
	changed chan struct{}
}

// New makes a service over store. Close it to stop its background work.
func New(eng api.Engine, store *runstore.Store, o Options) (*Service, error) {
	self, err := sandbox.Self()
	if err != nil {
		return nil, fmt.Errorf("run owner: %w", err)
	}
	s := &Service{eng: eng, store: store, opts: o, log: o.Logger, owner: self.String(), live: map[string]*live{}, stop: make(chan struct{})}
	if s.log == nil {
		s.log = slog.Default()
	}
	go s.watchCancels()
	return s, nil
}

// Store is the run store.
func (s *Service) Store() *runstore.Store { return s.store }

// Close stops the background work (not the runs), gives webhooks still
// being delivered a few seconds, and closes the store.
func (s *Service) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	if s.opts.Webhooks != nil {
		s.opts.Webhooks.Close(webhookGrace)
	}
	return s.store.Close()
}

// webhookGrace is how long Close waits for webhooks still being delivered.
const webhookGrace = 10 * time.Second

// Get returns run id.
func (s *Service) Get(ctx context.Context, id string) (api.RunView, error) {
	r, err := s.store.Get(ctx, id)
	return api.ViewOf(r.RunRecord), err
}

// List returns a page of runs, newest first, and the next page's cursor.
func (s *Service) List(ctx context.Context, f runstore.Filter) (api.RunList, error) {
	page, next, err := s.store.List(ctx, f)
	out := api.RunList{Runs: []api.RunView{}, Next: next}
	for _, r := range page {
		out.Runs = append(out.Runs, api.ViewOf(r.RunRecord))
	}
	return out, err
}

// Files lists the files run id handed back.
func (s *Service) Files(ctx context.Context, id string) ([]outfiles.File, error) {
	r, err := s.store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	var files []outfiles.File
	if len(r.Files) > 0 {
		if err := json.Unmarshal(r.Files, &files); err != nil {
			return nil, fmt.Errorf("%w: files of %s: %w", runstore.ErrUnavailable, id, err)
		}
	}
	return files, nil
}

// OpenFile opens a file run id handed back. Only a path the run's record
// lists is opened, and through a root at the run's directory.
func (s *Service) OpenFile(ctx context.Context, id, path string) (io.ReadCloser, outfiles.File, error) {
	files, err := s.Files(ctx, id)
	if err != nil {
		return nil, outfiles.File{}, err
	}
	i := slices.IndexFunc(files, func(f outfiles.File) bool { return f.Path == path })
	if i < 0 {
		return nil, outfiles.File{}, fmt.Errorf("%w: run %s handed back no file %q", runstore.ErrNotFound, id, path)
	}
	root, err := os.OpenRoot(s.store.FilesDir(id))
	if err != nil {
		return nil, outfiles.File{}, fmt.Errorf("%w: %w", runstore.ErrNotFound, err)
	}
	defer root.Close()
	f, err := root.Open(path)
	if err != nil {
		return nil, outfiles.File{}, fmt.Errorf("%w: %w", runstore.ErrNotFound, err)
	}
	return f, files[i], nil
}

// Archive writes a .tar.gz of the files run id handed back to w.
func (s *Service) Archive(ctx context.Context, id string, w io.Writer) error {
	files, err := s.Files(ctx, id)
	if err != nil {
		return err
	}
	var root *os.Root
	if len(files) > 0 {
		if root, err = os.OpenRoot(s.store.FilesDir(id)); err != nil {
			return fmt.Errorf("%w: %w", runstore.ErrNotFound, err)
		}
		defer root.Close()
	}
	return outfiles.WriteTarGz(w, root, files)
}

// Handle is a recorded run holding a slot.
type Handle struct {
	ID  string
	s   *Service
	run api.Run
}

// Admit records req as a new run and admits it (see api.Engine.Admit).
// When admission fails the record is removed and the error returned: the
// request never ran.
func (s *Service) Admit(ctx context.Context, req api.Request, queued func(position int)) (*Handle, error) {
	id, err := s.create(ctx, req, false)
	if err != nil {
		return nil, err
	}
	ctx = logctx.With(ctx, "run_id", id)
	// A cancel while it waits for a slot ends the wait.
	wait, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.register(id, cancel)
	run, err := s.admit(wait, req, id, queued)
	if err != nil {
		s.unregister(id)
		s.forget(id)
		return nil, err
	}
	return &Handle{ID: id, s: s, run: run}, nil
}

func (s *Service) create(ctx context.Context, req api.Request, detached bool) (string, error) {
	if err := admission.Validate(req); err != nil {
		return "", err
	}
	now := time.Now()
	id := runstore.NewID(now)
	r := runstore.Run{RunRecord: api.RunRecord{ID: id, Status: api.StatusQueued, Request: req.Stored(), Prompt: head(req.Prompt), Detached: detached, CreatedAt: now},
		Owner: s.owner, WebhookURL: req.WebhookURL}
	if err := s.store.Create(ctx, r); err != nil {
		return "", err
	}
	return id, nil
}

// forget removes the record of a run that was refused before it ran.
func (s *Service) forget(id string) {
	if err := s.store.Discard(context.Background(), id); err != nil {
		s.log.Error("run store", "run_id", id, "err", err)
	}
}

// admit admits run id's req through the engine (files handed back to the
// store), counting how long it waited for its slot.
func (s *Service) admit(ctx context.Context, req api.Request, id string, queued func(position int)) (api.Run, error) {
	asked := time.Now()
	run, err := s.eng.Admit(ctx, s.target(req, id), queued)
	s.opts.Metrics.QueueWait(time.Since(asked))
	return run, err
}

// target sets where req's files are handed back.
func (s *Service) target(req api.Request, id string) api.Request {
	req.Output = &api.OutputTarget{Dir: s.store.FilesDir(id), URL: api.RunURLs(id)["files"] + "/"}
	return req
}

// head is the start of a prompt, for listings.
func head(p string) string {
	r := []rune(p)
	if len(r) > 200 {
		return string(r[:200])
	}
	return p
}

// Start runs the admitted run, recording every event and passing it to
// emit (nil for none); see api.Run.Start. Its first event names the run.
func (h *Handle) Start(ctx context.Context, emit Emit) (api.Outcome, error) {
	return h.s.start(ctx, h.ID, h.run, emit)
}

// Detach records req as a new run and runs it in the background within
// life (the server's lifetime, not the request's), whatever the caller
// does. It returns once the run holds a slot or waits in the queue for
// one; a request refused at once (invalid, queue full) is an error.
func (s *Service) Detach(ctx, life context.Context, req api.Request) (string, error) {
	id, err := s.create(ctx, req, true)
	if err != nil {
		return "", err
	}
	// The run outlives the request; life carries what its log lines say of
	// the request.
	ctx, cancel := context.WithCancelCause(logctx.With(life, "run_id", id))
	s.register(id, cancel)
	accepted := make(chan error, 1)
	var acceptOnce sync.Once
	// accept answers the caller once; it reports whether this was the answer.
	accept := func(err error) (first bool) {
		acceptOnce.Do(func() { accepted <- err; first = true })
		return first
	}
	s.detached.Add(1)
	go func() {
		defer s.detached.Done()
		defer cancel(nil)
		run, err := s.admit(ctx, req, id, func(int) { accept(nil) })
		if err != nil {
			if accept(err) {
				// Refused before it was queued: the caller says so.
				s.unregister(id)
				s.forget(id)
				return
			}
			rec := &recorder{s: s, id: id}
			rec.send(api.Marshal(api.RunEvent{Type: api.TypeRun, RunID: id, Events: api.RunURLs(id)["events"]}))
			rec.send(errcode.Event(err))
			s.finish(ctx, id, rec, api.Outcome{Code: errcode.Of(err)}, err)
			return
		}
		accept(nil)
		_, _ = s.start(ctx, id, run, nil)
	}()
	if err := <-accepted; err != nil {
		return "", err
	}
	return id, nil
}

// Wait blocks until every detached run has ended.
func (s *Service) Wait() { s.detached.Wait() }

func (s *Service) register(id string, cancel context.CancelCauseFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live[id] = &live{cancel: cancel, changed: make(chan struct{})}
}

func (s *Service) unregister(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.live[id]; ok {
		close(l.changed)
		delete(s.live, id)
	}
}

// changed returns the channel closed at run id's next event here, or nil
// when another process runs it.
func (s *Service) changed(id string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.live[id]; ok {
		return l.changed
	}
	return nil
}

func (s *Service) notify(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.live[id]; ok {
		close(l.changed)
		l.changed = make(chan struct{})
	}
}

// recorder writes one run's events: to the store, then to the client.
type recorder struct {
	s     *Service
	id    string
	emit  Emit
	mu    sync.Mutex
	seq   int64
	bytes int64
	files []outfiles.File
	// lastError is the message of the last error event, for the record.
	lastError string
	// storeErr is the first failed write; the run then ends.
	storeErr error
	cancel   context.CancelCauseFunc
	metrics  *metrics.Run
}

// send records ev and passes it on. A failed write to the store cancels
// the run and tells the client; a client that fails is the caller's to
// handle (api.Emit's contract).
func (r *recorder) send(ev json.RawMessage) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	seq := r.seq
	if r.storeErr == nil {
		err := r.s.store.Append(context.Background(), r.id, seq, ev)
		if err != nil {
			r.storeErr = err
			r.s.log.Error("run store: events cannot be recorded; ending the run", "run_id", r.id, "err", err)
			if r.cancel != nil {
				r.cancel(err)
			}
			if r.emit != nil {
				_ = r.emit(seq, api.NewError(api.CodeStoreUnavailable, "the run store cannot record this run's events ("+err.Error()+"): the run is stopped"))
			}
		}
	}
	r.bytes += int64(len(ev))
	r.metrics.Event(ev)
	// Only the kinds recorded are decoded whole; the runner's error events
	// count as sandstorm's own.
	switch api.TypeOf(ev) {
	case api.TypeSandbox:
		var e api.SandboxEvent
		if json.Unmarshal(ev, &e) == nil && e.Event == api.SandboxCreated {
			_ = r.s.store.Sandbox(context.Background(), r.id, e.Runtime, e.SandboxID, e.Warm)
		}
	case api.TypeFile:
		var f api.FileEvent
		if json.Unmarshal(ev, &f) == nil {
			r.files = append(r.files, f.OutputFile)
			r.bytes += f.Size
		}
	case api.TypeError:
		var e api.ErrorEvent
		if json.Unmarshal(ev, &e) == nil {
			r.lastError = e.Message
		}
	}
	r.s.notify(r.id)
	if r.emit != nil {
		return r.emit(seq, ev)
	}
	return nil
}

func (s *Service) start(ctx context.Context, id string, run api.Run, emit Emit) (api.Outcome, error) {
	ctx, cancel := context.WithCancelCause(logctx.With(ctx, "run_id", id))
	defer cancel(nil)
	s.mu.Lock()
	if _, ok := s.live[id]; !ok {
		s.live[id] = &live{changed: make(chan struct{})}
	}
	s.live[id].cancel = cancel
	s.mu.Unlock()
	rec := &recorder{s: s, id: id, emit: emit, cancel: cancel, metrics: s.opts.Metrics.Run()}
	if err := s.store.Started(context.Background(), id, time.Now()); err != nil {
		s.log.ErrorContext(ctx, "run store", "err", err)
	}
	// A client gone already fails the run's first emit: Start (which frees
	// the slot) still runs, and is cancelled at once.
	_ = rec.send(api.Marshal(api.RunEvent{Type: api.TypeRun, RunID: id, Events: api.RunURLs(id)["events"]}))
	out, err := run.Start(ctx, func(ev json.RawMessage) error { return rec.send(ev) })
	if err != nil && out.Code == "" {
		// The run could not start: say so in the stream, which has begun.
		_ = rec.send(errcode.Event(err))
		out.Code = errcode.Of(err)
	}
	if rec.storeErr != nil && out.Code == "" {
		out.Code = api.CodeStoreUnavailable
	}
	s.finish(ctx, id, rec, out, err)
	return out, err
}

// finish records how run id ended, logs it, wakes its followers and sends
// its webhook.
func (s *Service) finish(ctx context.Context, id string, rec *recorder, out api.Outcome, err error) {
	defer s.unregister(id)
	now := time.Now()
	r, gerr := s.store.Get(context.Background(), id)
	if gerr != nil {
		s.log.ErrorContext(ctx, "run store", "err", gerr)
		return
	}
	r.FinishedAt = &now
	if r.StartedAt == nil {
		r.StartedAt = &now
	}
	r.Status = statusOf(out.Code)
	rec.metrics.Finish(string(r.Status))
	r.ErrorCode = string(out.Code)
	if out.Code != "" && err != nil {
		r.ErrorMessage = err.Error()
	}
	r.Result = out.Result
	if len(out.Result) > 0 {
		var m struct {
			Cost  float64 `json:"total_cost_usd"`
			Turns int     `json:"num_turns"`
		}
		if json.Unmarshal(out.Result, &m) == nil {
			r.TotalCostUSD, r.NumTurns = m.Cost, m.Turns
		}
	}
	if r.ErrorMessage == "" && out.Code != "" {
		r.ErrorMessage = rec.lastError
	}
	if len(rec.files) > 0 {
		r.Files = api.Marshal(rec.files)
	}
	if ferr := s.store.Finish(context.Background(), r, rec.bytes); ferr != nil {
		s.log.ErrorContext(ctx, "run store: cannot record the end of the run", "err", ferr)
	}
	s.log.InfoContext(ctx, "run finished", "status", r.Status, "error_code", r.ErrorCode, "backend", r.Backend, "sandbox_id", r.SandboxID,
		"duration_ms", r.Duration(now).Milliseconds(), "total_cost_usd", r.TotalCostUSD, "num_turns", r.NumTurns, "events", rec.seq)
	s.notify(id)
	url := r.WebhookURL
	if url == "" {
		url = s.opts.WebhookURL
	}
	if url != "" && s.opts.Webhooks != nil {
		r.Events = rec.seq
		s.opts.Webhooks.Go(url, Summary(r))
	}
}

// Summary is the webhook body of finished run r.
func Summary(r runstore.Run) []byte {
	return api.Marshal(struct {
		Event string `json:"event"`
		api.RunRecord
		URLs map[string]string `json:"urls"`
	}{"run.finished", r.RunRecord, api.RunURLs(r.ID)})
}

func statusOf(code api.Code) api.RunStatus {
	switch code {
	case "":
		return api.StatusSucceeded
	case api.CodeTimeout:
		return api.StatusTimeout
	case api.CodeCancelled:
		return api.StatusCancelled
	case api.CodeInterrupted:
		return api.StatusInterrupted
	}
	return api.StatusFailed
}

// Follow passes run id's events after seq after to emit, then those that
// follow as they are recorded (by this process or another), until the run
// has ended and every event was passed, ctx ends or emit fails.
func (s *Service) Follow(ctx context.Context, id string, after int64, emit Emit) error {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		// Read the status before the events: once it says done, every event is in.
		changed := s.changed(id)
		r, err := s.store.Get(ctx, id)
		if err != nil {
			return err
		}
		evs, err := s.store.Events(ctx, id, after, 512)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if err := emit(e.Seq, e.Data); err != nil {
				return err
			}
			after = e.Seq
		}
		if len(evs) == 512 {
			continue
		}
		if r.Status.Done() {
			return nil
		}
		if len(evs) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-changed:
		case <-t.C:
		}
	}
}

// Cancel cancels run id wherever it runs: here at once, in another
// process through the store (its owner looks every pollEvery). Cancelling
// a run that has ended changes nothing. It returns the run's record.
func (s *Service) Cancel(ctx context.Context, id string) (api.RunView, error) {
	r, err := s.store.Get(ctx, id)
	if err != nil || r.Status.Done() {
		return api.ViewOf(r.RunRecord), err
	}
	s.mu.Lock()
	l, here := s.live[id]
	s.mu.Unlock()
	if here && l.cancel != nil {
		l.cancel(ErrCancelRequested)
	} else if _, err = s.store.RequestCancel(ctx, id); err != nil {
		return api.ViewOf(r.RunRecord), err
	}
	r.CancelRequested = true
	return api.ViewOf(r.RunRecord), nil
}

// Delete removes finished run id and its files.
func (s *Service) Delete(ctx context.Context, id string) error { return s.store.Delete(ctx, id) }

// watchCancels cancels this process's runs that another process asked to
// cancel.
func (s *Service) watchCancels() {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		ids := make([]string, 0, len(s.live))
		for id := range s.live {
			ids = append(ids, id)
		}
		s.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		asked, err := s.store.CancelRequests(context.Background(), ids)
		if err != nil {
			continue
		}
		s.mu.Lock()
		for _, id := range asked {
			if l, ok := s.live[id]; ok && l.cancel != nil {
				l.cancel(ErrCancelRequested)
			}
		}
		s.mu.Unlock()
	}
}

// Recover marks the runs whose process died as interrupted; their events
// so far stay readable.
func (s *Service) Recover(ctx context.Context) ([]string, error) {
	return s.store.Interrupt(ctx, sandbox.Orphaned, func(r runstore.Run) []byte {
		return api.NewError(api.CodeInterrupted, "the sandstorm process running this run went away (crashed or killed); its sandbox was removed by the sweep")
	})
}

// Tidy marks the runs whose process died as interrupted and prunes old
// runs, logging what it did.
func (s *Service) Tidy(ctx context.Context, retention time.Duration, maxBytes int64) {
	if ids, err := s.Recover(ctx); err != nil {
		s.log.Warn("run store: recover interrupted runs", "err", err)
	} else if len(ids) > 0 {
		s.log.Info("runs whose process went away marked interrupted", "runs", ids)
	}
	if n, err := s.store.Prune(ctx, retention, maxBytes); err != nil {
		s.log.Warn("run store: prune", "err", err)
	} else if n > 0 {
		s.log.Info("run store: pruned old runs", "removed", n)
	}
}

// Maintain tidies the store every period until ctx ends.
func (s *Service) Maintain(ctx context.Context, every, retention time.Duration, maxBytes int64) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.Tidy(ctx, retention, maxBytes)
	}
}
