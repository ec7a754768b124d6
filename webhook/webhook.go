// Package webhook delivers signed run summaries to user-supplied URLs.
//
// A delivery is a JSON POST carrying a timestamp and an HMAC-SHA256 signature
// over "timestamp.body", so receivers can check both origin and freshness with
// Verify. Deliveries are retried with exponential backoff and, via Sender.Go,
// run in the background so they never hold up the run that produced them.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/sandstorm-dev/sandstorm/egress"
)

// Request headers set on every delivery.
const (
	HeaderTimestamp = "X-Sandstorm-Timestamp" // unix seconds
	HeaderSignature = "X-Sandstorm-Signature" // "sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body))
	HeaderEvent     = "X-Sandstorm-Event"     // EventRunFinished
)

// EventRunFinished is the HeaderEvent value sent when an agent run ends.
const EventRunFinished = "run.finished"

const (
	defaultAttempts = 5
	defaultBackoff  = time.Second
	maxBackoff      = time.Minute
	maxURLLen       = 2048
	// Enough of a response body to let the connection be reused; the
	// content itself is never used.
	drainLimit = 4 << 10
)

var (
	// ErrBadSignature means a received webhook is unsigned, malformed or
	// signed with a different secret or over a different body.
	ErrBadSignature = errors.New("webhook: bad signature")
	// ErrStale means a received webhook's timestamp is outside the allowed
	// age, so it may be a replay.
	ErrStale = errors.New("webhook: stale timestamp")
	// ErrClosed is the cause reported for deliveries cut short by Close.
	ErrClosed = errors.New("webhook: sender closed")
)

// Sign returns the HeaderSignature value for body sent at timestamp.
func Sign(secret []byte, timestamp int64, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(strconv.FormatInt(timestamp, 10)))
	mac.Write([]byte("."))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify checks a received webhook: the signature (constant-time) and that
// the timestamp is within maxAge of now, in either direction, to reject
// replays. It returns an error wrapping ErrBadSignature or ErrStale.
func Verify(secret []byte, h http.Header, body []byte, now time.Time, maxAge time.Duration) error {
	sig := h.Get(HeaderSignature)
	if sig == "" {
		return fmt.Errorf("%w: missing %s header", ErrBadSignature, HeaderSignature)
	}
	raw := h.Get(HeaderTimestamp)
	if raw == "" {
		return fmt.Errorf("%w: missing %s header", ErrBadSignature, HeaderTimestamp)
	}
	ts, err := strconv.ParseInt(raw, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: malformed %s header", ErrBadSignature, HeaderTimestamp)
	}
	if !hmac.Equal([]byte(sig), []byte(Sign(secret, ts, body))) {
		return ErrBadSignature
	}
	// Checked after the signature so only authentic timestamps are judged.
	if age := now.Sub(time.Unix(ts, 0)); age > maxAge || age < -maxAge {
		return fmt.Errorf("%w: %s old, limit %s", ErrStale, age, maxAge)
	}
	return nil
}

// ValidURL checks a webhook URL as a request may give it: absolute http or
// https, with a host, at most 2048 chars. Errors never echo the URL, which
// may carry credentials.
func ValidURL(u string) error {
	if len(u) > maxURLLen {
		return fmt.Errorf("webhook url is too long: %d chars, limit %d", len(u), maxURLLen)
	}
	p, err := url.Parse(u)
	if err != nil {
		// The parse error quotes the URL, so it is dropped.
		return errors.New("webhook url is malformed")
	}
	if !p.IsAbs() {
		return errors.New("webhook url must be absolute")
	}
	if p.Scheme != "http" && p.Scheme != "https" {
		return fmt.Errorf("webhook url scheme %q is not allowed, use http or https", p.Scheme)
	}
	if p.Hostname() == "" {
		return errors.New("webhook url has no host")
	}
	return nil
}

// Sender delivers webhooks. Set its fields before first use; a Sender must
// not be copied after that.
type Sender struct {
	Secret   []byte        // empty: unsigned (no signature header), still timestamped
	Client   *http.Client  // default: 10s timeout, no redirects followed (a redirect is a failure), internal addresses refused (Allow)
	Attempts int           // default 5
	Backoff  time.Duration // first retry delay, doubled each time, capped at 1 minute; default 1s
	Logger   *slog.Logger  // default: slog.Default()
	// Allow are the internal addresses deliveries may reach (receivers on
	// this host or its network). Every other address that egress.Internal
	// names is refused where the connection is made, after the name is
	// resolved: a run's webhook URL must not make sandstorm POST to this
	// host's services, its network or a cloud metadata address. It applies
	// to the default client only.
	Allow []netip.Prefix

	initOnce sync.Once
	guarded  *http.Client    // the default client, refusing internal addresses
	ctx      context.Context // cancelled by Close to cut waiting and in-flight retries
	cancel   context.CancelCauseFunc

	mu     sync.Mutex // guards closed against wg.Add racing Close's Wait
	closed bool
	wg     sync.WaitGroup
}

func (s *Sender) init() {
	s.initOnce.Do(func() {
		s.ctx, s.cancel = context.WithCancelCause(context.Background())
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, Control: s.control}).DialContext
		s.guarded = &http.Client{
			Timeout:   10 * time.Second,
			Transport: t,
			// A redirect is a failure: following one would re-POST the
			// signed body to a host the user never configured.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	})
}

// ErrInternal: a delivery was to connect to an internal address that
// Allow does not list.
var ErrInternal = errors.New("webhook: internal address")

// control refuses a connection to an internal address that Allow does not
// list; it sees the address being connected to, whatever name led there.
func (s *Sender) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInternal, address, err)
	}
	addr := ap.Addr().Unmap()
	class := egress.Internal(addr)
	if class == "" || slices.ContainsFunc(s.Allow, func(p netip.Prefix) bool { return p.Contains(addr) }) {
		return nil
	}
	return fmt.Errorf("%w: %s is %s, which webhooks reach only when webhook_allow lists it", ErrInternal, addr, class)
}

