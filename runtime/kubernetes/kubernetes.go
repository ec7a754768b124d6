// Package kubernetes runs sandboxes as Pods on a Kubernetes cluster,
// through its API server (client-go): one Pod per sandbox, meeting Pod
// Security "restricted", in a namespace of sandstorm's own. It is the
// backend for when one host is not enough.
package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/containerd"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/lifecycle"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// LabelHost names the host of the sandstorm process that made a Pod: an
// owner (boot, pid, start) is judged alive or gone only on its own host.
const LabelHost = "sandstorm.host"

// host is this host's name, as LabelHost holds it.
var host = sync.OnceValue(func() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
})

// Name is the backend's name.
const Name = "kubernetes"

// DefaultNamespace holds sandstorm's Pods.
const DefaultNamespace = "sandstorm"

// DefaultStartTimeout bounds how long a Pod may wait for a node: past it,
// the sandbox fails with sandbox.ErrUnavailable instead of hanging.
const DefaultStartTimeout = 60 * time.Second

// Config selects the cluster and how sandboxes run on it.
type Config struct {
	// Kubeconfig is the kubeconfig file; empty means $KUBECONFIG, then
	// ~/.kube/config, then the in-cluster service account.
	Kubeconfig string
	// Namespace holds the Pods (DefaultNamespace); it is created with Pod
	// Security "restricted" enforced when missing.
	Namespace string
	// Isolation is what the Pods run with: runc (the cluster's default
	// runtime) or gvisor (RuntimeClass, default "gvisor").
	Isolation    sandbox.Isolation
	RuntimeClass string
	// SeccompProfile is sandstorm's seccomp profile as the nodes hold it,
	// relative to the kubelet's seccomp directory (k8s-up.sh installs
	// "sandstorm.json"); empty means the runtime's default profile.
	SeccompProfile string
	// NodeSelector narrows the nodes sandboxes run on.
	NodeSelector map[string]string
	// StartTimeout: see DefaultStartTimeout.
	StartTimeout time.Duration
	// MaxSandboxes, if set, bounds the sandboxes in the namespace, counted
	// from its Pods: every sandstorm using the cluster shares it. A Pod
	// over it waits, ungated for the scheduler only when its turn comes
	// (first come, first served), at most StartTimeout.
	MaxSandboxes int
	// NodeContainerd is the address of the node's containerd, for a cluster
	// whose node is this host (the project's test cluster): images are
	// imported there. Without it ImportImage refuses: a real cluster pulls
	// images from a registry.
	NodeContainerd string
	// State holds each sandbox's workspace as copied out of its Pod.
	State string
}

// FromEnv reads the backend's settings from the environment:
// SANDSTORM_K8S_NAMESPACE, SANDSTORM_K8S_SECCOMP_PROFILE,
// SANDSTORM_K8S_RUNTIME_CLASS, SANDSTORM_K8S_NODE_CONTAINERD.
func FromEnv(kubeconfig string, iso sandbox.Isolation) Config {
	return Config{
		Kubeconfig:     kubeconfig,
		Namespace:      os.Getenv("SANDSTORM_K8S_NAMESPACE"),
		Isolation:      iso,
		RuntimeClass:   os.Getenv("SANDSTORM_K8S_RUNTIME_CLASS"),
		SeccompProfile: os.Getenv("SANDSTORM_K8S_SECCOMP_PROFILE"),
		NodeContainerd: os.Getenv("SANDSTORM_K8S_NODE_CONTAINERD"),
	}
}

