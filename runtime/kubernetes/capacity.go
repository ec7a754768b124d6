package kubernetes

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// capacityGate holds a Pod back from the scheduler until it is admitted.
const capacityGate = "sandstorm.dev/capacity"

// admit waits until pod's turn comes under MaxSandboxes and lifts its
// scheduling gate. A Pod's turn is its rank among the namespace's live
// sandbox Pods, ordered by creation (the API server's clock, names break
// ties): every replica computes the same order, a rank only falls as Pods
// ahead go, and Pods made later rank after, so the sandboxes past the gate
// never exceed the limit, however many sandstorm processes share it.
func (r *Runtime) admit(ctx context.Context, pod *corev1.Pod) error {
	if r.cfg.MaxSandboxes <= 0 {
		return nil
	}
	deadline := time.Now().Add(r.cfg.StartTimeout)
	for {
		rank, err := r.rank(ctx, pod)
		if err != nil {
			return err
		}
		if rank < r.cfg.MaxSandboxes {
			patch := []byte(`{"spec":{"schedulingGates":null}}`)
			if _, err := r.pods().Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
				return r.apiErr("lift the capacity gate of Pod "+pod.Name, err)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: kubernetes: the cluster's %d sandboxes are all taken (%d ahead of this one) and none freed within %v",
				sandbox.ErrNoCapacity, r.cfg.MaxSandboxes, rank-r.cfg.MaxSandboxes+1, r.cfg.StartTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// rank is pod's place among the live sandbox Pods of the namespace.
func (r *Runtime) rank(ctx context.Context, pod *corev1.Pod) (int, error) {
	sel := labels.SelectorFromSet(map[string]string{oci.LabelManaged: "true"}).String()
	list, err := r.pods().List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return 0, r.apiErr("count the cluster's sandboxes", err)
	}
	live := slices.DeleteFunc(list.Items, func(p corev1.Pod) bool {
		return p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	})
	slices.SortFunc(live, func(a, b corev1.Pod) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	for i, p := range live {
		if p.UID == pod.UID {
			return i, nil
		}
	}
	return 0, fmt.Errorf("kubernetes: pod %s is gone while it waited for capacity", pod.Name)
}
