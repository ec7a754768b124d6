package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	criv1 "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criNamespace is the containerd namespace of the CRI, where a node's Pods live.
const criNamespace = "k8s.io"

func (r *Runtime) uid(id string) string {
	r.uidMu.Lock()
	defer r.uidMu.Unlock()
	return r.uids[id]
}

// node is a node of this host (NodeContainerd): its containerd, and the
// CRI the kubelet drives it through.
type node struct {
	ctr  *containerd.Client
	conn *grpc.ClientConn
	cri  criv1.RuntimeServiceClient
}

func (r *Runtime) openNode() (*node, error) {
	c, err := containerd.New(r.cfg.NodeContainerd, containerd.WithDefaultNamespace(criNamespace))
	if err != nil {
		return nil, fmt.Errorf("node containerd %s: %w", r.cfg.NodeContainerd, err)
	}
	conn, err := grpc.NewClient("unix://"+r.cfg.NodeContainerd, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("node CRI %s: %w", r.cfg.NodeContainerd, err)
	}
	return &node{ctr: c, conn: conn, cri: criv1.NewRuntimeServiceClient(conn)}, nil
}

func (n *node) close() error { return errors.Join(n.ctr.Close(), n.conn.Close()) }

// leftovers names what the node still holds of Pod id (of namespace ns):
// its containers with their tasks and snapshots in the CRI's containerd,
// and its cgroups (uid is the Pod's).
func (n *node) leftovers(ctx context.Context, ns, id, uid string) ([]string, error) {
	ctx = namespaces.WithNamespace(ctx, criNamespace)
	filter := fmt.Sprintf(`labels."io.kubernetes.pod.namespace"==%q,labels."io.kubernetes.pod.name"==%q`, ns, id)
	found, err := n.ctr.Containers(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("node containerd: list containers: %w", err)
	}
	var left []string
	for _, ctr := range found {
		left = append(left, "node container "+ctr.ID())
		if _, err := ctr.Task(ctx, nil); err == nil {
			left = append(left, "node task "+ctr.ID())
		} else if !errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("node containerd: task of %s: %w", ctr.ID(), err)
		}
		info, err := ctr.Info(ctx)
		if err == nil && info.SnapshotKey != "" {
			if _, err := n.ctr.SnapshotService(info.Snapshotter).Stat(ctx, info.SnapshotKey); err == nil {
				left = append(left, "node snapshot "+info.SnapshotKey)
			}
		}
	}
	if uid != "" {
		for _, pattern := range []string{"/sys/fs/cgroup/*/kubepods/pod" + uid, "/sys/fs/cgroup/*/kubepods/*/pod" + uid} {
			dirs, _ := filepath.Glob(pattern)
			for _, d := range dirs {
				left = append(left, "cgroup "+d)
			}
		}
	}
	return left, nil
}

// removeSandboxes removes Pod id's sandboxes (and so their containers)
// through the CRI.
func (n *node) removeSandboxes(ctx context.Context, ns, id string) error {
	list, err := n.cri.ListPodSandbox(ctx, &criv1.ListPodSandboxRequest{Filter: &criv1.PodSandboxFilter{LabelSelector: map[string]string{
		"io.kubernetes.pod.namespace": ns, "io.kubernetes.pod.name": id}}})
	if err != nil {
		return fmt.Errorf("node CRI: list pod sandboxes: %w", err)
	}
	for _, sb := range list.Items {
		// The kubelet may be removing the same at once: what it took first is
		// gone, or going, which is what is wanted (waitNode looks again).
		if _, err := n.cri.RemovePodSandbox(ctx, &criv1.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil && !beingRemoved(err) {
			return fmt.Errorf("node CRI: remove pod sandbox %s: %w", sb.Id, err)
		}
	}
	return nil
}

// beingRemoved tells the CRI errors of a removal that another caller made
// first: gone already, or on its way (containerd 1.6 answers Unknown,
// "container is already in removing state", for a container whose removal
// is under way).
func beingRemoved(err error) bool {
	return status.Code(err) == codes.NotFound || strings.Contains(err.Error(), "already in removing state")
}

// waitNode waits until the node holds nothing of Pod id. The kubelet
// removes a deleted Pod's containers only at its next garbage collection
// (up to a minute, measured), so the Pod's sandbox is removed through the
// node's CRI at once, as that collection would; the kubelet then drops the
// Pod's cgroups within its 2 s housekeeping.
func (r *Runtime) waitNode(ctx context.Context, id, uid string) error {
	n, err := r.openNode()
	if err != nil {
		return err
	}
	defer n.close()
	for {
		if err := n.removeSandboxes(ctx, r.cfg.Namespace, id); err != nil {
			return err
		}
		left, err := n.leftovers(ctx, r.cfg.Namespace, id, uid)
		if err != nil {
			return err
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubernetes: the node still holds %s: %w", strings.Join(left, ", "), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