// Deliver POSTs body to url until it succeeds (2xx) or attempts run out.
// 5xx, 429 and network errors are retried, honouring Retry-After seconds on
// 429/503; other statuses, including redirects, are not. Each attempt is
// re-signed with a fresh timestamp. It returns nil or the last error; ctx or
// Close end it early.
func (s *Sender) Deliver(ctx context.Context, url string, body []byte) error {
	_, _, err := s.deliver(ctx, url, body)
	return err
}

// deliver is Deliver, also reporting attempts made and the last HTTP status
// (0 if none) for Go's log line.
func (s *Sender) deliver(ctx context.Context, rawURL string, body []byte) (int, int, error) {
	if err := ValidURL(rawURL); err != nil {
		return 0, 0, err
	}
	s.init()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(s.ctx, func() { cancel(context.Cause(s.ctx)) })()

	limit := s.Attempts
	if limit <= 0 {
		limit = defaultAttempts
	}
	base := s.Backoff
	if base <= 0 {
		base = defaultBackoff
	}
	safeURL := redact(rawURL)
	for attempt := 1; ; attempt++ {
		status, retryAfter, err := s.attempt(ctx, rawURL, safeURL, body)
		if err == nil {
			return attempt, status, nil
		}
		// A refused address stays refused: no retry.
		if !retryable(status) || attempt == limit || errors.Is(err, ErrInternal) {
			return attempt, status, err
		}
		d := nextDelay(base, attempt, retryAfter)
		s.logger().Debug("webhook attempt failed, retrying",
			"url", safeURL, "attempt", attempt, "status", status, "delay", d, "err", err)
		if werr := wait(ctx, d); werr != nil {
			return attempt, status, fmt.Errorf("%w after %d attempts: %w", werr, attempt, err)
		}
	}
}

// attempt makes one signed POST. retryAfter is set only for statuses where
// the spec gives it retry meaning (429, 503).
func (s *Sender) attempt(ctx context.Context, rawURL, safeURL string, body []byte) (status int, retryAfter string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, bytes.NewReader(body))
	if err != nil {
		return 0, "", fmt.Errorf("webhook: build request for %s: %w", safeURL, unwrapURLError(err))
	}
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderEvent, EventRunFinished)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	if len(s.Secret) > 0 {
		req.Header.Set(HeaderSignature, Sign(s.Secret, ts, body))
	}
	client := s.Client
	if client == nil {
		client = s.guarded
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("webhook: post %s: %w", safeURL, unwrapURLError(err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, drainLimit))

	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		return code, "", nil
	case code >= 300 && code < 400:
		return code, "", fmt.Errorf("webhook: post %s: status %d (redirects are not followed)", safeURL, code)
	case code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable:
		retryAfter = resp.Header.Get("Retry-After")
	}
	return code, retryAfter, fmt.Errorf("webhook: post %s: status %d", safeURL, code)
}

// Go delivers in the background, logging the outcome. It never blocks; after
// Close it drops the delivery with a warning.
func (s *Sender) Go(url string, body []byte) {
	safeURL := redact(url)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.logger().Warn("webhook dropped, sender closed", "url", safeURL)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.wg.Done()
		attempts, status, err := s.deliver(context.Background(), url, body)
		if err != nil {
			s.logger().Warn("webhook delivery failed",
				"url", safeURL, "attempts", attempts, "status", status, "err", err)
			return
		}
		s.logger().Info("webhook delivered", "url", safeURL, "attempts", attempts, "status", status)
	}()
}

// Close waits up to grace for background deliveries to finish, then cuts the
// rest (waiting retries and in-flight attempts) and waits for them to return.
// Later calls to Go are dropped.
func (s *Sender) Close(grace time.Duration) {
	s.init()
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	s.cancel(ErrClosed)
	<-done
}

func (s *Sender) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// retryable reports whether a failed attempt may succeed later: network
// errors (status 0), server errors and rate limiting.
func retryable(status int) bool {
	return status == 0 || status >= 500 || status == http.StatusTooManyRequests
}

// nextDelay is the wait before retry n (1-based): base doubled per retry, or
// the server's Retry-After seconds, both capped at maxBackoff.
func nextDelay(base time.Duration, n int, retryAfter string) time.Duration {
	if secs, err := strconv.Atoi(retryAfter); err == nil && secs >= 0 {
		// min before multiplying so huge values cannot overflow.
		return time.Duration(min(secs, int(maxBackoff/time.Second))) * time.Second
	}
	d := base
	for i := 1; i < n && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, maxBackoff)
}

// wait sleeps for d or until ctx ends, returning ctx's cause in that case.
func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// unwrapURLError drops net/http's *url.Error wrapper, whose message quotes
// the full URL including its query.
func unwrapURLError(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return ue.Err
	}
	return err
}

// redact returns u without userinfo, query or fragment, which may hold
// tokens, for logs and errors.
func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(invalid url)"
	}
	p.User = nil
	p.RawQuery = ""
	p.ForceQuery = false
	p.Fragment = ""
	p.RawFragment = ""
	return p.String()
}
