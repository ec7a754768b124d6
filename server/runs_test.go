package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/client"
	"github.com/sandstorm-dev/sandstorm/runs"
	"github.com/sandstorm-dev/sandstorm/runstore"
	"github.com/sandstorm-dev/sandstorm/webhook"
)

// stepEngine plays runs of steps events, one each time the test sends on
// step (closed: all at once), then a result; a cancelled run ends with a
// cancelled error, as the real one does.
type stepEngine struct {
	steps int
	step  chan struct{}
}

func (e *stepEngine) Admit(_ context.Context, req api.Request, _ func(int)) (api.Run, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *stepEngine) Health(context.Context) api.Health {
	return api.Health{Status: api.HealthOK, Backend: "fake"}
}

func (e *stepEngine) Start(ctx context.Context, emit api.Emit) (api.Outcome, error) {
	for i := 1; i <= e.steps; i++ {
		select {
		case <-ctx.Done():
			_ = emit(api.NewError(api.CodeCancelled, "run cancelled: "+context.Cause(ctx).Error()))
			return api.Outcome{Code: api.CodeCancelled}, nil
		case <-e.step:
		}
		if err := emit(api.Marshal(api.LineEvent{Type: api.TypeStdout, Line: fmt.Sprint("step ", i)})); err != nil {
			return api.Outcome{Code: api.CodeCancelled}, err
		}
	}
	result := json.RawMessage(`{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.25,"num_turns":3}`)
	if err := emit(result); err != nil {
		return api.Outcome{}, err
	}
	return api.Outcome{Result: result}, nil
}

func detach(t *testing.T, url, body string) api.RunView {
	t.Helper()
	code, _, data := send(t, "POST", url+"/runs", body, map[string]string{"Content-Type": "application/json"})
	var r api.RunView
	if err := json.Unmarshal(data, &r); code != 202 || err != nil || !runstore.ValidID(r.ID) {
		t.Fatalf("POST /runs: %d %s", code, data)
	}
	return r
}

// frame is one SSE frame read.
type frame struct {
	seq int64
	ev  map[string]any
}

// openEvents opens GET /runs/ID/events with headers; frames arrive on the
// channel, closed at the stream's end.
func openEvents(t *testing.T, url, id string, headers map[string]string) (<-chan frame, func()) {
	t.Helper()
	query := ""
	if v, ok := headers["?after"]; ok {
		query = "?after=" + v
		delete(headers, "?after")
	}
	req, _ := http.NewRequest("GET", url+"/runs/"+id+"/events"+query, nil)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("events: %d", resp.StatusCode)
	}
	ch := make(chan frame, 100)
	go func() {
		defer close(ch)
		client.ReadSSE(resp.Body, 0, func(seq int64, data json.RawMessage) error {
			var ev map[string]any
			_ = json.Unmarshal(data, &ev)
			ch <- frame{seq, ev}
			return nil
		})
	}()
	return ch, func() { resp.Body.Close() }
}

func next(t *testing.T, ch <-chan frame) frame {
	t.Helper()
	select {
	case f, ok := <-ch:
		if !ok {
			t.Fatal("stream ended early")
		}
		return f
	case <-time.After(30 * time.Second):
		t.Fatal("no event")
	}
	return frame{}
}

// TestDetachFollowResume: a detached run goes on without any client; a
// follower that reconnects with Last-Event-ID loses nothing and sees
// nothing twice; a replay after the end has every event.
func TestDetachFollowResume(t *testing.T) {
	e := &stepEngine{steps: 6, step: make(chan struct{})}
	url, _ := serveEngine(t, e, Config{}, runs.Options{})
	r := detach(t, url, `{"prompt":"work"}`)
	if r.URLs["events"] != "/runs/"+r.ID+"/events" {
		t.Errorf("urls %v", r.URLs)
	}
	var seen []int64
	ch, stop := openEvents(t, url, r.ID, nil)
	if f := next(t, ch); f.seq != 1 || f.ev["type"] != "run" || f.ev["run_id"] != r.ID {
		t.Fatalf("first frame %+v", f)
	}
	seen = append(seen, 1)
	for range 3 {
		e.step <- struct{}{}
		seen = append(seen, next(t, ch).seq)
	}
	stop() // the client goes away; the run does not
	e.step <- struct{}{}
	e.step <- struct{}{}
	ch, stop = openEvents(t, url, r.ID, map[string]string{"Last-Event-ID": "4"})
	defer stop()
	close(e.step)
	var last frame
	for f := range ch {
		seen = append(seen, f.seq)
		last = f
	}
	for i, s := range seen {
		if s != int64(i+1) {
			t.Fatalf("sequence %v: a gap or a duplicate at %d", seen, i)
		}
	}
	if len(seen) != 8 || last.ev["type"] != "result" {
		t.Errorf("saw %v, last %v; want 8 events ending with the result", seen, last.ev)
	}
	_, _, data := send(t, "GET", url+"/runs/"+r.ID, "", nil)
	var got api.RunView
	json.Unmarshal(data, &got)
	if got.Status != api.StatusSucceeded || got.TotalCostUSD != 0.25 || got.NumTurns != 3 || got.Events != 8 || got.FinishedAt == nil || !got.Detached {
		t.Errorf("record %s", data)
	}
	// A replay of a finished run, from the start or after a point.
	for after, want := range map[string]int{"0": 8, "5": 3} {
		ch, stop := openEvents(t, url, r.ID, map[string]string{"?after": after})
		n := 0
		for range ch {
			n++
		}
		stop()
		if n != want {
			t.Errorf("after=%s: %d events, want %d", after, n, want)
		}
	}
}

