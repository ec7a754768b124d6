package agentimage

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// The Debian mirrors used when the host's apt configuration names none.
const (
	FallbackMirror         = "http://deb.debian.org/debian"
	FallbackSecurityMirror = "http://deb.debian.org/debian-security"
)

// aptSource is one "deb" entry of an apt sources file.
type aptSource struct {
	URI    string
	Suites []string
}

// HostMirrors returns the Debian mirror and the security mirror this
// machine's apt uses for suite, read from /etc/apt/sources.list and
// /etc/apt/sources.list.d/ (one-line .list and deb822 .sources files).
// Either falls back to deb.debian.org when the host names none (e.g. a
// non-Debian host).
func HostMirrors(suite string) (mirror, security string) {
	return mirrorsFrom(readHostSources("/etc/apt"), suite)
}

func mirrorsFrom(srcs []aptSource, suite string) (mirror, security string) {
	pick := func(wantSuite, pathSuffix string) string {
		for _, s := range srcs {
			for _, su := range s.Suites {
				if su == wantSuite {
					return s.URI
				}
			}
		}
		for _, s := range srcs {
			if strings.HasSuffix(strings.TrimRight(s.URI, "/"), pathSuffix) {
				return s.URI
			}
		}
		return ""
	}
	mirror = strings.TrimRight(pick(suite, "/debian"), "/")
	security = strings.TrimRight(pick(suite+"-security", "/debian-security"), "/")
	if mirror == "" {
		mirror = FallbackMirror
	}
	if security == "" {
		security = FallbackSecurityMirror
	}
	return mirror, security
}

func readHostSources(aptDir string) []aptSource {
	var srcs []aptSource
	if f, err := os.Open(filepath.Join(aptDir, "sources.list")); err == nil {
		srcs = append(srcs, parseOneLine(f)...)
		f.Close()
	}
	names, _ := filepath.Glob(filepath.Join(aptDir, "sources.list.d", "*"))
	sort.Strings(names)
	for _, n := range names {
		f, err := os.Open(n)
		if err != nil {
			continue
		}
		switch {
		case strings.HasSuffix(n, ".list"):
			srcs = append(srcs, parseOneLine(f)...)
		case strings.HasSuffix(n, ".sources"):
			srcs = append(srcs, parseDeb822(f)...)
		}
		f.Close()
	}
	return srcs
}

func usableURI(u string) bool {
	return strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://") || strings.HasPrefix(u, "file:")
}

// parseOneLine reads "deb [options] URI suite component..." lines.
func parseOneLine(r io.Reader) []aptSource {
	var out []aptSource
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) == 0 {
				continue
			}
			f = f[1:]
		}
		if len(f) < 2 || !usableURI(f[0]) {
			continue
		}
		out = append(out, aptSource{URI: f[0], Suites: []string{f[1]}})
	}
	return out
}

// parseDeb822 reads the stanzas of a .sources file.
func parseDeb822(r io.Reader) []aptSource {
	var out []aptSource
	fields := map[string]string{}
	var lastKey string
	flush := func() {
		defer func() { fields = map[string]string{}; lastKey = "" }()
		if len(fields) == 0 || strings.EqualFold(fields["enabled"], "no") {
			return
		}
		isDeb := false
		for _, t := range strings.Fields(fields["types"]) {
			if t == "deb" {
				isDeb = true
			}
		}
		if !isDeb {
			return
		}
		suites := strings.Fields(fields["suites"])
		for _, u := range strings.Fields(fields["uris"]) {
			if usableURI(u) {
				out = append(out, aptSource{URI: u, Suites: suites})
			}
		}
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if lastKey != "" {
				fields[lastKey] += " " + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		lastKey = strings.ToLower(strings.TrimSpace(k))
		fields[lastKey] = strings.TrimSpace(v)
	}
	flush()
	return out
}