func (c Config) withDefaults() Config {
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.Isolation == "" {
		c.Isolation = sandbox.IsolationRunc
	}
	if c.Isolation == sandbox.IsolationGVisor && c.RuntimeClass == "" {
		c.RuntimeClass = "gvisor"
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.State == "" {
		c.State = string(lifecycle.DefaultState(Name))
	}
	return c
}

// Runtime is a connection to one cluster.
type Runtime struct {
	cfg     Config
	rest    *rest.Config
	client  kubernetes.Interface
	server  string
	version string

	// uids are the Pod UIDs of this process's sandboxes, so Leftovers can
	// find a Pod's cgroups on the node after the Pod is gone.
	uidMu sync.Mutex
	uids  map[string]string

	capsOnce sync.Once
	caps     sandbox.Enforcement
	capsErr  error
}

// New connects to the cluster and makes sure sandstorm's namespace is there.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	cfg = cfg.withDefaults()
	// client-go reports through klog, to stderr by default: into slog
	// instead, with everything else sandstorm logs.
	klog.SetSlogLogger(slog.Default())
	rc, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("%w: kubernetes: %w", sandbox.ErrUnavailable, err)
	}
	rc.Timeout = 0
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("%w: kubernetes: %w", sandbox.ErrUnavailable, err)
	}
	r := &Runtime{cfg: cfg, rest: rc, client: client, server: rc.Host, uids: map[string]string{}}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := client.Discovery().ServerVersionWithContext(vctx)
	if err != nil {
		return nil, fmt.Errorf("%w: kubernetes API server %s: %w", sandbox.ErrUnavailable, rc.Host, err)
	}
	r.version = v.GitVersion
	if err := r.ensureNamespace(vctx); err != nil {
		return nil, err
	}
	if cfg.RuntimeClass != "" {
		if _, err := client.NodeV1().RuntimeClasses().Get(vctx, cfg.RuntimeClass, metav1.GetOptions{}); err != nil {
			return nil, fmt.Errorf("%w: kubernetes: isolation %s needs RuntimeClass %q: %w", sandbox.ErrUnavailable, cfg.Isolation, cfg.RuntimeClass, err)
		}
	}
	if err := os.MkdirAll(cfg.State, 0o700); err != nil {
		return nil, fmt.Errorf("kubernetes: state directory: %w", err)
	}
	return r, nil
}

// restConfig loads a kubeconfig the way kubectl does, or the in-cluster
// service account when there is none.
func restConfig(explicit string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = explicit
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	rc, err := cc.ClientConfig()
	if err == nil {
		return rc, nil
	}
	if explicit == "" && clientcmd.IsEmptyConfig(err) {
		if in, ierr := rest.InClusterConfig(); ierr == nil {
			return in, nil
		}
		return nil, errors.New("no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not running in a cluster")
	}
	return nil, err
}

// Pod Security admission labels of sandstorm's namespace.
var podSecurity = map[string]string{
	"pod-security.kubernetes.io/enforce": "restricted",
	"pod-security.kubernetes.io/warn":    "restricted",
}

// ensureNamespace creates the namespace with Pod Security restricted
// enforced, or checks that an existing one enforces it.
func (r *Runtime) ensureNamespace(ctx context.Context) error {
	ns, err := r.client.CoreV1().Namespaces().Get(ctx, r.cfg.Namespace, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		ns = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.cfg.Namespace, Labels: maps.Clone(podSecurity)}}
		_, err = r.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return r.ensureNamespace(ctx)
		}
	}
	if err != nil {
		return fmt.Errorf("%w: kubernetes namespace %s: %w", sandbox.ErrUnavailable, r.cfg.Namespace, err)
	}
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		return fmt.Errorf("%w: kubernetes namespace %s does not enforce Pod Security \"restricted\" (label it pod-security.kubernetes.io/enforce=restricted)", sandbox.ErrUnavailable, r.cfg.Namespace)
	}
	return nil
}

// Name is "kubernetes".
func (r *Runtime) Name() string { return Name }

// Close releases nothing: the client holds no connection that outlives a call.
func (r *Runtime) Close() error { return nil }

// Info names the API server and its version.
func (r *Runtime) Info(ctx context.Context) (sandbox.Info, error) {
	info := sandbox.Info{Name: Name, Version: r.version, Socket: r.server + " namespace " + r.cfg.Namespace, Isolation: r.cfg.Isolation}
	info.Differences = differences(r.cfg)
	return info, nil
}

// Enforcement reports what Pods on this cluster enforce, once per
// connection: the nodes' kubelets are read for their pids limit.
func (r *Runtime) Enforcement(ctx context.Context) (sandbox.Enforcement, error) {
	r.capsOnce.Do(func() { r.caps, r.capsErr = r.capabilities(ctx) })
	return maps.Clone(r.caps), r.capsErr
}

