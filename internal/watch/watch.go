// Package watch tells when files change, as editors change them: written
// in place, or replaced (a new file renamed over the old), or created. It
// watches each file's directory, so a file that does not exist yet counts
// once it does.
package watch

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Settle is how long a burst of events (an editor's write, rename and
// chmod) must be quiet before it counts as one change.
const Settle = 200 * time.Millisecond

// Files calls changed after each change to any of files, until ctx ends.
// The watch is set up before it returns.
func Files(ctx context.Context, files []string, changed func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	wanted := map[string]bool{}
	dirs := map[string]bool{}
	for _, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			w.Close()
			return fmt.Errorf("watch %s: %w", f, err)
		}
		wanted[abs] = true
		dirs[filepath.Dir(abs)] = true
	}
	for d := range dirs {
		if err := w.Add(d); err != nil {
			w.Close()
			return fmt.Errorf("watch %s: %w", d, err)
		}
	}
	go func() {
		defer w.Close()
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if wanted[filepath.Clean(ev.Name)] {
					timer.Reset(Settle)
				}
			case <-w.Errors:
			case <-timer.C:
				changed()
			}
		}
	}()
	return nil
}
