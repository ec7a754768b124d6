package containerd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/pkg/netns"
	gocni "github.com/containerd/go-cni"

	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// networkName names the CNI network and its host-local IP allocations.
const networkName = "sandstorm"

// ipamDir is where the host-local IPAM plugin records allocations.
var ipamDir = filepath.Join("/var/lib/cni/networks", networkName)

// bridgePlugins must all be present for bridge mode.
var bridgePlugins = []string{"bridge", "host-local", "loopback", "firewall"}

// bridge attaches sandboxes to a NAT bridge through CNI.
type bridge struct {
	cfg Config
}

func newBridge(cfg Config) *bridge { return &bridge{cfg: cfg} }

// conflist is the CNI configuration: a bridge with NAT for egress and the
// firewall plugin so forwarding works on hosts whose FORWARD policy is DROP
// (as Docker sets it).
func (b *bridge) conflist() []byte {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       networkName,
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": "sandstorm0", "isGateway": true, "ipMasq": true,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": b.cfg.BridgeSubnet}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "firewall"},
		},
	}
	out, _ := json.Marshal(conf)
	return out
}

func (b *bridge) available() error {
	var missing []string
	for _, p := range bridgePlugins {
		found := false
		for _, d := range b.cfg.CNIPluginDirs {
			if _, err := os.Stat(filepath.Join(d, p)); err == nil {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("CNI plugins %s not found in %s (install containernetworking-plugins)",
			strings.Join(missing, ", "), strings.Join(b.cfg.CNIPluginDirs, ":"))
	}
	return nil
}

func (b *bridge) cni() (gocni.CNI, error) {
	c, err := gocni.New(gocni.WithPluginDir(b.cfg.CNIPluginDirs), gocni.WithMinNetworkCount(2))
	if err != nil {
		return nil, fmt.Errorf("CNI: %w", err)
	}
	if err := c.Load(gocni.WithConfListBytes(b.conflist()), gocni.WithLoNetwork); err != nil {
		return nil, fmt.Errorf("CNI: load configuration: %w", err)
	}
	return c, nil
}

// setup creates a network namespace under dir, attaches it to the bridge and
// returns its path.
func (b *bridge) setup(ctx context.Context, id, dir string) (string, error) {
	if err := b.available(); err != nil {
		return "", fmt.Errorf("%w: bridge network: %w", sandbox.ErrNotEnforceable, err)
	}
	c, err := b.cni()
	if err != nil {
		return "", err
	}
	ns, err := netns.NewNetNS(dir)
	if err != nil {
		return "", fmt.Errorf("create network namespace: %w", err)
	}
	if _, err := c.Setup(ctx, id, ns.GetPath()); err != nil {
		return ns.GetPath(), fmt.Errorf("CNI setup of sandbox %s: %w", id, err)
	}
	return ns.GetPath(), nil
}

// empty makes a network namespace with only loopback, in dir, where
// teardown finds it.
func (b *bridge) empty(dir string) (string, error) {
	ns, err := netns.NewNetNS(dir)
	if err != nil {
		return "", fmt.Errorf("create network namespace: %w", err)
	}
	return ns.GetPath(), nil
}

// teardown detaches the sandbox and removes its namespace. Namespaces live in
// the sandbox's scratch dir, so strays are found there even without a label.
func (b *bridge) teardown(ctx context.Context, id, dir, path string) error {
	paths := b.namespaces(dir)
	if path != "" && !slices.Contains(paths, path) {
		paths = append(paths, path)
	}
	if len(paths) == 0 && len(b.leftovers(id)) > 0 {
		// An allocation whose namespace is gone: CNI DEL releases it all the same.
		if c, err := b.cni(); err == nil {
			if err := c.Remove(ctx, id, ""); err != nil {
				return fmt.Errorf("CNI teardown of sandbox %s: %w", id, err)
			}
		}
		return nil
	}
	for _, p := range paths {
		if c, err := b.cni(); err == nil {
			if err := c.Remove(ctx, id, p); err != nil {
				return fmt.Errorf("CNI teardown of sandbox %s: %w", id, err)
			}
		}
		if err := netns.LoadNetNS(p).Remove(); err != nil {
			return fmt.Errorf("remove network namespace %s: %w", p, err)
		}
	}
	return nil
}

// namespaces lists network namespace files made by setup in dir.
func (b *bridge) namespaces(dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, "cni-*"))
	return m
}

// allocations maps each host-local IP allocation file to the sandbox
// holding it (the file's first line is the container id).
func (b *bridge) allocations() map[string]string {
	entries, err := os.ReadDir(ipamDir)
	if err != nil {
		return nil
	}
	held := map[string]string{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(ipamDir, e.Name()))
		first, _, _ := strings.Cut(strings.ReplaceAll(string(data), "\r", ""), "\n")
		if err == nil && sandbox.ValidID(first) {
			held[e.Name()] = first
		}
	}
	return held
}

// allocated lists the sandboxes holding an IP allocation.
func (b *bridge) allocated() []string {
	var ids []string
	for _, id := range b.allocations() {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// leftovers names IP allocations still held by sandbox id.
func (b *bridge) leftovers(id string) []string {
	var left []string
	for file, holder := range b.allocations() {
		if holder == id {
			left = append(left, "IP allocation "+file)
		}
	}
	return left
}
