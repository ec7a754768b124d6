package server

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/client"
	"github.com/sandstorm-dev/sandstorm/runs"
)

// TestEventsEnd: a browser's EventSource reconnects after every stream
// that ends, so a reconnect to a finished run with nothing newer gets 204,
// which stops it; one with events still to read gets them, and a live
// stream states its reconnect delay.
func TestEventsEnd(t *testing.T) {
	e := &stepEngine{steps: 2, step: make(chan struct{})}
	url, _ := serveEngine(t, e, Config{}, runs.Options{})
	r := detach(t, url, `{"prompt":"work"}`)

	resp, err := http.Get(url + "/runs/" + r.ID + "/events")
	if err != nil {
		t.Fatal(err)
	}
	first, err := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	if err != nil || first != "retry: 3000\n" {
		t.Errorf("live stream starts %q (%v), want its retry field", first, err)
	}

	close(e.step)
	var done api.RunView
	for deadline := time.Now().Add(30 * time.Second); done.Status != api.StatusSucceeded; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("run did not succeed: %+v", done)
		}
		_, _, data := send(t, "GET", url+"/runs/"+r.ID, "", nil)
		_ = json.Unmarshal(data, &done)
	}
	last := done.Events
	cases := []struct {
		name, query string
		headers     map[string]string
		want        int
		events      int
	}{
		{"reconnect at the last event", "", map[string]string{"Last-Event-ID": strconv.FormatInt(last, 10)}, 204, 0},
		{"reconnect past it", "", map[string]string{"Last-Event-ID": strconv.FormatInt(last+5, 10)}, 204, 0},
		{"after the last event", "?after=" + strconv.FormatInt(last, 10), nil, 204, 0},
		{"reconnect before the last event", "", map[string]string{"Last-Event-ID": strconv.FormatInt(last-1, 10)}, 200, 1},
		{"replay from the start", "", nil, 200, int(last)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", url+"/runs/"+r.ID+"/events"+tc.query, nil)
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			n := 0
			_, err = client.ReadSSE(resp.Body, 0, func(int64, json.RawMessage) error { n++; return nil })
			if resp.StatusCode != tc.want || n != tc.events || err != nil {
				t.Errorf("%d with %d events (%v), want %d with %d", resp.StatusCode, n, err, tc.want, tc.events)
			}
		})
	}

	// The Go client's follow from the end ends at once on the 204.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.New(url, "").Follow(ctx, r.ID, last, func(int64, json.RawMessage) error {
		t.Error("an event after the last")
		return nil
	}); err != nil {
		t.Errorf("follow from the end: %v", err)
	}
}
