#!/usr/bin/env bash
# scripts/other-host.sh [PACKAGES...] — runs tests as on a host that differs
# from this one (make test-other-host): the resource limits that the daemons
# and the test process pass on are changed, and the tests run under another
# hostname. A golden file that holds a value of this host then fails.
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
LIMITS=(--sigpending=50000 --memlock=4194304 --stack=4194304:unlimited --nofile=10000:10000 --nproc=60000)
HOST_ONLY=(--msgqueue=409600)

say() { printf '==> other-host: %s\n' "$*"; }

# limit PID USER LIMITS...: prlimit as the process's own user (needed
# without CAP_SYS_RESOURCE).
limit() {
  local pid=$1 user=$2; shift 2
  if [[ $user == root ]]; then
    prlimit --pid "$pid" "$@"
  else
    runuser -u "$user" -- prlimit --pid "$pid" "$@"
  fi
}

for name in containerd dockerd podman kubelet; do
  while read -r pid user args; do
    [[ -n ${pid:-} ]] || continue
    limits=("${LIMITS[@]}")
    # The Kubernetes node's containerd and its kubelet: the gate in a Pod
    # cannot lower a limit below what the policy sets and still meet it.
    if [[ $name != kubelet && $args != *sandstorm/k8s* ]]; then
      limits+=("${HOST_ONLY[@]}")
    fi
    limit "$pid" "$user" "${limits[@]}"
    say "limits of $name (pid $pid, $user) changed"
  done < <(ps -C "$name" -o pid=,user=,args= 2>/dev/null || true)
done

[[ $# -gt 0 ]] || set -- ./runtime/...
say "go test $* as host sandstorm-other-host, limits ${LIMITS[*]} ${HOST_ONLY[*]}"
export OTHER_HOST_LIMITS="${LIMITS[*]} ${HOST_ONLY[*]}"
exec unshare -u bash -c 'hostname sandstorm-other-host && exec prlimit $OTHER_HOST_LIMITS go test -count=1 -timeout 25m "$@"' other-host "$@"