func (r *Runtime) capabilities(ctx context.Context) (sandbox.Enforcement, error) {
	caps := lifecycle.AllEnforced()
	nodes, err := r.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(r.cfg.NodeSelector).String()})
	if err != nil {
		return nil, fmt.Errorf("%w: kubernetes nodes: %w", sandbox.ErrUnavailable, err)
	}
	if len(nodes.Items) == 0 {
		return nil, fmt.Errorf("%w: kubernetes: no node matches %v", sandbox.ErrUnavailable, r.cfg.NodeSelector)
	}
	caps[sandbox.ItemGrantCapabilities] = sandbox.Support{Reason: "Kubernetes gives a non-root container user no ambient capabilities, and Pod Security restricted lets a Pod add none but NET_BIND_SERVICE"}
	caps[sandbox.ItemPidsLimit] = sandbox.Support{Reason: "a Pod has no pids limit of its own: the kubelet's podPidsLimit bounds every Pod of a node alike" + r.podPidsLimits(ctx, nodes.Items)}
	caps[sandbox.ItemNetworkNone] = sandbox.Support{Reason: "a Pod is always on the cluster network; sandstorm cannot prove that this cluster enforces a NetworkPolicy that would isolate it"}
	caps[sandbox.ItemBindMounts] = sandbox.Support{Reason: "Pod Security restricted allows no hostPath volumes, and a Pod may run on another host than the path's"}
	caps[sandbox.ItemNosuidMounts] = sandbox.Support{Reason: "the kubelet mounts emptyDir volumes without nosuid and nodev (allowPrivilegeEscalation: false still keeps set-uid files from raising privileges)"}
	if r.cfg.Isolation == sandbox.IsolationGVisor {
		for it, why := range sandbox.GVisorUnenforced() {
			if caps[it].Enforced {
				caps[it] = sandbox.Support{Reason: why}
			}
		}
	}
	return caps, nil
}

// podPidsLimits says what the nodes' kubelets set (through the API
// server's node proxy, which may be refused).
func (r *Runtime) podPidsLimits(ctx context.Context, nodes []corev1.Node) string {
	var seen []string
	for _, n := range nodes {
		raw, err := r.client.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", n.Name, "proxy", "configz").DoRaw(ctx)
		if err != nil {
			continue
		}
		var cfg struct {
			KubeletConfig struct {
				PodPidsLimit *int64 `json:"podPidsLimit"`
			} `json:"kubeletconfig"`
		}
		if json.Unmarshal(raw, &cfg) == nil && cfg.KubeletConfig.PodPidsLimit != nil {
			seen = append(seen, fmt.Sprintf("%s: %d", n.Name, *cfg.KubeletConfig.PodPidsLimit))
		}
	}
	if len(seen) == 0 {
		return ""
	}
	return " (" + strings.Join(seen, ", ") + ")"
}

// differences are where a Pod differs, seen from the inside, from the
// golden fingerprint.
func differences(cfg Config) []sandbox.Difference {
	d := []sandbox.Difference{
		{Line: "mount /dev", Value: "tmpfs rw,nosuid", Reason: "the container runtime's CRI mounts /dev without noexec"},
		{Line: "mount /tmp", Value: "tmpfs rw", Reason: "an emptyDir in memory: the kubelet mounts it without nosuid and nodev"},
		{Line: "mount " + oci.Workspace, Value: "node-fs rw", Reason: "an emptyDir on the node's disk (node-fs: the filesystem of the kubelet's directory): the kubelet mounts it without nosuid and nodev"},
		{Line: "mount /run/sandstorm", Value: "not a mount", Reason: "Pod Security restricted allows no hostPath volume: the gateway is reached over the network"},
		{Line: "net eth0", Value: "up", Reason: "a Pod is always on the cluster network"},
	}
	if cfg.SeccompProfile == "" {
		d = append(d, sandbox.Difference{Line: "seccomp", Value: "RuntimeDefault", Reason: "the nodes' runtime default profile: set the kubelet's seccomp profile (SANDSTORM_K8S_SECCOMP_PROFILE) for sandstorm's"})
	}
	return d
}

