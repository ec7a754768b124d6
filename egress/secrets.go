package egress

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// DefaultCADir holds sandstorm's egress CA, made on first use.
const DefaultCADir = "/var/lib/sandstorm/ca"

// Secret is one value the sandbox never sees: it holds Placeholder, and the
// proxy puts Value in its place in the headers of requests to Hosts only.
type Secret struct {
	Name        string
	Placeholder string
	Value       string
	// Hosts are domains, optionally with a port ("api.github.com", "git.example.org:8443").
	Hosts []Rule
}

// String never shows the value.
func (s Secret) String() string { return fmt.Sprintf("Secret{%s}", s.Name) }

// CA signs the certificates the proxy shows a sandbox for the hosts it
// intercepts (those with secrets). Its certificate is trusted inside the
// sandbox; its key never leaves the host.
type CA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	pem    []byte
	mu     sync.Mutex
	leaves map[string]*tls.Certificate
}

// CertPEM is the CA's certificate, for the sandbox's trust store.
func (c *CA) CertPEM() []byte { return append([]byte(nil), c.pem...) }

// Pool is a pool holding the CA's certificate.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

// LoadOrCreateCA reads the CA in dir (ca.pem, ca-key.pem), or makes one.
func LoadOrCreateCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	certPEM, cerr := os.ReadFile(certPath)
	keyPEM, kerr := os.ReadFile(keyPath)
	if cerr == nil && kerr == nil {
		return parseCA(certPEM, keyPEM)
	}
	if !errors.Is(cerr, os.ErrNotExist) && cerr != nil {
		return nil, fmt.Errorf("egress CA: %w", cerr)
	}
	ca, keyPEM, err := NewCA("sandstorm egress CA")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("egress CA: %w", err)
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("egress CA: %w", err)
	}
	if err := os.WriteFile(certPath, ca.pem, 0o644); err != nil {
		return nil, fmt.Errorf("egress CA: %w", err)
	}
	return ca, nil
}

// NewCA makes a CA, returning it and its key as PEM.
func NewCA(name string) (*CA, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("egress CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("egress CA: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("egress CA: %w", err)
	}
	ca, err := parseCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	return ca, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), err
}

func parseCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("egress CA: not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("egress CA: %w", err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("egress CA: %w", err)
	}
	return &CA{cert: cert, key: key, pem: certPEM, leaves: map[string]*tls.Certificate{}}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// Leaf is a certificate for host signed by the CA (made once per host).
func (c *CA) Leaf(host string) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.leaves[host]; ok && time.Until(l.Leaf.NotAfter) > time.Hour {
		return l, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if a, err := netip.ParseAddr(host); err == nil {
		tmpl.IPAddresses = []net.IP{a.AsSlice()}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	l := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	c.leaves[host] = l
	return l, nil
}

// secretsFor are the secrets that may go to host:port.
func (p *Proxy) secretsFor(host string, port int) []Secret {
	var out []Secret
	for _, s := range p.secrets {
		for _, r := range s.Hosts {
			if r.matchesName(host, port) {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

// matchesName is matches for a rule naming a host, without an address.
func (r Rule) matchesName(host string, port int) bool {
	return r.domain != "" && r.matches(host, netip.Addr{}, port)
}

// swap puts each secret's value in place of its placeholder in the
// request's headers (basic auth decoded first), and returns the names of
// those it put in.
func swap(h http.Header, secrets []Secret) []string {
	var used []string
	note := func(name string) {
		for _, u := range used {
			if u == name {
				return
			}
		}
		used = append(used, name)
	}
	for k, vs := range h {
		for i, v := range vs {
			if strings.EqualFold(k, "Authorization") {
				if enc, ok := strings.CutPrefix(v, "Basic "); ok {
					if raw, err := base64.StdEncoding.DecodeString(enc); err == nil {
						s := string(raw)
						for _, sec := range secrets {
							if strings.Contains(s, sec.Placeholder) {
								s = strings.ReplaceAll(s, sec.Placeholder, sec.Value)
								note(sec.Name)
							}
						}
						v = "Basic " + base64.StdEncoding.EncodeToString([]byte(s))
					}
				}
			}
			for _, sec := range secrets {
				if strings.Contains(v, sec.Placeholder) {
					v = strings.ReplaceAll(v, sec.Placeholder, sec.Value)
					note(sec.Name)
				}
			}
			vs[i] = v
		}
	}
	return used
}

// intercept serves the sandbox's TLS connection to host itself, with a
// certificate of the CA, and relays each request over TLS to the real host
// (verifying its certificate), with the secrets swapped into its headers.
func (p *Proxy) intercept(client net.Conn, upstream net.Conn, host string, secrets []Secret, ev *Event) error {
	leaf, err := p.ca.Leaf(host)
	if err != nil {
		return fmt.Errorf("certificate for %s: %w", host, err)
	}
	down := tls.Server(client, &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12})
	defer down.Close()
	up := tls.Client(upstream, &tls.Config{ServerName: host, RootCAs: p.roots, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12})
	defer up.Close()
	if err := up.Handshake(); err != nil {
		return fmt.Errorf("TLS to %s: %w", host, err)
	}
	in, out := bufio.NewReader(down), bufio.NewReader(up)
	for {
		req, err := http.ReadRequest(in)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		for _, name := range swap(req.Header, secrets) {
			ev.addSecret(name)
		}
		if err := req.Write(up); err != nil {
			return err
		}
		resp, err := http.ReadResponse(out, req)
		if err != nil {
			return err
		}
		err = resp.Write(down)
		resp.Body.Close()
		if err != nil || req.Close || resp.Close {
			return err
		}
	}
}

func (e *Event) addSecret(name string) {
	for _, s := range e.Secrets {
		if s == name {
			return
		}
	}
	e.Secrets = append(e.Secrets, name)
}
