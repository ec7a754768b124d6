package server

import (
	"slices"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/sandstorm-dev/sandstorm/dashboard"
)

// Route is one route of the API. routes is the one list of them: the
// server registers it, ds serve --help and README's table are made from
// it, and TestOpenAPI holds openapi.json to it.
type Route struct {
	Method string
	// Path is written as openapi.json writes it: {id} is a run's id,
	// {path} the rest of the path.
	Path string
	// Public routes need no API key when keys are set: they hold nothing
	// a stranger may not see (GET /health then tells only its status).
	Public bool
	// Doc says what the route does, in a few words.
	Doc    string
	handle func(*Server, *fiber.Ctx) error
}

var routes = []Route{
	{fiber.MethodPost, "/query", false, "run one agent, its events streamed as SSE", (*Server).query},
	{fiber.MethodPost, "/runs", false, "start a detached run (same body): 202, its id", (*Server).detach},
	{fiber.MethodGet, "/runs", false, "runs, newest first (?status= ?limit= ?before=)", (*Server).list},
	{fiber.MethodGet, "/runs/{id}", false, "one run", (*Server).get},
	{fiber.MethodGet, "/runs/{id}/events", false, "its events as SSE, then live until it ends", (*Server).events},
	{fiber.MethodPost, "/runs/{id}/cancel", false, "cancel it (idempotent)", (*Server).cancelRun},
	{fiber.MethodDelete, "/runs/{id}", false, "remove a finished run and its files", (*Server).deleteRun},
	{fiber.MethodGet, "/runs/{id}/files", false, "the files its agent created or changed", (*Server).files},
	{fiber.MethodGet, "/runs/{id}/files.tar.gz", false, "all of them, as one archive", (*Server).archive},
	{fiber.MethodGet, "/runs/{id}/files/{path}", false, "one of them", (*Server).file},
	{fiber.MethodGet, "/health", true, "status; with a key, backend, slots and queue", (*Server).health},
	{fiber.MethodGet, "/metrics", false, "Prometheus metrics of runs, slots, model calls", (*Server).metrics},
	{fiber.MethodGet, "/openapi.json", true, "the OpenAPI 3.1 document of these routes", (*Server).document},
	{fiber.MethodGet, "/", true, "redirects to the dashboard", (*Server).home},
	{fiber.MethodGet, dashboard.Prefix + "{path}", true, "the dashboard: runs live, events, files, host", (*Server).dashboard},
}

// Routes are the routes the server serves.
func Routes() []Route { return slices.Clone(routes) }

// fiberPath is p in fiber's syntax.
var fiberPath = strings.NewReplacer("{id}", ":id", "{path}", "*")

// route registers every route, the key check first on those not public.
func (s *Server) route() {
	for _, r := range routes {
		handle := func(c *fiber.Ctx) error { return r.handle(s, c) }
		handlers := []fiber.Handler{handle}
		if !r.Public {
			handlers = []fiber.Handler{s.checkKey, handle}
		}
		path := fiberPath.Replace(r.Path)
		if r.Method == fiber.MethodGet {
			s.app.Head(path, handlers...) // as fiber's Get does
		}
		s.app.Add(r.Method, path, handlers...)
	}
}

func (s *Server) home(c *fiber.Ctx) error { return c.Redirect(dashboard.Prefix, fiber.StatusFound) }

func (s *Server) dashboard(c *fiber.Ctx) error {
	c.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
	c.Set("X-Content-Type-Options", "nosniff")
	return s.ui(c)
}

func (s *Server) document(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(openAPI)
}

func (s *Server) metrics(c *fiber.Ctx) error { return s.prometheus(c) }