// ImportImage loads an image into the node's containerd when the node is
// this host (NodeContainerd); a real cluster's nodes pull from a registry.
func (r *Runtime) ImportImage(ctx context.Context, rd io.Reader) ([]string, error) {
	node, err := r.nodeContainerd(ctx)
	if err != nil {
		return nil, err
	}
	defer node.Close()
	return node.ImportImage(ctx, rd)
}

// HasImage reports whether the node's containerd has ref; without one it
// reads the images the nodes report.
func (r *Runtime) HasImage(ctx context.Context, ref string) (bool, error) {
	if r.cfg.NodeContainerd != "" {
		node, err := r.nodeContainerd(ctx)
		if err != nil {
			return false, err
		}
		defer node.Close()
		return node.HasImage(ctx, ref)
	}
	nodes, err := r.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(r.cfg.NodeSelector).String()})
	if err != nil {
		return false, fmt.Errorf("%w: kubernetes nodes: %w", sandbox.ErrUnavailable, err)
	}
	for _, n := range nodes.Items {
		for _, img := range n.Status.Images {
			if slices.Contains(img.Names, ref) {
				return true, nil
			}
		}
	}
	return false, nil
}

func (r *Runtime) nodeContainerd(ctx context.Context) (*containerd.Runtime, error) {
	if r.cfg.NodeContainerd == "" {
		return nil, fmt.Errorf("%w: kubernetes: images cannot be imported into a cluster: push the image to a registry its nodes pull from "+
			"(or, for a node on this host, set SANDSTORM_K8S_NODE_CONTAINERD to its containerd's socket)", sandbox.ErrInvalidSpec)
	}
	return containerd.New(ctx, containerd.Config{Address: r.cfg.NodeContainerd, Namespace: "k8s.io"})
}

// Create makes the sandbox's Pod and waits until it is scheduled, its
// containers run and the workspace files are in: the process itself waits
// for Start.
func (r *Runtime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	return lifecycle.Create(ctx, r, spec, r.steps)
}

// creation is one Create's steps (see lifecycle.Create).
type creation struct {
	r      *Runtime
	spec   sandbox.Spec
	prep   sandbox.Prepared
	labels map[string]string
	sb     *box
	pod    *corev1.Pod
	// made is the Pod this Create made, once it made one.
	made *corev1.Pod
}

func (r *Runtime) steps(_ context.Context, spec sandbox.Spec, prep sandbox.Prepared, _ sandbox.Enforcement) (lifecycle.Steps, error) {
	if err := checkName(prep.ID); err != nil {
		return nil, err
	}
	all := oci.Container{SessionID: spec.SessionID, Labels: prep.Labels}.AllLabels()
	all[LabelHost] = host()
	sb := &box{rt: r, id: prep.ID, unenforced: prep.Unenforced, scratch: filepath.Join(r.cfg.State, prep.ID), done: make(chan struct{})}
	pod := r.podFor(prep, spec, all)
	if r.cfg.MaxSandboxes > 0 {
		pod.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: capacityGate}}
	}
	return &creation{r: r, spec: spec, prep: prep, labels: all, sb: sb, pod: pod}, nil
}

// Claim creates the sandbox's Secret, named by its id, which claims it.
func (c *creation) Claim(dctx context.Context) error {
	if _, err := c.secrets().Create(dctx, c.r.secretFor(c.prep, c.spec, c.labels), metav1.CreateOptions{}); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%w: sandbox id %s is taken", sandbox.ErrInvalidSpec, c.prep.ID)
		}
		return c.r.apiErr("create Secret", err)
	}
	return nil
}

// Setup has nothing to make: a Pod's volumes are the kubelet's.
func (c *creation) Setup(context.Context, context.Context) error { return nil }

