package podman

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"go.podman.io/podman/v6/pkg/bindings"
)

// attachStream is a container's multiplexed stdout and stderr.
//
// The bindings' own Attach is not used: it replaces the shared connection's
// HTTP transport on every call (racing with concurrent sandboxes) and
// inspects the container first, one more round trip.
type attachStream struct {
	body io.ReadCloser
	r    *bufio.Reader
	// cancel ends the request's context, which lives as long as the stream.
	cancel context.CancelFunc
}

// attach opens the container's output before it starts, so nothing it
// prints is lost. Podman initialises a created container (conmon, runtime
// create) to attach to it.
func (r *Runtime) attach(ctx context.Context, ctrID string) (*attachStream, error) {
	conn, err := bindings.GetClient(r.conn)
	if err != nil {
		return nil, err
	}
	params := url.Values{"stdout": {"true"}, "stderr": {"true"}, "stream": {"true"}}
	headers := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"tcp"}}
	// The stream lives until the process exits, whatever happens to ctx
	// afterwards; ctx only bounds the wait for the answer.
	sctx, cancel := context.WithCancel(context.WithoutCancel(r.ctx(ctx)))
	stop := context.AfterFunc(ctx, cancel)
	resp, err := conn.DoRequest(sctx, nil, http.MethodPost, "/containers/%s/attach", params, headers, ctrID)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		if resp != nil && resp.Response != nil {
			resp.Body.Close()
		}
		cancel()
		return nil, fmt.Errorf("attach to container %s: %w", ctrID, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer cancel()
		defer resp.Body.Close()
		err := resp.Process(nil)
		if err == nil {
			err = fmt.Errorf("status %d, want 101", resp.StatusCode)
		}
		return nil, fmt.Errorf("attach to container %s: %w", ctrID, err)
	}
	return &attachStream{body: resp.Body, r: bufio.NewReaderSize(resp.Body, 64<<10), cancel: cancel}, nil
}

// copy demultiplexes the stream into stdout and stderr until it ends,
// which is when the container's process has exited and its output is drained.
func (a *attachStream) copy(stdout, stderr io.Writer) error {
	out, errw := &sink{w: stdout}, &sink{w: stderr}
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(a.r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return errors.Join(out.err, errw.err)
			}
			return fmt.Errorf("read output stream: %w", err)
		}
		n := int64(binary.BigEndian.Uint32(hdr[4:]))
		var w io.Writer
		switch hdr[0] {
		case 0, 1:
			w = out
		case 2:
			w = errw
		case 3:
			msg, _ := io.ReadAll(io.LimitReader(a.r, n))
			return fmt.Errorf("podman attach: %s", msg)
		default:
			return fmt.Errorf("output stream: unknown stream %d", hdr[0])
		}
		if _, err := io.CopyN(w, a.r, n); err != nil {
			return fmt.Errorf("copy output: %w", err)
		}
	}
}

func (a *attachStream) close() {
	a.body.Close()
	a.cancel()
}

// sink keeps the stream flowing when the caller's writer fails (the process
// would block on a full pipe otherwise): it reports the first error at the end.
type sink struct {
	w   io.Writer
	err error
}

func (s *sink) Write(p []byte) (int, error) {
	if s.err == nil && s.w != nil {
		_, s.err = s.w.Write(p)
	}
	return len(p), nil
}
