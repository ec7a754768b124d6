package agentimage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests run runner.mjs with the host's node against a fake SDK that
// reports the options and environment it was given and talks to the model
// socket through the runner's forwarder, so the runner's own logic (config,
// forwarder, token handling, output, exit codes, signals) is checked in a
// second, without the real SDK or a container.

const token = "sess-tok-0123456789abcdef"

// fakeSDK stands in for @anthropic-ai/claude-agent-sdk. The prompt picks
// what it does.
const fakeSDK = `
export async function* query({ prompt, options }) {
  const env = options.env;
  if (typeof prompt !== 'string') {
    // Streaming input (a warm sandbox): the prompt is the first user message.
    for await (const m of prompt) {
      prompt = m.message.content;
      break;
    }
  }
  yield {
    type: 'system', subtype: 'init',
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
  if (prompt === 'hang') {
    await new Promise((_, reject) => options.abortController.signal.addEventListener('abort', () => reject(new Error('aborted'))));
  }
  const res = await fetch(env.ANTHROPIC_BASE_URL + '/v1/messages?beta=true', {
    method: 'POST', headers: { 'x-api-key': env.ANTHROPIC_API_KEY, 'content-type': 'application/json' },
    body: JSON.stringify({ stream: true }),
  });
  yield { type: 'assistant', status: res.status, body: await res.text() };
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

type runOut struct {
	code   int
	lines  []map[string]any
	stdout string
	stderr string
}

// setup lays out runner.mjs next to the fake SDK and starts a model
// server on a Unix socket in dir.
func setup(t *testing.T) (dir, sock string) {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node not installed")
	}
	dir = t.TempDir()
	runner, err := Files.ReadFile("runner.mjs")
	if err != nil {
		t.Fatal(err)
	}
	sdkDir := filepath.Join(dir, "node_modules", "@anthropic-ai", "claude-agent-sdk")
	if err := os.MkdirAll(sdkDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		filepath.Join(dir, "runner.mjs"):       string(runner),
		filepath.Join(dir, "package.json"):     `{"type":"module"}`,
		filepath.Join(sdkDir, "package.json"):  `{"name":"@anthropic-ai/claude-agent-sdk","type":"module","exports":{".":"./sdk.mjs"}}`,
		filepath.Join(sdkDir, "sdk.mjs"):       fakeSDK,
		filepath.Join(dir, "workspace", ".ok"): "",
	} {
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	sock = filepath.Join(dir, "model.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("x-api-key") != token {
			http.Error(w, "bad key", http.StatusUnauthorized)
			return
		}
		// The gateway serves the run's config from dir/gateway-config.json.
		// ... and a warm sandbox's options and files from gateway-warm.json
		// and gateway-files.json.
		for path, file := range map[string]string{"/sandstorm/runner.json": "gateway-config.json", "/sandstorm/warm.json": "gateway-warm.json", "/sandstorm/files.json": "gateway-files.json"} {
			if r.URL.Path == path {
				http.ServeFile(w, r, filepath.Join(dir, file))
				return
			}
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, ev := range []string{"message_start", "content_block_delta", "message_stop"} {
			fmt.Fprintf(w, "event: %s\n\n", ev)
			w.(http.Flusher).Flush()
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return dir, sock
}

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

// runRunner runs the runner to its end; during, if set, runs once its
// first line is out.
func runRunner(t *testing.T, dir string, env []string, during func(*exec.Cmd)) runOut {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", filepath.Join(dir, "runner.mjs"))
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "SANDSTORM_WORKSPACE=" + filepath.Join(dir, "workspace")}, env...)
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
	if out.stdout != "" && !strings.HasSuffix(out.stdout, "\n") {
		t.Errorf("stdout does not end with a newline: %q", out.stdout)
	}
	for _, line := range strings.Split(strings.TrimSuffix(out.stdout, "\n"), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("stdout line is not JSON: %q", line)
		}
		out.lines = append(out.lines, m)
	}
	if strings.Contains(out.stdout+out.stderr, token) {
		t.Errorf("the token was printed:\nstdout: %s\nstderr: %s", out.stdout, out.stderr)
	}
	return out
}

func TestRunnerSuccess(t *testing.T) {
	dir, sock := setup(t)
	cfg := writeConfig(t, dir, `{"prompt":"hi","model":"m1","max_turns":3,"system_prompt":"be brief",
		"output_format":{"type":"json_schema","schema":{"type":"object"}},"allowed_tools":["Bash"],"include_partial_messages":true}`)
	out := runRunner(t, dir, []string{"SANDSTORM_RUNNER_CONFIG=" + cfg, "SANDSTORM_MODEL_SOCKET=" + sock, "SANDSTORM_MODEL_TOKEN=" + token}, nil)
	if out.code != 0 {
		t.Fatalf("exit %d, stderr %s", out.code, out.stderr)
	}
	if len(out.lines) != 3 {
		t.Fatalf("want init, assistant, result lines; got %s", out.stdout)
	}
	init := out.lines[0]
	want := map[string]any{
		"cwd": filepath.Join(dir, "workspace"), "model": "m1", "maxTurns": 3.0,
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
	asst := out.lines[1]
	if asst["status"] != 200.0 || asst["body"] != "event: message_start\n\nevent: content_block_delta\n\nevent: message_stop\n\n" {
		t.Errorf("through the forwarder: %v", asst)
	}
}

func TestRunnerMaxRetriesFromEnv(t *testing.T) {
	dir, sock := setup(t)
	cfg := writeConfig(t, dir, `{"prompt":"hi"}`)
	out := runRunner(t, dir, []string{"SANDSTORM_RUNNER_CONFIG=" + cfg, "SANDSTORM_MODEL_SOCKET=" + sock, "SANDSTORM_MODEL_TOKEN=" + token,
		"CLAUDE_CODE_MAX_RETRIES=7", "HOME=/elsewhere"}, nil)
	if out.code != 0 || out.lines[0]["retries"] != "7" || out.lines[0]["home"] != "/elsewhere" {
		t.Fatalf("exit %d, init %v", out.code, out.lines[0])
	}
}

// A provider switch is dropped unless sandstorm forwarded one on purpose;
// other credentials are dropped either way.
func TestRunnerProviderMode(t *testing.T) {
	dir, sock := setup(t)
	cfg := writeConfig(t, dir, `{"prompt":"hi"}`)
	base := []string{"SANDSTORM_RUNNER_CONFIG=" + cfg, "SANDSTORM_MODEL_SOCKET=" + sock, "SANDSTORM_MODEL_TOKEN=" + token, "CLAUDE_CODE_OAUTH_TOKEN=x"}
	out := runRunner(t, dir, base, nil)
	if out.code != 0 || out.lines[0]["bedrock"] != nil || out.lines[0]["oauth"] != nil {
		t.Errorf("default: exit %d, init %v", out.code, out.lines[0])
	}
	out = runRunner(t, dir, append(base, "CLAUDE_CODE_USE_BEDROCK=1"), nil)
	if out.code != 0 || out.lines[0]["bedrock"] != "1" || out.lines[0]["oauth"] != nil {
		t.Errorf("bedrock: exit %d, init %v", out.code, out.lines[0])
	}
}

func TestRunnerFailures(t *testing.T) {
	dir, sock := setup(t)
	good := writeConfig(t, dir, `{"prompt":"hi"}`)
	for _, tc := range []struct {
		name     string
		cfg      string // config text; "" = use good, "-" = no file
		env      []string
		wantCode string // code of the error line, "" = no error line
		wantLast string // type of the last line
	}{
		{name: "missing config", cfg: "-", wantCode: "invalid_config"},
		{name: "bad json", cfg: `{"prompt":`, wantCode: "invalid_config"},
		{name: "not an object", cfg: `[1]`, wantCode: "invalid_config"},
		{name: "no prompt", cfg: `{"model":"m"}`, wantCode: "invalid_config"},
		{name: "empty prompt", cfg: `{"prompt":" "}`, wantCode: "invalid_config"},
		{name: "unknown field", cfg: `{"prompt":"x","max_turn":2}`, wantCode: "invalid_config"},
		{name: "bad max_turns", cfg: `{"prompt":"x","max_turns":1.5}`, wantCode: "invalid_config"},
		{name: "bad output_format", cfg: `{"prompt":"x","output_format":{"type":"text"}}`, wantCode: "invalid_config"},
		{name: "bad agents", cfg: `{"prompt":"x","agents":{"a":{"prompt":"p"}}}`, wantCode: "invalid_config"},
		{name: "bad allowed_tools", cfg: `{"prompt":"x","allowed_tools":"Bash"}`, wantCode: "invalid_config"},
		{name: "bad include_partial_messages", cfg: `{"prompt":"x","include_partial_messages":"yes"}`, wantCode: "invalid_config"},
		{name: "no token", env: []string{"SANDSTORM_MODEL_TOKEN="}, wantCode: "invalid_config"},
		{name: "no socket", env: []string{"SANDSTORM_MODEL_SOCKET=" + filepath.Join(dir, "nope.sock")}, wantCode: "model_unreachable"},
		{name: "no workspace", env: []string{"SANDSTORM_WORKSPACE=" + filepath.Join(dir, "nope")}, wantCode: "invalid_config"},
		{name: "error result", cfg: `{"prompt":"fail"}`, wantLast: "result"},
		{name: "sdk throws", cfg: `{"prompt":"throw"}`, wantCode: "sdk_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			switch tc.cfg {
			case "":
			case "-":
				cfg = filepath.Join(dir, "missing.json")
			default:
				cfg = filepath.Join(t.TempDir(), "runner.json")
				if err := os.WriteFile(cfg, []byte(tc.cfg), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			env := append([]string{"SANDSTORM_RUNNER_CONFIG=" + cfg, "SANDSTORM_MODEL_SOCKET=" + sock, "SANDSTORM_MODEL_TOKEN=" + token}, tc.env...)
			out := runRunner(t, dir, env, nil)
			if out.code != 1 {
				t.Errorf("exit %d, want 1; stderr %s", out.code, out.stderr)
			}
			if len(out.lines) == 0 {
				t.Fatalf("no stdout line; stderr %s", out.stderr)
			}
			last := out.lines[len(out.lines)-1]
			if tc.wantCode != "" {
				if last["type"] != "error" || last["code"] != tc.wantCode {
					t.Errorf("last line %v, want an error with code %s", last, tc.wantCode)
				}
				if msg, _ := last["message"].(string); msg == "" || !strings.Contains(out.stderr, "runner: ") {
					t.Errorf("want a message on stdout and stderr; stdout %s stderr %s", out.stdout, out.stderr)
				}
			} else if last["type"] != tc.wantLast {
				t.Errorf("last line %v, want type %s", last, tc.wantLast)
			}
			if strings.Contains(out.stderr, "ANTHROPIC_API_KEY="+token) {
				t.Error("token in stderr")
			}
		})
	}
}

func TestRunnerRedacts(t *testing.T) {
	dir, sock := setup(t)
	cfg := writeConfig(t, dir, `{"prompt":"leak"}`)
	out := runRunner(t, dir, []string{"SANDSTORM_RUNNER_CONFIG=" + cfg, "SANDSTORM_MODEL_SOCKET=" + sock, "SANDSTORM_MODEL_TOKEN=" + token}, nil)
	if out.code != 0 {
		t.Fatalf("exit %d", out.code)
	}
	if strings.Contains(out.stdout, "secretsecret") || !strings.Contains(out.stdout, "token [redacted]") {
		t.Errorf("not redacted: %s", out.stdout)
	}
	// runRunner checks the token itself never appears.
}

func TestRunnerSIGTERM(t *testing.T) {
	dir, sock := setup(t)
	cfg := writeConfig(t, dir, `{"prompt":"hang"}`)
	start := time.Now()
	out := runRunner(t, dir, []string{"SANDSTORM_RUNNER_CONFIG=" + cfg, "SANDSTORM_MODEL_SOCKET=" + sock, "SANDSTORM_MODEL_TOKEN=" + token},
		func(cmd *exec.Cmd) { _ = cmd.Process.Signal(syscall.SIGTERM) })
	if out.code != 143 {
		t.Errorf("exit %d, want 143", out.code)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v to stop", d)
	}
	last := out.lines[len(out.lines)-1]
	if last["type"] != "error" || last["code"] != "aborted" {
		t.Errorf("last line %v", last)
	}
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

// Without SANDSTORM_RUNNER_CONFIG the runner asks the gateway for its
// config over the session socket, with the session token.
func TestRunnerConfigFromGateway(t *testing.T) {
	dir, sock := setup(t)
	env := []string{"SANDSTORM_MODEL_SOCKET=" + sock, "SANDSTORM_MODEL_TOKEN=" + token}
	out := runRunner(t, dir, env, nil)
	if out.code != 1 || len(out.lines) == 0 || out.lines[0]["code"] != "invalid_config" || !strings.Contains(fmt.Sprint(out.lines[0]["message"]), "HTTP 404") {
		t.Errorf("no config at the gateway: exit %d, %v", out.code, out.lines)
	}
	if err := os.WriteFile(filepath.Join(dir, "gateway-config.json"), []byte(`{"prompt":"hi","max_turns":3}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out = runRunner(t, dir, env, nil)
	if out.code != 0 || out.lines[0]["maxTurns"] != float64(3) {
		t.Errorf("config from the gateway: exit %d, %v", out.code, out.lines)
	}
	out = runRunner(t, dir, []string{"SANDSTORM_MODEL_SOCKET=" + sock, "SANDSTORM_MODEL_TOKEN=wrong-token-0000"}, nil)
	if out.code != 1 || out.lines[0]["code"] != "invalid_config" || !strings.Contains(fmt.Sprint(out.lines[0]["message"]), "HTTP 401") {
		t.Errorf("wrong token: exit %d, %v", out.code, out.lines)
	}
}

