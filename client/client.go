// Package client is a Go client of sandstorm's HTTP API (ds serve): run
// agents streaming (Query) or detached (Detach), follow a run's events with
// automatic resume after a dropped connection, list, cancel and delete runs,
// download what they made, and read the server's health.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/outfiles"
	"github.com/sandstorm-dev/sandstorm/runstore"
)

// Client talks to one server.
type Client struct {
	// Base is the server's URL, e.g. http://127.0.0.1:8000.
	Base string
	// Key, if set, is sent as Authorization: Bearer.
	Key  string
	HTTP *http.Client
}

// New is a client of base with key.
func New(base, key string) *Client {
	return &Client{Base: strings.TrimRight(base, "/"), Key: key, HTTP: &http.Client{}}
}

// Error is an error the server answered with.
type Error struct {
	Status  int
	Code    api.Code `json:"error"`
	Field   string   `json:"field"`
	Message string   `json:"message"`
}

func (e *Error) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return fmt.Sprintf("server answered %d %s", e.Status, e.Code)
}

// Unwrap maps the server's code back to the error it came from, so exit
// codes and errors.Is work as with a local run.
func (e *Error) Unwrap() error {
	switch e.Code {
	case api.CodeNotFound:
		return runstore.ErrNotFound
	case api.CodeConflict:
		return runstore.ErrNotFinished
	case api.CodeUnauthorized:
		return api.ErrUnauthorized
	case api.CodeInvalidRequest:
		return api.ErrInvalidRequest
	case api.CodeBusy:
		return api.ErrBusy
	case api.CodeStoreUnavailable:
		return runstore.ErrUnavailable
	}
	return nil
}

// errUnreachable wraps a failure to reach the server.
var errUnreachable = errors.New("cannot reach the sandstorm server")

func (c *Client) do(ctx context.Context, method, path string, body any, header http.Header) (*http.Response, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, r)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Key != "" {
		req.Header.Set("Authorization", "Bearer "+c.Key)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w", errUnreachable, c.Base, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		e := &Error{Status: resp.StatusCode}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		_ = json.Unmarshal(data, e)
		return nil, e
	}
	return resp, nil
}

func (c *Client) json(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
	}
	return nil
}

// Query runs req and streams it (POST /query): each event goes to emit
// with its sequence number as it comes, until the run ends. The run lives
// as long as the stream: a cancelled ctx, or emit returning an error,
// cancels it. It returns the run's id (for Get, Files, ...) once the
// stream has ended.
func (c *Client) Query(ctx context.Context, req api.Request, emit func(seq int64, ev json.RawMessage) error) (string, error) {
	h := http.Header{}
	h.Set("Accept", "text/event-stream")
	resp, err := c.do(ctx, http.MethodPost, "/query", req, h)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	id := resp.Header.Get("X-Sandstorm-Run-Id")
	_, err = ReadSSE(resp.Body, 0, emit)
	return id, err
}

// Detach starts a detached run (POST /runs).
func (c *Client) Detach(ctx context.Context, req api.Request) (api.RunView, error) {
	var r api.RunView
	return r, c.json(ctx, http.MethodPost, "/runs", req, &r)
}

// Get returns run id.
func (c *Client) Get(ctx context.Context, id string) (api.RunView, error) {
	var r api.RunView
	return r, c.json(ctx, http.MethodGet, "/runs/"+url.PathEscape(id), nil, &r)
}

// List returns a page of runs, newest first.
func (c *Client) List(ctx context.Context, f runstore.Filter) (api.RunList, error) {
	q := url.Values{}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.Before != "" {
		q.Set("before", f.Before)
	}
	var st []string
	for _, s := range f.Status {
		st = append(st, string(s))
	}
	if len(st) > 0 {
		q.Set("status", strings.Join(st, ","))
	}
	var out api.RunList
	return out, c.json(ctx, http.MethodGet, "/runs?"+q.Encode(), nil, &out)
}

// Cancel cancels run id (idempotent).
func (c *Client) Cancel(ctx context.Context, id string) (api.RunView, error) {
	var r api.RunView
	return r, c.json(ctx, http.MethodPost, "/runs/"+url.PathEscape(id)+"/cancel", nil, &r)
}

