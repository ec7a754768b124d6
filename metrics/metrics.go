// Package metrics is what sandstorm counts for Prometheus: runs and their
// outcomes, sandbox lifecycle latencies, slots, queue and pool, the model
// gateway's requests, tokens and cost, egress decisions and what sweeps
// reaped. Labels are bounded sets (backend, outcome, step, ...): never a
// prompt, a path, a host name or a secret. Every method of a nil *Metrics
// does nothing, so code that counts need not ask whether anyone listens.
package metrics

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/gateway"
)

// Namespace prefixes every metric.
const Namespace = "sandstorm"

// Buckets for latencies from milliseconds (a warm hand-off) to minutes (a
// long run).
var (
	fastBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	runBuckets  = []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}
)

// Metrics holds sandstorm's collectors in a registry of their own.
type Metrics struct {
	reg             *prometheus.Registry
	runsStarted     *prometheus.CounterVec
	runsFinished    *prometheus.CounterVec
	runDuration     *prometheus.HistogramVec
	firstMessage    *prometheus.HistogramVec
	sandboxStep     *prometheus.HistogramVec
	queueWait       prometheus.Histogram
	gatewayRequests *prometheus.CounterVec
	upstreamErrors  prometheus.Counter
	tokens          *prometheus.CounterVec
	cost            prometheus.Counter
	egress          *prometheus.CounterVec
	reaped          *prometheus.CounterVec

	mu      sync.Mutex
	backend string
	state   func() api.Health
}

// New makes the collectors, with Go's and the process's own.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := factory{m.reg}
	m.runsStarted = f.counterVec("runs_started_total", "Runs that got a slot and started, by backend.", "backend")
	m.runsFinished = f.counterVec("runs_finished_total", "Runs that ended, by backend and outcome (succeeded, failed, cancelled, timeout, interrupted).", "backend", "outcome")
	m.runDuration = f.histogramVec("run_duration_seconds", "From a run's start to its end, by backend and outcome.", runBuckets, "backend", "outcome")
	m.firstMessage = f.histogramVec("run_first_message_seconds", "From a run's start to its first SDK message, by backend and whether its sandbox was warm.", fastBuckets, "backend", "warm")
	m.sandboxStep = f.histogramVec("sandbox_step_seconds", "How long each sandbox step took (create, start, remove), by backend.", fastBuckets, "backend", "step")
	m.queueWait = f.histogram("queue_wait_seconds", "How long a request waited for a host slot (0 when one was free).", runBuckets)
	m.gatewayRequests = f.counterVec("gateway_requests_total", "Model API calls through the gateway, by status class (2xx, 4xx, 5xx).", "status")
	m.upstreamErrors = f.counter("gateway_upstream_errors_total", "Model API calls the gateway could not pass to the provider.")
	m.tokens = f.counterVec("model_tokens_total", "Tokens the model's answers reported, by kind (input, output, cache_read, cache_write).", "kind")
	m.cost = f.counter("model_cost_usd_total", "Model spend at list prices, summed from the answers' usage.")
	m.egress = f.counterVec("egress_connections_total", "Sandbox connections through the egress proxy, by decision (allow, deny).", "decision")
	m.reaped = f.counterVec("reaped_total", "What sweeps removed of crashed sandstorm processes, by kind (sandbox, session).", "kind")
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), &stateCollector{m})
	return m
}

type factory struct{ reg *prometheus.Registry }

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: name, Help: help, Buckets: buckets})
	f.reg.MustRegister(h)
	return h
}

func (f factory) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: name, Help: help, Buckets: buckets}, labels)
	f.reg.MustRegister(h)
	return h
}

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Watch names the backend runs use unless their events say otherwise, and
// reads slots, queue, pool and backend state from state at every scrape.
func (m *Metrics) Watch(backend string, state func() api.Health) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.backend, m.state = bounded(backend, "unknown"), state
	m.mu.Unlock()
}

// QueueWait counts a request that waited d for its slot.
func (m *Metrics) QueueWait(d time.Duration) {
	if m != nil {
		m.queueWait.Observe(d.Seconds())
	}
}

// ModelCall counts a Messages API call the gateway answered with status.
func (m *Metrics) ModelCall(status int) {
	if m == nil {
		return
	}
	class := "5xx"
	switch {
	case status < 300:
		class = "2xx"
	case status < 400:
		class = "3xx"
	case status < 500:
		class = "4xx"
	}
	m.gatewayRequests.WithLabelValues(class).Inc()
}

// UpstreamError counts a call that never reached the provider.
func (m *Metrics) UpstreamError() {
	if m != nil {
		m.upstreamErrors.Inc()
	}
}

