#!/usr/bin/env bash
# k8s-down.sh — stop the single-node cluster k8s-up.sh started: its Pods'
# containers, the kubelet, the control plane, etcd and its containerd.
# State (certificates, etcd data, images) stays for the next k8s-up.
set -uo pipefail
VERSION=${K8S_VERSION:-1.35.4}
B=${SANDSTORM_K8S_CACHE:-/var/cache/sandstorm/k8s}/v$VERSION/bin
S=/var/lib/sandstorm/k8s
R=/run/sandstorm/k8s
say() { printf '==> %s\n' "$*"; }
[[ $EUID -eq 0 ]] || { say "ERROR: must run as root" >&2; exit 1; }
stop() {
  local what=$1 pattern=$2
  pkill -f "$pattern" 2>/dev/null || return 0
  for _ in $(seq 50); do pgrep -f "$pattern" >/dev/null || { say "$what: stopped"; return 0; }; sleep 0.1; done
  pkill -9 -f "$pattern" 2>/dev/null
  say "$what: killed"
}
stop kubelet "^$B/kubelet "
# The Pods' containers: their shims run under the cluster's containerd.
stop "pod containers" "containerd-shim-runc-v2 -namespace k8s.io -address $R/containerd.sock"
stop "control plane" "^$B/kube-"
stop etcd "^etcd --data-dir $S/etcd"
stop containerd "^containerd --config $S/containerd.toml"
# The kubelet's volumes, and its root it bind-mounts onto itself.
awk -v root="$S/kubelet" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null; done
rm -f /run/sandstorm/k8s.env
say "kubernetes: down"
