package cgroupfs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestOOMKills(t *testing.T) {
	tests := []struct {
		name, file, content string
		want                int
		wantErr             bool
	}{
		{"v2", "sandstorm/a/memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n", 1, false},
		{"hybrid v2 only", "unified/sandstorm/a/memory.events", "oom 2\noom_kill 2\n", 2, false},
		{"v1", "memory/sandstorm/a/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n", 4, false},
		{"old kernel v1", "memory/sandstorm/a/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n", 0, true},
		{"missing", "pids/sandstorm/a/pids.max", "max\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			Root = t.TempDir()
			p := filepath.Join(Root, tt.file)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := OOMKills("/sandstorm/a")
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("OOMKills = %d, %v; want %d, err=%v", got, err, tt.want, tt.wantErr)
			}
			if ex := Existing("/sandstorm/a"); len(ex) != 1 {
				t.Errorf("Existing = %v, want one directory", ex)
			}
		})
	}
}
