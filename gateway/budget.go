package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/sandstorm-dev/sandstorm/api"
)

// Budget bounds a session's model use at the gateway; its shape is the
// API's, in the model_usage event.
type Budget = api.Budget

// Usage is what a session's model calls used, summed from the usage each
// response reports (streamed or not); its shape is the API's, in the
// model_usage event.
type Usage = api.ModelUsage

// Price is the list price per million tokens, input and output, of a
// model, by family; an unknown model is priced as the dearest, so that a
// budget errs on the safe side. Cache writes cost 1.25 times input, reads 0.1.
func Price(model string) (in, out float64) {
	m := strings.ToLower(model)
	switch {
	case strings.Contains(m, "haiku"):
		return 1, 5
	case strings.Contains(m, "sonnet"):
		return 3, 15
	case strings.Contains(m, "opus-4-5"), strings.Contains(m, "opus-4.5"):
		return 5, 25
	}
	return 15, 75
}

// maxInFlight bounds a session's model calls at once. Each holds its worst
// case against the budget until it ends, so more would only be refused; the
// CLI overlaps at most a side call with its turn, so two never stall it.
const maxInFlight = 2

// bytesPerToken estimates a request's input tokens from its size: text runs
// near four bytes a token, so three covers it with a margin (cache writes,
// at 1.25 times input, included).
const bytesPerToken = 3

// defaultMaxTokens is the output reserved for a call that names no
// max_tokens: the most any current model writes.
const defaultMaxTokens = 128000

// meter keeps one session's usage against its budget.
type meter struct {
	mu     sync.Mutex
	budget Budget
	usage  Usage
	// held is the worst case of the calls in flight, in USD.
	held  float64
	slots chan struct{}
}

func newMeter() *meter { return &meter{slots: make(chan struct{}, maxInFlight)} }

func (m *meter) setBudget(b Budget) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.budget = b
}

// modelCall is a model call as asked: what its worst case is reckoned from.
type modelCall struct {
	model     string
	bodyBytes int
	maxTokens int64
}

// worst is the most the call can use: its input estimated from its size,
// and all the output it asks for.
func (c modelCall) worst() apiUsage {
	out := c.maxTokens
	if out <= 0 {
		out = defaultMaxTokens
	}
	return apiUsage{InputTokens: int64(c.bodyBytes+bytesPerToken-1) / bytesPerToken, OutputTokens: out}
}

// admit waits for one of the session's slots, then holds the call's worst
// case against the budget, or refuses it (and says why) when a bound is
// reached or the worst case does not fit what is left.
func (m *meter) admit(ctx context.Context, c modelCall) (*reservation, string, error) {
	select {
	case m.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, "", fmt.Errorf("gateway: waiting for a model call slot: %w", ctx.Err())
	}
	worst := cost(c.model, c.worst())
	m.mu.Lock()
	defer m.mu.Unlock()
	b, u := m.budget, m.usage
	why := ""
	switch {
	case b.MaxRequests > 0 && u.Requests >= b.MaxRequests:
		why = fmt.Sprintf("%d model requests, the run's limit", b.MaxRequests)
	case b.MaxOutputTokens > 0 && u.OutputTokens >= b.MaxOutputTokens:
		why = fmt.Sprintf("%d output tokens of %d", u.OutputTokens, b.MaxOutputTokens)
	case b.MaxUSD > 0 && u.CostUSD >= b.MaxUSD:
		why = fmt.Sprintf("$%.4f spent of $%.4f", u.CostUSD, b.MaxUSD)
	case b.MaxUSD > 0 && u.CostUSD+m.held+worst > b.MaxUSD:
		why = fmt.Sprintf("$%.4f spent and $%.4f held by calls in flight of $%.4f; this call may cost $%.4f", u.CostUSD, m.held, b.MaxUSD, worst)
	}
	if why != "" {
		m.usage.Exceeded = why
		<-m.slots
		return nil, why, nil
	}
	m.usage.Requests++
	m.held += worst
	return &reservation{m: m, call: c, held: worst}, "", nil
}

// reservation is an admitted call's hold on the budget and its slot, until
// it is settled.
type reservation struct {
	m    *meter
	call modelCall
	held float64
	once sync.Once
}

