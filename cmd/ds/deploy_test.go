package main

import (
	"bufio"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// serveArgs checks that args are flags ds serve accepts, with values it
// takes.
func serveArgs(t *testing.T, where string, args []string) {
	t.Helper()
	if len(args) == 0 || args[0] != "serve" {
		t.Errorf("%s: runs %q, want ds serve", where, args)
		return
	}
	if err := newServe().ParseFlags(args[1:]); err != nil {
		t.Errorf("%s: ds serve %s: %v", where, strings.Join(args[1:], " "), err)
	}
}

// TestDeployExamples keeps deploy/ true to ds: the systemd unit, the
// compose file and the Containerfile parse, and run ds serve with flags it
// has; the container shares the paths and the process namespace the host's
// daemon and other sandstorm processes rely on.
func TestDeployExamples(t *testing.T) {
	t.Run("systemd unit", func(t *testing.T) {
		f, err := os.Open("../../deploy/sandstorm.service")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		sections := map[string]map[string]string{}
		var section string
		sc := bufio.NewScanner(f)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			switch {
			case line == "" || strings.HasPrefix(line, "#"):
			case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
				section = strings.Trim(line, "[]")
				sections[section] = map[string]string{}
			case section != "" && strings.Contains(line, "="):
				k, v, _ := strings.Cut(line, "=")
				sections[section][k] = v
			default:
				t.Errorf("line %d: %q is neither a section, a key=value nor a comment", n, line)
			}
		}
		for _, s := range []string{"Unit", "Service", "Install"} {
			if sections[s] == nil {
				t.Errorf("no [%s]", s)
			}
		}
		exec := strings.Fields(sections["Service"]["ExecStart"])
		if len(exec) < 2 || !strings.HasSuffix(exec[0], "/ds") {
			t.Fatalf("ExecStart %q", exec)
		}
		serveArgs(t, "ExecStart", exec[1:])
		if !strings.Contains(sections["Service"]["ExecReload"], "-HUP") {
			t.Errorf("ExecReload %q: ds serve reloads on SIGHUP", sections["Service"]["ExecReload"])
		}
	})
	t.Run("compose", func(t *testing.T) {
		data, err := os.ReadFile("../../deploy/compose.yaml")
		if err != nil {
			t.Fatal(err)
		}
		var c struct {
			Services map[string]struct {
				Image   string   `json:"image"`
				Command []string `json:"command"`
				PID     string   `json:"pid"`
				Volumes []string `json:"volumes"`
			} `json:"services"`
		}
		if err := yaml.Unmarshal(data, &c); err != nil {
			t.Fatal(err)
		}
		s, ok := c.Services["sandstorm"]
		if !ok || s.Image == "" {
			t.Fatalf("no sandstorm service with an image: %+v", c)
		}
		serveArgs(t, "command", s.Command)
		if s.PID != "host" {
			t.Errorf("pid %q, want host: owners are host pids", s.PID)
		}
		for _, same := range []string{"/run/sandstorm:/run/sandstorm", "/var/lib/sandstorm:/var/lib/sandstorm", "/run/containerd:/run/containerd", "/var/lib/containerd:/var/lib/containerd:ro"} {
			if !slices.Contains(s.Volumes, same) {
				t.Errorf("volumes %v lack %s (the daemon mounts these paths as the server names them)", s.Volumes, same)
			}
		}
	})
	t.Run("kubernetes", func(t *testing.T) {
		data, err := os.ReadFile("../../deploy/kubernetes.yaml")
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, doc := range strings.Split(string(data), "\n---\n") {
			var d struct {
				Kind string `json:"kind"`
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Args []string `json:"args"`
							} `json:"containers"`
						} `json:"spec"`
					} `json:"template"`
				} `json:"spec"`
			}
			if err := yaml.Unmarshal([]byte(doc), &d); err != nil {
				t.Fatal(err)
			}
			if d.Kind != "Deployment" {
				continue
			}
			found = true
			for _, c := range d.Spec.Template.Spec.Containers {
				// The kubelet puts the Pod's address in for $(POD_IP).
				args := strings.Split(strings.ReplaceAll(strings.Join(c.Args, "\x00"), "$(POD_IP)", "10.0.0.9"), "\x00")
				serveArgs(t, "Deployment args", args)
			}
		}
		if !found {
			t.Error("no Deployment of ds serve")
		}
	})
	t.Run("Containerfile", func(t *testing.T) {
		data, err := os.ReadFile("../../deploy/Containerfile")
		if err != nil {
			t.Fatal(err)
		}
		var entrypoint, cmd []string
		var froms int
		for _, line := range strings.Split(string(data), "\n") {
			word, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
			switch word {
			case "FROM":
				froms++
			case "ENTRYPOINT":
				if err := json.Unmarshal([]byte(rest), &entrypoint); err != nil {
					t.Errorf("ENTRYPOINT %s: %v", rest, err)
				}
			case "CMD":
				if err := json.Unmarshal([]byte(rest), &cmd); err != nil {
					t.Errorf("CMD %s: %v", rest, err)
				}
			}
		}
		if froms != 2 || len(entrypoint) != 1 || !strings.HasSuffix(entrypoint[0], "/ds") {
			t.Errorf("%d FROM, ENTRYPOINT %q: want a build stage and an image running ds", froms, entrypoint)
		}
		serveArgs(t, "CMD", cmd)
		makefile, _ := os.ReadFile("../../Makefile")
		tags := regexp.MustCompile(`-tags=(\S+)`).FindSubmatch(makefile)
		if tags == nil || !strings.Contains(string(data), "-tags "+string(tags[1])) {
			t.Errorf("the Containerfile builds without the Makefile's tags %q", tags)
		}
	})
}
