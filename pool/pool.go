// Package pool keeps warm sandboxes: started ahead of the requests, their
// runner up and the SDK loaded, waiting for a run. Each member is used
// once and removed after its run; the pool refills in the background, a
// member at a time per refill slot, and only with a host slot nobody waits
// for, so refills never stand before a request.
package pool

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/api"
)

// Config sizes a pool.
type Config struct {
	// Size is how many members are kept ready (0: no pool).
	Size int
	// MaxRefill is how many members are started at once (default 1).
	MaxRefill int
}

// Member is a warm sandbox and the host slot it holds.
type Member struct {
	*agent.Member
	// Release frees its slot; its run takes it over.
	Release func()
}

// Pool keeps Size members of one kind (the runner's, with job's options).
type Pool struct {
	cfg    Config
	runner *agent.Launcher
	job    agent.Job
	// spare takes a host slot when one is free and nobody waits for one.
	spare func() (release func())
	log   *slog.Logger

	mu        sync.Mutex
	ready     []Member
	refilling int
	failures  int
	retryAt   time.Time
	// quietUntil holds refills back while a claimed member's run starts.
	quietUntil time.Time
	closed     bool
	wake       chan struct{}
	wg         sync.WaitGroup
	stop       context.CancelFunc
}

// refillPoll is how often a pool short of members looks for a free slot.
const refillPoll = 250 * time.Millisecond

// maxBackoff bounds the pause after refills that failed.
const maxBackoff = time.Minute

// refillQuiet is how long a claim holds refills back: a warm run's CLI
// turns the prompt into its first model request in about 150 ms (p90
// 250 ms), and a sandbox starting meanwhile takes the CPU it needs on a
// small host. The pool is full again that much later.
const refillQuiet = 300 * time.Millisecond

// New makes a pool; Start fills it.
func New(cfg Config, runner *agent.Launcher, job agent.Job, spare func() func(), log *slog.Logger) *Pool {
	if cfg.MaxRefill < 1 {
		cfg.MaxRefill = 1
	}
	if log == nil {
		log = slog.Default()
	}
	return &Pool{cfg: cfg, runner: runner, job: job, spare: spare, log: log, wake: make(chan struct{}, 1)}
}

// Start fills the pool and keeps it full until Close.
func (p *Pool) Start(ctx context.Context) {
	ctx, p.stop = context.WithCancel(context.WithoutCancel(ctx))
	p.wg.Add(1)
	go p.refill(ctx)
}

func (p *Pool) refill(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(refillPoll)
	defer t.Stop()
	for {
		p.startMembers(ctx)
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-t.C:
		}
	}
}

// startMembers starts as many members as the pool lacks, the refill
// bound and the free slots allow.
func (p *Pool) startMembers(ctx context.Context) {
	for {
		p.mu.Lock()
		now := time.Now()
		short := !p.closed && len(p.ready)+p.refilling < p.cfg.Size && p.refilling < p.cfg.MaxRefill && !now.Before(p.retryAt) && !now.Before(p.quietUntil)
		p.mu.Unlock()
		if !short {
			return
		}
		release := p.spare()
		if release == nil {
			return
		}
		p.mu.Lock()
		p.refilling++
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			m, err := p.runner.Warm(ctx, p.job)
			p.mu.Lock()
			p.refilling--
			if err != nil {
				p.failures++
				backoff := min(time.Second<<min(p.failures-1, 6), maxBackoff)
				p.retryAt = time.Now().Add(backoff)
				closed, failures := p.closed, p.failures
				p.mu.Unlock()
				release()
				if !closed {
					p.log.Warn("warm pool: starting a sandbox failed; retrying later", "err", err, "failures", failures, "retry_in", backoff)
				}
				return
			}
			p.failures, p.retryAt = 0, time.Time{}
			if p.closed {
				p.mu.Unlock()
				p.discard(Member{m, release})
				return
			}
			p.ready = append(p.ready, Member{m, release})
			p.mu.Unlock()
		}()
	}
}

func (p *Pool) discard(m Member) {
	if err := m.Remove(context.Background()); err != nil {
		p.log.Warn("warm pool: remove a sandbox", "sandbox", m.ID(), "err", err)
	}
	m.Release()
}

func (p *Pool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Claim takes a ready member, the oldest first; ok is false when none is.
// Members whose runner stopped waiting (their process died) are removed.
func (p *Pool) Claim() (Member, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.ready) > 0 {
		m := p.ready[0]
		p.ready = p.ready[1:]
		if m.Ready() {
			p.quietUntil = time.Now().Add(refillQuiet)
			time.AfterFunc(refillQuiet, p.poke)
			return m, true
		}
		p.poke()
		p.log.Warn("warm pool: a sandbox's runner stopped waiting; removing it", "sandbox", m.ID())
		p.wg.Add(1)
		go func() { defer p.wg.Done(); p.discard(m) }()
	}
	return Member{}, false
}

// Evict removes a ready member to free its slot for a request no member
// fits; it reports whether there was one.
func (p *Pool) Evict() bool {
	p.mu.Lock()
	if len(p.ready) == 0 {
		p.mu.Unlock()
		return false
	}
	m := p.ready[len(p.ready)-1]
	p.ready = p.ready[:len(p.ready)-1]
	p.mu.Unlock()
	p.discard(m)
	return true
}

// Stats reports the pool's state.
func (p *Pool) Stats() api.PoolHealth {
	p.mu.Lock()
	defer p.mu.Unlock()
	return api.PoolHealth{Size: p.cfg.Size, Ready: len(p.ready), Refilling: p.refilling}
}

// Close stops refilling, removes every ready member and waits for members
// being started (which are removed too).
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	if p.stop != nil {
		p.stop()
	}
	var wg sync.WaitGroup
	for _, m := range ready {
		wg.Add(1)
		go func() { defer wg.Done(); p.discard(m) }()
	}
	wg.Wait()
	p.wg.Wait()
}
