package agentimage

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/runnerproto"
)

var update = flag.Bool("update", false, "rewrite runner.mjs's protocol block from package runnerproto")

// These tests run the real runner.mjs with the host's node against the real
// gateway and a fake SDK that reports the options and environment it was
// given and talks to the model (and the egress proxy) through the runner's
// forwarders, so the runner's own logic (config, forwarders, token
// handling, output, exit codes, signals) is checked in seconds, without the
// real SDK or a container. Every run is held to package runnerproto: each
// stdout line, each variable the runner reads, its timing lines and its
// exit status.

// realKey is the credential the gateway puts in; it must never reach the runner.
const realKey = "sk-ant-test-real-key-0000"

// fakeSDK stands in for @anthropic-ai/claude-agent-sdk. The prompt picks
// what it does.
const fakeSDK = `
import http from 'node:http';

export async function* query({ prompt, options }) {
  const env = options.env;
  if (typeof prompt !== 'string') {
    // Streaming input (a warm sandbox): the prompt is the first user message.
    for await (const m of prompt) {
      prompt = m.message.content;
      break;
    }
  }
  const { env: _env, abortController: _abort, stderr: _stderr, ...given } = options;
  yield {
    type: 'system', subtype: 'init', options: given,
    cwd: options.cwd, model: options.model ?? null, maxTurns: options.maxTurns ?? null,
    permissionMode: options.permissionMode, allowDangerouslySkipPermissions: options.allowDangerouslySkipPermissions,
    settingSources: options.settingSources, persistSession: options.persistSession,
    systemPrompt: options.systemPrompt ?? null, outputFormat: options.outputFormat ?? null,
    allowedTools: options.allowedTools ?? null, includePartialMessages: options.includePartialMessages ?? null,
    baseURL: env.ANTHROPIC_BASE_URL, keyIsToken: env.ANTHROPIC_API_KEY === process.env.SANDSTORM_MODEL_TOKEN,
    tokenVarPassed: 'SANDSTORM_MODEL_TOKEN' in env,
    nonessential: env.CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC, retries: env.CLAUDE_CODE_MAX_RETRIES,
    home: env.HOME, configDir: env.CLAUDE_CONFIG_DIR, text: 'line\u2028sep',
    bedrock: env.CLAUDE_CODE_USE_BEDROCK ?? null, oauth: env.CLAUDE_CODE_OAUTH_TOKEN ?? null,
  };
  if (prompt === 'noresult') return;
  if (prompt === 'crash') {
    setTimeout(() => { throw new Error('crash'); }, 0);
    await new Promise(() => {});
  }
  if (prompt === 'hang') {
    await new Promise((_, reject) => options.abortController.signal.addEventListener('abort', () => reject(new Error('aborted'))));
  }
  const res = await fetch(env.ANTHROPIC_BASE_URL + '/v1/messages?beta=true', {
    method: 'POST', headers: { 'x-api-key': env.ANTHROPIC_API_KEY, 'content-type': 'application/json' },
    body: JSON.stringify({ stream: true }),
  });
  yield { type: 'assistant', status: res.status, body: await res.text() };
  if (prompt === 'egress') {
    // A plain-HTTP proxy request, as curl makes one with HTTP_PROXY.
    const proxy = new URL(env.HTTP_PROXY);
    const answer = await new Promise((resolve, reject) => {
      http.get({ host: proxy.hostname, port: proxy.port, path: 'http://example.test/hello', headers: { host: 'example.test' } }, (r) => {
        let body = '';
        r.on('data', (c) => (body += c));
        r.on('end', () => resolve(r.statusCode + ' ' + body));
      }).on('error', reject);
    });
    yield { type: 'assistant', egress: answer };
  }
  if (prompt === 'bigint') {
    yield { type: 'assistant', n: 1n };
  }
  if (prompt === 'leak') {
    yield { type: 'assistant', body: 'token ' + env.ANTHROPIC_API_KEY + ' key sk-ant-api03-secretsecret' };
  }
  if (prompt === 'throw') {
    options.stderr('cli says ANTHROPIC_API_KEY=' + env.ANTHROPIC_API_KEY + '\n');
    throw new Error('boom with ' + env.ANTHROPIC_API_KEY);
  }
  const ok = prompt !== 'fail';
  yield { type: 'result', subtype: ok ? 'success' : 'error_max_turns', is_error: !ok };
}
`