// Make creates the Pod and has it own the Secret.
func (c *creation) Make(_, dctx context.Context) error {
	r, id := c.r, c.prep.ID
	made, err := r.pods().Create(dctx, c.pod, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("%w: sandbox id %s is taken", sandbox.ErrInvalidSpec, id)
	}
	if err != nil {
		return r.apiErr("create Pod", err)
	}
	c.made = made
	// The Secret goes with its Pod, also when no sandstorm is left to remove it.
	owner := fmt.Sprintf(`{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"Pod","name":%q,"uid":%q}]}}`, made.Name, made.UID)
	if _, err := c.secrets().Patch(dctx, id, types.MergePatchType, []byte(owner), metav1.PatchOptions{}); err != nil {
		return r.apiErr("own the Secret by its Pod", err)
	}
	r.uidMu.Lock()
	r.uids[id] = string(made.UID)
	r.uidMu.Unlock()
	return nil
}

// Verify waits for the Pod's turn, then for its containers to run, and
// puts the workspace files in.
func (c *creation) Verify(ctx context.Context) (sandbox.Sandbox, error) {
	if err := c.r.admit(ctx, c.made); err != nil {
		return nil, err
	}
	if err := c.sb.ready(ctx); err != nil {
		return nil, err
	}
	if len(c.spec.Files) > 0 {
		if err := c.sb.putFiles(ctx, c.spec.Files); err != nil {
			return nil, fmt.Errorf("workspace files: %w", err)
		}
	}
	return c.sb, nil
}

// Undo removes the Secret, and the sandbox once this Create made its Pod;
// not a Pod of the same name it did not make.
func (c *creation) Undo(ctx context.Context) error {
	if c.made == nil {
		return c.secrets().Delete(ctx, c.prep.ID, metav1.DeleteOptions{})
	}
	return c.sb.Remove(ctx)
}

func (c *creation) secrets() typedcorev1.SecretInterface {
	return c.r.client.CoreV1().Secrets(c.r.cfg.Namespace)
}

func (r *Runtime) pods() podClient { return r.client.CoreV1().Pods(r.cfg.Namespace) }

// apiErr wraps a failed API call: sandbox.ErrUnavailable when the API
// server could not be reached or answered with a server failure.
func (r *Runtime) apiErr(what string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("kubernetes: %s: %w", what, err)
	}
	if unreachable(err) {
		return fmt.Errorf("%w: kubernetes: %s: %w", sandbox.ErrUnavailable, what, err)
	}
	if apierrors.IsInvalid(err) || apierrors.IsForbidden(err) || apierrors.IsBadRequest(err) {
		return fmt.Errorf("%w: kubernetes: %s: %w", sandbox.ErrInvalidSpec, what, err)
	}
	return fmt.Errorf("kubernetes: %s: %w", what, err)
}

// unreachable reports whether err says the API server is not there.
func unreachable(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &oe) || errors.As(err, &ne) || apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err) ||
		apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) || strings.Contains(err.Error(), "connection refused")
}

// List returns the sandboxes whose Pods carry all the given labels.
func (r *Runtime) List(ctx context.Context, want map[string]string) ([]sandbox.SandboxInfo, error) {
	sel := lifecycle.Selector(want)
	pods, err := r.pods().List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(kubeLabels(sel)).String()})
	if err != nil {
		return nil, r.apiErr("list Pods", err)
	}
	var out []sandbox.SandboxInfo
	for i := range pods.Items {
		p := &pods.Items[i]
		have := labelsOf(p)
		if !lifecycle.Matches(have, sel) {
			continue
		}
		if have[LabelHost] != host() {
			// Its owner runs on another host: whether it is alive is not
			// this process's to judge (its boot id means nothing here).
			delete(have, oci.LabelOwner)
		}
		out = append(out, sandbox.SandboxInfo{ID: p.Name, SessionID: have[oci.LabelSession], Labels: have, Running: p.Status.Phase == corev1.PodRunning || p.Status.Phase == corev1.PodPending})
	}
	return out, nil
}

// Remove deletes sandbox id's Pod, waits until it is gone, and removes the
// workspace copy.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	if err := checkName(id); err != nil {
		return err
	}
	return r.remove(ctx, id, filepath.Join(r.cfg.State, id))
}

