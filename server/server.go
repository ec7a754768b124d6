// Package server is sandstorm's HTTP API (fiber): POST /query streams one
// agent run as Server-Sent Events, POST /runs starts one detached, the
// /runs routes list, follow, cancel and delete runs and serve the files
// they made, GET /health reports the backend. It runs requests through the
// run service and knows nothing of backends.
package server

import (
	"bufio"
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/gofiber/fiber/v2/middleware/cors"
	"github.com/gofiber/fiber/v2/utils"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/dashboard"
	"github.com/sandstorm-dev/sandstorm/errcode"
	"github.com/sandstorm-dev/sandstorm/internal/logctx"
	"github.com/sandstorm-dev/sandstorm/runs"
)

// openAPI is the API's OpenAPI 3.1 document, served at GET /openapi.json;
// TestOpenAPI keeps it true to the routes and types.
//
//go:embed openapi.json
var openAPI []byte

// BodyLimit bounds a request body: a maximal prompt plus maximal files fit.
const BodyLimit = 24 << 20

// KeepAlive is how often an idle stream gets a comment, so proxies and
// clients keep the connection open.
const KeepAlive = 15 * time.Second

// DefaultWriteTimeout is how long a stream may wait for a client that
// stopped reading before the client is cut.
const DefaultWriteTimeout = 30 * time.Second

// Config configures a Server.
type Config struct {
	// CORSOrigins is a comma-separated list of origins whose pages may use
	// the API; empty means same-origin only, "*" any (only when set so).
	CORSOrigins string
	// APIKeys, when set, are required as Authorization: Bearer <key> on
	// every route Routes does not mark Public (several, so keys can be
	// rotated).
	APIKeys []string
	// WriteTimeout cuts a client that accepts no stream data for this long
	// (its run is cancelled and removed, as on a disconnect); default
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// Host is the address ds serve listens on (--host): without APIKeys,
	// only a request whose Host header names it, localhost or an IP
	// address is let in.
	Host string
	// Metrics is served at GET /metrics (behind the API keys); without
	// it the route answers 404.
	Metrics http.Handler
	Logger  *slog.Logger
}

// Server serves one engine.
type Server struct {
	app *fiber.App
	eng api.Engine
	svc *runs.Service
	log *slog.Logger
	// base is cancelled when shutdown's grace period is over: every run still
	// going is then cancelled and cleaned up.
	base         context.Context
	cancel       context.CancelCauseFunc
	runs         sync.WaitGroup
	writeTimeout time.Duration
	keys         [][]byte
	origins      []string
	host         string
	// ui serves the dashboard's files, prometheus Config.Metrics.
	ui, prometheus fiber.Handler
}

// New builds the server over svc, whose engine is eng.
func New(eng api.Engine, svc *runs.Service, cfg Config) *Server {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{eng: eng, svc: svc, log: log, writeTimeout: cfg.WriteTimeout, host: cfg.Host, ui: adaptor.HTTPHandler(dashboard.Handler())}
	if cfg.Metrics == nil {
		cfg.Metrics = http.NotFoundHandler()
	}
	s.prometheus = adaptor.HTTPHandler(cfg.Metrics)
	if s.writeTimeout <= 0 {
		s.writeTimeout = DefaultWriteTimeout
	}
	s.base, s.cancel = context.WithCancelCause(context.Background())
	s.app = fiber.New(fiber.Config{
		BodyLimit:             BodyLimit,
		DisableStartupMessage: true,
		ErrorHandler:          s.errorHandler,
		// Streams end when the run does; no idle timeout may cut them.
		IdleTimeout: 2 * time.Minute,
		// File paths are matched decoded, as their file events escaped them.
		UnescapePath: true,
		// No proxy is trusted: X-Forwarded-Host and -Proto would otherwise
		// let any client name the Host and scheme the checks below compare.
		EnableTrustedProxyCheck: true,
	})
	for _, k := range cfg.APIKeys {
		s.keys = append(s.keys, []byte(k))
	}
	for _, o := range strings.Split(cfg.CORSOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			s.origins = append(s.origins, o)
		}
	}
	// A page of another origin gets nothing, before anything runs: browsers
	// send "simple" cross-origin POSTs without asking first.
	s.app.Use(s.checkHost, s.checkOrigin)
	if len(s.origins) > 0 {
		s.app.Use(cors.New(cors.Config{AllowOrigins: strings.Join(s.origins, ","), AllowHeaders: "Content-Type, Authorization"}))
	}
	s.app.Use(requestID)
	s.route()
	return s
}

// Serve serves on l until Shutdown.
func (s *Server) Serve(l net.Listener) error { return s.app.Listener(l) }

