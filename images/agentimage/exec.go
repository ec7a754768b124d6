package agentimage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Long commands (debootstrap, apt, npm) print far more lines than a reader
// wants, or nothing for a long time. Their output is passed through
// throttled: lines that look like errors or warnings at once, other lines
// at most one per throttle interval (the newest), and a "still running"
// line whenever nothing was printed for a heartbeat interval. The last lines
// are kept and printed in full if the command fails.
const (
	throttleEvery = 2 * time.Second
	tailLines     = 25
)

type streamer struct {
	w         io.Writer
	heartbeat time.Duration
	label     string
	start     time.Time

	mu      sync.Mutex
	lastOut time.Time
	held    string
	tail    []string
}

func newStreamer(w io.Writer, label string, heartbeat time.Duration) *streamer {
	now := time.Now()
	return &streamer{w: w, label: label, heartbeat: heartbeat, start: now, lastOut: now}
}

func important(line string) bool {
	l := strings.ToLower(strings.TrimSpace(line))
	for _, p := range []string{"e:", "w:", "err:", "error", "warning", "fatal", "npm error", "npm warn", "dpkg: error", "failed"} {
		if strings.HasPrefix(l, p) {
			return true
		}
	}
	return false
}

func (s *streamer) printLocked(line string) {
	fmt.Fprintf(s.w, "    %s\n", line)
	s.lastOut = time.Now()
}

func (s *streamer) line(line string) {
	line = strings.TrimRight(line, " \t")
	if line == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	show := important(line) || time.Since(s.lastOut) >= throttleEvery
	if show {
		s.held = ""
		s.printLocked(line)
	} else {
		s.held = line
	}
	s.tail = append(s.tail, line)
	if len(s.tail) > tailLines {
		s.tail = s.tail[1:]
	}
}

func (s *streamer) tick() {
	s.mu.Lock()
	defer s.mu.Unlock()
	since := time.Since(s.lastOut)
	switch {
	case s.held != "" && since >= throttleEvery:
		s.printLocked(s.held)
		s.held = ""
	case since >= s.heartbeat:
		s.printLocked(fmt.Sprintf("... %s still running (%s)", s.label, time.Since(s.start).Round(time.Second)))
	}
}

// finish flushes the held line, or on failure prints the kept last lines,
// so an error always comes with its context.
func (s *streamer) finish(failed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !failed {
		if s.held != "" {
			s.printLocked(s.held)
		}
		return
	}
	if len(s.tail) == 0 {
		return
	}
	fmt.Fprintf(s.w, "    --- last output of %s:\n", s.label)
	for _, l := range s.tail {
		fmt.Fprintf(s.w, "    | %s\n", l)
	}
}

// run starts cmd in its own process group, streams its combined output
// through a streamer and waits for it. Cancelling ctx kills the whole
// group. The caller may have set cmd.SysProcAttr (e.g. to unshare).
func (b *builder) run(ctx context.Context, label string, cmd *exec.Cmd) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	// If the builder dies, its direct child goes too (a killed build's
	// leftovers are removed by the next build).
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL

	s := newStreamer(b.log, label, b.opts.Heartbeat)
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		return fmt.Errorf("%s: %w", label, err)
	}
	pw.Close()

	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		r := bufio.NewReaderSize(pr, 64<<10)
		var cur strings.Builder
		for {
			c, err := r.ReadByte()
			if err != nil {
				if cur.Len() > 0 {
					s.line(cur.String())
				}
				return
			}
			if c == '\n' || c == '\r' {
				s.line(cur.String())
				cur.Reset()
				continue
			}
			if cur.Len() < 4096 {
				cur.WriteByte(c)
			}
		}
	}()

	waitDone := make(chan error, 1)
	go func() { waitDone <- cmd.Wait() }()

	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	var werr error
	killed := false
loop:
	for {
		select {
		case werr = <-waitDone:
			break loop
		case <-ticker.C:
			s.tick()
		case <-ctx.Done():
			if !killed {
				killed = true
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
		}
	}
	// A daemon forked by a package script could hold the pipe open: do not
	// wait for it forever.
	select {
	case <-readDone:
	case <-time.After(3 * time.Second):
		pr.Close()
		<-readDone
	}
	pr.Close()
	if killed {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		s.finish(true)
		return fmt.Errorf("%s: %w", label, ctx.Err())
	}
	s.finish(werr != nil)
	if werr != nil {
		var ee *exec.ExitError
		if errors.As(werr, &ee) {
			return fmt.Errorf("%s failed (%v); its last output is above", label, ee)
		}
		return fmt.Errorf("%s: %w", label, werr)
	}
	return nil
}
