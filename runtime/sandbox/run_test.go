package sandbox

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// fakeRuntime and fakeSandbox record the calls Run makes: a unit test of
// the sequence only; the conformance suite runs it on real daemons.
type fakeRuntime struct {
	createErr, startErr error
	hang                bool
	calls               []string
}

func (f *fakeRuntime) Name() string                                     { return "fake" }
func (f *fakeRuntime) Info(context.Context) (Info, error)               { return Info{}, nil }
func (f *fakeRuntime) Enforcement(context.Context) (Enforcement, error) { return nil, nil }
func (f *fakeRuntime) ImportImage(context.Context, io.Reader) ([]string, error) {
	return nil, nil
}
func (f *fakeRuntime) List(context.Context, map[string]string) ([]SandboxInfo, error) {
	return nil, nil
}
func (f *fakeRuntime) Remove(context.Context, string) error { return nil }
func (f *fakeRuntime) Leftovers(context.Context, string, string) ([]string, error) {
	return nil, nil
}
func (f *fakeRuntime) Close() error { return nil }

func (f *fakeRuntime) Create(context.Context, Spec) (Sandbox, error) {
	f.calls = append(f.calls, "create")
	if f.createErr != nil {
		return nil, f.createErr
	}
	return &fakeSandbox{f: f, killed: make(chan struct{})}, nil
}

type fakeSandbox struct {
	f      *fakeRuntime
	killed chan struct{}
}

func (s *fakeSandbox) ID() string         { return "fake-1" }
func (s *fakeSandbox) Unenforced() []Item { return nil }
func (s *fakeSandbox) Workspace() (*os.Root, error) {
	return nil, errors.New("the fake sandbox has no workspace")
}
func (s *fakeSandbox) Start(context.Context, IO) error {
	s.f.calls = append(s.f.calls, "start")
	return s.f.startErr
}
func (s *fakeSandbox) Wait(ctx context.Context) (ExitStatus, error) {
	s.f.calls = append(s.f.calls, "wait")
	if !s.f.hang {
		return ExitStatus{Code: 3}, nil
	}
	select {
	case <-s.killed:
		return ExitStatus{Code: 137, Signal: "SIGKILL"}, nil
	case <-ctx.Done():
		return ExitStatus{}, ctx.Err()
	}
}
func (s *fakeSandbox) Kill(context.Context) error {
	s.f.calls = append(s.f.calls, "kill")
	close(s.killed)
	return nil
}
func (s *fakeSandbox) Remove(ctx context.Context) error {
	// Removal runs even when the caller's context has ended.
	if ctx.Err() != nil {
		return errors.New("remove got a cancelled context")
	}
	s.f.calls = append(s.f.calls, "remove")
	return nil
}

func TestRun(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	boom := errors.New("boom")
	tests := []struct {
		name    string
		f       *fakeRuntime
		ctx     context.Context
		timeout time.Duration
		calls   string
		code    int
		err     error
		hooks   string
	}{
		{"exits", &fakeRuntime{}, context.Background(), 0, "create start wait remove", 3, nil, "created started exited removed"},
		{"create fails", &fakeRuntime{createErr: boom}, context.Background(), 0, "create", 0, boom, ""},
		{"start fails", &fakeRuntime{startErr: boom}, context.Background(), 0, "create start remove", 0, boom, "created removed"},
		{"timeout", &fakeRuntime{hang: true}, context.Background(), 20 * time.Millisecond, "create start wait kill wait remove", 137, context.DeadlineExceeded, "created started exited(timeout) removed"},
		{"cancelled", &fakeRuntime{hang: true}, cancelled, 0, "create start wait kill wait remove", 137, context.Canceled, "created started exited(cancel) removed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hooks []string
			st, err := Run(tt.ctx, tt.f, Spec{}, IO{}, tt.timeout, Hooks{
				Created: func(Sandbox, time.Duration) { hooks = append(hooks, "created") },
				Started: func(time.Duration) { hooks = append(hooks, "started") },
				Exited: func(_ ExitStatus, werr error, _ time.Duration) {
					switch {
					case errors.Is(werr, context.DeadlineExceeded):
						hooks = append(hooks, "exited(timeout)")
					case errors.Is(werr, context.Canceled):
						hooks = append(hooks, "exited(cancel)")
					default:
						hooks = append(hooks, "exited")
					}
				},
				Removed: func(_ time.Duration, err error) {
					if err != nil {
						t.Error(err)
					}
					hooks = append(hooks, "removed")
				},
			})
			if got := strings.Join(tt.f.calls, " "); got != tt.calls {
				t.Errorf("calls %q, want %q", got, tt.calls)
			}
			if got := strings.Join(hooks, " "); got != tt.hooks {
				t.Errorf("hooks %q, want %q", got, tt.hooks)
			}
			if st.Code != tt.code || (tt.err == nil) != (err == nil) || (tt.err != nil && !errors.Is(err, tt.err)) {
				t.Errorf("Run = %+v, %v; want code %d, %v", st, err, tt.code, tt.err)
			}
		})
	}
}