// Usage adds one answer's tokens and its cost.
func (m *Metrics) Usage(u gateway.Usage) {
	if m == nil {
		return
	}
	for kind, n := range map[string]int64{"input": u.InputTokens, "output": u.OutputTokens, "cache_read": u.CacheReadTokens, "cache_write": u.CacheWriteTokens} {
		m.tokens.WithLabelValues(kind).Add(float64(n))
	}
	m.cost.Add(u.CostUSD)
}

// Reaped counts n objects of kind ("sandbox", "session") a sweep removed.
func (m *Metrics) Reaped(kind string, n int) {
	if m != nil && n > 0 {
		m.reaped.WithLabelValues(kind).Add(float64(n))
	}
}

// Run watches one run's events, from its start.
func (m *Metrics) Run() *Run {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return &Run{m: m, start: time.Now(), backend: cmp.Or(m.backend, "unknown")}
}

// Run is one run's view: its backend and warmth come from its events.
type Run struct {
	m        *Metrics
	start    time.Time
	backend  string
	warm     string
	started  bool
	messaged bool
}

// sdkTypes are the types of the SDK's messages (system, assistant, user,
// result), as against sandstorm's own events.
var sdkTypes = []string{"system", "assistant", "user", "result"}

// Event reads one event of the run; only the kinds counted are decoded whole.
func (r *Run) Event(ev json.RawMessage) {
	if r == nil {
		return
	}
	switch typ := api.TypeOf(ev); {
	case typ == api.TypeSandbox:
		var e api.SandboxEvent
		if json.Unmarshal(ev, &e) != nil {
			return
		}
		r.backend = bounded(e.Runtime, r.backend)
		switch e.Event {
		case api.SandboxCreated:
			r.warm = "false"
			if e.Warm != nil && *e.Warm {
				r.warm = "true"
			}
			if !r.started {
				r.started = true
				r.m.runsStarted.WithLabelValues(r.backend).Inc()
			}
			fallthrough
		case api.SandboxStarted, api.SandboxRemoved:
			r.m.sandboxStep.WithLabelValues(r.backend, stepOf(e.Event)).Observe(float64(e.DurationMS) / 1000)
		}
	case typ == egress.TypeEvent:
		var e egress.Event
		if json.Unmarshal(ev, &e) == nil && (e.Decision == egress.Allow || e.Decision == egress.Deny) {
			r.m.egress.WithLabelValues(e.Decision).Inc()
		}
	case !r.messaged && slices.Contains(sdkTypes, typ):
		r.messaged = true
		r.m.firstMessage.WithLabelValues(r.backend, r.warm).Observe(time.Since(r.start).Seconds())
	}
}

// backends are the label values a backend may have, so the label set
// stays bounded.
var backends = []string{"containerd", "docker", "podman", "kubernetes"}

// bounded is name if it is a backend's, otherwise or.
func bounded(name, or string) string {
	if slices.Contains(backends, name) {
		return name
	}
	return or
}

func stepOf(event string) string {
	if event == api.SandboxCreated {
		return "create"
	}
	if event == api.SandboxStarted {
		return "start"
	}
	return "remove"
}

// Finish counts the run's end with its outcome.
func (r *Run) Finish(outcome string) {
	if r == nil {
		return
	}
	r.m.runsFinished.WithLabelValues(r.backend, outcome).Inc()
	r.m.runDuration.WithLabelValues(r.backend, outcome).Observe(time.Since(r.start).Seconds())
}

// stateCollector reports the engine's state at each scrape.
type stateCollector struct{ m *Metrics }

var (
	upDesc        = desc("backend_up", "1 when the container backend answers, 0 when it does not.", "backend")
	slotsDesc     = desc("slots_in_use", "Runs of this server holding a host slot.")
	slotsMaxDesc  = desc("slots_max", "max_concurrent_agents: host slots shared by every sandstorm process.")
	queueDesc     = desc("queue_depth", "Requests waiting for a host slot.")
	poolDesc      = desc("pool_size", "Warm sandboxes the pool keeps.")
	poolReadyDesc = desc("pool_ready", "Warm sandboxes ready for a request.")
	poolRefDesc   = desc("pool_refilling", "Warm sandboxes being started.")
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{upDesc, slotsDesc, slotsMaxDesc, queueDesc, poolDesc, poolReadyDesc, poolRefDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	state := c.m.state
	c.m.mu.Unlock()
	if state == nil {
		return
	}
	h := state()
	up := 0.0
	if h.Status == api.HealthOK {
		up = 1
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(upDesc, up, h.Backend)
	gauge(slotsDesc, float64(h.Running))
	gauge(slotsMaxDesc, float64(h.MaxConcurrentAgents))
	gauge(queueDesc, float64(h.Queued))
	if p := h.Pool; p != nil {
		gauge(poolDesc, float64(p.Size))
		gauge(poolReadyDesc, float64(p.Ready))
		gauge(poolRefDesc, float64(p.Refilling))
	}
}
