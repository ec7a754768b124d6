package podman

import (
	"context"
	"net/http"
	"sync"
	"time"

	"go.podman.io/podman/v6/pkg/bindings"
)

// pingEvery is how often the service is asked whether it still answers.
const pingEvery = 2 * time.Second

// watch notices a service that went away. Podman's attach stream can stay
// open after its service died (conmon holds the connection), so a Wait
// would block until the run's timeout; with the watch it ends at once.
type watch struct {
	mu   sync.Mutex
	gone chan struct{} // closed while the service does not answer
	stop context.CancelFunc
}

// startWatch pings the service every pingEvery until Close.
func (r *Runtime) startWatch() {
	ctx, stop := context.WithCancel(context.Background())
	r.watch = &watch{gone: make(chan struct{}), stop: stop}
	go func() {
		t := time.NewTicker(pingEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			// Only a service that is gone counts, not a slow one: a ping
			// that times out on a loaded host must not end every run.
			err := r.ping(ctx)
			r.watch.set(err == nil || !gone(err))
		}
	}()
}

// set records whether the service answers: a fresh channel once it does
// again, the current one closed while it does not.
func (w *watch) set(answers bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-w.gone:
		if answers {
			w.gone = make(chan struct{})
		}
	default:
		if !answers {
			close(w.gone)
		}
	}
}

// lost is closed when the service stops answering.
func (w *watch) lost() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gone
}

func (r *Runtime) ping(ctx context.Context) error {
	conn, err := bindings.GetClient(r.conn)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, pingEvery)
	defer cancel()
	resp, err := conn.DoRequest(r.ctx(ctx), nil, http.MethodGet, "/_ping", nil, nil)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}
