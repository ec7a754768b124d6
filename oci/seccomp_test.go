package oci

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// buildSeccomp derives sandstorm's profile from the runtime default for a
// process with no capabilities.
func buildSeccomp() *specs.LinuxSeccomp {
	none := &specs.LinuxCapabilities{Bounding: []string{}, Effective: []string{}, Permitted: []string{}}
	p := seccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: none}})
	refused := append(slices.Clone(DeniedSyscalls), NosysSyscalls...)
	var rules []specs.LinuxSyscall
	for _, r := range p.Syscalls {
		// Every name refused below leaves the allow rules (clone3's ENOSYS
		// rule is replaced by the one below).
		r.Names = slices.DeleteFunc(slices.Clone(r.Names), func(n string) bool { return slices.Contains(refused, n) })
		if len(r.Names) > 0 {
			rules = append(rules, r)
		}
	}
	eperm, enosys := uint(1), uint(38)
	p.Syscalls = append(rules,
		specs.LinuxSyscall{Names: DeniedSyscalls, Action: specs.ActErrno, ErrnoRet: &eperm},
		specs.LinuxSyscall{Names: NosysSyscalls, Action: specs.ActErrno, ErrnoRet: &enosys},
	)
	return p
}

func TestSeccompProfile(t *testing.T) {
	want, err := json.MarshalIndent(buildSeccomp(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, '\n')
	if *update {
		if err := os.WriteFile("seccomp.json", want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(seccompJSON, want) && !*update {
		t.Errorf("seccomp.json is not what the runtime default and the denials make; run go test ./oci -run Seccomp -update and review the diff")
	}
	p, err := SeccompProfile()
	if err != nil {
		t.Fatal(err)
	}
	// Nothing refused is allowed by any rule, whatever its arguments.
	for _, r := range p.Syscalls {
		if r.Action != specs.ActAllow {
			continue
		}
		for _, n := range r.Names {
			if slices.Contains(DeniedSyscalls, n) || slices.Contains(NosysSyscalls, n) {
				t.Errorf("%s is allowed by %+v", n, r)
			}
		}
	}
	if p.DefaultAction != specs.ActErrno {
		t.Errorf("default action %s", p.DefaultAction)
	}
}

func TestGVisorSeccompProfile(t *testing.T) {
	base, err := SeccompProfile()
	if err != nil {
		t.Fatal(err)
	}
	g, err := GVisorSeccompProfile()
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Syscalls) != len(base.Syscalls) || g.DefaultAction != base.DefaultAction {
		t.Fatalf("gVisor profile has %d rules (default %s), base %d (%s)", len(g.Syscalls), g.DefaultAction, len(base.Syscalls), base.DefaultAction)
	}
	for i, s := range g.Syscalls {
		nosys := slices.Contains(s.Names, "clone3")
		switch {
		case nosys && (s.Action != specs.ActAllow || s.ErrnoRet != nil):
			t.Errorf("clone3 under gVisor: %+v, want allowed (gVisor answers ENOSYS)", s)
		case !nosys && !reflect.DeepEqual(s, base.Syscalls[i]):
			t.Errorf("rule %v changed for gVisor: %+v, was %+v", s.Names, s, base.Syscalls[i])
		}
	}
}
