package sandbox

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/sandstorm-dev/sandstorm/images/imagetar"
	"github.com/sandstorm-dev/sandstorm/internal/progress"
)

// EnsureImage imports the image tar at path into rt unless rt already holds every
// reference the tar carries (checked when the backend can tell cheaply): a
// content tag among them makes a stale image with the same name import anew.
func EnsureImage(ctx context.Context, rt Runtime, path string, log io.Writer) error {
	rep := progress.Reporter{W: log}
	refs, err := imagetar.References(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	if c, ok := rt.(ImageChecker); ok && len(refs) > 0 {
		have := true
		for _, ref := range refs {
			ok, err := c.HasImage(ctx, ref)
			if err != nil {
				return err
			}
			have = have && ok
		}
		if have {
			fmt.Fprintf(log, "==> %s already holds %s\n", rt.Name(), refs[len(refs)-1])
			return nil
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: image tar: %w", ErrInvalidSpec, err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	done := rep.Phase(fmt.Sprintf("import %s (%.0f MB) into %s", path, float64(fi.Size())/1e6, rt.Name()))
	stop := progress.Heartbeat(log, "import into "+rt.Name(), 5*time.Second)
	names, err := rt.ImportImage(ctx, f)
	stop()
	done(err)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "==> %s now holds %v\n", rt.Name(), names)
	return nil
}
