#!/usr/bin/env bash
# scripts/other-host.sh [PACKAGES...] — runs tests as on a host that differs
# from this one (make test-other-host): the resource limits that the daemons
# and the test process pass on are changed, and the tests run under another
# hostname, and temporary directories on another filesystem (tmpfs). A
# golden file that holds a value of this host then fails.
#
# The running daemons (containerd, dockerd, both Podman services, the
# Kubernetes node's containerd and kubelet) get the new limits with
# prlimit --pid, which new sandboxes inherit. Without CAP_SYS_RESOURCE a
# hard limit can only be lowered: restart the daemons (make setup after
# killing them, make k8s-down k8s-up) to get this host's limits back.
#
# Default PACKAGES: ./runtime/... (every backend's conformance suite).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

# Each differs from a kernel's default; all but MSGQUEUE stay at or above
# the policy's (oci.Rlimits), so sandboxes must show the policy's values.
# MSGQUEUE goes below it on this host's daemons: those sandboxes must show
# this host's value, as the backends report it (sandbox.Lowered).
LIMITS=(sigpending=50021 memlock=4194304 stack=4194304:unlimited nofile=10007 nproc=60013)
HOST_ONLY=(msgqueue=409600)

say() { printf '==> other-host: %s\n' "$*"; }

# as UID CMD...: run CMD as user UID (prlimit on another's process needs
# CAP_SYS_RESOURCE, or the same user).
as() {
  local uid=$1; shift
  if (( uid == 0 )); then "$@"; else runuser -u "$(id -nu "$uid")" -- "$@"; fi
}

# limit PID UID NAME=VALUE...: set each limit of process PID whose hard
# limit it can take: without CAP_SYS_RESOURCE a hard limit is only lowered,
# and a daemon may hold a lower one of its own (Podman sets nproc 32768).
limit() {
  local pid=$1 uid=$2 l name value hard; shift 2
  for l in "$@"; do
    name=${l%%=*} value=${l#*=}
    hard=$(as "$uid" prlimit --pid "$pid" --"$name" --noheadings --raw --output HARD)
    if [[ $hard != unlimited && ( ${value#*:} == unlimited || ${value#*:} -gt $hard ) ]]; then
      say "  $name of pid $pid kept at its hard limit $hard (below $value)"
      continue
    fi
    as "$uid" prlimit --pid "$pid" --"$name=$value"
  done
}

for name in containerd dockerd podman kubelet; do
  while read -r pid uid args; do
    [[ -n ${pid:-} ]] || continue
    limits=("${LIMITS[@]}")
    # The Kubernetes node's containerd and its kubelet: the gate in a Pod
    # cannot lower a limit below what the policy sets and still meet it.
    if [[ $name != kubelet && $args != *sandstorm/k8s* ]]; then
      limits+=("${HOST_ONLY[@]}")
    fi
    limit "$pid" "$uid" "${limits[@]}"
    say "limits of $name (pid $pid, uid $uid) changed"
  done < <(ps -C "$name" -o pid=,uid=,args= 2>/dev/null || true)
done

[[ $# -gt 0 ]] || set -- ./runtime/...
say "go test $* as host sandstorm-other-host, limits ${LIMITS[*]} ${HOST_ONLY[*]}, TMPDIR on tmpfs"
# The fingerprint's /run/sandstorm is bound from a test's temporary
# directory: on tmpfs here, ext4 on this VM otherwise.
TMPDIR=$(mktemp -d /dev/shm/sandstorm-other-host.XXXXXX)
chmod 755 "$TMPDIR"
# (go test builds its binaries there too: GOTMPDIR keeps them on /tmp.)
export TMPDIR GOTMPDIR=/tmp
trap 'rm -rf "$TMPDIR"' EXIT
export OTHER_HOST_LIMITS="${LIMITS[*]/#/--} ${HOST_ONLY[*]/#/--}"
unshare -u bash -c 'hostname sandstorm-other-host && exec prlimit $OTHER_HOST_LIMITS go test -count=1 -timeout 25m "$@"' other-host "$@"