// TestCancelThroughAPI: cancel ends a detached run with a cancelled error,
// and is idempotent.
func TestCancelThroughAPI(t *testing.T) {
	e := &stepEngine{steps: 100, step: make(chan struct{})}
	url, _ := serveEngine(t, e, Config{}, runs.Options{})
	r := detach(t, url, `{"prompt":"long"}`)
	ch, stop := openEvents(t, url, r.ID, nil)
	defer stop()
	next(t, ch)
	e.step <- struct{}{}
	next(t, ch)
	if code, _, data := send(t, "POST", url+"/runs/"+r.ID+"/cancel", "", nil); code != 202 {
		t.Errorf("cancel: %d %s", code, data)
	}
	var last frame
	for f := range ch {
		last = f
	}
	if last.ev["type"] != "error" || last.ev["code"] != "cancelled" {
		t.Errorf("stream ended with %v, want a cancelled error", last.ev)
	}
	code, _, data := send(t, "POST", url+"/runs/"+r.ID+"/cancel", "", nil)
	var got api.RunView
	json.Unmarshal(data, &got)
	if code != 200 || got.Status != api.StatusCancelled || got.ErrorCode != "cancelled" {
		t.Errorf("second cancel: %d %s", code, data)
	}
}

// TestListDelete: newest first, paged by cursor, filtered by status;
// deleting a running run is a conflict, a finished one removes it.
func TestListDelete(t *testing.T) {
	e := &stepEngine{steps: 1, step: make(chan struct{})}
	url, svc := serveEngine(t, e, Config{}, runs.Options{})
	running := detach(t, url, `{"prompt":"held"}`)
	close(e.step)
	var done []string
	for i := range 4 {
		r := detach(t, url, fmt.Sprintf(`{"prompt":"run %d"}`, i))
		if err := svc.Follow(context.Background(), r.ID, 0, func(int64, json.RawMessage) error { return nil }); err != nil {
			t.Fatal(err)
		}
		done = append(done, r.ID)
	}
	// The first run finished too once the steps were released.
	if err := svc.Follow(context.Background(), running.ID, 0, func(int64, json.RawMessage) error { return nil }); err != nil {
		t.Fatal(err)
	}
	var ids []string
	cursor := ""
	for page := 0; ; page++ {
		_, _, data := send(t, "GET", url+"/runs?limit=2&before="+cursor, "", nil)
		var l api.RunList
		if err := json.Unmarshal(data, &l); err != nil || len(l.Runs) > 2 || page > 5 {
			t.Fatalf("page %d: %s", page, data)
		}
		for _, r := range l.Runs {
			ids = append(ids, r.ID)
		}
		if cursor = l.Next; cursor == "" {
			break
		}
	}
	want := []string{done[3], done[2], done[1], done[0], running.ID}
	if strings.Join(ids, " ") != strings.Join(want, " ") {
		t.Errorf("listed %v, want newest first %v", ids, want)
	}
	_, _, data := send(t, "GET", url+"/runs?status=running,queued", "", nil)
	if !strings.Contains(string(data), `"runs":[]`) {
		t.Errorf("none running: %s", data)
	}
	for _, q := range []string{"limit=0", "limit=x", "status=bogus", "before=../x"} {
		if code, ec, _ := send(t, "GET", url+"/runs?"+q, "", nil); code != 400 || ec != api.CodeInvalidRequest {
			t.Errorf("GET /runs?%s: %d %s", q, code, ec)
		}
	}
	if code, _, _ := send(t, "DELETE", url+"/runs/"+done[0], "", nil); code != 204 {
		t.Errorf("delete: %d", code)
	}
	for _, p := range []string{"/runs/" + done[0], "/runs/nonsense", "/runs/" + done[0] + "/events", "/runs/" + done[0] + "/files"} {
		if code, ec, _ := send(t, "GET", url+p, "", nil); code != 404 || ec != api.CodeNotFound {
			t.Errorf("GET %s: %d %s, want 404", p, code, ec)
		}
	}
	if code, _, _ := send(t, "GET", url+"/runs/"+done[1]+"/events", "", map[string]string{"Last-Event-ID": "x"}); code != 400 {
		t.Errorf("bad Last-Event-ID: %d", code)
	}
}

