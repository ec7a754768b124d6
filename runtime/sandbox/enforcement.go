package sandbox

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sandstorm-dev/sandstorm/oci"
)

// Item is one policy item a backend may or may not enforce.
type Item string

// The policy items. Each maps to one rule of oci.Policy.
const (
	// ItemCapabilities: no capabilities beyond the listed ones, in every set.
	ItemCapabilities Item = "capabilities"
	// ItemGrantCapabilities: the listed capabilities are effective for the
	// non-root sandbox user (ambient), not only in its bounding set.
	ItemGrantCapabilities Item = "grant_capabilities"
	ItemNoNewPrivileges   Item = "no_new_privileges"
	ItemSeccomp           Item = "seccomp"
	ItemReadOnlyRoot      Item = "read_only_root"
	ItemUser              Item = "user"
	ItemMemoryLimit       Item = "memory_limit"
	ItemCPULimit          Item = "cpu_limit"
	ItemPidsLimit         Item = "pids_limit"
	ItemNoFileLimit       Item = "nofile_limit"
	ItemNetworkNone       Item = "network_none"
	ItemNetworkBridge     Item = "network_bridge"
	ItemBindMounts        Item = "bind_mounts"
	// ItemNosuidMounts: the workspace, /tmp and bind mounts are nosuid,nodev.
	ItemNosuidMounts Item = "nosuid_mounts"
	ItemOOMDetection Item = "oom_detection"
)

// AllItems lists every item in report order.
var AllItems = []Item{
	ItemCapabilities, ItemGrantCapabilities, ItemNoNewPrivileges, ItemSeccomp, ItemReadOnlyRoot, ItemUser,
	ItemMemoryLimit, ItemCPULimit, ItemPidsLimit, ItemNoFileLimit,
	ItemNetworkNone, ItemNetworkBridge, ItemBindMounts, ItemNosuidMounts, ItemOOMDetection,
}

// ParseItems checks that each name is a policy item.
func ParseItems(names []string) ([]Item, error) {
	items := make([]Item, 0, len(names))
	for _, n := range names {
		it := Item(strings.TrimSpace(n))
		if !slices.Contains(AllItems, it) {
			known := make([]string, len(AllItems))
			for i, a := range AllItems {
				known[i] = string(a)
			}
			return nil, fmt.Errorf("%w: unknown policy item %q (known: %s)", ErrInvalidSpec, n, strings.Join(known, ", "))
		}
		items = append(items, it)
	}
	return items, nil
}

// Support says whether one item is enforced, and why not when it is not.
type Support struct {
	Enforced bool
	Reason   string
}

// Enforcement is a backend's report: what it enforces on this host.
type Enforcement map[Item]Support

// Enforced reports whether item is enforced.
func (c Enforcement) Enforced(item Item) bool { return c[item].Enforced }

// Required lists the items a defaulted policy needs enforced.
func Required(p oci.Policy) []Item {
	items := []Item{
		ItemCapabilities, ItemNoNewPrivileges, ItemUser,
		ItemMemoryLimit, ItemCPULimit, ItemPidsLimit, ItemNoFileLimit, ItemNosuidMounts,
	}
	if len(p.Capabilities) > 0 {
		items = append(items, ItemGrantCapabilities)
	}
	if p.Seccomp == oci.SeccompDefault {
		items = append(items, ItemSeccomp)
	}
	if !p.WritableRoot {
		items = append(items, ItemReadOnlyRoot)
	}
	switch p.Network {
	case oci.NetworkBridge:
		items = append(items, ItemNetworkBridge)
	default:
		items = append(items, ItemNetworkNone)
	}
	if len(p.Mounts) > 0 {
		items = append(items, ItemBindMounts)
	}
	return items
}

// Check fails closed: it returns an ErrNotEnforceable error naming every
// item the policy needs that c does not enforce and the caller did not allow.
// It also returns the allowed-but-unenforced items, so the caller can say so.
func (c Enforcement) Check(p oci.Policy, allow []Item) (unenforced []Item, err error) {
	var missing []string
	for _, it := range Required(p) {
		if c.Enforced(it) {
			continue
		}
		if slices.Contains(allow, it) {
			unenforced = append(unenforced, it)
			continue
		}
		s := string(it)
		if r := c[it].Reason; r != "" {
			s += " (" + r + ")"
		}
		missing = append(missing, s)
	}
	if len(missing) > 0 {
		return unenforced, fmt.Errorf("%w: %s; allow running without them explicitly to proceed", ErrNotEnforceable, strings.Join(missing, ", "))
	}
	return unenforced, nil
}
