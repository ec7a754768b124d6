package agent

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"

	"github.com/sandstorm-dev/sandstorm/egress"
)

// reachMCP makes the sse and http MCP servers of a configuration reachable
// from the sandbox through its egress proxy: a server on the host's
// loopback ("localhost", which inside the sandbox is the sandbox) gets
// egress.HostName in its URL, and each server's exact address and port
// becomes a declared destination of the proxy. It returns the servers
// rewritten and those destinations.
func reachMCP(raw json.RawMessage) (json.RawMessage, []egress.Rule, error) {
	if len(raw) == 0 {
		return raw, nil, nil
	}
	var servers map[string]map[string]any
	if err := json.Unmarshal(raw, &servers); err != nil {
		return nil, nil, fmt.Errorf("mcp_servers: %w", err)
	}
	var rules []egress.Rule
	for name, s := range servers {
		typ, _ := s["type"].(string)
		u, _ := s["url"].(string)
		if typ != "sse" && typ != "http" || u == "" {
			continue
		}
		parsed, err := url.Parse(u)
		if err != nil {
			return nil, nil, fmt.Errorf("mcp_servers.%s.url: %w", name, err)
		}
		port := parsed.Port()
		if port == "" {
			port = map[string]string{"https": "443"}[parsed.Scheme]
			if port == "" {
				port = "80"
			}
		}
		target := parsed.Hostname()
		switch target {
		case "localhost", "127.0.0.1", "::1":
			target = "127.0.0.1"
			parsed.Host = net.JoinHostPort(egress.HostName, port)
			s["url"] = parsed.String()
		}
		r, err := egress.ParseRule(net.JoinHostPort(target, port))
		if err != nil {
			return nil, nil, fmt.Errorf("mcp_servers.%s.url: %w", name, err)
		}
		rules = append(rules, r)
	}
	out, err := json.Marshal(servers)
	return out, rules, err
}
