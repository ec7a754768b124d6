package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/sandstorm-dev/sandstorm/runstore"
)

// TestFollowResumes: a stream cut mid-run is resumed from the last event
// received; nothing is lost or seen twice.
func TestFollowResumes(t *testing.T) {
	const total = 7
	var connects atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/runs/run-x" {
			fmt.Fprintf(w, `{"id":"run-x","status":"succeeded","events":%d}`, total)
			return
		}
		n := connects.Add(1)
		after, _ := strconv.Atoi(r.Header.Get("Last-Event-ID"))
		w.Header().Set("Content-Type", "text/event-stream")
		// Each connection delivers three events and drops.
		for seq := after + 1; seq <= min(after+3, total); seq++ {
			fmt.Fprintf(w, "id: %d\ndata: {\"n\":%d,\"conn\":%d}\n\n", seq, seq, n)
		}
		// A frame cut half-way is not delivered.
		fmt.Fprintf(w, "id: %d\ndata: {\"n\":", after+4)
	}))
	defer srv.Close()
	var got []int64
	err := New(srv.URL, "").Follow(context.Background(), "run-x", 0, func(seq int64, ev json.RawMessage) error {
		got = append(got, seq)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range got {
		if s != int64(i+1) {
			t.Fatalf("got %v", got)
		}
	}
	if len(got) != total || connects.Load() != 3 {
		t.Errorf("got %v over %d connections", got, connects.Load())
	}
}

// TestErrors: the server's error codes come back as the errors they were.
func TestErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(404)
		fmt.Fprint(w, `{"error":"not_found","message":"no such run: run-y"}`)
	}))
	defer srv.Close()
	_, err := New(srv.URL, "").Get(context.Background(), "run-y")
	var e *Error
	if !errors.As(err, &e) || e.Status != 404 || !errors.Is(err, runstore.ErrNotFound) || err.Error() != "no such run: run-y" {
		t.Errorf("err %v", err)
	}
}
