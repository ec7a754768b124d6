package kubernetes

import (
	"fmt"
	"maps"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// The Pod's two containers: the sandbox, and a keeper that holds the
// workspace while files go in before the process starts and come out
// after it ended (a container that exited cannot be exec'ed into).
const (
	sandboxContainer = "sandbox"
	keeperContainer  = "keeper"
)

// annotationPrefix marks the annotations that hold every label of the
// sandbox: a label Kubernetes refuses (too long, a character it does not
// allow) is still kept there and matched by List.
const annotationPrefix = "sandstorm.dev/label."

// gate is the sandbox container's PID 1. It waits for the line Start sends
// once the attach is in place (so no output is lost); sets every rlimit the
// other backends set through the OCI spec (Kubernetes has none), each word
// of $1 one ulimit call ("n=4096" is ulimit -n 4096; soft and hard both, which the
// unprivileged process cannot raise again; a failure ends the sandbox
// before the command runs); then runs the command as its child: PID 1 of a
// namespace ignores signals from inside it, and Kill needs a process that
// "kill -9 -1" from an exec reaches. The kubelet's SIGTERM (the Pod
// deleted) ends it at once rather than after a grace period.
const gate = `trap 'kill -9 $! 2>/dev/null; exit 143' TERM
IFS= read -r _ || exit 125
for l in $1; do
  ulimit -${l%%=*} "${l#*=}" || { echo "sandstorm-gate: ulimit -${l%%=*} ${l#*=} failed" >&2; exit 125; }
done
shift
"$@" &
wait $!`

// gateShell runs the gate in bash where the image has it, else in its sh
// (busybox's ash): both spell every limit as ulimitFlags does, which dash
// (Debian's sh) does not.
const gateShell = `[ -x /bin/bash ] && exec /bin/bash -c "$0" sandstorm-gate "$@"; exec /bin/sh -c "$0" sandstorm-gate "$@"`

// ulimitFlags are the flag of each rlimit in bash's and busybox's ulimit,
// and the unit it counts in.
var ulimitFlags = map[string]struct {
	flag string
	unit uint64
}{
	"RLIMIT_AS": {"v", 1024}, "RLIMIT_CORE": {"c", 512}, "RLIMIT_CPU": {"t", 1}, "RLIMIT_DATA": {"d", 1024},
	"RLIMIT_FSIZE": {"f", 512}, "RLIMIT_LOCKS": {"x", 1}, "RLIMIT_MEMLOCK": {"l", 1024}, "RLIMIT_MSGQUEUE": {"q", 1},
	"RLIMIT_NICE": {"e", 1}, "RLIMIT_NOFILE": {"n", 1}, "RLIMIT_NPROC": {"u", 1}, "RLIMIT_RSS": {"m", 1024},
	"RLIMIT_RTPRIO": {"r", 1}, "RLIMIT_SIGPENDING": {"i", 1}, "RLIMIT_STACK": {"s", 1024},
}

// gateLimits is the gate's $1: a ulimit word per limit of the policy, the
// hard limit before the soft one where they differ. RLIMIT_RTTIME is left
// out: busybox's ulimit has no flag for it, and it counts only real-time
// tasks, which RLIMIT_RTPRIO 0 allows none of.
func gateLimits(p oci.Policy) string {
	value := func(v, unit uint64) string {
		if v == oci.Unlimited {
			return "unlimited"
		}
		return strconv.FormatUint(v/unit, 10)
	}
	var words []string
	for _, l := range oci.Rlimits(p) {
		f, ok := ulimitFlags[l.Type]
		if !ok {
			continue
		}
		if l.Soft == l.Hard {
			words = append(words, f.flag+"="+value(l.Hard, f.unit))
			continue
		}
		words = append(words, "H"+f.flag+"="+value(l.Hard, f.unit), "S"+f.flag+"="+value(l.Soft, f.unit))
	}
	return strings.Join(words, " ")
}

// mkWorkspace is the init container's command: the workspace is a
// directory of the emptyDir made as the sandbox user, who owns it then, as
// on the other backends (the kubelet makes volumes and subPaths as root).
const mkWorkspace = `mkdir -m 0755 /w/user`

// keep is the keeper's command: it only has to stay.
const keep = `trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done`

// Requests are what the scheduler counts per sandbox; the limits are the
// policy's. They are small so that a node is filled by its real use, as on
// the other backends, not by the sum of every sandbox's ceiling.
var (
	sandboxRequestCPU    = resource.MustParse("100m")
	sandboxRequestMemory = resource.MustParse("256Mi")
	keeperCPU            = resource.MustParse("200m")
	keeperMemory         = resource.MustParse("64Mi")
	keeperRequestCPU     = resource.MustParse("10m")
	keeperRequestMemory  = resource.MustParse("16Mi")
)

// podFor is the Pod of one sandbox: Pod Security "restricted" (non-root,
// no privilege escalation, every capability dropped, seccomp, no host
// namespaces, no service account token), a read-only root, emptyDir /tmp
// (in memory, bounded) and workspace, the policy's limits.
func (r *Runtime) podFor(prep sandbox.Prepared, spec sandbox.Spec, labels map[string]string) *corev1.Pod {
	p := prep.Policy
	uid, gid := int64(p.UID), int64(p.GID)
	no, yes := false, true
	seccomp := &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	if r.cfg.SeccompProfile != "" {
		seccomp = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: &r.cfg.SeccompProfile}
	}
	if p.Seccomp == oci.SeccompUnconfined {
		seccomp = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}
	}
	security := func() *corev1.SecurityContext {
		return &corev1.SecurityContext{
			RunAsUser: &uid, RunAsGroup: &gid, RunAsNonRoot: &yes,
			AllowPrivilegeEscalation: &no, Privileged: &no,
			ReadOnlyRootFilesystem: func() *bool { v := !p.WritableRoot; return &v }(),
			Capabilities:           &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:         seccomp,
		}
	}
	memory := *resource.NewQuantity(p.MemoryBytes, resource.BinarySI)
	cpu := *resource.NewMilliQuantity(int64(p.CPUs*1000+0.5), resource.DecimalSI)
	tmp := *resource.NewQuantity(p.TmpBytes, resource.BinarySI)
	mounts := []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}, {Name: "workspace", MountPath: oci.Workspace, SubPath: "user"}}
	command := append([]string{"/bin/sh", "-c", gateShell, gate, gateLimits(p)}, spec.Args...)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: prep.ID, Namespace: r.cfg.Namespace, Labels: kubeLabels(labels), Annotations: annotationsOf(labels)},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  &no,
			EnableServiceLinks:            &no,
			Hostname:                      p.Hostname,
			TerminationGracePeriodSeconds: new(int64),
			NodeSelector:                  maps.Clone(r.cfg.NodeSelector),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsUser: &uid, RunAsGroup: &gid, RunAsNonRoot: &yes, SeccompProfile: seccomp,
			},
			InitContainers: []corev1.Container{{
				Name: "workspace", Image: spec.Image, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"/bin/sh", "-c", mkWorkspace}, SecurityContext: security(),
				Resources: corev1.ResourceRequirements{
					Limits:   corev1.ResourceList{corev1.ResourceCPU: keeperCPU, corev1.ResourceMemory: keeperMemory},
					Requests: corev1.ResourceList{corev1.ResourceCPU: keeperRequestCPU, corev1.ResourceMemory: keeperRequestMemory},
				},
				VolumeMounts: []corev1.VolumeMount{{Name: "workspace", MountPath: "/w"}},
			}},
			Containers: []corev1.Container{
				{
					Name: sandboxContainer, Image: spec.Image, ImagePullPolicy: corev1.PullIfNotPresent,
					Command: command, WorkingDir: oci.Workspace,
					EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: prep.ID}}}},
					Stdin:   true, StdinOnce: true,
					SecurityContext: security(),
					Resources: corev1.ResourceRequirements{
						Limits:   corev1.ResourceList{corev1.ResourceCPU: cpu, corev1.ResourceMemory: memory},
						Requests: corev1.ResourceList{corev1.ResourceCPU: minQuantity(cpu, sandboxRequestCPU), corev1.ResourceMemory: minQuantity(memory, sandboxRequestMemory)},
					},
					VolumeMounts: mounts,
				},
				{
					Name: keeperContainer, Image: spec.Image, ImagePullPolicy: corev1.PullIfNotPresent,
					Command: []string{"/bin/sh", "-c", keep}, WorkingDir: oci.Workspace,
					SecurityContext: security(),
					Resources: corev1.ResourceRequirements{
						Limits:   corev1.ResourceList{corev1.ResourceCPU: keeperCPU, corev1.ResourceMemory: keeperMemory},
						Requests: corev1.ResourceList{corev1.ResourceCPU: keeperRequestCPU, corev1.ResourceMemory: keeperRequestMemory},
					},
					VolumeMounts: mounts[1:],
				},
			},
			Volumes: []corev1.Volume{
				{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &tmp}}},
				{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			},
		},
	}
	if r.cfg.RuntimeClass != "" {
		pod.Spec.RuntimeClassName = &r.cfg.RuntimeClass
	}
	return pod
}

