package oci

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var testHost = Host{SwapAccounting: true}

func sandbox(p Policy) Container {
	return Container{
		ID:        "sb-test",
		SessionID: "sess-1",
		Args:      []string{"/bin/sh", "-c", "true"},
		Env:       []string{"PATH=/usr/bin:/bin"},
		Workspace: "/var/lib/sandstorm/sb-test/home",
		Policy:    p.WithDefaults(),
	}
}

func TestBuildGolden(t *testing.T) {
	tests := []struct {
		name string
		sb   Container
		host Host
	}{
		{"default", sandbox(Policy{}), testHost},
		{"caps-and-limits", sandbox(Policy{
			Capabilities: []string{"CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_CHOWN"},
			MemoryBytes:  256 << 20, CPUs: 0.5, Pids: 64, NoFile: 1024, TmpBytes: 16 << 20,
			UID: 2000, GID: 3000, Hostname: "agent-7",
		}), testHost},
		{"writable-unconfined-mounts", sandbox(Policy{
			WritableRoot: true, Seccomp: SeccompUnconfined,
			Mounts: []Mount{
				{Source: "/run/sandstorm/gw/s1.sock", Target: "/run/sandstorm/model.sock"},
				{Source: "/srv/data", Target: "/data", ReadOnly: true},
			},
		}), testHost},
		{"bridge-netns-most-files-no-swap", func() Container {
			sb := sandbox(Policy{Network: NetworkBridge, NoFile: 1 << 20})
			sb.NetNS = "/var/run/netns/sandstorm-sb-test"
			sb.Labels = map[string]string{"team": "infra"}
			return sb
		}(), Host{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := build(context.Background(), tt.sb, tt.host)
			if err != nil {
				t.Fatal(err)
			}
			// The seccomp profile is sandstorm's own, whatever the
			// capabilities; it has a golden file of its own (seccomp.json),
			// so the spec's golden files show the other rules.
			if tt.sb.Policy.Seccomp == SeccompDefault {
				want, _ := SeccompProfile()
				if !reflect.DeepEqual(s.Linux.Seccomp, want) {
					t.Error("seccomp profile is not sandstorm's profile")
				}
				s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: s.Linux.Seccomp.DefaultAction}
			}
			got, err := json.MarshalIndent(s, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", tt.name+".json")
			if *update {
				if err := os.WriteFile(golden, append(got, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if string(want) != string(got)+"\n" {
				t.Errorf("spec differs from %s (run go test ./oci -update and review the diff):\n%s", golden, got)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		p     Policy
		field string
	}{
		{"tiny memory", Policy{MemoryBytes: 1 << 20}, "memory"},
		{"zero cpus after negative", Policy{CPUs: -1}, "cpus"},
		{"too many cpus", Policy{CPUs: 5000}, "cpus"},
		{"pids too low", Policy{Pids: 2}, "pids"},
		{"unknown cap", Policy{Capabilities: []string{"NET_ADMIN"}}, "capabilities"},
		{"bad seccomp", Policy{Seccomp: "strict"}, "seccomp"},
		{"bad network", Policy{Network: "host"}, "network"},
		{"bad hostname", Policy{Hostname: "a b"}, "hostname"},
		{"relative mount", Policy{Mounts: []Mount{{Source: "data", Target: "/data"}}}, "mounts"},
		{"dotdot mount", Policy{Mounts: []Mount{{Source: "/srv/../etc", Target: "/data"}}}, "mounts"},
		{"mount over proc", Policy{Mounts: []Mount{{Source: "/srv", Target: "/proc/sys"}}}, "mounts"},
		{"mount hides workspace", Policy{Mounts: []Mount{{Source: "/srv", Target: "/home"}}}, "mounts"},
		{"mount over root", Policy{Mounts: []Mount{{Source: "/srv", Target: "/"}}}, "mounts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.WithDefaults().Validate()
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("got %v, want ErrInvalidPolicy", err)
			}
			if want := ": " + tt.field + ":"; !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name field %q", err, tt.field)
			}
		})
	}
	ok := Policy{Mounts: []Mount{{Source: "/run/x.sock", Target: "/run/sandstorm/model.sock"}, {Source: "/srv", Target: "/home/user/data"}}}
	if err := ok.WithDefaults().Validate(); err != nil {
		t.Errorf("valid policy rejected: %v", err)
	}
}

// build returns the complete spec for sb: containerd's default Linux spec
// with the policy's options applied. Backends that take a spec (containerd)
// use Options directly so image configuration can be applied first.
func build(ctx context.Context, sb Container, host Host) (*specs.Spec, error) {
	opts, err := Options(sb, host)
	if err != nil {
		return nil, err
	}
	ctx = namespaces.WithNamespace(ctx, "sandstorm")
	s, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: sb.ID}, opts...)
	if err != nil {
		return nil, fmt.Errorf("build spec for sandbox %s: %w", sb.ID, err)
	}
	return s, nil
}

// TestRlimitsCoverEveryResource: a limit left out of Rlimits would be the
// daemon's, which the kernel sizes from the host for some.
func TestRlimitsCoverEveryResource(t *testing.T) {
	seen := map[int]string{}
	for _, l := range Rlimits(Policy{}.WithDefaults()) {
		r, ok := RlimitResource(l.Type)
		if !ok {
			t.Errorf("%s: no kernel number", l.Type)
		}
		if prev, dup := seen[r]; dup {
			t.Errorf("%s and %s are both resource %d", prev, l.Type, r)
		}
		seen[r] = l.Type
		if l.Soft > l.Hard {
			t.Errorf("%s: soft %d above hard %d", l.Type, l.Soft, l.Hard)
		}
	}
	// RLIM_NLIMITS: the kernel's resources are numbered 0 to 15.
	for r := range 16 {
		if _, ok := seen[r]; !ok {
			t.Errorf("resource %d is not set", r)
		}
	}
}

func TestHostFit(t *testing.T) {
	limits := []specs.POSIXRlimit{
		{Type: "RLIMIT_NOFILE", Soft: 4096, Hard: 4096},
		{Type: "RLIMIT_STACK", Soft: 8 << 20, Hard: Unlimited},
		{Type: "RLIMIT_CORE"},
	}
	tests := []struct {
		name          string
		hard          map[string]uint64
		fitted, lower []specs.POSIXRlimit
	}{
		{"unknown host", nil, limits, nil},
		{"host above the policy", map[string]uint64{"RLIMIT_NOFILE": 1 << 20, "RLIMIT_STACK": Unlimited}, limits, nil},
		{"host below the policy", map[string]uint64{"RLIMIT_NOFILE": 1024, "RLIMIT_STACK": 4 << 20, "RLIMIT_CORE": 0},
			[]specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 1024, Hard: 1024}, {Type: "RLIMIT_STACK", Soft: 4 << 20, Hard: 4 << 20}, {Type: "RLIMIT_CORE"}},
			[]specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 1024, Hard: 1024}, {Type: "RLIMIT_STACK", Soft: 4 << 20, Hard: 4 << 20}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fitted, lowered := Host{HardLimits: tt.hard}.Lower(limits)
			if !reflect.DeepEqual(fitted, tt.fitted) || !reflect.DeepEqual(lowered, tt.lower) {
				t.Errorf("fitted %v lowered %v, want %v and %v", fitted, lowered, tt.fitted, tt.lower)
			}
		})
	}
}
