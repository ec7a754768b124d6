package serve

import (
	"fmt"
	"strings"

	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/server"
)

// Help is ds serve's long help. The routes, which of them need no key and
// the keys only a restart applies come from their one place each.
func Help() string {
	var routes, public strings.Builder
	for _, r := range server.Routes() {
		fmt.Fprintf(&routes, "  %-6s %-24s %s\n", r.Method, r.Path, r.Doc)
		if r.Public {
			fmt.Fprintf(&public, "%s %s, ", r.Method, r.Path)
		}
	}
	return `Serve sandstorm's HTTP API.

` + routes.String() + `
POST /query answers with a Server-Sent Events stream, one "id: <seq>" +
"data: <json>" frame per event (X-Sandstorm-Run-Id names the run).
GET /runs/{id}/events sends "retry: 3000" first and answers 204 to a position
at or past the end of a finished run, so a browser's EventSource stops.

Every run is recorded in the run store under --state-dir; runs of a server
that died are marked interrupted by the next one to start.

A warm pool (limits.yaml pool.size, default 2; 0 turns it off) keeps sandboxes
started with sandstorm.json's agent options, the CLI waiting: a request with
those options starts in one at once ("warm": true in its sandbox created
event); others run cold and say why (warm_miss). Warm sandboxes hold host slots.

SIGHUP (and, with --reload, any change to sandstorm.json or the limits file)
re-reads both: valid changes apply to the runs that start afterwards, running
ones keep theirs, and the warm pool is started afresh; an invalid file is
logged, naming the key, and the running configuration kept. These keys of
the limits file need a restart:
` + wrapList(config.RestartOnly(), "  ", 80) + `.

A /query client that disconnects, or accepts no stream data for --write-timeout,
cancels its run (or leaves the queue); its sandbox is removed at once.
On SIGTERM or Ctrl-C the server stops accepting requests, lets running agents
finish for up to --shutdown-grace, then cancels the rest (their streams end
with a cancelled error; requests still queued get 503) and removes their
sandboxes before exiting.

With $SANDSTORM_API_KEY set (one or more comma-separated keys, each at least
` + fmt.Sprint(minKeyLen) + ` characters), every route needs "Authorization: Bearer <key>" (401
otherwise) but these:
  ` + strings.TrimSuffix(public.String(), ", ") + `
and /health tells an unauthenticated caller only its status.
Without keys the server listens only on a loopback address unless --insecure,
and answers only requests whose Host is localhost, an IP address or --host
(403 otherwise: a page whose name was rebound to this address gets nothing);
X-Forwarded-Host and -Proto are never trusted.
Request bodies must be application/json (415 otherwise). Pages of other
origins get nothing (403) unless $CORS_ORIGINS lists them ("*" for any).`
}

// wrapList joins items with commas into lines of at most width columns,
// each starting with indent: the list grows with the struct it comes from.
func wrapList(items []string, indent string, width int) string {
	var b strings.Builder
	line := indent
	for i, it := range items {
		word := it
		if i < len(items)-1 {
			word += ","
		}
		if line != indent && len(line)+1+len(word) > width-1 {
			b.WriteString(line + "\n")
			line = indent
		}
		if line != indent {
			line += " "
		}
		line += word
	}
	b.WriteString(line)
	return b.String()
}
