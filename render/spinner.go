package render

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// spinner shows that the run is alive while nothing else is printed. A nil
// spinner (not a terminal) does nothing, so no escape codes reach pipes.
type spinner struct {
	mu      sync.Mutex
	w       io.Writer
	shown   bool
	stopped bool
	last    time.Time
	done    chan struct{}
}

func newSpinner(w io.Writer) *spinner {
	s := &spinner{w: w, last: time.Now(), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *spinner) loop() {
	frames := []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}
	t := time.NewTicker(120 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		if !s.stopped && time.Since(s.last) > 300*time.Millisecond {
			fmt.Fprintf(s.w, "\r%s working… %ds", frames[i%len(frames)], int(time.Since(s.last).Seconds()))
			s.shown = true
		}
		s.mu.Unlock()
	}
}

// clear erases the spinner before other output.
func (s *spinner) clear() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shown {
		fmt.Fprint(s.w, "\r\033[K")
		s.shown = false
	}
}

// resume restarts the idle clock after output.
func (s *spinner) resume() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.last = time.Now()
	s.mu.Unlock()
}

func (s *spinner) stop() {
	if s == nil {
		return
	}
	s.clear()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopped {
		s.stopped = true
		close(s.done)
	}
}