// Shutdown stops accepting requests, lets runs finish for up to grace, then
// cancels the rest and waits until their sandboxes are removed.
func (s *Server) Shutdown(grace time.Duration) error {
	done := make(chan struct{})
	go func() { s.runs.Wait(); s.svc.Wait(); close(done) }()
	errc := make(chan error, 1)
	go func() { errc <- s.app.ShutdownWithTimeout(grace + 30*time.Second) }()
	select {
	case <-done:
	case <-time.After(grace):
		s.log.Warn("shutdown: grace period over, cancelling runs still going and requests still queued")
		s.cancel(api.ErrShuttingDown)
		<-done
	}
	s.cancel(api.ErrShuttingDown)
	return <-errc
}

// requestID names the request (the client's X-Request-Id when it is a
// sane one) in its response and in every log line written for it.
func requestID(c *fiber.Ctx) error {
	// A copy: the context outlives the handler (streams, detached runs).
	id := strings.Clone(c.Get(fiber.HeaderXRequestID))
	if !validRequestID(id) {
		id = utils.UUIDv4()
	}
	c.Set(fiber.HeaderXRequestID, id)
	c.SetUserContext(logctx.With(c.UserContext(), "request_id", id))
	return c.Next()
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// life is the context of what a request starts: the server's lifetime,
// with the request's log attributes.
func (s *Server) life(c *fiber.Ctx) context.Context {
	return logctx.With(s.base, logctx.Args(c.UserContext())...)
}

// checkHost refuses, on a server without keys, a request whose Host names
// neither localhost nor the address it listens on: a page whose own name
// was made to resolve to this server (DNS rebinding) is then same-origin
// and would drive it with the operator's model key. An IP address in Host
// cannot have been rebound.
func (s *Server) checkHost(c *fiber.Ctx) error {
	if len(s.keys) > 0 || s.knownHost(c.Hostname()) {
		return c.Next()
	}
	return c.Status(fiber.StatusForbidden).JSON(apiError{Error: api.CodeForbidden,
		Message: fmt.Sprintf("Host %q is not this server's (a server without API keys answers only localhost, an IP address or --host)", c.Hostname())})
}

func (s *Server) knownHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return true
	}
	return host != "" && (strings.EqualFold(host, "localhost") || strings.EqualFold(host, s.host))
}

// checkOrigin refuses a request whose Origin is neither this server nor
// allowed by CORSOrigins.
func (s *Server) checkOrigin(c *fiber.Ctx) error {
	origin := c.Get(fiber.HeaderOrigin)
	if origin == "" || origin == c.Protocol()+"://"+c.Hostname() || slices.Contains(s.origins, "*") || slices.Contains(s.origins, origin) {
		return c.Next()
	}
	return writeError(c, fmt.Errorf("%w: %s", api.ErrForbiddenOrigin, origin))
}

// checkKey lets through only a request with a valid key, when keys are
// set; route puts it before every route that is not public.
func (s *Server) checkKey(c *fiber.Ctx) error {
	if s.authorized(c) {
		return c.Next()
	}
	return writeError(c, api.ErrUnauthorized)
}

func (s *Server) authorized(c *fiber.Ctx) bool {
	if len(s.keys) == 0 {
		return true
	}
	got, ok := strings.CutPrefix(c.Get(fiber.HeaderAuthorization), "Bearer ")
	if !ok {
		return false
	}
	match := 0
	for _, k := range s.keys {
		match |= subtle.ConstantTimeCompare([]byte(got), k)
	}
	return match == 1
}

// apiError is every error body: a code, the field at fault if any, a message.
type apiError struct {
	Error   api.Code `json:"error"`
	Field   string   `json:"field,omitempty"`
	Message string   `json:"message"`
}

func (s *Server) errorHandler(c *fiber.Ctx, err error) error {
	var fe *fiber.Error
	if errors.As(err, &fe) {
		code := api.CodeHTTPError
		if fe.Code == fiber.StatusRequestEntityTooLarge {
			code = api.CodeTooLarge
		}
		return c.Status(fe.Code).JSON(apiError{Error: code, Message: fe.Message})
	}
	return writeError(c, err)
}

// writeError answers err with the status the one mapping gives it.
func writeError(c *fiber.Ctx, err error) error {
	body := apiError{Error: errcode.Of(err), Message: err.Error()}
	var fe *api.FieldError
	if errors.As(err, &fe) {
		body.Field = fe.Field
	}
	return c.Status(errcode.HTTPStatus(err)).JSON(body)
}

func (s *Server) health(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(c.UserContext(), 5*time.Second)
	defer cancel()
	h := s.eng.Health(ctx)
	status := fiber.StatusOK
	if h.Status != api.HealthOK {
		status = fiber.StatusServiceUnavailable
	}
	if !s.authorized(c) {
		return c.Status(status).JSON(map[string]string{"status": h.Status})
	}
	if h.Status != api.HealthOK {
		return c.Status(fiber.StatusServiceUnavailable).JSON(h)
	}
	return c.JSON(h)
}