// probe is loaded before runner.mjs. It records the SANDSTORM_ variables
// the runner reads (a copy of the whole environment reads none), and with
// RUNNER_PROBE_NO_LOOPBACK=1 makes listening fail, as in a sandbox whose
// loopback is down.
const probe = `
import fs from 'node:fs';
import net from 'node:net';

const env = process.env;
const read = new Set();
let copying = null;
const note = (k) => { if (typeof k === 'string' && k.startsWith('SANDSTORM_')) read.add(k); };
process.env = new Proxy(env, {
  getOwnPropertyDescriptor(t, k) { copying = k; return Reflect.getOwnPropertyDescriptor(t, k); },
  get(t, k) {
    if (k === copying) copying = null;
    else note(k);
    return Reflect.get(t, k);
  },
  has(t, k) { note(k); return Reflect.has(t, k); },
});
process.on('exit', () => fs.writeFileSync(env.RUNNER_PROBE_OUT, JSON.stringify([...read])));

if (env.RUNNER_PROBE_NO_LOOPBACK === '1') {
  net.Server.prototype.listen = function () {
    process.nextTick(() => this.emit('error', Object.assign(new Error('listen EADDRNOTAVAIL'), { code: 'EADDRNOTAVAIL' })));
    return this;
  };
}
`

// rig is a directory with runner.mjs (and the fake SDK, unless without)
// beside a real gateway whose upstream is a fake model.
type rig struct {
	dir string
	gw  *gateway.Gateway
	n   int
}

