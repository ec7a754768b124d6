// Package cgroupfs reads sandbox cgroups on the host, for cgroup v1, hybrid
// and pure v2 layouts alike.
package cgroupfs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// Root is where cgroup hierarchies are mounted; a variable so tests can use a fake tree.
var Root = "/sys/fs/cgroup"

// Existing returns every directory of the cgroup rel (e.g. "/sandstorm/ID")
// that still exists, in any hierarchy.
func Existing(rel string) []string {
	candidates := []string{filepath.Join(Root, rel)}
	if m, err := filepath.Glob(filepath.Join(Root, "*", rel)); err == nil {
		candidates = append(candidates, m...)
	}
	var found []string
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && fi.IsDir() {
			found = append(found, c)
		}
	}
	return found
}

// OOMKills returns how many processes of cgroup rel the kernel's OOM killer
// killed: memory.events (v2) or memory.oom_control (v1), whichever exists.
func OOMKills(rel string) (int, error) {
	for _, f := range []string{
		filepath.Join(Root, rel, "memory.events"),
		filepath.Join(Root, "unified", rel, "memory.events"),
		filepath.Join(Root, "memory", rel, "memory.oom_control"),
	} {
		data, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", f, err)
		}
		if n, ok := field(data, "oom_kill"); ok {
			return n, nil
		}
	}
	return 0, fmt.Errorf("no OOM counter for cgroup %s", rel)
}

// field finds "key value" in a flat-keyed cgroup file.
func field(data []byte, key string) (int, bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte(" "))
		if ok && string(k) == key {
			n, err := strconv.Atoi(string(v))
			return n, err == nil
		}
	}
	return 0, false
}