// remove deletes Pod name gracefully (a forced delete would drop the API
// object while the node still runs its containers), waits for the kubelet
// to confirm it, and, on a node of this host, for the node to let go of
// its containers and cgroups.
func (r *Runtime) remove(ctx context.Context, name, scratch string) error {
	uid := r.uid(name)
	grace := int64(1)
	err := r.pods().Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	if err != nil && !apierrors.IsNotFound(err) {
		return r.apiErr("delete Pod "+name, err)
	}
	if err == nil {
		if _, err := r.waitPod(ctx, name, func(p *corev1.Pod) (bool, error) { uid = string(p.UID); return false, nil }); err != nil && !errors.Is(err, errPodGone) {
			return r.apiErr("wait for Pod "+name+" to go", err)
		}
	}
	if err := r.client.CoreV1().Secrets(r.cfg.Namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return r.apiErr("delete Secret "+name, err)
	}
	if r.cfg.NodeContainerd != "" {
		if err := r.waitNode(ctx, name, uid); err != nil {
			return err
		}
	}
	r.uidMu.Lock()
	delete(r.uids, name)
	r.uidMu.Unlock()
	if err := os.RemoveAll(scratch); err != nil {
		return fmt.Errorf("kubernetes: remove workspace copy: %w", err)
	}
	return nil
}

// Leftovers names what is left of sandbox id (none when id is empty) and
// of its session: Pods, their containers, Secrets, ConfigMaps, the
// workspace copy, and on a node of this host what the node holds.
func (r *Runtime) Leftovers(ctx context.Context, id, sessionID string) ([]string, error) {
	var left []string
	if id != "" {
		var err error
		if left, err = r.sandboxLeftovers(ctx, id); err != nil {
			return nil, err
		}
	}
	sel := metav1.ListOptions{LabelSelector: labels.SelectorFromSet(kubeLabels(map[string]string{oci.LabelSession: sessionID, oci.LabelManaged: "true"})).String()}
	pods, err := r.pods().List(ctx, sel)
	if err != nil {
		return nil, r.apiErr("list Pods", err)
	}
	for _, p := range pods.Items {
		left = append(left, "pod "+p.Name+" of session "+sessionID)
	}
	secrets, err := r.client.CoreV1().Secrets(r.cfg.Namespace).List(ctx, sel)
	if err != nil {
		return nil, r.apiErr("list Secrets", err)
	}
	for _, s := range secrets.Items {
		left = append(left, "secret "+s.Name+" of session "+sessionID)
	}
	cms, err := r.client.CoreV1().ConfigMaps(r.cfg.Namespace).List(ctx, sel)
	if err != nil {
		return nil, r.apiErr("list ConfigMaps", err)
	}
	for _, c := range cms.Items {
		left = append(left, "configmap "+c.Name)
	}
	return left, nil
}

// sandboxLeftovers names what is left of sandbox id by its name.
func (r *Runtime) sandboxLeftovers(ctx context.Context, id string) ([]string, error) {
	var left []string
	uid := r.uid(id)
	if pod, err := r.pods().Get(ctx, id, metav1.GetOptions{}); err == nil {
		left = append(left, "pod "+id)
		uid = string(pod.UID)
		for _, c := range slices.Concat(pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses) {
			if c.ContainerID != "" && c.State.Terminated == nil || c.Name == sandboxContainer && c.ContainerID != "" {
				left = append(left, "container "+id+"/"+c.Name+" "+c.ContainerID)
			}
		}
	} else if !apierrors.IsNotFound(err) {
		return nil, r.apiErr("get Pod", err)
	}
	if _, err := r.client.CoreV1().Secrets(r.cfg.Namespace).Get(ctx, id, metav1.GetOptions{}); err == nil {
		left = append(left, "secret "+id)
	} else if !apierrors.IsNotFound(err) {
		return nil, r.apiErr("get Secret", err)
	}
	if _, err := os.Stat(filepath.Join(r.cfg.State, id)); err == nil {
		left = append(left, "workspace copy "+filepath.Join(r.cfg.State, id))
	}
	if r.cfg.NodeContainerd != "" {
		n, err := r.openNode()
		if err != nil {
			return nil, err
		}
		defer n.close()
		more, err := n.leftovers(ctx, r.cfg.Namespace, id, uid)
		if err != nil {
			return nil, err
		}
		left = append(left, more...)
	}
	return left, nil
}
