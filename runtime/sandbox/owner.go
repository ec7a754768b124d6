package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/sandstorm-dev/sandstorm/oci"
)

// Owner is the sandstorm process that made a sandbox: every object of the
// sandbox carries it (oci.LabelOwner), so that a later process can tell
// the objects of a crashed one from those of one still running.
type Owner struct {
	// Boot is the host's boot id: a pid means nothing across reboots.
	Boot string
	PID  int
	// Start is the process's start time (clock ticks since boot): a pid
	// may be reused by another process.
	Start uint64
}

func (o Owner) String() string { return fmt.Sprintf("%s.%d.%d", o.Boot, o.PID, o.Start) }

// ParseOwner reads an owner label.
func ParseOwner(s string) (Owner, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] == "" {
		return Owner{}, fmt.Errorf("owner %q is not boot.pid.start", s)
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil {
		return Owner{}, fmt.Errorf("owner %q: %w", s, err)
	}
	start, err := strconv.ParseUint(parts[2], 10, 64)
	if err != nil {
		return Owner{}, fmt.Errorf("owner %q: %w", s, err)
	}
	return Owner{Boot: parts[0], PID: pid, Start: start}, nil
}

// Alive reports whether the owner still runs on this host: same boot, and
// its pid is the same process.
func (o Owner) Alive() bool {
	self, err := Self()
	if err != nil || o.Boot != self.Boot {
		return false
	}
	start, err := startTime(o.PID)
	return err == nil && start == o.Start
}

var self struct {
	once  sync.Once
	owner Owner
	err   error
}

// Self is this process as an owner.
func Self() (Owner, error) {
	self.once.Do(func() {
		boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
		if err != nil {
			self.err = fmt.Errorf("boot id: %w", err)
			return
		}
		pid := os.Getpid()
		start, err := startTime(pid)
		if err != nil {
			self.err = err
			return
		}
		self.owner = Owner{Boot: strings.ReplaceAll(strings.TrimSpace(string(boot)), "-", ""), PID: pid, Start: start}
	})
	return self.owner, self.err
}

// startTime is field 22 of /proc/PID/stat.
func startTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it follow its last ')'.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 20 {
		return 0, errors.New("malformed /proc stat")
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// Sweep removes the sandboxes whose owner is gone, of every kind of object
// List finds: what crashed sandstorm processes left behind; and the
// sandboxes of this process whose removal failed (their daemon was away).
// Sandboxes of owners that still run, and those with no owner label, are
// left alone. It returns the ids it removed.
func Sweep(ctx context.Context, rt Runtime) (removed []string, err error) {
	removed, rerr := retryRemovals(ctx, rt)
	found, err := rt.List(ctx, map[string]string{oci.LabelManaged: "true"})
	if err != nil {
		return removed, errors.Join(rerr, err)
	}
	errs := []error{rerr}
	for _, s := range found {
		if !Orphaned(s.Labels[oci.LabelOwner]) {
			continue
		}
		if err := rt.Remove(ctx, s.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, s.ID)
	}
	return removed, errors.Join(errs...)
}

// Orphaned reports whether owner (a label's value) names a process that is
// gone; "" (no owner known) is not orphaned.
func Orphaned(owner string) bool {
	if owner == "" {
		return false
	}
	o, err := ParseOwner(owner)
	return err == nil && !o.Alive()
}