func TestDeleteRunning(t *testing.T) {
	e := &stepEngine{steps: 1, step: make(chan struct{})}
	url, _ := serveEngine(t, e, Config{}, runs.Options{})
	r := detach(t, url, `{"prompt":"held"}`)
	if code, ec, _ := send(t, "DELETE", url+"/runs/"+r.ID, "", nil); code != 409 || ec != api.CodeConflict {
		t.Errorf("delete a running run: %d %s, want 409", code, ec)
	}
	close(e.step)
}

// TestQueryNamesItsRun: POST /query's stream names its run, which is then
// in the store.
func TestQueryNamesItsRun(t *testing.T) {
	e := &stepEngine{steps: 2, step: make(chan struct{})}
	close(e.step)
	url, _ := serveEngine(t, e, Config{}, runs.Options{})
	resp := post(t, url, `{"prompt":"x","anthropic_api_key":"sk-ant-secret-never-stored"}`)
	id := resp.Header.Get(HeaderRunID)
	var first map[string]any
	(&harness{}).events(t, resp.Body, func(map[string]any) bool { return true })
	resp.Body.Close()
	_, _, data := send(t, "GET", url+"/runs/"+id, "", nil)
	if err := json.Unmarshal(data, &first); err != nil || first["status"] != "succeeded" {
		t.Errorf("run %q: %s", id, data)
	}
	if strings.Contains(string(data), "sk-ant-secret") {
		t.Errorf("the store kept a key: %s", data)
	}
}

// TestRunsAuth: every runs route needs a key (any of the rotated ones).
func TestRunsAuth(t *testing.T) {
	k1, k2 := strings.Repeat("c", 32), strings.Repeat("d", 33)
	e := &stepEngine{steps: 0, step: make(chan struct{})}
	url, svc := serveEngine(t, e, Config{APIKeys: []string{k1, k2}}, runs.Options{})
	id, err := svc.Detach(context.Background(), context.Background(), api.Request{Prompt: "x"})
	if err != nil {
		t.Fatal(err)
	}
	svc.Follow(context.Background(), id, 0, func(int64, json.RawMessage) error { return nil })
	routes := []struct{ method, path string }{
		{"POST", "/runs"}, {"GET", "/runs"}, {"GET", "/runs/" + id}, {"GET", "/runs/" + id + "/events"},
		{"POST", "/runs/" + id + "/cancel"}, {"GET", "/runs/" + id + "/files"}, {"GET", "/runs/" + id + "/files.tar.gz"},
		{"GET", "/runs/" + id + "/files/x"}, {"DELETE", "/runs/" + id},
	}
	for _, r := range routes {
		for _, auth := range []string{"", "Bearer " + strings.Repeat("c", 31), "Token " + k1} {
			h := map[string]string{"Content-Type": "application/json"}
			if auth != "" {
				h["Authorization"] = auth
			}
			if code, ec, _ := send(t, r.method, url+r.path, `{"prompt":"x"}`, h); code != 401 || ec != api.CodeUnauthorized {
				t.Errorf("%s %s with %q: %d %s, want 401", r.method, r.path, auth, code, ec)
			}
		}
	}
	for i, r := range routes {
		k := []string{k1, k2}[i%2]
		h := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + k}
		if code, _, body := send(t, r.method, url+r.path, `{"prompt":"x"}`, h); code == 401 || code >= 500 {
			t.Errorf("%s %s with a key: %d %s", r.method, r.path, code, body)
		}
	}
}