// decode reads the request body strictly, naming the field at fault.
func decode(body []byte) (api.Request, error) {
	var req api.Request
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te) && te.Field == "":
			return req, &api.FieldError{Field: "body", Message: "must be a JSON object, not " + te.Value}
		case errors.As(err, &te):
			return req, &api.FieldError{Field: te.Field, Message: fmt.Sprintf("must be %s, not %s", config.JSONKind(te.Type.Kind().String()), te.Value)}
		case errors.As(err, &se):
			return req, &api.FieldError{Field: "body", Message: fmt.Sprintf("not valid JSON at byte %d", se.Offset)}
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			return req, &api.FieldError{Field: f, Message: "is not a request field"}
		case len(strings.TrimSpace(string(body))) == 0:
			return req, &api.FieldError{Field: "body", Message: "a JSON object is required"}
		}
		return req, &api.FieldError{Field: "body", Message: err.Error()}
	}
	if dec.More() {
		return req, &api.FieldError{Field: "body", Message: "must hold exactly one JSON object"}
	}
	return req, nil
}

// body is the request a POST carries, which must be JSON.
func body(c *fiber.Ctx) (api.Request, error) {
	if mt, _, _ := strings.Cut(c.Get(fiber.HeaderContentType), ";"); !strings.EqualFold(strings.TrimSpace(mt), fiber.MIMEApplicationJSON) {
		return api.Request{}, api.ErrMediaType
	}
	return decode(c.Body())
}

func (s *Server) query(c *fiber.Ctx) error {
	req, err := body(c)
	if err != nil {
		return writeError(c, err)
	}
	// The request lives from here on: a client that leaves while it waits
	// for a slot leaves the queue, one that leaves during the run cancels
	// it. Its connection is not reused: the stream ends with the run.
	ctx, cancel := context.WithCancelCause(s.life(c))
	conn := c.Context().Conn()
	go watchClient(ctx, conn, cancel)
	c.Set("Connection", "close")
	s.runs.Add(1)
	run, err := s.svc.Admit(ctx, req, nil)
	if err != nil {
		s.runs.Done()
		cancel(nil)
		return writeError(c, err)
	}
	ctx = logctx.With(ctx, "run_id", run.ID)
	c.Set(HeaderRunID, run.ID)
	sseHeaders(c)
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer s.runs.Done()
		defer cancel(nil)
		s.stream(ctx, cancel, w, conn, func(emit runs.Emit) {
			if _, err := run.Start(ctx, emit); err != nil {
				s.log.WarnContext(ctx, "run ended early", "err", err)
			}
		})
	})
	return nil
}

// HeaderRunID names the run a POST /query stream is.
const HeaderRunID = "X-Sandstorm-Run-Id"

func sseHeaders(c *fiber.Ctx) {
	c.Set("Content-Type", "text/event-stream")
	c.Set("Cache-Control", "no-cache, no-transform")
	c.Set("X-Accel-Buffering", "no")
}

// stream writes the events body passes to its emit as SSE frames, each
// with its sequence number as id. A client that goes away is noticed at
// once (its connection reads EOF), and one that stops reading within the
// write timeout; either cancels ctx.
func (s *Server) stream(ctx context.Context, cancel context.CancelCauseFunc, w *bufio.Writer, conn net.Conn, body func(runs.Emit)) {
	var mu sync.Mutex
	// write sends the parts of one frame: written apart, a large event is
	// not copied into a frame first.
	write := func(parts ...[]byte) error {
		mu.Lock()
		defer mu.Unlock()
		if conn != nil {
			_ = conn.SetWriteDeadline(time.Now().Add(s.writeTimeout))
		}
		for _, p := range parts {
			if _, err := w.Write(p); err != nil {
				return err
			}
		}
		return w.Flush()
	}
	dataPrefix, frameEnd := []byte("data: "), []byte("\n\n")
	stopKeepAlive := make(chan struct{})
	defer close(stopKeepAlive)
	go func() {
		t := time.NewTicker(KeepAlive)
		defer t.Stop()
		for {
			select {
			case <-stopKeepAlive:
				return
			case <-t.C:
				if err := write([]byte(": keep-alive\n\n")); err != nil {
					cancel(fmt.Errorf("%w: client gone: %w", context.Canceled, err))
					return
				}
			}
		}
	}()
	body(func(seq int64, ev json.RawMessage) error {
		return write([]byte("id: "+strconv.FormatInt(seq, 10)+"\n"), dataPrefix, ev, frameEnd)
	})
}

// watchClient cancels the run when the client closes its connection.
func watchClient(ctx context.Context, conn net.Conn, cancel context.CancelCauseFunc) {
	if conn == nil {
		return
	}
	go func() {
		<-ctx.Done()
		// Wake the read below; the connection is closed after the stream.
		_ = conn.SetReadDeadline(time.Now())
	}()
	buf := make([]byte, 1)
	for {
		_, err := conn.Read(buf)
		if err == nil {
			continue // a pipelined byte; SSE clients send none
		}
		if ctx.Err() == nil {
			cancel(fmt.Errorf("%w: client disconnected", context.Canceled))
		}
		return
	}
}
