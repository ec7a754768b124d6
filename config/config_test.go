package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseProject(t *testing.T) {
	tests := []struct {
		name     string
		json     string
		key      string // error must name it; "" = valid
		warnings int
	}{
		{"empty", `{}`, "", 0},
		{"full", `{"system_prompt":"Be concise","model":"sonnet","max_turns":30,
			"output_format":{"type":"json_schema","schema":{"type":"object"}},
			"agents":{"tester":{"system_prompt":"tests","model":"haiku"}},
			"mcp_servers":{"fs":{"type":"stdio","command":"mcp-fs"},"gh":{"type":"sse","url":"http://x"}}}`, "", 0},
		{"unknown key warned", `{"model":"opus","colour":"blue"}`, "", 1},
		{"max_turns type", `{"max_turns":"ten"}`, "max_turns", 0},
		{"max_turns range", `{"max_turns":-3}`, "max_turns", 0},
		{"model type", `{"model":4}`, "model", 0},
		{"output_format type", `{"output_format":{"type":"xml","schema":{}}}`, "output_format.type", 0},
		{"output_format schema", `{"output_format":{"type":"json_schema"}}`, "output_format.schema", 0},
		{"agent without prompt", `{"agents":{"a":{"model":"opus"}}}`, "agents.a", 0},
		{"mcp stdio without command", `{"mcp_servers":{"x":{"type":"stdio"}}}`, "mcp_servers.x.command", 0},
		{"mcp bad type", `{"mcp_servers":{"x":{"type":"grpc"}}}`, "mcp_servers.x.type", 0},
		{"not an object", `[1,2]`, "JSON object", 0},
		{"broken json", `{"model":`, "JSON", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, w, err := ParseProject([]byte(tt.json))
			if tt.key == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
			} else if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.key) {
				t.Fatalf("error %v does not name %q", err, tt.key)
			}
			if len(w) != tt.warnings {
				t.Errorf("warnings %v, want %d", w, tt.warnings)
			}
		})
	}
}

