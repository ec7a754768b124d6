package config

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestRestartOnly(t *testing.T) {
	want := []string{"isolation", "state_dir", "run_retention", "run_store_max_size", "webhook_url", "webhook_allow"}
	if got := RestartOnly(); !slices.Equal(got, want) {
		t.Errorf("RestartOnly() = %v, want %v", got, want)
	}
}

func TestDiff(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"nothing", "max_concurrent_agents: 5\n", nil},
		{"a plain key", "pids_limit: 100\n", []string{"pids_limit"}},
		{"keys written in their own forms", "cpu_limit: 1\nmemory_limit: 1gb\nrun_retention: 1d\nmax_output_bytes: 1m\n",
			[]string{"cpu_limit", "memory_limit", "run_retention", "max_output_bytes"}},
		{"blocks", "egress:\n  deny: [10.0.0.0/8]\nsecrets:\n  T:\n    from_env: X\n    hosts: [a.org]\npool:\n  size: 0\n",
			[]string{"egress", "secrets", "pool"}},
		{"an old name is its key", "docker_image: x:1\n", []string{"image"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, _, err := ParseLimits([]byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if got := Diff(DefaultLimits(), l); !slices.Equal(got, tt.want) {
				t.Errorf("Diff = %v, want %v", got, tt.want)
			}
		})
	}
	if got := Diff(Project{}, Project{Model: "opus", MaxTurns: 3}); !slices.Equal(got, []string{"model", "max_turns"}) {
		t.Errorf("project Diff = %v", got)
	}
}

// TestREADMELimits holds README's limits.yaml example to Limits: the same
// keys in the same order, "(restart)" on exactly the restart-only ones, old
// names mentioned, and a file that parses without a warning.
func TestREADMELimits(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(readme), "### `config/limits.yaml`")
	_, block, _ := strings.Cut(section, "```yaml\n")
	block, _, _ = strings.Cut(block, "```")
	top := regexp.MustCompile(`(?m)^([a-z_]+):(.*)$`)
	var got []string
	lines := map[string]string{}
	for _, m := range top.FindAllStringSubmatch(block, -1) {
		got = append(got, m[1])
		lines[m[1]] = m[2]
	}
	var want []string
	for _, k := range limitsKeys {
		want = append(want, k.name)
		if restart := strings.Contains(lines[k.name], "# (restart)"); restart != k.restart {
			t.Errorf("README: %s: marked (restart) %v, want %v", k.name, restart, k.restart)
		}
		if k.was != "" && !strings.Contains(lines[k.name], `"`+k.was+`"`) {
			t.Errorf("README: %s: does not mention its old name %q", k.name, k.was)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("README's limits.yaml keys\n%v\nwant (config.Limits)\n%v", got, want)
	}
	if _, warnings, err := ParseLimits([]byte(block)); err != nil || len(warnings) > 0 {
		t.Errorf("README's limits.yaml: %v %v", warnings, err)
	}
}

func TestOldName(t *testing.T) {
	tests := []struct {
		name, yaml, image string
	}{
		{"old name alone", "docker_image: old:1\n", "old:1"},
		{"the new name wins", "docker_image: old:1\nimage: new:1\n", "new:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, warnings, err := ParseLimits([]byte(tt.yaml))
			if err != nil || l.Image != tt.image || !slices.Equal(warnings, []string{`"docker_image" is the old name of "image"`}) {
				t.Errorf("image %q, warnings %v, %v", l.Image, warnings, err)
			}
		})
	}
}
