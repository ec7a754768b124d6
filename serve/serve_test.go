package serve

import (
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/errcode"
)

func TestCheck(t *testing.T) {
	long, long2 := strings.Repeat("a", 32), strings.Repeat("b", 40)
	ok := Options{Host: "127.0.0.1", Port: 8000, SweepEvery: time.Minute}
	tests := []struct {
		name   string
		change func(*Options)
		keys   int
		err    string // "" = valid
	}{
		{"loopback without keys", func(*Options) {}, 0, ""},
		{"localhost", func(o *Options) { o.Host = "localhost" }, 0, ""},
		{"keys, rotated", func(o *Options) { o.APIKeys = long + " , " + long2 + "," }, 2, ""},
		{"every interface with keys", func(o *Options) { o.Host, o.APIKeys = "0.0.0.0", long }, 1, ""},
		{"every interface, insecure", func(o *Options) { o.Host, o.Insecure = "0.0.0.0", true }, 0, ""},
		{"every interface, no key", func(o *Options) { o.Host = "0.0.0.0" }, 0, "--host 0.0.0.0"},
		{"short key", func(o *Options) { o.APIKeys = long + ",short-secret" }, 0, "key 2 has 12 characters"},
		{"port 0", func(o *Options) { o.Port = 0 }, 0, "--port"},
		{"port too high", func(o *Options) { o.Port = 65536 }, 0, "--port"},
		{"sweep too often", func(o *Options) { o.SweepEvery = time.Millisecond }, 0, "--sweep-interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ok
			tt.change(&o)
			keys, err := o.check()
			if tt.err == "" {
				if err != nil || len(keys) != tt.keys {
					t.Errorf("%d keys, %v; want %d", len(keys), err, tt.keys)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) || errcode.ExitCode(err) != 64 {
				t.Fatalf("error %v, want a usage error saying %q", err, tt.err)
			}
			if strings.Contains(err.Error(), "short-secret") {
				t.Errorf("the error shows the key: %v", err)
			}
		})
	}
}

// The route lines of the help fit a terminal: a route's Doc must stay short.
func TestHelpRoutesFit(t *testing.T) {
	for _, line := range strings.Split(Help(), "\n") {
		if len(line) > 80 {
			t.Errorf("%d columns: %q", len(line), line)
		}
	}
}

func TestNewLogger(t *testing.T) {
	for _, tt := range []struct {
		format string
		want   string
	}{{"text", "msg=hi"}, {"json", `"msg":"hi"`}} {
		var b strings.Builder
		log, err := newLogger(&b, tt.format)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("hi")
		if !strings.Contains(b.String(), tt.want) {
			t.Errorf("%s: %q", tt.format, b.String())
		}
	}
	if _, err := newLogger(nil, "xml"); errcode.ExitCode(err) != 64 {
		t.Errorf("xml: %v", err)
	}
}
