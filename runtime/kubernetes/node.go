package kubernetes

import (
	"context"
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

// nodeLeftovers names what the node (this host, NodeContainerd) still
// holds of Pod id: its containers with their tasks and snapshots in the
// CRI's containerd, and its cgroups.
func (r *Runtime) nodeLeftovers(ctx context.Context, id, uid string) ([]string, error) {
	c, err := containerd.New(r.cfg.NodeContainerd, containerd.WithDefaultNamespace(criNamespace))
	if err != nil {
		return nil, fmt.Errorf("node containerd %s: %w", r.cfg.NodeContainerd, err)
	}
	defer c.Close()
	ctx = namespaces.WithNamespace(ctx, criNamespace)
	filter := fmt.Sprintf(`labels."io.kubernetes.pod.namespace"==%q,labels."io.kubernetes.pod.name"==%q`, r.cfg.Namespace, id)
	found, err := c.Containers(ctx, filter)
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
			if _, err := c.SnapshotService(info.Snapshotter).Stat(ctx, info.SnapshotKey); err == nil {
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

// waitNode waits until the node holds nothing of Pod id. The kubelet
// removes a deleted Pod's containers only at its next garbage collection
// (up to a minute, measured), so the Pod's sandbox is removed through the
// node's CRI at once, as that collection would; the kubelet then drops the
// Pod's cgroups within its 2 s housekeeping.
func (r *Runtime) waitNode(ctx context.Context, id, uid string) error {
	var left []string
	for {
		if err := r.removePodSandboxes(ctx, id); err != nil {
			return err
		}
		var err error
		if left, err = r.nodeLeftovers(ctx, id, uid); err != nil {
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

// removePodSandboxes removes Pod id's sandboxes (and so their containers)
// through the CRI of the node's containerd.
func (r *Runtime) removePodSandboxes(ctx context.Context, id string) error {
	conn, err := grpc.NewClient("unix://"+r.cfg.NodeContainerd, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("node CRI %s: %w", r.cfg.NodeContainerd, err)
	}
	defer conn.Close()
	cri := criv1.NewRuntimeServiceClient(conn)
	list, err := cri.ListPodSandbox(ctx, &criv1.ListPodSandboxRequest{Filter: &criv1.PodSandboxFilter{LabelSelector: map[string]string{
		"io.kubernetes.pod.namespace": r.cfg.Namespace, "io.kubernetes.pod.name": id}}})
	if err != nil {
		return fmt.Errorf("node CRI: list pod sandboxes: %w", err)
	}
	for _, sb := range list.Items {
		// The kubelet may be removing the same at once: what it took first is
		// gone, which is what is wanted (waitNode looks again).
		if _, err := cri.RemovePodSandbox(ctx, &criv1.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil && status.Code(err) != codes.NotFound {
			return fmt.Errorf("node CRI: remove pod sandbox %s: %w", sb.Id, err)
		}
	}
	return nil
}