func TestSandstormDockerAgentsBecomeSDKAgents(t *testing.T) {
	p, _, err := ParseProject([]byte(`{"agents":{"tester":{"system_prompt":"You write tests.","model":"haiku"},"doc":{"description":"writes docs","prompt":"Document."}}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"doc":{"description":"writes docs","prompt":"Document."},"tester":{"description":"Subagent tester","model":"haiku","prompt":"You write tests."}}`
	if string(p.Agents) != want {
		t.Errorf("agents %s\nwant %s", p.Agents, want)
	}
}

func TestLoadProjectMissingFile(t *testing.T) {
	p, w, err := LoadProject(t.TempDir())
	if err != nil || len(w) != 0 || p.Model != "" {
		t.Errorf("missing file: %+v %v %v", p, w, err)
	}
}

func TestParseLimits(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		key   string
		check func(t *testing.T, l Limits)
	}{
		{"sandstorm-docker's file", "max_concurrent_agents: 5\ncpu_limit: \"2\"\nmemory_limit: \"4gb\"\nsession_timeout_seconds: 600\ndocker_image: \"sandstorm-agent:latest\"\n", "", func(t *testing.T, l Limits) {
			if l.CPULimit != 2 || l.MemoryBytes != 4<<30 || l.Image != "sandstorm-agent:latest" {
				t.Errorf("%+v", l)
			}
		}},
		{"numbers and new keys", "cpu_limit: 0.5\nmemory_limit: 512m\npids_limit: 128\nimage: localhost/x:1\nnetwork_mode: bridge\nqueue_size: 3\nqueue_wait_seconds: 10\n", "", func(t *testing.T, l Limits) {
			if l.CPULimit != 0.5 || l.MemoryBytes != 512<<20 || l.PidsLimit != 128 || l.NetworkMode != "bridge" || l.QueueSize != 3 {
				t.Errorf("%+v", l)
			}
			if l.MaxConcurrentAgents != 5 {
				t.Errorf("absent key lost its default: %+v", l)
			}
		}},
		{"empty file gives defaults", "", "", func(t *testing.T, l Limits) {
			if !reflect.DeepEqual(l, DefaultLimits()) {
				t.Errorf("%+v", l)
			}
		}},
		{"gvisor, allowing what it cannot enforce", "isolation: gvisor\nallow_unenforced: [pids_limit, nosuid_mounts]\n", "", func(t *testing.T, l Limits) {
			if l.Isolation != "gvisor" || !slices.Equal(l.AllowUnenforced, []string{"pids_limit", "nosuid_mounts"}) {
				t.Errorf("%+v", l)
			}
		}},
		{"internal webhook receivers", "webhook_allow: [127.0.0.1/32, 'fd00::/8']\n", "", func(t *testing.T, l Limits) {
			if len(l.WebhookAllow) != 2 || l.WebhookAllow[0] != netip.MustParsePrefix("127.0.0.1/32") {
				t.Errorf("webhook_allow %v", l.WebhookAllow)
			}
		}},
		{"proxy is the default", "", "", func(t *testing.T, l Limits) {
			p, err := l.EgressPolicy()
			if l.NetworkMode != NetworkProxy || err != nil || p == nil || !slices.Equal(p.Ports, []int{80, 443}) || l.Policy().Network != "none" {
				t.Errorf("mode %q, policy %+v, %v", l.NetworkMode, p, err)
			}
		}},
		{"egress block", "egress:\n  allow: ['*.github.com', '127.0.0.1:8080']\n  deny: [10.0.0.0/8]\n  ports: [443]\n  max_bytes: 100mb\n", "", func(t *testing.T, l Limits) {
			p, err := l.EgressPolicy()
			if err != nil || len(p.Allow) != 2 || len(p.Deny) != 1 || p.MaxBytes != 100<<20 || !slices.Equal(p.Ports, []int{443}) {
				t.Errorf("policy %+v, %v", p, err)
			}
		}},
		{"no proxy without its mode", "network_mode: none\n", "", func(t *testing.T, l Limits) {
			if p, err := l.EgressPolicy(); p != nil || err != nil {
				t.Errorf("none has an egress policy %+v %v", p, err)
			}
		}},
		{"bad egress rule", "egress:\n  allow: ['not a host']\n", "egress: allow", nil},
		{"unknown egress key", "egress:\n  allows: [x.org]\n", "egress", nil},
		{"bad egress budget", "egress:\n  max_bytes: lots\n", "max_bytes", nil},
		{"secrets", "secrets:\n  GITHUB_TOKEN:\n    from_env: SANDSTORM_TEST_GH\n    hosts: [github.com, api.github.com]\n", "", func(t *testing.T, l Limits) {
			t.Setenv("SANDSTORM_TEST_GH", "ghp_value")
			s, err := l.LoadSecrets()
			if err != nil || len(s) != 1 || s[0].Name != "GITHUB_TOKEN" || s[0].Value != "ghp_value" || len(s[0].Hosts) != 2 {
				t.Errorf("secrets %v, %v", s, err)
			}
			t.Setenv("SANDSTORM_TEST_GH", "")
			if _, err := l.LoadSecrets(); err == nil || !strings.Contains(err.Error(), "SANDSTORM_TEST_GH is not set") {
				t.Errorf("unset variable: %v", err)
			}
		}},
		{"secret name", "secrets:\n  lower:\n    from_env: X\n    hosts: [a.org]\n", "secrets: lower", nil},
		{"secret source", "secrets:\n  T:\n    hosts: [a.org]\n", "exactly one of from_env and from_file", nil},
		{"secret hosts", "secrets:\n  T:\n    from_env: X\n    hosts: [10.0.0.1]\n", "names, not addresses", nil},
		{"secrets need the proxy", "network_mode: none\nsecrets:\n  T:\n    from_env: X\n    hosts: [a.org]\n", "network_mode: proxy", nil},
		{"bad isolation", "isolation: kata\n", "isolation", nil},
		{"bad webhook receiver", "webhook_allow: [10.0.0.0]\n", "webhook_allow", nil},
		{"unknown item", "allow_unenforced: [everything]\n", "allow_unenforced", nil},
		{"items type", "allow_unenforced: pids_limit\n", "allow_unenforced", nil},
		{"bad memory", "memory_limit: lots\n", "memory_limit", nil},
		{"tiny memory", "memory_limit: 1m\n", "memory_limit", nil},
		{"bad cpu", "cpu_limit: many\n", "cpu_limit", nil},
		{"zero agents", "max_concurrent_agents: 0\n", "max_concurrent_agents", nil},
		{"agents type", "max_concurrent_agents: five\n", "max_concurrent_agents", nil},
		{"bad network", "network_mode: host\n", "network_mode", nil},
		{"timeout range", "session_timeout_seconds: 2\n", "session_timeout_seconds", nil},
		{"not a mapping", "- a\n- b\n", "mapping", nil},
		{"unknown pool key", "pool:\n  sizes: 1\n", `pool: unknown key "sizes" (keys: size, max_refill_concurrency)`, nil},
		{"pool type", "pool:\n  size: many\n", "pool: size: must be a number", nil},
		{"unknown secret key", "secrets:\n  T:\n    from_envs: X\n", "(keys: from_env, from_file, hosts)", nil},
		{"bad retention", "run_retention: soon\n", "run_retention: must be a number of days", nil},
		{"bad store size", "run_store_max_size: big\n", "run_store_max_size", nil},
		{"bad old name", "docker_image: 3\n", "docker_image: must be a string", nil},
		{"null keeps the default", "memory_limit:\ncpu_limit: null\nrun_retention:\n", "", func(t *testing.T, l Limits) {
			d := DefaultLimits()
			if l.MemoryBytes != d.MemoryBytes || l.CPULimit != d.CPULimit || l.RunRetention != d.RunRetention {
				t.Errorf("%+v", l)
			}
		}},
		{"a key's case is its own", "Image: x:1\n", "", func(t *testing.T, l Limits) {
			if l.Image != DefaultLimits().Image {
				t.Errorf("Image set image: %q", l.Image)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, _, err := ParseLimits([]byte(tt.yaml))
			if tt.key != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.key) {
					t.Fatalf("error %v does not name %q", err, tt.key)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, l)
		})
	}
}

func TestFindLimits(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv(LimitsEnv, "")
	if got := FindLimits(""); got != "" {
		t.Errorf("no file: %q", got)
	}
	os.MkdirAll(filepath.Join(dir, "config"), 0o755)
	os.WriteFile(filepath.Join(dir, DefaultLimitsPath), []byte("cpu_limit: 1\n"), 0o644)
	if got := FindLimits(""); got != DefaultLimitsPath {
		t.Errorf("default path: %q", got)
	}
	t.Setenv(LimitsEnv, "/etc/sandstorm/limits.yaml")
	if got := FindLimits(""); got != "/etc/sandstorm/limits.yaml" {
		t.Errorf("env: %q", got)
	}
	if got := FindLimits("mine.yaml"); got != "mine.yaml" {
		t.Errorf("flag: %q", got)
	}
}