// settle replaces the hold by what the answer used, priced by the model the
// upstream names (the one asked for if it names none), and frees the slot.
// An answer cut before its final usage counts as the worst case: the
// upstream may have spent it all.
func (r *reservation) settle(model string, u apiUsage, complete bool) (Usage, bool) {
	if !complete {
		w := r.call.worst()
		if u == (apiUsage{}) {
			u.InputTokens = w.InputTokens
		}
		u.OutputTokens = max(u.OutputTokens, w.OutputTokens)
	}
	if model == "" {
		model = r.call.model
	}
	used := Usage{Requests: 1, InputTokens: u.InputTokens, OutputTokens: u.OutputTokens, CacheReadTokens: u.CacheReadTokens, CacheWriteTokens: u.CacheWriteTokens,
		CostUSD: cost(model, u)}
	settled := false
	r.once.Do(func() {
		settled = true
		m := r.m
		m.mu.Lock()
		m.held -= r.held
		m.usage.InputTokens += used.InputTokens
		m.usage.OutputTokens += used.OutputTokens
		m.usage.CacheReadTokens += used.CacheReadTokens
		m.usage.CacheWriteTokens += used.CacheWriteTokens
		m.usage.CostUSD += used.CostUSD
		m.mu.Unlock()
		<-m.slots
	})
	return used, settled
}

// release ends a call the upstream never answered: nothing used.
func (r *reservation) release() { r.settle("", apiUsage{}, true) }

// cost prices a usage at the model's list price.
func cost(model string, u apiUsage) float64 {
	in, out := Price(model)
	return (float64(u.InputTokens)*in + float64(u.CacheWriteTokens)*in*1.25 + float64(u.CacheReadTokens)*in*0.1 + float64(u.OutputTokens)*out) / 1e6
}

type apiUsage struct {
	InputTokens      int64 `json:"input_tokens"`
	OutputTokens     int64 `json:"output_tokens"`
	CacheReadTokens  int64 `json:"cache_read_input_tokens"`
	CacheWriteTokens int64 `json:"cache_creation_input_tokens"`
}

func (m *meter) snapshot() Usage {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.usage
}

// maxUsageJSON bounds how much of a non-streamed answer is kept to read its usage.
const maxUsageJSON = 4 << 20

// usageBody passes a response through unchanged, reading its usage and
// model on the way: from the message_start, message_delta and message_stop
// events of a stream, or from a whole JSON answer. done is told once, at
// the end or close, with whether the answer was whole (its final usage read).
type usageBody struct {
	rc       io.ReadCloser
	sse      bool
	partial  []byte
	whole    bytes.Buffer
	usage    apiUsage
	model    string
	complete bool
	done     func(model string, u apiUsage, complete bool)
	once     sync.Once
}

func (b *usageBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if b.sse {
		b.scan(p[:n])
	} else if b.whole.Len()+n <= maxUsageJSON {
		b.whole.Write(p[:n])
	}
	if err == io.EOF {
		b.finish()
	}
	return n, err
}

func (b *usageBody) Close() error {
	b.finish()
	return b.rc.Close()
}

// scan reads the complete "data:" lines of a server-sent event stream.
func (b *usageBody) scan(p []byte) {
	b.partial = append(b.partial, p...)
	for {
		i := bytes.IndexByte(b.partial, '\n')
		if i < 0 {
			break
		}
		line := bytes.TrimSpace(b.partial[:i])
		b.partial = b.partial[i+1:]
		data, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue
		}
		var ev struct {
			Type    string `json:"type"`
			Message struct {
				Model string   `json:"model"`
				Usage apiUsage `json:"usage"`
			} `json:"message"`
			Usage *apiUsage `json:"usage"`
		}
		if json.Unmarshal(bytes.TrimSpace(data), &ev) != nil {
			continue
		}
		switch ev.Type {
		case "message_start":
			b.usage, b.model = ev.Message.Usage, ev.Message.Model
		case "message_delta":
			// Output tokens so far, cumulative.
			if ev.Usage != nil {
				b.usage.OutputTokens = ev.Usage.OutputTokens
			}
		case "message_stop":
			b.complete = true
		}
	}
}

func (b *usageBody) finish() {
	b.once.Do(func() {
		if !b.sse {
			var msg struct {
				Model string    `json:"model"`
				Usage *apiUsage `json:"usage"`
			}
			if json.Unmarshal(b.whole.Bytes(), &msg) == nil && msg.Usage != nil {
				b.usage, b.model, b.complete = *msg.Usage, msg.Model, true
			}
		}
		b.done(b.model, b.usage, b.complete)
	})
}
