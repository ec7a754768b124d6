package e2e

import (
	"cmp"
	"context"
	"os"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/containerd"
	"github.com/sandstorm-dev/sandstorm/runtime/docker"
	"github.com/sandstorm-dev/sandstorm/runtime/kubernetes"
	"github.com/sandstorm-dev/sandstorm/runtime/podman"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

func TestContainerd(t *testing.T) {
	scenarios(t, backend{name: "containerd", open: func(ctx context.Context) (sandbox.Runtime, error) {
		return containerd.New(ctx, containerd.Config{Address: os.Getenv("SANDSTORM_CONTAINERD_SOCKET")})
	}})
}

func TestDocker(t *testing.T) {
	scenarios(t, backend{name: "docker", open: func(ctx context.Context) (sandbox.Runtime, error) {
		return docker.New(ctx, docker.Config{Host: os.Getenv("SANDSTORM_DOCKER_SOCKET")})
	}})
}

func TestPodman(t *testing.T) {
	scenarios(t, backend{name: "podman", open: func(ctx context.Context) (sandbox.Runtime, error) {
		return podman.New(ctx, podman.Config{Socket: testenv.PodmanSocket(false)})
	}})
}

// TestPodmanRootless runs as a non-root sandstorm would: on cgroup v1 the
// service cannot enforce resource limits, so the runs allow that explicitly
// and the stream must say which limits were not enforced.
func TestPodmanRootless(t *testing.T) {
	allow := []sandbox.Item{sandbox.ItemMemoryLimit, sandbox.ItemCPULimit, sandbox.ItemPidsLimit}
	scenarios(t, backend{name: "podman-rootless", allow: allow, open: func(ctx context.Context) (sandbox.Runtime, error) {
		return podman.New(ctx, podman.Config{
			Socket:             testenv.PodmanSocket(true),
			NoCgroupDelegation: true,
		})
	}})
}

// gvisorAllow are the items gVisor cannot enforce that a default policy
// needs (sandbox.GVisorUnenforced): the runs allow them, and the stream says so.
var gvisorAllow = []sandbox.Item{sandbox.ItemPidsLimit, sandbox.ItemNosuidMounts}

// TestContainerdGVisor runs the same agent under gVisor (runsc through the
// runc v2 shim).
func TestContainerdGVisor(t *testing.T) {
	scenarios(t, backend{name: "containerd+gvisor", allow: gvisorAllow, open: func(ctx context.Context) (sandbox.Runtime, error) {
		return containerd.New(ctx, containerd.Config{Address: os.Getenv("SANDSTORM_CONTAINERD_SOCKET"), Isolation: sandbox.IsolationGVisor})
	}})
}

// TestDockerGVisor runs the same agent under gVisor (Docker's runtime sandstorm-runsc).
func TestDockerGVisor(t *testing.T) {
	scenarios(t, backend{name: "docker+gvisor", allow: gvisorAllow, open: func(ctx context.Context) (sandbox.Runtime, error) {
		return docker.New(ctx, docker.Config{Host: os.Getenv("SANDSTORM_DOCKER_SOCKET"), Isolation: sandbox.IsolationGVisor})
	}})
}

// TestPodmanGVisor runs the same agent under gVisor on a root Podman
// service of the test's own whose default runtime is runsc (Podman 4.3
// takes none per container).
func TestPodmanGVisor(t *testing.T) {
	conformance.NeedsDaemon(t, "podman+gvisor")
	d := testenv.StartPodman(t, "e2e-podman-gvisor", "--runtime", sandbox.GVisorRuntime)
	scenarios(t, backend{name: "podman+gvisor", allow: gvisorAllow, open: func(ctx context.Context) (sandbox.Runtime, error) {
		return podman.New(ctx, podman.Config{Socket: d.Address, Isolation: sandbox.IsolationGVisor})
	}})
}

// kubernetesAllow are the items a Pod cannot have that a default policy
// needs (see runtime/kubernetes): the runs allow them, and the stream says so.
var kubernetesAllow = []sandbox.Item{sandbox.ItemPidsLimit, sandbox.ItemNosuidMounts, sandbox.ItemNetworkNone}

// TestKubernetes runs the same agent as a Pod on the cluster $KUBECONFIG
// names (scripts/k8s-up.sh), reaching the gateway over TCP at the node's
// address of this host.
func TestKubernetes(t *testing.T) {
	host := cmp.Or(os.Getenv("SANDSTORM_K8S_GATEWAY_HOST"), "10.245.0.1")
	scenarios(t, backend{name: "kubernetes", allow: kubernetesAllow, gatewayHost: host, open: func(ctx context.Context) (sandbox.Runtime, error) {
		return kubernetes.New(ctx, kubernetes.FromEnv("", ""))
	}})
}

// BenchmarkFirstMessage times, on containerd, a whole agent run and the time
// from the request to the SDK's first message (system init) in the stream.
func BenchmarkFirstMessage(b *testing.B) {
	ctx := context.Background()
	rt, err := containerd.New(ctx, containerd.Config{Address: os.Getenv("SANDSTORM_CONTAINERD_SOCKET")})
	if err != nil {
		b.Skip(err)
	}
	defer rt.Close()
	testenv.EnsureAgentImage(b, rt, "containerd")
	var first, total time.Duration
	for i := 0; i < b.N; i++ {
		f, tot := timeRun(b, rt)
		first += f
		total += tot
	}
	b.ReportMetric(float64(first.Milliseconds())/float64(b.N), "first-message-ms")
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "run-ms")
}