func newRig(t *testing.T, withSDK bool) *rig {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node not installed")
	}
	dir := t.TempDir()
	runner, err := Files.ReadFile("runner.mjs")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"runner.mjs":    string(runner),
		"probe.mjs":     probe,
		"package.json":  `{"type":"module"}`,
		"workspace/.ok": "",
	}
	if withSDK {
		sdk := "node_modules/@anthropic-ai/claude-agent-sdk/"
		files[sdk+"package.json"] = `{"name":"@anthropic-ai/claude-agent-sdk","type":"module","exports":{".":"./sdk.mjs"}}`
		files[sdk+"sdk.mjs"] = fakeSDK
	}
	writeTree(t, dir, files)
	model := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("x-api-key") != realKey {
			http.Error(w, "bad key", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, ev := range []string{"message_start", "content_block_delta", "message_stop"} {
			fmt.Fprintf(w, "event: %s\n\n", ev)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(model.Close)
	gw, err := gateway.New(gateway.Config{Upstream: model.URL, Dir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{dir: dir, gw: gw}
}

// open opens a gateway session with the real key.
func (r *rig) open(t *testing.T, o gateway.SessionOptions) *gateway.Session {
	t.Helper()
	r.n++
	o.Credentials = gateway.Credentials{AnthropicKey: realKey}
	s, err := r.gw.Open(fmt.Sprintf("s%d", r.n), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// serveTCP serves the gateway's TCP side on 127.0.0.1, through TLS with a
// certificate of ca when set, and returns its address.
func (r *rig) serveTCP(t *testing.T, ca *egress.CA) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if ca != nil {
		leaf, err := ca.Leaf("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{*leaf}})
	}
	go r.gw.ServeTCP(l)
	t.Cleanup(func() { l.Close() })
	return addr
}

// socketEnv has the runner reach s through its socket.
func socketEnv(s *gateway.Session) []string {
	return []string{runnerproto.Env.Socket + "=" + s.SocketPath(), runnerproto.Env.Token + "=" + s.Token}
}

// egressProxy answers every proxied request with its host.
var egressProxy = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "egress to %s", r.Host)
})

func writeConfig(t *testing.T, dir string, cfg string) string {
	t.Helper()
	p := filepath.Join(dir, "runner.json")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// firstLine closes its channel when the first complete line was written.
type firstLine struct {
	syncBuffer
	once sync.Once
	seen chan struct{}
}

func (f *firstLine) Write(p []byte) (int, error) {
	n, err := f.syncBuffer.Write(p)
	if bytes.IndexByte(p, '\n') >= 0 {
		f.once.Do(func() { close(f.seen) })
	}
	return n, err
}

type runOut struct {
	code   int
	lines  []map[string]any
	stdout string
	stderr string
	// codes are those of its error lines, phases of its timing lines; read
	// are the SANDSTORM_ variables it read.
	codes, phases, read []string
}

// runRunner runs the runner in dir to its end; during, if set, runs once
// its first line is out. It fails the test where the run breaks the
// protocol, or prints the session token or the real key.
func runRunner(t *testing.T, dir string, env []string, during func(*exec.Cmd)) runOut {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	read := filepath.Join(t.TempDir(), "read.json")
	cmd := exec.CommandContext(ctx, "node", "--import", "./probe.mjs", "runner.mjs")
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "RUNNER_PROBE_OUT=" + read,
		runnerproto.Env.Workspace + "=" + filepath.Join(dir, "workspace")}, env...)
	stdout := &firstLine{seen: make(chan struct{})}
	var stderr syncBuffer
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if during != nil {
		select {
		case <-stdout.seen:
			during(cmd)
		case <-ctx.Done():
		}
	}
	err := cmd.Wait()
	out := runOut{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		out.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if x := runnerproto.Exit; out.code != x.Succeeded && out.code != x.Failed && out.code <= x.SignalBase {
		t.Errorf("exit status %d is none of runnerproto.Exit", out.code)
	}
	if out.stdout != "" && !strings.HasSuffix(out.stdout, "\n") {
		t.Errorf("stdout does not end with a newline: %q", out.stdout)
	}
	for _, line := range strings.Split(strings.TrimSuffix(out.stdout, "\n"), "\n") {
		if line == "" {
			continue
		}
		m, code, err := checkLine([]byte(line))
		if err != nil {
			t.Errorf("stdout line %s: %v", line, err)
		}
		if code != "" {
			out.codes = append(out.codes, code)
		}
		out.lines = append(out.lines, m)
	}
	for _, line := range strings.Split(out.stderr, "\n") {
		if rest, ok := strings.CutPrefix(line, runnerproto.TimingPrefix); ok {
			phase, ms, _ := strings.Cut(rest, " ")
			if _, err := strconv.ParseInt(ms, 10, 64); err != nil || !slices.Contains(runnerproto.Phases, phase) {
				t.Errorf("timing line %q: not a phase of runnerproto.Phases and a time in ms", line)
			}
			out.phases = append(out.phases, phase)
		}
	}
	if data, err := os.ReadFile(read); err != nil || json.Unmarshal(data, &out.read) != nil {
		t.Errorf("the probe left no list of the variables read: %v", err)
	}
	known := envNames()
	for _, name := range out.read {
		if !slices.Contains(known, name) {
			t.Errorf("the runner reads %s, which is not in runnerproto.Env", name)
		}
	}
	secrets := []string{realKey}
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, runnerproto.Env.Token+"="); ok && v != "" {
			secrets = append(secrets, v)
		}
	}
	for _, s := range secrets {
		if strings.Contains(out.stdout+out.stderr, s) {
			t.Errorf("a secret was printed:\nstdout: %s\nstderr: %s", out.stdout, out.stderr)
		}
	}
	return out
}

// checkLine checks one stdout line against runnerproto: a JSON object with
// a type; an error line exactly a runnerproto.ErrorLine with one of its
// codes (returned); a result line a runnerproto.Result.
func checkLine(line []byte) (map[string]any, string, error) {
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, "", fmt.Errorf("not a JSON object: %w", err)
	}
	var l runnerproto.Line
	if err := json.Unmarshal(line, &l); err != nil || l.Type == "" {
		return m, "", fmt.Errorf("no type: %v", err)
	}
	switch l.Type {
	case runnerproto.TypeError:
		var e runnerproto.ErrorLine
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return m, "", fmt.Errorf("not a runnerproto.ErrorLine: %w", err)
		}
		if !slices.Contains(runnerproto.Codes, e.Code) || e.Message == "" {
			return m, e.Code, fmt.Errorf("code %q is not in runnerproto.Codes, or no message", e.Code)
		}
		return m, e.Code, nil
	case runnerproto.TypeResult:
		var r runnerproto.Result
		if err := json.Unmarshal(line, &r); err != nil {
			return m, "", fmt.Errorf("not a runnerproto.Result: %w", err)
		}
	}
	return m, "", nil
}

// envNames are runnerproto.Env's values.
func envNames() []string {
	v := reflect.ValueOf(runnerproto.Env)
	names := make([]string, v.NumField())
	for i := range names {
		names[i] = v.Field(i).String()
	}
	return names
}

const (
	blockStart = "// ---- protocol (generated from package runnerproto: do not edit) -----------\n"
	blockEnd   = "// ---- end of protocol -------------------------------------------------------\n"
)

