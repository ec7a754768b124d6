package admission

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/gateway"
)

func TestJobMerge(t *testing.T) {
	limits := config.DefaultLimits()
	limits.SessionTimeoutSeconds = 120
	project := config.Project{Model: "opus", MaxTurns: 7, SystemPrompt: "Be concise",
		OutputFormat: json.RawMessage(`{"type":"json_schema","schema":{"type":"object"}}`)}
	m, err := NewManager(nil, limits, project, gateway.Credentials{AnthropicKey: "process-key"}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	j, err := m.Job(api.Request{Prompt: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if j.Config.Model != "opus" || j.Config.MaxTurns != 7 || j.Config.SystemPrompt != "Be concise" || len(j.Config.OutputFormat) == 0 {
		t.Errorf("absent values did not fall back to sandstorm.json: %+v", j.Config)
	}
	if j.Timeout != 120*time.Second || j.Credentials.AnthropicKey != "process-key" {
		t.Errorf("default timeout 300 not capped by limits, or creds lost: %v %v", j.Timeout, j.Credentials)
	}

	j, err = m.Job(api.Request{Prompt: "p", Model: "haiku", MaxTurns: 2, Timeout: 30, OpenRouterAPIKey: "req-key"})
	if err != nil {
		t.Fatal(err)
	}
	if j.Config.Model != "haiku" || j.Config.MaxTurns != 2 || j.Timeout != 30*time.Second {
		t.Errorf("request values did not win: %+v %v", j.Config, j.Timeout)
	}
	if j.Credentials.OpenRouterKey != "req-key" || j.Credentials.AnthropicKey != "" {
		t.Errorf("request credentials did not replace the process's: %v", j.Credentials)
	}
	if s := (api.Request{Prompt: "p", AnthropicAPIKey: "sk-ant-secret"}).String(); strings.Contains(s, "secret") {
		t.Errorf("String shows the key: %s", s)
	}
}

// TestBudgetNarrows: a request may lower the host's budget, never raise it.
func TestBudgetNarrows(t *testing.T) {
	limits := config.DefaultLimits()
	limits.MaxBudgetUSD, limits.MaxModelRequests, limits.MaxOutputTokens = 2, 50, 100000
	m, err := NewManager(nil, limits, config.Project{}, gateway.Credentials{}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	j, err := m.Job(api.Request{Prompt: "p"})
	if err != nil || j.Budget != (gateway.Budget{MaxUSD: 2, MaxRequests: 50, MaxOutputTokens: 100000}) {
		t.Errorf("default budget %+v, %v", j.Budget, err)
	}
	if j, err = m.Job(api.Request{Prompt: "p", MaxBudgetUSD: 0.5}); err != nil || j.Budget.MaxUSD != 0.5 {
		t.Errorf("narrowed budget %+v, %v", j.Budget, err)
	}
	var fe *api.FieldError
	if _, err = m.Job(api.Request{Prompt: "p", MaxBudgetUSD: 5}); !errors.As(err, &fe) || fe.Field != "max_budget_usd" {
		t.Errorf("widening the budget: %v, want a max_budget_usd error", err)
	}
	if _, err = m.Job(api.Request{Prompt: "p", MaxBudgetUSD: -1}); !errors.As(err, &fe) || fe.Field != "max_budget_usd" {
		t.Errorf("negative budget: %v", err)
	}
}

func TestQueue(t *testing.T) {
	limits := config.DefaultLimits()
	limits.MaxConcurrentAgents, limits.QueueSize, limits.QueueWaitSeconds = 1, 1, 1
	m, err := NewManager(nil, limits, config.Project{}, gateway.Credentials{}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	release, err := m.slots.Acquire(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// One waits in the queue; the next finds it full.
	got := make(chan error, 1)
	queuedAt := make(chan int, 1)
	go func() {
		r, err := m.slots.Acquire(ctx, func(p int) { queuedAt <- p })
		if err == nil {
			r()
		}
		got <- err
	}()
	if p := <-queuedAt; p != 1 {
		t.Errorf("queue position %d", p)
	}
	if _, err := m.slots.Acquire(ctx, nil); !errors.Is(err, api.ErrBusy) {
		t.Errorf("full queue: got %v, want api.ErrBusy", err)
	}
	release()
	if err := <-got; err != nil {
		t.Errorf("queued request did not get the freed slot: %v", err)
	}
	// Waiting longer than queue_wait_seconds is busy too.
	release, _ = m.slots.Acquire(ctx, nil)
	defer release()
	if _, err := m.slots.Acquire(ctx, nil); !errors.Is(err, api.ErrBusy) {
		t.Errorf("wait ran out: got %v, want api.ErrBusy", err)
	}
}

func TestProviderForwarding(t *testing.T) {
	for _, k := range []string{"CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_FOUNDRY", "GOOGLE_APPLICATION_CREDENTIALS"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
	t.Setenv("ANTHROPIC_DEFAULT_SONNET_MODEL", "anthropic/claude-sonnet-4")
	bridge := config.DefaultLimits()
	bridge.NetworkMode = "bridge"

	// No provider: only the model aliases, never a cloud secret.
	env, files, err := forwardedEnv(bridge)
	if err != nil || strings.Contains(strings.Join(env, " "), "aws-secret") || len(files) != 0 || !slices.Contains(env, "ANTHROPIC_DEFAULT_SONNET_MODEL=anthropic/claude-sonnet-4") {
		t.Errorf("no provider: %v %v %v", env, files, err)
	}
	// Bedrock on: its settings and credentials go along, but only with egress.
	t.Setenv("CLAUDE_CODE_USE_BEDROCK", "1")
	if _, _, err := forwardedEnv(config.DefaultLimits()); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "network_mode: bridge") {
		t.Errorf("bedrock with network none: %v", err)
	}
	env, _, err = forwardedEnv(bridge)
	if err != nil || !slices.Contains(env, "CLAUDE_CODE_USE_BEDROCK=1") || !slices.Contains(env, "AWS_SECRET_ACCESS_KEY=aws-secret") {
		t.Errorf("bedrock: %v %v", env, err)
	}
	// Vertex on: the credentials file is copied into the workspace.
	t.Setenv("CLAUDE_CODE_USE_BEDROCK", "")
	t.Setenv("CLAUDE_CODE_USE_VERTEX", "1")
	gac := filepath.Join(t.TempDir(), "sa.json")
	os.WriteFile(gac, []byte(`{"type":"service_account"}`), 0o600)
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", gac)
	env, files, err = forwardedEnv(bridge)
	if err != nil || len(files) != 1 || string(files[0].Content) != `{"type":"service_account"}` ||
		!slices.Contains(env, "GOOGLE_APPLICATION_CREDENTIALS=/home/user/"+gcloudCredentials) {
		t.Errorf("vertex: %v %v %v", env, files, err)
	}
}

// TestQueueIsABound: many requests arriving at once never get more than
// the slots plus the queue; every other one is busy at once, also while the
// slots and the queue are being counted.
func TestQueueIsABound(t *testing.T) {
	const n, queue, arrivals = 2, 3, 40
	for round := 0; round < 5; round++ {
		s, err := NewSlots(t.TempDir(), n, queue, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var mu sync.Mutex
		acquired, queued, busy := 0, 0, 0
		var releases []func()
		var wg, decided sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < arrivals; i++ {
			wg.Add(1)
			decided.Add(1)
			go func() {
				defer wg.Done()
				<-start
				once := sync.OnceFunc(decided.Done)
				rel, err := s.Acquire(ctx, func(int) {
					mu.Lock()
					queued++
					mu.Unlock()
					once()
				})
				mu.Lock()
				switch {
				case err == nil:
					acquired++
					releases = append(releases, rel)
				case errors.Is(err, api.ErrBusy):
					busy++
				}
				mu.Unlock()
				once()
			}()
		}
		// Counting (as /health does) meanwhile must not disturb admission.
		counting := make(chan struct{})
		go func() {
			for {
				select {
				case <-counting:
					return
				default:
					s.Running()
					s.Waiting()
				}
			}
		}()
		close(start)
		decided.Wait()
		close(counting)
		mu.Lock()
		got := [3]int{acquired, queued, busy}
		mu.Unlock()
		if got != [3]int{n, queue, arrivals - n - queue} {
			t.Errorf("round %d: acquired %d, queued %d, busy %d; want %d, %d, %d", round, got[0], got[1], got[2], n, queue, arrivals-n-queue)
		}
		cancel()
		wg.Wait()
		for _, r := range releases {
			r()
		}
	}
}

// A request that leaves the queue frees its place at once.
func TestQueueLeave(t *testing.T) {
	s, err := NewSlots(t.TempDir(), 1, 1, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	release, err := s.Acquire(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ctx, leave := context.WithCancelCause(context.Background())
	inQueue := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := s.Acquire(ctx, func(int) { close(inQueue) })
		done <- err
	}()
	<-inQueue
	leave(errors.New("client disconnected"))
	if err := <-done; !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "client disconnected") {
		t.Errorf("leaving the queue: %v", err)
	}
	// The place is free again: the next request waits instead of being busy.
	ctx2, cancel := context.WithCancel(context.Background())
	defer cancel()
	again := make(chan struct{})
	go s.Acquire(ctx2, func(int) { close(again) })
	select {
	case <-again:
	case <-time.After(10 * time.Second):
		t.Error("the queue place of a request that left was not freed")
	}
}

// Slots fewer than before (a reload lowered max_concurrent_agents) count
// the higher ones still held: new runs wait until the running ones fit.
func TestSlotsLowered(t *testing.T) {
	dir := t.TempDir()
	wide, _ := NewSlots(dir, 3, 0, 0)
	var held []func()
	for range 3 {
		r := wide.try()
		if r == nil {
			t.Fatal("three slots of three: one not free")
		}
		held = append(held, r)
	}
	narrow, _ := NewSlots(dir, 2, 0, 0)
	held[0]()
	if r := narrow.try(); r != nil {
		t.Error("two of three held, two allowed: a slot was taken")
	}
	held[1]()
	r := narrow.try()
	if r == nil {
		t.Fatal("one of three held, two allowed: no slot")
	}
	r()
	held[2]()
}
