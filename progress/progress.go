// Package progress prints one line per phase of long work, with its duration,
// so a terminal is never silent while something slow runs.
package progress

import (
	"fmt"
	"io"
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
	return func(err error) {
		d := time.Since(start).Round(time.Millisecond)
		if err != nil {
			fmt.Fprintf(r.W, "==> %s failed after %v: %v\n", name, d, err)
			return
		}
		fmt.Fprintf(r.W, "==> %s done (%v)\n", name, d)
	}
}
