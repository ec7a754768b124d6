package gateway

import (
	"bytes"
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

// meter keeps one session's usage against its budget.
type meter struct {
	mu     sync.Mutex
	budget Budget
	usage  Usage
}

func (m *meter) setBudget(b Budget) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.budget = b
}

// admit counts a call about to be made, or refuses it (and says why) when a
// bound is already reached.
func (m *meter) admit() (string, bool) {
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
	}
	if why != "" {
		m.usage.Exceeded = why
		return why, false
	}
	m.usage.Requests++
	return "", true
}

type apiUsage struct {
	InputTokens      int64 `json:"input_tokens"`
	OutputTokens     int64 `json:"output_tokens"`
	CacheReadTokens  int64 `json:"cache_read_input_tokens"`
	CacheWriteTokens int64 `json:"cache_creation_input_tokens"`
}

// add counts one answer's usage and returns it, priced.
func (m *meter) add(model string, u apiUsage) Usage {
	in, out := Price(model)
	call := Usage{Requests: 1, InputTokens: u.InputTokens, OutputTokens: u.OutputTokens, CacheReadTokens: u.CacheReadTokens, CacheWriteTokens: u.CacheWriteTokens,
		CostUSD: (float64(u.InputTokens)*in + float64(u.CacheWriteTokens)*in*1.25 + float64(u.CacheReadTokens)*in*0.1 + float64(u.OutputTokens)*out) / 1e6}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.usage.InputTokens += call.InputTokens
	m.usage.OutputTokens += call.OutputTokens
	m.usage.CacheReadTokens += call.CacheReadTokens
	m.usage.CacheWriteTokens += call.CacheWriteTokens
	m.usage.CostUSD += call.CostUSD
	return call
}

func (m *meter) snapshot() Usage {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.usage
}

// maxUsageJSON bounds how much of a non-streamed answer is kept to read its usage.
const maxUsageJSON = 4 << 20

// usageBody passes a response through unchanged, reading its usage on the
// way: from the message_start and message_delta events of a stream, or
// from a whole JSON answer. The usage is added once, at the end or close.
type usageBody struct {
	rc      io.ReadCloser
	sse     bool
	partial []byte
	whole   bytes.Buffer
	usage   apiUsage
	done    func(apiUsage)
	once    sync.Once
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
				Usage apiUsage `json:"usage"`
			} `json:"message"`
			Usage *apiUsage `json:"usage"`
		}
		if json.Unmarshal(bytes.TrimSpace(data), &ev) != nil {
			continue
		}
		switch ev.Type {
		case "message_start":
			b.usage = ev.Message.Usage
		case "message_delta":
			// Output tokens so far, cumulative.
			if ev.Usage != nil {
				b.usage.OutputTokens = ev.Usage.OutputTokens
			}
		}
	}
}

func (b *usageBody) finish() {
	b.once.Do(func() {
		if !b.sse {
			var msg struct {
				Usage apiUsage `json:"usage"`
			}
			if json.Unmarshal(b.whole.Bytes(), &msg) == nil {
				b.usage = msg.Usage
			}
		}
		b.done(b.usage)
	})
}
