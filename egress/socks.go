package egress

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// socksVersion is the first byte of a SOCKS5 greeting; an HTTP request
// starts with a letter, so one socket serves both.
const socksVersion = 5

// Listener wraps the egress socket's listener: SOCKS5 connections (for TCP
// tools that speak no HTTP proxy) are served by the proxy itself, the rest
// are returned for the HTTP server.
func (p *Proxy) Listener(l net.Listener) net.Listener { return &socksListener{Listener: l, p: p} }

type socksListener struct {
	net.Listener
	p *Proxy
}

func (l *socksListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		br := bufio.NewReader(c)
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		first, err := br.Peek(1)
		_ = c.SetReadDeadline(time.Time{})
		if err != nil {
			c.Close()
			continue
		}
		pc := &prefixed{Conn: c, r: br}
		if first[0] == socksVersion {
			go l.p.socks(pc, br)
			continue
		}
		return pc, nil
	}
}

// socks serves one SOCKS5 connection: no authentication, CONNECT only.
func (p *Proxy) socks(c net.Conn, br *bufio.Reader) {
	start := time.Now()
	defer c.Close()
	host, port, err := socksRequest(c, br)
	if err != nil {
		p.log.Debug("egress: bad SOCKS request", "err", err)
		return
	}
	upstream, ev := p.dial(context.Background(), host, port)
	if upstream == nil {
		ev.DurationMS = time.Since(start).Milliseconds()
		p.emit(ev)
		code := byte(2) // connection not allowed by ruleset
		if ev.Decision == Allow {
			code = 5 // connection refused
		}
		_, _ = c.Write([]byte{socksVersion, code, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	cu, end, ok := p.begin(upstream, &ev, start, c)
	if !ok {
		return
	}
	defer end()
	if _, err := c.Write([]byte{socksVersion, 0, 0, 1, 0, 0, 0, 0, 0, 0}); err != nil {
		return
	}
	pipe(c, cu)
}

// socksRequest reads the greeting and the CONNECT request.
func socksRequest(c net.Conn, br *bufio.Reader) (string, int, error) {
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return "", 0, err
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(br, methods); err != nil {
		return "", 0, err
	}
	noAuth := false
	for _, m := range methods {
		noAuth = noAuth || m == 0
	}
	if !noAuth {
		_, _ = c.Write([]byte{socksVersion, 0xff})
		return "", 0, errors.New("no acceptable authentication method")
	}
	if _, err := c.Write([]byte{socksVersion, 0}); err != nil {
		return "", 0, err
	}
	req := make([]byte, 4)
	if _, err := io.ReadFull(br, req); err != nil {
		return "", 0, err
	}
	if req[0] != socksVersion || req[1] != 1 {
		_, _ = c.Write([]byte{socksVersion, 7, 0, 1, 0, 0, 0, 0, 0, 0})
		return "", 0, fmt.Errorf("SOCKS command %d not supported (CONNECT only)", req[1])
	}
	var host string
	switch req[3] {
	case 1, 4: // IPv4, IPv6
		b := make([]byte, 4)
		if req[3] == 4 {
			b = make([]byte, 16)
		}
		if _, err := io.ReadFull(br, b); err != nil {
			return "", 0, err
		}
		a, _ := netip.AddrFromSlice(b)
		host = a.Unmap().String()
	case 3: // a name, which the proxy resolves itself
		n, err := br.ReadByte()
		if err != nil {
			return "", 0, err
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return "", 0, err
		}
		host = string(b)
	default:
		return "", 0, fmt.Errorf("SOCKS address type %d", req[3])
	}
	pb := make([]byte, 2)
	if _, err := io.ReadFull(br, pb); err != nil {
		return "", 0, err
	}
	port := int(binary.BigEndian.Uint16(pb))
	if port == 0 {
		return "", 0, errors.New("SOCKS port 0")
	}
	return host, port, nil
}
