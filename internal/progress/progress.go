// Package progress prints one line per phase of long work, with its duration,
// so a terminal is never silent while something slow runs.
package progress

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Reporter writes phase lines to W.
type Reporter struct {
	W io.Writer
}

// Phase prints that name started and returns a func that prints how it ended.
func (r Reporter) Phase(name string) func(err error) {
	start := time.Now()
	fmt.Fprintf(r.W, "==> %s ...\n", name)
	return func(err error) { r.Done(name, time.Since(start), err) }
}

// Done prints how a phase that took d ended, for a phase timed elsewhere.
func (r Reporter) Done(name string, d time.Duration, err error) {
	d = d.Round(time.Millisecond)
	if err != nil {
		fmt.Fprintf(r.W, "==> %s failed after %v: %v\n", name, d, err)
		return
	}
	fmt.Fprintf(r.W, "==> %s done (%v)\n", name, d)
}

// Heartbeat prints a "still running" line every interval until stop is
// called: for long work that prints nothing by itself.
func Heartbeat(w io.Writer, label string, every time.Duration) (stop func()) {
	start := time.Now()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(w, "    ... %s still running (%s)\n", label, time.Since(start).Round(time.Second))
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}
