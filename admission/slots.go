package admission

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// DefaultSlotDir holds the host-wide slot locks.
const DefaultSlotDir = "/run/sandstorm/slots"

// slotPoll is how often a waiting request retries the slots.
const slotPoll = 50 * time.Millisecond

// Slots limits concurrent runs across every sandstorm process on the host
// (each ds CLI and ds serve): a run holds an flock on one of n slot files,
// and waiting requests hold a lock on a queue file of their own so others
// can count them. Locks die with their process, so a crash frees its slot.
type Slots struct {
	dir       string
	n         int
	queueSize int
	wait      time.Duration
}

// NewSlots prepares dir for n slots and a queue of queueSize waiting up to wait.
func NewSlots(dir string, n, queueSize int, wait time.Duration) (*Slots, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("slot directory: %w", err)
	}
	return &Slots{dir: dir, n: n, queueSize: queueSize, wait: wait}, nil
}

// Acquire takes a free slot, waiting in the queue when all are held.
func (s *Slots) Acquire(ctx context.Context, queued Queued) (release func(), err error) {
	rel, q, waiting, err := s.admit()
	if err != nil || rel != nil {
		return rel, err
	}
	defer func() {
		os.Remove(q.Name())
		q.Close()
	}()
	if queued != nil {
		queued(waiting + 1)
	}
	deadline := time.NewTimer(s.wait)
	defer deadline.Stop()
	tick := time.NewTicker(slotPoll)
	defer tick.Stop()
	for {
		if rel := s.try(); rel != nil {
			return rel, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("left the queue for a slot: %w", sandbox.Cause(ctx))
		case <-deadline.C:
			return nil, fmt.Errorf("%w: no slot freed within queue_wait_seconds (%v)", api.ErrBusy, s.wait)
		case <-tick.C:
		}
	}
}

// admit takes a free slot, or a place in the queue when there is room, or
// answers busy: in one step across every process, under the admission
// lock, so that running plus waiting never exceed the slots plus the queue.
func (s *Slots) admit() (release func(), q *os.File, waiting int, err error) {
	unlock, err := s.lock(syscall.LOCK_EX)
	if err != nil {
		return nil, nil, 0, err
	}
	defer unlock()
	if rel := s.try(); rel != nil {
		return rel, nil, 0, nil
	}
	waiting = s.waiting()
	if waiting >= s.queueSize {
		return nil, nil, waiting, fmt.Errorf("%w: %d running, %d waiting (queue_size %d)", api.ErrBusy, s.running(), waiting, s.queueSize)
	}
	q, err = s.enqueue()
	return nil, q, waiting, err
}

// lock takes the admission lock: exclusive to admit, shared to count. A
// count probes the slot and queue locks, which must not make an admission
// miss a free slot, nor remove a queue entry being made.
func (s *Slots) lock(how int) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(s.dir, "admit.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("slots: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, fmt.Errorf("slots: %w", err)
	}
	return func() { f.Close() }, nil
}

// counted runs count under the shared admission lock.
func (s *Slots) counted(count func() int) int {
	if unlock, err := s.lock(syscall.LOCK_SH); err == nil {
		defer unlock()
	}
	return count()
}

// try locks the first free slot. Slots beyond n that are held (by a
// process, or a configuration before a reload, with more of them) count
// too: a lower n holds new runs back until the running ones fit it.
func (s *Slots) try() func() {
	if s.running() >= s.n {
		return nil
	}
	for i := 0; i < s.n; i++ {
		f, err := os.OpenFile(filepath.Join(s.dir, fmt.Sprintf("slot-%d.lock", i)), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			return func() { f.Close() }
		}
		f.Close()
	}
	return nil
}

// Spare takes a free slot only when no request waits for one (nil
// otherwise): a warm pool's refill never stands before a request.
func (s *Slots) Spare() func() {
	unlock, err := s.lock(syscall.LOCK_EX)
	if err != nil {
		return nil
	}
	defer unlock()
	if s.waiting() > 0 {
		return nil
	}
	return s.try()
}

// Free reports whether a slot is free now.
func (s *Slots) Free() bool {
	return s.Running() < s.n
}

// Running is how many runs hold a slot, across the host.
func (s *Slots) Running() int { return s.counted(s.running) }

// Waiting is how many requests wait in the queue, across the host.
func (s *Slots) Waiting() int { return s.counted(s.waiting) }

// running counts the held slots, every slot file's.
func (s *Slots) running() int {
	n := 0
	files, _ := filepath.Glob(filepath.Join(s.dir, "slot-*.lock"))
	for _, f := range files {
		if held(f) {
			n++
		}
	}
	return n
}

// waiting counts live queue entries and removes those of dead processes.
func (s *Slots) waiting() int {
	entries, _ := os.ReadDir(s.dir)
	n := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "queue-") {
			continue
		}
		p := filepath.Join(s.dir, e.Name())
		if held(p) {
			n++
		} else {
			os.Remove(p)
		}
	}
	return n
}

func (s *Slots) enqueue() (*os.File, error) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	f, err := os.OpenFile(filepath.Join(s.dir, "queue-"+hex.EncodeToString(b)+".lock"), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("queue: %w", err)
	}
	return f, nil
}

// held reports whether someone holds the lock on path.
func held(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil
}