// TestRunnerWarm: a warm sandbox's runner starts the query with the warm
// options, then takes its run: the prompt, and the files it writes into the
// workspace itself; it refuses files outside the workspace and a run whose
// options differ.
func TestRunnerWarm(t *testing.T) {
	dir, sock := setup(t)
	env := []string{"SANDSTORM_MODEL_SOCKET=" + sock, "SANDSTORM_MODEL_TOKEN=" + token, "SANDSTORM_RUNNER_WAIT=1"}
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("gateway-warm.json", `{"prompt":"","max_turns":3}`)
	write("gateway-config.json", `{"prompt":"hi","max_turns":3}`)
	write("gateway-files.json", `[{"path":"sub/in.txt","mode":384,"content":"aGVsbG8="}]`)
	out := runRunner(t, dir, env, nil)
	data, err := os.ReadFile(filepath.Join(dir, "workspace", "sub", "in.txt"))
	fi, _ := os.Stat(filepath.Join(dir, "workspace", "sub", "in.txt"))
	if out.code != 0 || out.lines[0]["maxTurns"] != float64(3) || err != nil || string(data) != "hello" || fi.Mode().Perm() != 0o600 {
		t.Errorf("warm run: exit %d, %v; file %q %v", out.code, out.lines, data, err)
	}
	for _, tt := range []struct{ name, config, files, want string }{
		{"a file already there", `{"prompt":"hi","max_turns":3}`, `[{"path":"sub/in.txt","content":""}]`, "EEXIST"},
		{"a path out", `{"prompt":"hi","max_turns":3}`, `[{"path":"../out.txt","content":""}]`, "bad path"},
		{"an absolute path", `{"prompt":"hi","max_turns":3}`, `[{"path":"/etc/x","content":""}]`, "bad path"},
		{"other options", `{"prompt":"hi","max_turns":4}`, `[]`, "differ from the warm sandbox's"},
	} {
		write("gateway-config.json", tt.config)
		write("gateway-files.json", tt.files)
		out := runRunner(t, dir, env, nil)
		last := out.lines[len(out.lines)-1]
		if out.code != 1 || last["code"] != "invalid_config" || !strings.Contains(fmt.Sprint(last["message"]), tt.want) {
			t.Errorf("%s: exit %d, %v", tt.name, out.code, out.lines)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "out.txt")); err == nil {
		t.Error("a file was written outside the workspace")
	}
}
