package e2e

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/modelserver"
)

// packageServer is an npm registry and a Python simple index on the host's
// loopback, each serving one package, sandstorm-hello, that prints a line.
func packageServer(t *testing.T) (*httptest.Server, int) {
	var port int
	base := func() string { return fmt.Sprintf("http://%s:%d", egress.HostName, port) }
	tgz := npmTarball(t)
	whl := wheel(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/npm/sandstorm-hello", func(w http.ResponseWriter, r *http.Request) {
		sha := sha1.Sum(tgz)
		sri := sha512.Sum512(tgz)
		json.NewEncoder(w).Encode(map[string]any{
			"name": "sandstorm-hello", "dist-tags": map[string]string{"latest": "1.0.0"},
			"versions": map[string]any{"1.0.0": map[string]any{"name": "sandstorm-hello", "version": "1.0.0",
				"dist": map[string]string{"tarball": base() + "/npm/sandstorm-hello/-/sandstorm-hello-1.0.0.tgz",
					"shasum": hex.EncodeToString(sha[:]), "integrity": "sha512-" + base64.StdEncoding.EncodeToString(sri[:])}}},
		})
	})
	mux.HandleFunc("/npm/sandstorm-hello/-/sandstorm-hello-1.0.0.tgz", func(w http.ResponseWriter, r *http.Request) { w.Write(tgz) })
	mux.HandleFunc("/simple/sandstorm-hello/", func(w http.ResponseWriter, r *http.Request) {
		sum := sha256.Sum256(whl)
		fmt.Fprintf(w, `<html><body><a href="%s/files/sandstorm_hello-1.0-py3-none-any.whl#sha256=%s">sandstorm_hello-1.0-py3-none-any.whl</a></body></html>`, base(), hex.EncodeToString(sum[:]))
	})
	mux.HandleFunc("/files/sandstorm_hello-1.0-py3-none-any.whl", func(w http.ResponseWriter, r *http.Request) { w.Write(whl) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	port = srv.Listener.Addr().(*net.TCPAddr).Port
	return srv, port
}

func npmTarball(t *testing.T) []byte {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, body := range map[string]string{
		"package/package.json": `{"name":"sandstorm-hello","version":"1.0.0","main":"index.js"}`,
		"package/index.js":     `module.exports = () => "hello from npm through the proxy";`,
	} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	gz.Close()
	return buf.Bytes()
}

func wheel(t *testing.T) []byte {
	files := map[string]string{
		"sandstorm_hello.py":                          "def hello():\n    return 'hello from pip through the proxy'\n",
		"sandstorm_hello-1.0.dist-info/METADATA":      "Metadata-Version: 2.1\nName: sandstorm-hello\nVersion: 1.0\n",
		"sandstorm_hello-1.0.dist-info/WHEEL":         "Wheel-Version: 1.0\nGenerator: sandstorm-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
		"sandstorm_hello-1.0.dist-info/top_level.txt": "sandstorm_hello\n",
	}
	var record strings.Builder
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, body := range files {
		f, _ := zw.Create(name)
		f.Write([]byte(body))
		sum := sha256.Sum256([]byte(body))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", name, base64.RawURLEncoding.EncodeToString(sum[:]), len(body))
	}
	record.WriteString("sandstorm_hello-1.0.dist-info/RECORD,,\n")
	f, _ := zw.Create("sandstorm_hello-1.0.dist-info/RECORD")
	f.Write([]byte(record.String()))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// packagesScenario: the agent installs a package with npm and with pip from
// registries on the host, through the egress proxy, and uses them.
func packagesScenario(t *testing.T, b backend) {
	_, port := packageServer(t)
	h := egress.HostName
	script := fmt.Sprintf(`set -e
mkdir -p /tmp/proj && cd /tmp/proj
npm install --no-audit --no-fund --registry http://%[1]s:%[2]d/npm/ sandstorm-hello >/dev/null 2>&1 || npm install --no-audit --no-fund --registry http://%[1]s:%[2]d/npm/ sandstorm-hello
node -e 'console.log(require("sandstorm-hello")())'
pip install -q --user --break-system-packages --index-url http://%[1]s:%[2]d/simple --trusted-host %[1]s sandstorm-hello
python3 -c 'import sandstorm_hello; print(sandstorm_hello.hello())'`, h, port)
	sc := modelserver.Scenario{Turns: []modelserver.Turn{
		{ToolUse: &modelserver.ToolUse{Name: "Bash", Input: []byte(fmt.Sprintf(`{"command": %q}`, script))}},
		{Text: "installed"},
	}}
	policy, err := egress.Config{Allow: []string{fmt.Sprintf("127.0.0.1:%d", port)}}.Policy()
	if err != nil {
		t.Fatal(err)
	}
	events, out, _, _ := runWith(t, b, sc, agent.Job{Config: agent.Config{Prompt: "install"}}, func(r *agent.Launcher) { r.Egress = &policy })
	if !out.Success() {
		t.Fatalf("run failed: %s", out.Code)
	}
	res := toolResults(events)
	for _, want := range []string{"hello from npm through the proxy", "hello from pip through the proxy"} {
		if !strings.Contains(res, want) {
			t.Errorf("tool result lacks %q: %s", want, res)
		}
	}
}