// TestRunnerProtocolBlock: runner.mjs's PROTOCOL block is runnerproto's
// Describe (-update writes it).
func TestRunnerProtocolBlock(t *testing.T) {
	d, err := json.MarshalIndent(runnerproto.Describe(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	want := "// `go test ./images/agentimage -run TestRunnerProtocolBlock -update` writes it.\nconst PROTOCOL = " + string(d) + ";\n"
	src, err := Files.ReadFile("runner.mjs")
	if err != nil {
		t.Fatal(err)
	}
	before, rest, ok := strings.Cut(string(src), blockStart)
	got, after, ok2 := strings.Cut(rest, blockEnd)
	if !ok || !ok2 {
		t.Fatal("runner.mjs has no protocol block")
	}
	if got == want {
		return
	}
	if *update {
		if err := os.WriteFile("runner.mjs", []byte(before+blockStart+want+blockEnd+after), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("runner.mjs's protocol block is not runnerproto's (run with -update):\n%s", want)
}

// TestRunnerProtocol runs the runner every way sandstorm starts it (cold
// and warm, over the socket, TCP and TLS, with an egress proxy) against
// the real gateway: each run does what it is asked, and together they read
// every variable of runnerproto.Env and print every timing phase.
func TestRunnerProtocol(t *testing.T) {
	r := newRig(t, true)
	ca, _, err := egress.NewCA("runner test")
	if err != nil {
		t.Fatal(err)
	}
	tcp, tlsAddr := r.serveTCP(t, nil), r.serveTCP(t, ca)
	// Every field set: each must reach the SDK.
	full := runnerproto.Config{
		Prompt: "hi", Model: "m1", MaxTurns: 3, SystemPrompt: "be brief",
		OutputFormat:           map[string]any{"type": "json_schema", "schema": map[string]any{"type": "object"}},
		Agents:                 map[string]any{"helper": map[string]any{"description": "helps", "prompt": "help"}},
		MCPServers:             map[string]any{"fs": map[string]any{"command": "mcp-fs"}},
		AllowedTools:           []string{"Bash"},
		IncludePartialMessages: true,
	}
	fv := reflect.ValueOf(full)
	for i := range fv.NumField() {
		if fv.Field(i).IsZero() {
			t.Fatalf("set runnerproto.Config's %s here", fv.Type().Field(i).Name)
		}
	}
	fullJSON, _ := json.Marshal(full)
	files, _ := json.Marshal([]runnerproto.File{{Path: "sub/in.txt", Mode: 0o600, Content: []byte("hello")}})
	timings := runnerproto.Env.Timings + "=1"
	var read, phases []string
	for _, tc := range []struct {
		name  string
		warm  bool
		opts  gateway.SessionOptions
		env   func(*gateway.Session) []string
		check func(*testing.T, runOut)
	}{
		{
			name: "cold over the socket, every config field",
			opts: gateway.SessionOptions{RunnerConfig: fullJSON},
			env:  func(s *gateway.Session) []string { return append(socketEnv(s), timings) },
			check: func(t *testing.T, out runOut) {
				var want map[string]any
				_ = json.Unmarshal(fullJSON, &want)
				given, _ := out.lines[0]["options"].(map[string]any)
				for field, v := range want {
					if field == "prompt" {
						continue
					}
					if !slices.ContainsFunc(slices.Collect(maps.Values(given)), func(o any) bool { return reflect.DeepEqual(o, v) }) {
						t.Errorf("config field %s = %v reached no SDK option: %v", field, v, given)
					}
				}
			},
		},
		{
			name: "warm over the socket, with files and egress",
			warm: true,
			opts: gateway.SessionOptions{Pending: true, WarmConfig: []byte(`{"prompt":"","max_turns":3}`), Egress: egressProxy},
			env: func(s *gateway.Session) []string {
				return append(socketEnv(s), timings, runnerproto.Env.Wait+"=1")
			},
			check: func(t *testing.T, out runOut) {
				data, err := os.ReadFile(filepath.Join(r.dir, "workspace", "sub", "in.txt"))
				fi, _ := os.Stat(filepath.Join(r.dir, "workspace", "sub", "in.txt"))
				if err != nil || string(data) != "hello" || fi.Mode().Perm() != 0o600 || out.lines[0]["maxTurns"] != 3.0 {
					t.Errorf("warm run: file %q %v; %v", data, err, out.lines)
				}
				if !slices.ContainsFunc(out.lines, func(m map[string]any) bool { return m["egress"] == "200 egress to example.test" }) {
					t.Errorf("no answer through the egress proxy: %v", out.lines)
				}
			},
		},
		{
			name: "cold over TCP, with egress",
			opts: gateway.SessionOptions{RunnerConfig: []byte(`{"prompt":"egress"}`), Egress: egressProxy},
			env: func(s *gateway.Session) []string {
				return []string{runnerproto.Env.Token + "=" + s.Token, runnerproto.Env.GatewayAddr + "=" + tcp, runnerproto.Env.GatewayEgress + "=1"}
			},
			check: func(t *testing.T, out runOut) {
				if out.lines[2]["egress"] != "200 egress to example.test" {
					t.Errorf("no answer through the egress proxy: %v", out.lines)
				}
			},
		},
		{
			name: "cold over TLS",
			opts: gateway.SessionOptions{RunnerConfig: []byte(`{"prompt":"hi"}`)},
			env: func(s *gateway.Session) []string {
				return []string{runnerproto.Env.Token + "=" + s.Token, runnerproto.Env.GatewayAddr + "=" + tlsAddr, runnerproto.Env.GatewayCA + "=" + string(ca.CertPEM())}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := r.open(t, tc.opts)
			activated := make(chan error, 1)
			if tc.warm {
				// The run comes once the warm runner asks for it.
				go func() {
					select {
					case <-s.Asked():
						activated <- s.Activate(gateway.Grant{Credentials: gateway.Credentials{AnthropicKey: realKey},
							RunnerConfig: []byte(`{"prompt":"egress","max_turns":3}`), Files: files})
					case <-time.After(30 * time.Second):
						activated <- fmt.Errorf("the runner never asked for its run")
					}
				}()
			}
			out := runRunner(t, r.dir, tc.env(s), nil)
			if tc.warm {
				if err := <-activated; err != nil {
					t.Fatal(err)
				}
			}
			if out.code != runnerproto.Exit.Succeeded || len(out.lines) < 3 {
				t.Fatalf("exit %d, stdout %s stderr %s", out.code, out.stdout, out.stderr)
			}
			if asst := out.lines[1]; asst["status"] != 200.0 || asst["body"] != "event: message_start\n\nevent: content_block_delta\n\nevent: message_stop\n\n" {
				t.Errorf("the model through the forwarder: %v", asst)
			}
			if tc.check != nil {
				tc.check(t, out)
			}
			read, phases = append(read, out.read...), append(phases, out.phases...)
		})
	}
	if got, want := set(read), set(envNames()); !slices.Equal(got, want) {
		t.Errorf("variables read %v, runnerproto.Env %v", got, want)
	}
	if got, want := set(phases), set(runnerproto.Phases); !slices.Equal(got, want) {
		t.Errorf("timing phases %v, runnerproto.Phases %v", got, want)
	}
}

// The runner knows exactly runnerproto.Config's fields: it names them when
// it refuses another.
func TestRunnerConfigFields(t *testing.T) {
	r := newRig(t, true)
	s := r.open(t, gateway.SessionOptions{})
	cfg := writeConfig(t, r.dir, `{"prompt":"x","max_turn":2}`)
	out := runRunner(t, r.dir, append(socketEnv(s), runnerproto.Env.ConfigFile+"="+cfg), nil)
	msg, _ := out.lines[len(out.lines)-1]["message"].(string)
	_, known, _ := strings.Cut(msg, "(known: ")
	known, _, _ = strings.Cut(known, ")")
	if got, want := strings.Split(known, ", "), runnerproto.Describe().ConfigFields; !slices.Equal(got, want) {
		t.Errorf("the runner knows %v, runnerproto.Config %v", got, want)
	}
}

// set is vs sorted, without repeats.
func set(vs []string) []string {
	out := slices.Clone(vs)
	slices.Sort(out)
	return slices.Compact(out)
}

func TestRunnerSuccess(t *testing.T) {
	r := newRig(t, true)
	s := r.open(t, gateway.SessionOptions{})
	cfg := writeConfig(t, r.dir, `{"prompt":"hi","model":"m1","max_turns":3,"system_prompt":"be brief",
		"output_format":{"type":"json_schema","schema":{"type":"object"}},"allowed_tools":["Bash"],"include_partial_messages":true}`)
	out := runRunner(t, r.dir, append(socketEnv(s), runnerproto.Env.ConfigFile+"="+cfg), nil)
	if out.code != 0 {
		t.Fatalf("exit %d, stderr %s", out.code, out.stderr)
	}
	if len(out.lines) != 3 {
		t.Fatalf("want init, assistant, result lines; got %s", out.stdout)
	}
	init := out.lines[0]
	want := map[string]any{
		"cwd": filepath.Join(r.dir, "workspace"), "model": "m1", "maxTurns": 3.0,
		"permissionMode": "bypassPermissions", "allowDangerouslySkipPermissions": true, "persistSession": false,
		"systemPrompt": "be brief", "includePartialMessages": true,
		"keyIsToken": true, "tokenVarPassed": false, "nonessential": "1", "retries": "2",
		"home": "/home/user", "configDir": "/tmp/sandstorm-claude",
	}
	for k, v := range want {
		if fmt.Sprint(init[k]) != fmt.Sprint(v) {
			t.Errorf("SDK got %s = %v, want %v", k, init[k], v)
		}
	}
	if ss, _ := init["settingSources"].([]any); ss == nil || len(ss) != 0 {
		t.Errorf("settingSources %v, want []", init["settingSources"])
	}
	if base, _ := init["baseURL"].(string); !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Errorf("base URL %q", base)
	}
	if strings.Contains(out.stdout, "\u2028") {
		t.Error("U+2028 printed raw")
	}
}

func TestRunnerMaxRetriesFromEnv(t *testing.T) {
	r := newRig(t, true)
	s := r.open(t, gateway.SessionOptions{RunnerConfig: []byte(`{"prompt":"hi"}`)})
	out := runRunner(t, r.dir, append(socketEnv(s), "CLAUDE_CODE_MAX_RETRIES=7", "HOME=/elsewhere"), nil)
	if out.code != 0 || out.lines[0]["retries"] != "7" || out.lines[0]["home"] != "/elsewhere" {
		t.Fatalf("exit %d, init %v", out.code, out.lines[0])
	}
}

// A provider switch is dropped unless sandstorm forwarded one on purpose;
// other credentials are dropped either way.
func TestRunnerProviderMode(t *testing.T) {
	r := newRig(t, true)
	s := r.open(t, gateway.SessionOptions{RunnerConfig: []byte(`{"prompt":"hi"}`)})
	base := append(socketEnv(s), "CLAUDE_CODE_OAUTH_TOKEN=x")
	out := runRunner(t, r.dir, base, nil)
	if out.code != 0 || out.lines[0]["bedrock"] != nil || out.lines[0]["oauth"] != nil {
		t.Errorf("default: exit %d, init %v", out.code, out.lines[0])
	}
	out = runRunner(t, r.dir, append(base, "CLAUDE_CODE_USE_BEDROCK=1"), nil)
	if out.code != 0 || out.lines[0]["bedrock"] != "1" || out.lines[0]["oauth"] != nil {
		t.Errorf("bedrock: exit %d, init %v", out.code, out.lines[0])
	}
}

// TestRunnerErrors: each way the runner fails prints its error line (the
// last, but for an unencodable message) and exits as runnerproto says;
// together they print every code of runnerproto.Codes.
func TestRunnerErrors(t *testing.T) {
	r, bare := newRig(t, true), newRig(t, false)
	s := r.open(t, gateway.SessionOptions{})
	good := writeConfig(t, r.dir, `{"prompt":"hi"}`)
	failed := runnerproto.Exit.Failed
	var codes []string
	for _, tc := range []struct {
		name     string
		cfg      string // config text; "" = good, "-" = no file
		env      []string
		bare     bool // no SDK
		signal   syscall.Signal
		wantCode string // code of an error line
		wantExit int
		wantLast string // type of the last line; "" = the error line
	}{
		{name: "missing config", cfg: "-", wantCode: "invalid_config", wantExit: failed},
		{name: "bad json", cfg: `{"prompt":`, wantCode: "invalid_config", wantExit: failed},
		{name: "not an object", cfg: `[1]`, wantCode: "invalid_config", wantExit: failed},
		{name: "no prompt", cfg: `{"model":"m"}`, wantCode: "invalid_config", wantExit: failed},
		{name: "empty prompt", cfg: `{"prompt":" "}`, wantCode: "invalid_config", wantExit: failed},
		{name: "unknown field", cfg: `{"prompt":"x","max_turn":2}`, wantCode: "invalid_config", wantExit: failed},
		{name: "bad max_turns", cfg: `{"prompt":"x","max_turns":1.5}`, wantCode: "invalid_config", wantExit: failed},
		{name: "bad output_format", cfg: `{"prompt":"x","output_format":{"type":"text"}}`, wantCode: "invalid_config", wantExit: failed},
		{name: "bad agents", cfg: `{"prompt":"x","agents":{"a":{"prompt":"p"}}}`, wantCode: "invalid_config", wantExit: failed},
		{name: "bad allowed_tools", cfg: `{"prompt":"x","allowed_tools":"Bash"}`, wantCode: "invalid_config", wantExit: failed},
		{name: "bad include_partial_messages", cfg: `{"prompt":"x","include_partial_messages":"yes"}`, wantCode: "invalid_config", wantExit: failed},
		{name: "no token", env: []string{runnerproto.Env.Token + "="}, wantCode: "invalid_config", wantExit: failed},
		{name: "no workspace", env: []string{runnerproto.Env.Workspace + "=" + filepath.Join(r.dir, "nope")}, wantCode: "invalid_config", wantExit: failed},
		{name: "no socket", env: []string{runnerproto.Env.Socket + "=" + filepath.Join(r.dir, "nope.sock")}, wantCode: "model_unreachable", wantExit: failed},
		{name: "bad gateway address", env: []string{runnerproto.Env.GatewayAddr + "=nowhere"}, wantCode: "model_unreachable", wantExit: failed},
		{name: "no loopback", env: []string{"RUNNER_PROBE_NO_LOOPBACK=1"}, wantCode: "forwarder_failed", wantExit: failed},
		{name: "no SDK", bare: true, wantCode: "sdk_missing", wantExit: failed},
		{name: "sdk throws", cfg: `{"prompt":"throw"}`, wantCode: "sdk_error", wantExit: failed},
		{name: "no result", cfg: `{"prompt":"noresult"}`, wantCode: "no_result", wantExit: failed},
		{name: "SIGTERM", cfg: `{"prompt":"hang"}`, signal: syscall.SIGTERM, wantCode: "aborted", wantExit: runnerproto.Exit.SignalBase + 15},
		{name: "unencodable message", cfg: `{"prompt":"bigint"}`, wantCode: "unencodable_message", wantExit: runnerproto.Exit.Succeeded, wantLast: runnerproto.TypeResult},
		{name: "crash", cfg: `{"prompt":"crash"}`, wantCode: "internal", wantExit: failed},
		{name: "error result", cfg: `{"prompt":"fail"}`, wantExit: failed, wantLast: runnerproto.TypeResult},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			switch tc.cfg {
			case "":
			case "-":
				cfg = filepath.Join(r.dir, "missing.json")
			default:
				cfg = filepath.Join(t.TempDir(), "runner.json")
				if err := os.WriteFile(cfg, []byte(tc.cfg), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			dir := r.dir
			if tc.bare {
				dir = bare.dir
			}
			var during func(*exec.Cmd)
			if tc.signal != 0 {
				during = func(cmd *exec.Cmd) { _ = cmd.Process.Signal(tc.signal) }
			}
			env := append(append(socketEnv(s), runnerproto.Env.ConfigFile+"="+cfg), tc.env...)
			start := time.Now()
			out := runRunner(t, dir, env, during)
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v to end", d)
			}
			codes = append(codes, out.codes...)
			if out.code != tc.wantExit {
				t.Errorf("exit %d, want %d; stderr %s", out.code, tc.wantExit, out.stderr)
			}
			if len(out.lines) == 0 {
				t.Fatalf("no stdout line; stderr %s", out.stderr)
			}
			last := out.lines[len(out.lines)-1]
			if tc.wantCode != "" && !slices.Contains(out.codes, tc.wantCode) {
				t.Errorf("no error line with code %s: %s", tc.wantCode, out.stdout)
			}
			if tc.wantLast == "" && (last["type"] != runnerproto.TypeError || last["code"] != tc.wantCode) {
				t.Errorf("last line %v, want the error line", last)
			}
			if tc.wantLast != "" && last["type"] != tc.wantLast {
				t.Errorf("last line %v, want type %s", last, tc.wantLast)
			}
			if tc.wantCode != "" && tc.wantCode != "unencodable_message" && !strings.Contains(out.stderr, "runner: ") {
				t.Errorf("want the reason on stderr too; stderr %s", out.stderr)
			}
		})
	}
	if got, want := set(codes), set(runnerproto.Codes); !slices.Equal(got, want) {
		t.Errorf("codes printed %v, runnerproto.Codes %v", got, want)
	}
}

func TestRunnerRedacts(t *testing.T) {
	r := newRig(t, true)
	s := r.open(t, gateway.SessionOptions{RunnerConfig: []byte(`{"prompt":"leak"}`)})
	out := runRunner(t, r.dir, socketEnv(s), nil)
	if out.code != 0 {
		t.Fatalf("exit %d", out.code)
	}
	if strings.Contains(out.stdout, "secretsecret") || !strings.Contains(out.stdout, "token [redacted]") {
		t.Errorf("not redacted: %s", out.stdout)
	}
	// runRunner checks the token itself never appears.
}

func TestFilesPinSDK(t *testing.T) {
	var pj struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	data, _ := Files.ReadFile("package.json")
	if err := json.Unmarshal(data, &pj); err != nil {
		t.Fatal(err)
	}
	if v := pj.Dependencies["@anthropic-ai/claude-agent-sdk"]; v != "0.3.332" {
		t.Errorf("SDK pinned at %q", v)
	}
	f, err := Files.Open("package-lock.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lock, _ := io.ReadAll(f)
	if !bytes.Contains(lock, []byte(`"node_modules/@anthropic-ai/claude-agent-sdk-linux-x64"`)) {
		t.Error("lockfile lacks the linux-x64 CLI package")
	}
}

// Without runnerproto.Env.ConfigFile the runner asks the gateway for its
// config, with the session token.
func TestRunnerConfigFromGateway(t *testing.T) {
	r := newRig(t, true)
	s := r.open(t, gateway.SessionOptions{})
	out := runRunner(t, r.dir, socketEnv(s), nil)
	if out.code != 1 || len(out.lines) == 0 || out.lines[0]["code"] != "invalid_config" || !strings.Contains(fmt.Sprint(out.lines[0]["message"]), "HTTP 404") {
		t.Errorf("no config at the gateway: exit %d, %v", out.code, out.lines)
	}
	s = r.open(t, gateway.SessionOptions{RunnerConfig: []byte(`{"prompt":"hi","max_turns":3}`)})
	out = runRunner(t, r.dir, []string{runnerproto.Env.Socket + "=" + s.SocketPath(), runnerproto.Env.Token + "=sandstorm-session-wrong"}, nil)
	if out.code != 1 || out.lines[0]["code"] != "invalid_config" || !strings.Contains(fmt.Sprint(out.lines[0]["message"]), "HTTP 401") {
		t.Errorf("wrong token: exit %d, %v", out.code, out.lines)
	}
}

// TestRunnerWarm: a warm sandbox's runner refuses files outside the
// workspace or over one already there, and a run whose options differ
// from the warm ones (TestRunnerProtocol runs one that works).
func TestRunnerWarm(t *testing.T) {
	r := newRig(t, true)
	if err := os.WriteFile(filepath.Join(r.dir, "workspace", "there.txt"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, config, files, want string }{
		{"a file already there", `{"prompt":"hi","max_turns":3}`, `[{"path":"there.txt","content":""}]`, "EEXIST"},
		{"a path out", `{"prompt":"hi","max_turns":3}`, `[{"path":"../out.txt","content":""}]`, "bad path"},
		{"an absolute path", `{"prompt":"hi","max_turns":3}`, `[{"path":"/etc/x","content":""}]`, "bad path"},
		{"other options", `{"prompt":"hi","max_turns":4}`, `[]`, "differ from the warm sandbox's"},
	} {
		s := r.open(t, gateway.SessionOptions{Pending: true, WarmConfig: []byte(`{"prompt":"","max_turns":3}`)})
		go func() {
			select {
			case <-s.Asked():
				_ = s.Activate(gateway.Grant{RunnerConfig: []byte(tt.config), Files: []byte(tt.files)})
			case <-time.After(30 * time.Second):
			}
		}()
		out := runRunner(t, r.dir, append(socketEnv(s), runnerproto.Env.Wait+"=1"), nil)
		last := out.lines[len(out.lines)-1]
		if out.code != 1 || last["code"] != "invalid_config" || !strings.Contains(fmt.Sprint(last["message"]), tt.want) {
			t.Errorf("%s: exit %d, %v", tt.name, out.code, out.lines)
		}
	}
	if _, err := os.Stat(filepath.Join(r.dir, "out.txt")); err == nil {
		t.Error("a file was written outside the workspace")
	}
}
