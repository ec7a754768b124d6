package sandbox

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/oci"
)

func TestCheckFailsClosed(t *testing.T) {
	all := Enforcement{}
	for _, it := range AllItems {
		all[it] = Support{Enforced: true}
	}
	except := func(reason string, items ...Item) Enforcement {
		c := Enforcement{}
		for it, s := range all {
			c[it] = s
		}
		for _, it := range items {
			c[it] = Support{Reason: reason}
		}
		return c
	}
	rootlessV1 := except("cgroup v1 rootless", ItemMemoryLimit, ItemCPULimit, ItemPidsLimit)
	noGrant := except("bounding set only", ItemGrantCapabilities)

	tests := []struct {
		name       string
		caps       Enforcement
		policy     oci.Policy
		allow      []Item
		wantErr    []Item
		unenforced []Item
	}{
		{"all enforced", all, oci.Policy{}, nil, nil, nil},
		{"rootless v1 refuses", rootlessV1, oci.Policy{}, nil, []Item{ItemMemoryLimit, ItemCPULimit, ItemPidsLimit}, nil},
		{"rootless v1 partly allowed", rootlessV1, oci.Policy{}, []Item{ItemMemoryLimit}, []Item{ItemCPULimit, ItemPidsLimit}, []Item{ItemMemoryLimit}},
		{"rootless v1 allowed", rootlessV1, oci.Policy{}, []Item{ItemMemoryLimit, ItemCPULimit, ItemPidsLimit}, nil, []Item{ItemMemoryLimit, ItemCPULimit, ItemPidsLimit}},
		{"no caps asked, no grant needed", noGrant, oci.Policy{}, nil, nil, nil},
		{"caps asked, cannot grant", noGrant, oci.Policy{Capabilities: []string{"CAP_CHOWN"}}, nil, []Item{ItemGrantCapabilities}, nil},
		{"bridge not available", except("no CNI", ItemNetworkBridge), oci.Policy{Network: oci.NetworkBridge}, nil, []Item{ItemNetworkBridge}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			un, err := tt.caps.Check(tt.policy.WithDefaults(), tt.allow)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
			} else {
				if !errors.Is(err, ErrNotEnforceable) {
					t.Fatalf("got %v, want ErrNotEnforceable", err)
				}
				for _, it := range tt.wantErr {
					if !strings.Contains(err.Error(), string(it)) {
						t.Errorf("error %q does not name %s", err, it)
					}
				}
				for _, it := range tt.allow {
					if strings.Contains(err.Error(), string(it)+" ") || strings.HasSuffix(err.Error(), string(it)) {
						t.Errorf("error %q names allowed item %s", err, it)
					}
				}
			}
			if !slices.Equal(un, tt.unenforced) {
				t.Errorf("unenforced = %v, want %v", un, tt.unenforced)
			}
		})
	}
}

func TestParseItemsAndIsolation(t *testing.T) {
	if items, err := ParseItems([]string{"pids_limit", " nosuid_mounts"}); err != nil || !slices.Equal(items, []Item{ItemPidsLimit, ItemNosuidMounts}) {
		t.Errorf("ParseItems = %v, %v", items, err)
	}
	if _, err := ParseItems([]string{"pids"}); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "pids_limit") {
		t.Errorf("unknown item: %v, want ErrInvalidSpec listing the known ones", err)
	}
	for in, want := range map[string]Isolation{"": IsolationRunc, "runc": IsolationRunc, "gvisor": IsolationGVisor} {
		if got, err := ParseIsolation(in); err != nil || got != want {
			t.Errorf("ParseIsolation(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseIsolation("kata"); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("kata: %v", err)
	}
	labels := []struct {
		info Info
		want string
	}{
		{Info{Name: "podman", Rootless: true}, "podman-rootless"},
		{Info{Name: "docker", Isolation: IsolationGVisor}, "docker+gvisor"},
		{Info{Name: "containerd", Isolation: IsolationRunc}, "containerd"},
	}
	for _, l := range labels {
		if got := l.info.Label(); got != l.want {
			t.Errorf("%+v: label %q, want %q", l.info, got, l.want)
		}
	}
}
