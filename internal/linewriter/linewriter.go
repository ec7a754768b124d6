// Package linewriter frames a byte stream into lines as it is written, so
// each line can become one event the moment it is complete: never two lines
// in one event, never half of one, and a bounded buffer per line.
package linewriter

import (
	"bytes"
	"sync"
)

// Writer calls fn once per complete line (without its newline). A line
// longer than max is delivered in pieces of max bytes with truncated=true on
// all but the last, so memory stays bounded. fn must not keep line after it
// returns (the buffer is reused). It is safe for concurrent use.
type Writer struct {
	mu  sync.Mutex
	max int
	fn  func(line []byte, truncated bool) error
	buf []byte
	err error
}

// New returns a Writer delivering lines of at most max bytes to fn.
func New(max int, fn func(line []byte, truncated bool) error) *Writer {
	return &Writer{max: max, fn: fn}
}

// Write implements io.Writer. After fn fails, Write returns that error, so
// the producer stops.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.buf = append(w.buf, p...)
			p = nil
		} else {
			w.buf = append(w.buf, p[:i]...)
			p = p[i+1:]
			if w.emitLong() {
				return 0, w.err
			}
			w.err = w.fn(w.buf, false)
			w.buf = w.buf[:0]
			if w.err != nil {
				return 0, w.err
			}
			continue
		}
		if w.emitLong() {
			return 0, w.err
		}
	}
	return n, nil
}

// emitLong delivers full max-sized pieces of an over-long line.
func (w *Writer) emitLong() (failed bool) {
	for w.max > 0 && len(w.buf) > w.max {
		if w.err = w.fn(w.buf[:w.max], true); w.err != nil {
			return true
		}
		w.buf = append(w.buf[:0], w.buf[w.max:]...)
	}
	return false
}

// Flush delivers a final line that had no newline.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || len(w.buf) == 0 {
		return w.err
	}
	w.err = w.fn(w.buf, false)
	w.buf = w.buf[:0]
	return w.err
}
