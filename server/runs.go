package server

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/internal/logctx"
	"github.com/sandstorm-dev/sandstorm/outfiles"
	"github.com/sandstorm-dev/sandstorm/runs"
	"github.com/sandstorm-dev/sandstorm/runstore"
)

// MaxListLimit bounds a page of GET /runs.
const MaxListLimit = 500

// runID is the route's run id; one that cannot be an id is not found. It
// is a copy: fiber's values are reused once the handler returns, and
// streams use it after that.
func runID(c *fiber.Ctx) (string, error) {
	id := strings.Clone(c.Params("id"))
	if !runstore.ValidID(id) {
		return "", fmt.Errorf("%w: %q", runstore.ErrNotFound, id)
	}
	return id, nil
}

func (s *Server) detach(c *fiber.Ctx) error {
	req, err := body(c)
	if err != nil {
		return writeError(c, err)
	}
	id, err := s.svc.Detach(c.UserContext(), s.life(c), req)
	if err != nil {
		return writeError(c, err)
	}
	r, err := s.svc.Get(c.UserContext(), id)
	if err != nil {
		return writeError(c, err)
	}
	c.Set(fiber.HeaderLocation, r.URLs["run"])
	return c.Status(fiber.StatusAccepted).JSON(r)
}

func (s *Server) list(c *fiber.Ctx) error {
	f := runstore.Filter{Limit: 50, Before: c.Query("before")}
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			return writeError(c, api.Invalid("limit", "%q is not a number in 1..%d", v, MaxListLimit))
		}
		f.Limit = n
	}
	if f.Before != "" && !runstore.ValidID(f.Before) {
		return writeError(c, api.Invalid("before", "%q is not a run id (use the next cursor of a page)", f.Before))
	}
	if v := c.Query("status"); v != "" {
		for _, st := range strings.Split(v, ",") {
			if !api.RunStatus(st).Valid() {
				return writeError(c, api.Invalid("status", "%q is not one of %v", st, api.RunStatuses))
			}
			f.Status = append(f.Status, api.RunStatus(st))
		}
	}
	page, err := s.svc.List(c.UserContext(), f)
	if err != nil {
		return writeError(c, err)
	}
	return c.JSON(page)
}

func (s *Server) get(c *fiber.Ctx) error {
	id, err := runID(c)
	if err != nil {
		return writeError(c, err)
	}
	r, err := s.svc.Get(c.UserContext(), id)
	if err != nil {
		return writeError(c, err)
	}
	return c.JSON(r)
}

// Retry is the reconnect delay GET /runs/{id}/events asks of an
// EventSource (browsers' usual default, stated rather than assumed).
const Retry = 3 * time.Second

var retryField = "retry: " + strconv.FormatInt(Retry.Milliseconds(), 10) + "\n\n"

// events replays a run's events after Last-Event-ID or ?after (from the
// start without either), then follows it live until it ends; to a position
// at or past the end of a finished run it answers 204.
func (s *Server) events(c *fiber.Ctx) error {
	id, err := runID(c)
	if err != nil {
		return writeError(c, err)
	}
	var after int64
	for _, v := range []struct{ field, value string }{{"Last-Event-ID", c.Get("Last-Event-ID")}, {"after", c.Query("after")}} {
		if v.value == "" {
			continue
		}
		if after, err = strconv.ParseInt(v.value, 10, 64); err != nil || after < 0 {
			return writeError(c, api.Invalid(v.field, "%q is not an event number (the id: of a frame)", v.value))
		}
		break
	}
	r, err := s.svc.Get(c.UserContext(), id)
	if err != nil {
		return writeError(c, err)
	}
	if r.Status.Done() && after >= r.Events {
		// Nothing will come: 204 is what stops a browser's EventSource,
		// which reconnects after any stream that merely ends.
		return c.SendStatus(fiber.StatusNoContent)
	}
	ctx, cancel := context.WithCancelCause(logctx.With(s.life(c), "run_id", id))
	conn := c.Context().Conn()
	go watchClient(ctx, conn, cancel)
	c.Set("Connection", "close")
	sseHeaders(c)
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cancel(nil)
		_, _ = w.WriteString(retryField)
		s.stream(ctx, cancel, w, conn, func(emit runs.Emit) {
			if err := s.svc.Follow(ctx, id, after, emit); err != nil && ctx.Err() == nil {
				s.log.WarnContext(ctx, "follow run", "err", err)
			}
		})
	})
	return nil
}

func (s *Server) cancelRun(c *fiber.Ctx) error {
	id, err := runID(c)
	if err != nil {
		return writeError(c, err)
	}
	r, err := s.svc.Cancel(c.UserContext(), id)
	if err != nil {
		return writeError(c, err)
	}
	status := fiber.StatusAccepted
	if r.Status.Done() {
		status = fiber.StatusOK
	}
	return c.Status(status).JSON(r)
}

func (s *Server) deleteRun(c *fiber.Ctx) error {
	id, err := runID(c)
	if err != nil {
		return writeError(c, err)
	}
	if err := s.svc.Delete(c.UserContext(), id); err != nil {
		return writeError(c, err)
	}
	return c.SendStatus(fiber.StatusNoContent)
}

func (s *Server) files(c *fiber.Ctx) error {
	id, err := runID(c)
	if err != nil {
		return writeError(c, err)
	}
	files, err := s.svc.Files(c.UserContext(), id)
	if err != nil {
		return writeError(c, err)
	}
	out := api.FileList{Files: []api.FileEvent{}}
	for _, f := range files {
		f.Content = nil
		out.Files = append(out.Files, api.FileEvent{Type: api.TypeFile, OutputFile: f, URL: api.RunURLs(id)["files"] + "/" + outfiles.URLPath(f.Path)})
	}
	return c.JSON(out)
}

func (s *Server) file(c *fiber.Ctx) error {
	id, err := runID(c)
	if err != nil {
		return writeError(c, err)
	}
	p := c.Params("*")
	rc, f, err := s.svc.OpenFile(c.UserContext(), id, p)
	if err != nil {
		return writeError(c, err)
	}
	c.Set(fiber.HeaderContentType, "application/octet-stream")
	c.Set(fiber.HeaderContentDisposition, fmt.Sprintf("attachment; filename=%q", p[strings.LastIndex(p, "/")+1:]))
	c.Set("X-Content-SHA256", f.SHA256)
	return c.SendStream(rc, int(f.Size))
}

func (s *Server) archive(c *fiber.Ctx) error {
	id, err := runID(c)
	if err != nil {
		return writeError(c, err)
	}
	if _, err := s.svc.Files(c.UserContext(), id); err != nil {
		return writeError(c, err)
	}
	c.Set(fiber.HeaderContentType, "application/gzip")
	c.Set(fiber.HeaderContentDisposition, fmt.Sprintf("attachment; filename=%q", id+".tar.gz"))
	logCtx := logctx.With(c.UserContext(), "run_id", id)
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		if err := s.svc.Archive(context.Background(), id, w); err != nil {
			s.log.WarnContext(logCtx, "files archive", "err", err)
		}
		_ = w.Flush()
	})
	return nil
}