// secretFor holds the sandbox's environment: the session token is in it,
// and a Pod's spec is read by whoever may list Pods (a Secret's only by
// whoever may read Secrets). It goes with its Pod.
func (r *Runtime) secretFor(prep sandbox.Prepared, spec sandbox.Spec, labels map[string]string) *corev1.Secret {
	data := map[string][]byte{}
	for _, kv := range spec.Env {
		k, v, _ := strings.Cut(kv, "=")
		data[k] = []byte(v)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: prep.ID, Namespace: r.cfg.Namespace, Labels: kubeLabels(labels), Annotations: annotationsOf(labels)},
		Type:       corev1.SecretTypeOpaque,
		Data:       data,
	}
}

// kubeLabels are the labels Kubernetes accepts as they are; the others are
// in the annotations only.
func kubeLabels(labels map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range labels {
		if len(validation.IsQualifiedName(k)) == 0 && len(validation.IsValidLabelValue(v)) == 0 {
			out[k] = v
		}
	}
	return out
}

// annotationsOf holds every label, as labelsOf reads them back.
func annotationsOf(labels map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range labels {
		out[annotationPrefix+k] = v
	}
	return out
}

// labelsOf reads a Pod's sandstorm labels back from its annotations.
func labelsOf(pod *corev1.Pod) map[string]string {
	out := map[string]string{}
	for k, v := range pod.Annotations {
		if name, ok := strings.CutPrefix(k, annotationPrefix); ok {
			out[name] = v
		}
	}
	return out
}

func minQuantity(a, b resource.Quantity) resource.Quantity {
	if a.Cmp(b) < 0 {
		return a
	}
	return b
}

// checkName refuses an id that cannot name a Pod (a DNS label).
func checkName(id string) error {
	if errs := validation.IsDNS1123Label(id); len(errs) > 0 {
		return fmt.Errorf("%w: sandbox id %q cannot name a Pod: %s", sandbox.ErrInvalidSpec, id, errs[0])
	}
	return nil
}
