package session

import (
	"github.com/sandstorm-dev/sandstorm/api"

	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
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
	if rel := s.try(); rel != nil {
		return rel, nil
	}
	waiting := s.waiting()
	if waiting >= s.queueSize {
		return nil, fmt.Errorf("%w: %d running, %d waiting (queue_size %d)", api.ErrBusy, s.n, waiting, s.queueSize)
	}
	q, err := s.enqueue()
	if err != nil {
		return nil, err
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
			return nil, ctx.Err()
		case <-deadline.C:
			return nil, fmt.Errorf("%w: no slot freed within queue_wait_seconds (%v)", api.ErrBusy, s.wait)
		case <-tick.C:
		}
	}
}

// try locks the first free slot.
func (s *Slots) try() func() {
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

// Running counts the held slots.
func (s *Slots) Running() int {
	n := 0
	for i := 0; i < s.n; i++ {
		if held(filepath.Join(s.dir, fmt.Sprintf("slot-%d.lock", i))) {
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
