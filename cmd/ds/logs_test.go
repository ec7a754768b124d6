package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/server"
)

// TestServeJSONLogs: with --log-format json every line ds serve writes is
// one JSON object, and each run's line names the run and the request that
// started it (the client's X-Request-Id, or one the server made and
// answered with); no key is ever in them.
func TestServeJSONLogs(t *testing.T) {
	const backend = "containerd"
	agentBackend(t, backend)
	dir := t.TempDir()
	srv := serve(t, dir, backend, "--scripted-model", "hello-python", "--log-format", "json")

	post := func(path, requestID string) *http.Response {
		req, _ := http.NewRequest("POST", srv.url+path, strings.NewReader(`{"prompt":"Create hello.py and run it","anthropic_api_key":"sk-ant-never-logged-0123456789"}`))
		req.Header.Set("Content-Type", "application/json")
		if requestID != "" {
			req.Header.Set("X-Request-Id", requestID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := post("/query", "req-from-client.1")
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	streamed, echoed := resp.Header.Get(server.HeaderRunID), resp.Header.Get("X-Request-Id")
	if resp.StatusCode != 200 || echoed != "req-from-client.1" {
		t.Fatalf("/query: %d, X-Request-Id %q", resp.StatusCode, echoed)
	}
	// Not a sane id: the server makes its own.
	resp = post("/runs", "has spaces and is far too long to be anybody's request id, so it is replaced")
	var detached api.RunView
	json.NewDecoder(resp.Body).Decode(&detached)
	resp.Body.Close()
	made := resp.Header.Get("X-Request-Id")
	if resp.StatusCode != 202 || made == "" || strings.Contains(made, " ") {
		t.Fatalf("/runs: %d, X-Request-Id %q", resp.StatusCode, made)
	}
	follow, err := http.Get(srv.url + "/runs/" + detached.ID + "/events")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, follow.Body)
	follow.Body.Close()
	srv.cmd.Process.Signal(syscall.SIGTERM)
	srv.cmd.Wait()

	data, err := os.ReadFile(srv.logs)
	if err != nil {
		t.Fatal(err)
	}
	finished := map[string]string{} // run id → request id
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil || line["time"] == nil || line["level"] == nil || line["msg"] == nil {
			t.Errorf("not a JSON log line: %q", sc.Text())
			continue
		}
		if line["msg"] == "run finished" {
			run, _ := line["run_id"].(string)
			finished[run], _ = line["request_id"].(string)
			if line["status"] != "succeeded" || line["backend"] != backend {
				t.Errorf("run finished: %v", line)
			}
		}
	}
	if finished[streamed] != "req-from-client.1" || finished[detached.ID] != made {
		t.Errorf("run finished lines %v; want %s by req-from-client.1 and %s by %s", finished, streamed, detached.ID, made)
	}
	if strings.Contains(string(data), "never-logged") {
		t.Error("a key reached the log")
	}
}

// An unknown --log-format is a usage error, before anything starts.
func TestServeLogFormat(t *testing.T) {
	r := ds(t, t.TempDir(), "serve", "--log-format", "xml")
	if r.code != api.ExitUsage || !strings.Contains(r.stderr, "--log-format") {
		t.Errorf("ds serve --log-format xml: %+v", r)
	}
}