// TestWebhook: a finished run's summary reaches a receiver, signed.
func TestWebhook(t *testing.T) {
	secret := []byte("whsec-test-0123456789abcdef0123456789")
	var mu sync.Mutex
	got := make(chan []byte, 1)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hook := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify(secret, r.Header, body, time.Now(), time.Minute); err != nil {
			t.Errorf("webhook signature: %v", err)
			w.WriteHeader(400)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		got <- body
	})}
	go hook.Serve(l)
	defer hook.Close()
	e := &stepEngine{steps: 1, step: make(chan struct{})}
	close(e.step)
	url, _ := serveEngine(t, e, Config{}, runs.Options{Webhooks: &webhook.Sender{Secret: secret, Backoff: 10 * time.Millisecond,
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}})
	r := detach(t, url, `{"prompt":"x","webhook_url":"http://`+l.Addr().String()+`/hook?token=abc"}`)
	select {
	case body := <-got:
		var s struct {
			Event  string `json:"event"`
			ID     string `json:"id"`
			Status string `json:"status"`
			Events int64  `json:"events"`
		}
		if err := json.Unmarshal(body, &s); err != nil || s.Event != "run.finished" || s.ID != r.ID || s.Status != "succeeded" || s.Events != 3 {
			t.Errorf("webhook body %s", body)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no webhook")
	}
	if code, ec, _ := send(t, "POST", url+"/runs", `{"prompt":"x","webhook_url":"ftp://x"}`, map[string]string{"Content-Type": "application/json"}); code != 400 || ec != api.CodeInvalidRequest {
		t.Errorf("bad webhook_url: %d %s", code, ec)
	}
}

// queueEngine queues every request, then refuses it: busy after the wait.
type queueEngine struct{ stepEngine }

func (e *queueEngine) Admit(ctx context.Context, req api.Request, queued func(int)) (api.Run, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	queued(1)
	<-e.step
	return nil, fmt.Errorf("%w: waited too long", api.ErrBusy)
}

// TestDetachedQueuedThenBusy: a detached run accepted while queued, whose
// wait runs out, ends with a busy error in its log.
func TestDetachedQueuedThenBusy(t *testing.T) {
	e := &queueEngine{stepEngine{step: make(chan struct{})}}
	svc := openRuns(t, e, runs.Options{})
	id, err := svc.Detach(context.Background(), context.Background(), api.Request{Prompt: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := svc.Get(context.Background(), id); r.Status != api.StatusQueued {
		t.Errorf("status while waiting %s", r.Status)
	}
	close(e.step)
	var last api.ErrorEvent
	svc.Follow(context.Background(), id, 0, func(_ int64, ev json.RawMessage) error { return json.Unmarshal(ev, &last) })
	r, _ := svc.Get(context.Background(), id)
	if last.Code != api.CodeBusy || r.Status != api.StatusFailed || r.ErrorCode != string(api.CodeBusy) {
		t.Errorf("last event %+v, run %+v", last, r.RunRecord)
	}
	// Refused at once (not queued): an error, and no record.
	if _, err := svc.Detach(context.Background(), context.Background(), api.Request{}); !errors.Is(err, api.ErrInvalidRequest) {
		t.Errorf("invalid detach: %v", err)
	}
	if l, _ := svc.List(context.Background(), runstore.Filter{}); len(l.Runs) != 1 {
		t.Errorf("%d runs recorded, want 1", len(l.Runs))
	}
}

// TestFollowWhileBusy: a follower's run id outlives its handler (fiber
// reuses a handler's values for the next request), so a stream followed
// while other requests come and go still follows its own run to the end.
func TestFollowWhileBusy(t *testing.T) {
	e := &stepEngine{steps: 20, step: make(chan struct{})}
	url, _ := serveEngine(t, e, Config{}, runs.Options{})
	r := detach(t, url, `{"prompt":"work"}`)
	ch, stop := openEvents(t, url, r.ID, nil)
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20 {
			send(t, "GET", fmt.Sprintf("%s/runs/run-%024x", url, i), "", nil)
			send(t, "GET", url+"/health?pad="+strings.Repeat("x", 64), "", nil)
			e.step <- struct{}{}
		}
	}()
	var last frame
	n := 0
	for f := range ch {
		last, n = f, n+1
	}
	<-done
	if n != 22 || last.ev["type"] != "result" {
		t.Errorf("%d events, the last %v; want 22 ending with the result", n, last.ev)
	}
}
