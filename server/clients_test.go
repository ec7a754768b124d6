package server

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRealClients runs the README's Python (requests), JavaScript (fetch on
// Node) and curl examples against a live server: each must see a
// successful result event.
func TestRealClients(t *testing.T) {
	examples, err := filepath.Abs("../examples")
	if err != nil {
		t.Fatal(err)
	}
	clients := []struct {
		name string
		cmd  []string
	}{
		{"python requests", []string{"/usr/bin/python3", filepath.Join(examples, "client.py")}},
		{"node fetch", []string{"node", filepath.Join(examples, "client.mjs")}},
		{"curl", []string{"sh", filepath.Join(examples, "query.sh")}},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			// A fresh server each: the scripted model's turns are used up by one run.
			h := start(t, "containerd", "hello-python", "")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, c.cmd[0], c.cmd[1:]...)
			cmd.Env = append(cmd.Environ(), "SANDSTORM_URL="+h.url)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			s := string(out)
			if !strings.Contains(s, `"type":"result"`) || !strings.Contains(s, `"subtype":"success"`) || !strings.Contains(s, "hello from sandstorm") {
				t.Errorf("no successful result in the client's output:\n%.2000s", s)
			}
			h.noSandboxes(t, 5*time.Second)
		})
	}
}