// Delete removes finished run id and its files.
func (c *Client) Delete(ctx context.Context, id string) error {
	return c.json(ctx, http.MethodDelete, "/runs/"+url.PathEscape(id), nil, nil)
}

// Health is GET /health.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	var h api.Health
	return h, c.json(ctx, http.MethodGet, "/health", nil, &h)
}

// Files lists the files run id handed back.
func (c *Client) Files(ctx context.Context, id string) ([]outfiles.File, error) {
	var l api.FileList
	if err := c.json(ctx, http.MethodGet, "/runs/"+url.PathEscape(id)+"/files", nil, &l); err != nil {
		return nil, err
	}
	out := make([]outfiles.File, 0, len(l.Files))
	for _, f := range l.Files {
		out = append(out, f.OutputFile)
	}
	return out, nil
}

// OpenFile downloads one file run id handed back.
func (c *Client) OpenFile(ctx context.Context, id, path string) (io.ReadCloser, outfiles.File, error) {
	resp, err := c.do(ctx, http.MethodGet, "/runs/"+url.PathEscape(id)+"/files/"+outfiles.URLPath(path), nil, nil)
	if err != nil {
		return nil, outfiles.File{}, err
	}
	return resp.Body, outfiles.File{Path: path, Size: resp.ContentLength, SHA256: resp.Header.Get("X-Content-SHA256")}, nil
}

// Resume bounds the reconnects of Follow after the connection drops.
const (
	resumeAttempts = 10
	resumeFirst    = 250 * time.Millisecond
	resumeMax      = 5 * time.Second
)

// Follow passes run id's events after seq after to emit, then the rest as
// they come, until the run ends. A dropped connection is resumed from the
// last event received (Last-Event-ID): nothing is lost or seen twice.
func (c *Client) Follow(ctx context.Context, id string, after int64, emit func(seq int64, ev json.RawMessage) error) error {
	delay := resumeFirst
	failures := 0
	for {
		last, err := c.follow(ctx, id, after, emit)
		if last > after {
			after, failures, delay = last, 0, resumeFirst
		}
		var se *Error
		if ctx.Err() != nil || errors.As(err, &se) || errors.Is(err, errEmit) {
			return errors.Join(ctx.Err(), err)
		}
		// The stream ended: the run did, or the connection dropped.
		r, gerr := c.Get(ctx, id)
		if gerr == nil && r.Status.Done() && after >= r.Events {
			return nil
		}
		if failures++; failures > resumeAttempts {
			return errors.Join(err, gerr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, resumeMax)
	}
}

// errEmit marks an error of the caller's emit, which ends Follow.
var errEmit = errors.New("emit")

// follow reads one SSE stream and returns the last sequence number passed on.
func (c *Client) follow(ctx context.Context, id string, after int64, emit func(int64, json.RawMessage) error) (int64, error) {
	h := http.Header{}
	h.Set("Accept", "text/event-stream")
	h.Set("Last-Event-ID", strconv.FormatInt(after, 10))
	resp, err := c.do(ctx, http.MethodGet, "/runs/"+url.PathEscape(id)+"/events", nil, h)
	if err != nil {
		return after, err
	}
	defer resp.Body.Close()
	return ReadSSE(resp.Body, after, func(seq int64, data json.RawMessage) error {
		if err := emit(seq, data); err != nil {
			return fmt.Errorf("%w: %w", errEmit, err)
		}
		return nil
	})
}

// ReadSSE reads Server-Sent Events frames of sandstorm's form ("id: N",
// "data: <json>") from r, passing each whose id is after after; it returns
// the last id passed and why the stream ended (nil at its end).
func ReadSSE(r io.Reader, after int64, emit func(seq int64, data json.RawMessage) error) (int64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 32<<20)
	var seq int64
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			if len(data) > 0 && seq > after {
				if err := emit(seq, json.RawMessage(data)); err != nil {
					return after, err
				}
				after = seq
			}
			data = nil
		case bytes.HasPrefix(line, []byte("id: ")):
			n, err := strconv.ParseInt(string(line[4:]), 10, 64)
			if err != nil {
				return after, fmt.Errorf("bad event id %q", line[4:])
			}
			seq = n
		case bytes.HasPrefix(line, []byte("data: ")):
			data = append(data, line[6:]...)
		}
	}
	return after, sc.Err()
}
