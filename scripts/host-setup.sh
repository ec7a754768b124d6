#!/usr/bin/env bash
# host-setup.sh — bring up every container runtime sandstorm's tests need on a
# Debian 12 host without systemd (the CI machine kind; see docs on host runtimes):
#
#   containerd        /run/containerd/containerd.sock
#   dockerd           /var/run/docker.sock (sharing the containerd above)
#   podman (root)     /run/podman/podman.sock
#   podman (rootless) /run/user/<uid>/podman/podman.sock, user "sandstorm"
#
# Idempotent: packages are only installed when missing, daemons are only started
# when they do not already answer, config files are only rewritten when their
# content changes (a podman service this script started is then restarted to
# pick it up). A second run takes under a second.
#
# Daemons run detached (setsid) with pid files in /run/sandstorm/*.pid; each pid
# is also the daemon's process-group id. To stop one: kill -- -$(cat FILE).
#
# Writes the values tests need to /run/sandstorm/ci.env.
#
# Environment knobs (all optional):
#   SANDSTORM_ROOTLESS_USER   rootless user name (default: sandstorm)
#   SANDSTORM_LOG_DIR         daemon logs (default: /var/log/sandstorm)
#   SANDSTORM_CI_ENV          where to write the env file (default: /run/sandstorm/ci.env)
#   SANDSTORM_SKIP_APT=1      never run apt-get (fail if a package is missing)
set -euo pipefail

ROOTLESS_USER="${SANDSTORM_ROOTLESS_USER:-sandstorm}"
LOG_DIR="${SANDSTORM_LOG_DIR:-/var/log/sandstorm}"
RUN_DIR=/run/sandstorm
CI_ENV="${SANDSTORM_CI_ENV:-$RUN_DIR/ci.env}"

CONTAINERD_SOCK=/run/containerd/containerd.sock
DOCKER_SOCK=/var/run/docker.sock
PODMAN_ROOT_SOCK=/run/podman/podman.sock

PACKAGES=(containerd runc podman docker.io uidmap slirp4netns fuse-overlayfs
  catatonit containernetworking-plugins iptables busybox-static curl file python3-requests runsc
  chromium)

# gVisor (isolation: gvisor): every backend runs this one runsc, Debian's with
# the flags this host needs (sandbox.DefaultRunsc says why each).
RUNSC=/usr/local/lib/sandstorm/runsc
RUNSC_WRAPPER='#!/bin/sh
# Written by sandstorm scripts/host-setup.sh — do not edit by hand.
exec /usr/bin/runsc --platform=ptrace --oci-seccomp --network=none --host-uds=open "$@"
'
DOCKER_GVISOR_RUNTIME=sandstorm-runsc

# The host's open-files hard limit is 20000 and root lacks CAP_SYS_RESOURCE,
# so podman's default ulimits (nofile=1048576) make every run fail.
PODMAN_CONF='# Written by sandstorm scripts/host-setup.sh — do not edit by hand.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

# isolation: gvisor. Podman 4.3 takes a container'"'"'s OCI runtime by name only
# (an unknown one silently becomes the default).
[engine.runtimes]
sandstorm-runsc = ["/usr/local/lib/sandstorm/runsc"]
'

# ---------------------------------------------------------------- helpers ---

T0=$(date +%s.%N)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
say() { printf '==> %s\n' "$*"; }
die() { printf '==> ERROR: %s\n' "$*" >&2; exit 1; }

# fail_with_log PHASE LOGFILE MESSAGE
fail_with_log() {
  printf '==> %s: FAILED: %s\n' "$1" "$3" >&2
  if [[ -n "$2" && -f "$2" ]]; then
    # The log since the last start marker written by start_daemon, at most 40 lines.
    printf -- '--- %s (tail) ---\n' "$2" >&2
    awk '/^=== .*: starting: / { n = 0 } { l[++n] = $0 } END { for (i = (n > 40 ? n - 39 : 1); i <= n; i++) print l[i] }' "$2" >&2 || true
    printf -- '---\n' >&2
  fi
  exit 1
}

# wait_for SECONDS CMD... : poll CMD every 0.1s until it succeeds.
wait_for() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || return 1
    sleep 0.1
  done
}

# wait_daemon NAME SECONDS LOG CMD... : after start_daemon NAME, poll CMD until
# it succeeds; fail with LOG's tail when the daemon exits or time runs out.
wait_daemon() {
  local name=$1 secs=$2 log=$3 pid deadline; shift 3
  pid=$(cat "$RUN_DIR/$name.pid")
  deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 -- "-$pid" 2>/dev/null; then
      "$@" >/dev/null 2>&1 && return 0
      rm -f "$RUN_DIR/$name.pid"
      fail_with_log "$name" "$log" "exited during start-up"
    fi
    (( $(date +%s) < deadline )) || fail_with_log "$name" "$log" "not answering after ${secs}s"
    sleep 0.1
  done
}

# write_if_changed PATH MODE CONTENT : rewrite only on change. Returns 0 if written.
write_if_changed() {
  local path=$1 mode=$2 content=$3
  if [[ -f "$path" ]] && [[ "$(cat "$path")" == "${content%$'\n'}" ]]; then
    chmod "$mode" "$path"
    return 1
  fi
  mkdir -p "$(dirname "$path")"
  printf '%s' "$content" >"$path.tmp.$$"
  chmod "$mode" "$path.tmp.$$"
  mv -f "$path.tmp.$$" "$path"
  return 0
}

# start_daemon NAME LOG CMD... : start CMD detached (own session, cwd /,
# survives this script and its caller's process group), appending to LOG.
# Its pid goes to $RUN_DIR/NAME.pid (setsid and nohup exec, so $! is the daemon
# itself — or runuser for the rootless service), which is also its process
# group id.
start_daemon() {
  local name=$1 log=$2; shift 2
  printf '\n=== %s: starting: %s\n' "$(date -Is)" "$*" >>"$log"
  ( cd / && exec setsid nohup "$@" </dev/null >>"$log" 2>&1 9>&- ) &
  echo $! >"$RUN_DIR/$name.pid"
  disown || true
}

# kill_group NAME : stop a daemon this script started, found by its pid file.
# start_daemon made it a session and process-group leader, so the whole group
# is signalled: rootless podman runs as runuser -> podman -> podman (in the
# user namespace), and signalling runuser alone leaves the last one orphaned.
# runuser waits 2s after SIGTERM before it exits. Returns 1 if none was alive.
kill_group() {
  local pidf="$RUN_DIR/$1.pid" pid
  pid=$(cat "$pidf" 2>/dev/null || true)
  [[ -n "$pid" ]] && kill -0 -- "-$pid" 2>/dev/null || { rm -f "$pidf"; return 1; }
  kill -TERM -- "-$pid" 2>/dev/null || true
  wait_for 10 bash -c "! kill -0 -- -$pid" || kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidf"
}

# stop_daemon NAME : stop a running daemon so that it restarts with a new
# config. Returns 1 (and leaves it running) if this script did not start it.
stop_daemon() {
  kill_group "$1" && return 0
  say "$1: WARNING: config changed but the running service was not started by this script (no pid file); restart it by hand to apply"
  return 1
}

# stop_stale NAME : before a start, stop an instance of ours that is alive but
# did not answer.
stop_stale() {
  if kill_group "$1"; then say "$1: stopped an earlier instance that did not answer"; fi
}

sock_ping() { # sock_ping SOCKET PATH
  curl -fsS --max-time 2 --unix-socket "$1" "http://d$2" >/dev/null 2>&1
}

[[ $EUID -eq 0 ]] || die "must run as root"
mkdir -p "$LOG_DIR" "$RUN_DIR" "$(dirname "$CI_ENV")"

# One run at a time (two CI jobs or engineers at once would start two of each
# daemon). fd 9 is closed in every daemon start_daemon starts.
exec 9>"$RUN_DIR/host-setup.lock"
if ! flock -n 9; then
  say "lock: another host-setup.sh is running; waiting for it"
  flock 9
fi

# --------------------------------------------------------------- packages ---

t=$(now)
missing=()
for p in "${PACKAGES[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$st" == installed ]] || missing+=("$p")
done
if (( ${#missing[@]} )); then
  [[ "${SANDSTORM_SKIP_APT:-}" == 1 ]] && die "packages missing and SANDSTORM_SKIP_APT=1: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  aptlog="$LOG_DIR/apt.log"
  say "packages: installing ${missing[*]} (apt-get update + install, ~20-60s; log $aptlog)"
  apt-get update >>"$aptlog" 2>&1 || fail_with_log packages "$aptlog" "apt-get update"
  # busybox-static conflicts with busybox: apt removes busybox for us (-y),
  # which is what we want (the test image needs a static /bin/busybox).
  # With recommends, as on the measured machines (buildah, dbus-user-session, ...).
  # One line per package set up, so a long install is never silent.
  apt-get install -y -o Dpkg::Options::=--force-confold "${missing[@]}" 2>&1 \
    | tee -a "$aptlog" | grep --line-buffered -E '^Setting up ' | sed -u 's/^/    /' \
    || fail_with_log packages "$aptlog" "apt-get install"
  say "packages: installed ($(since "$t"))"
else
  say "packages: all ${#PACKAGES[@]} present ($(since "$t"))"
fi

# The test image builder copies /bin/busybox into a rootfs: it must be static.
busybox_static() {
  local b=$1
  [[ -x "$b" ]] || return 1
  file -L "$b" 2>/dev/null | grep -q 'statically linked' && return 0
  LC_ALL=C ldd "$b" 2>&1 | grep -q 'not a dynamic executable'
}
if ! busybox_static /bin/busybox; then
  # busybox-static ships /bin/busybox; if something else replaced it, reinstall.
  [[ "${SANDSTORM_SKIP_APT:-}" == 1 ]] && die "/bin/busybox is not statically linked"
  say "busybox: /bin/busybox is not static; reinstalling busybox-static"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --reinstall busybox-static \
    >>"$LOG_DIR/apt.log" 2>&1 || fail_with_log busybox "$LOG_DIR/apt.log" "reinstall busybox-static"
  busybox_static /bin/busybox || die "/bin/busybox still not statically linked"
fi

# ------------------------------------------------------------------ gVisor ---

write_if_changed "$RUNSC" 0755 "$RUNSC_WRAPPER" && say "gvisor: wrote $RUNSC" || true

# ------------------------------------------------------------- containerd ---

t=$(now)
# ctr waits 10s for a socket that is not there: check it exists first, and
# bound the dial.
ctr_ok() { [[ -S "$CONTAINERD_SOCK" ]] && ctr --connect-timeout 2s --address "$CONTAINERD_SOCK" version; }
if ctr_ok >/dev/null 2>&1; then
  say "containerd: already running"
else
  # Debian's package ships no /etc/containerd/config.toml: defaults apply
  # (overlayfs snapshotter, io.containerd.runc.v2, cgroupfs).
  stop_stale containerd
  start_daemon containerd "$LOG_DIR/containerd.log" containerd --address "$CONTAINERD_SOCK"
  wait_daemon containerd 20 "$LOG_DIR/containerd.log" ctr_ok
  say "containerd: started ($(since "$t"))"
fi

# ----------------------------------------------------------------- docker ---

t=$(now)
docker_ok() { sock_ping "$DOCKER_SOCK" /_ping; }
# A dockerd without sandstorm's gVisor runtime (an older one of ours) is restarted.
docker_gvisor() {
  curl -fsS --max-time 5 --unix-socket "$DOCKER_SOCK" http://d/info 2>/dev/null | grep -q "\"$DOCKER_GVISOR_RUNTIME\""
}
if docker_ok && { docker_gvisor || ! stop_daemon dockerd; }; then
  say "dockerd: already running"
else
  stop_stale dockerd
  # A stale pid file from a dead dockerd makes it refuse to start.
  if [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  start_daemon dockerd "$LOG_DIR/dockerd.log" dockerd \
    --containerd="$CONTAINERD_SOCK" -H "unix://$DOCKER_SOCK" \
    --add-runtime "$DOCKER_GVISOR_RUNTIME=$RUNSC"
  wait_daemon dockerd 30 "$LOG_DIR/dockerd.log" docker_ok
  say "dockerd: started ($(since "$t"))"
fi

# ------------------------------------------------------------ podman root ---

t=$(now)
# podman 4.3 (containers/common 0.50) reads /etc/containers/containers.conf.d/*.conf
# on top of /usr/share/containers/containers.conf.
conf_changed=0
if write_if_changed /etc/containers/containers.conf.d/50-sandstorm.conf 0644 "$PODMAN_CONF"; then
  conf_changed=1
fi
podman_root_ok() { sock_ping "$PODMAN_ROOT_SOCK" /_ping; }
if podman_root_ok && { (( conf_changed == 0 )) || ! stop_daemon podman-root; }; then
  say "podman (root): already running"
else
  stop_stale podman-root
  mkdir -p "$(dirname "$PODMAN_ROOT_SOCK")"
  rm -f "$PODMAN_ROOT_SOCK"
  start_daemon podman-root "$LOG_DIR/podman-root.log" \
    podman system service --time=0 "unix://$PODMAN_ROOT_SOCK"
  wait_daemon podman-root 20 "$LOG_DIR/podman-root.log" podman_root_ok
  say "podman (root): started ($(since "$t"))"
fi

# -------------------------------------------------------- podman rootless ---

t=$(now)
if ! id -u "$ROOTLESS_USER" >/dev/null 2>&1; then
  useradd -m -s /bin/bash "$ROOTLESS_USER"
  say "podman (rootless): created user $ROOTLESS_USER"
fi
R_UID=$(id -u "$ROOTLESS_USER")
R_GID=$(id -g "$ROOTLESS_USER")
R_HOME=$(getent passwd "$ROOTLESS_USER" | cut -d: -f6)
R_XDG=/run/user/$R_UID
R_SOCK=$R_XDG/podman/podman.sock

# subordinate id ranges (Debian's useradd writes them; make sure anyway).
ensure_subid() { # FILE
  local f=$1
  touch "$f"
  grep -q "^$ROOTLESS_USER:" "$f" && return 0
  # Next free range above the highest allocated one, 65536 wide.
  local start
  start=$(awk -F: 'BEGIN { m = 100000 } { e = $2 + $3; if (e > m) m = e } END { print m }' "$f")
  echo "$ROOTLESS_USER:$start:65536" >>"$f"
  say "podman (rootless): added $ROOTLESS_USER:$start:65536 to $f"
}
ensure_subid /etc/subuid
ensure_subid /etc/subgid

# slirp4netns needs /dev/net/tun usable by the user (it is 0600 here).
if [[ -c /dev/net/tun ]]; then
  chmod 0666 /dev/net/tun
else
  say "podman (rootless): WARNING: /dev/net/tun missing; rootless networking will not work"
fi

# Native (kernel) overlayfs works for rootless users on this kernel (>= 5.11
# allows overlay mounts inside a user namespace), so no mount_program
# (fuse-overlayfs) is configured. Without a storage.conf podman picks vfs.
R_STORAGE_CONF='# Written by sandstorm scripts/host-setup.sh — do not edit by hand.
[storage]
driver = "overlay"
'
install -d -o "$R_UID" -g "$R_GID" -m 0755 "$R_HOME/.config" "$R_HOME/.config/containers"
r_changed=0
write_if_changed "$R_HOME/.config/containers/storage.conf" 0644 "$R_STORAGE_CONF" && r_changed=1
# The user file reads the same settings; the system drop-in above applies too,
# but a user's own file keeps it self-contained if someone copies the home.
write_if_changed "$R_HOME/.config/containers/containers.conf" 0644 "$PODMAN_CONF" && r_changed=1
chown -R "$R_UID:$R_GID" "$R_HOME/.config/containers"

# XDG_RUNTIME_DIR as pam_systemd would create it (no systemd here).
if [[ ! -d "$R_XDG" ]]; then
  mkdir -p /run/user
  chmod 0755 /run/user
  install -d -o "$R_UID" -g "$R_GID" -m 0700 "$R_XDG"
fi
chown "$R_UID:$R_GID" "$R_XDG"
chmod 0700 "$R_XDG"

as_user() {
  (cd / && runuser -u "$ROOTLESS_USER" -- env -i \
    HOME="$R_HOME" USER="$ROOTLESS_USER" LOGNAME="$ROOTLESS_USER" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    XDG_RUNTIME_DIR="$R_XDG" "$@")
}

podman_rl_ok() { sock_ping "$R_SOCK" /_ping; }
if podman_rl_ok && { (( r_changed == 0 && conf_changed == 0 )) || ! stop_daemon "podman-rootless-$ROOTLESS_USER"; }; then
  say "podman (rootless): already running (user $ROOTLESS_USER uid $R_UID)"
else
  stop_stale "podman-rootless-$ROOTLESS_USER"
  if (( r_changed )); then
    # After a storage/config change, let podman reset its pause process and
    # runtime state so the new settings apply.
    as_user podman system migrate >>"$LOG_DIR/podman-rootless.log" 2>&1 || true
  fi
  install -d -o "$R_UID" -g "$R_GID" -m 0711 "$R_XDG/podman"
  rm -f "$R_SOCK"
  # The log file is opened by root (this shell) and inherited by the service.
  start_daemon "podman-rootless-$ROOTLESS_USER" "$LOG_DIR/podman-rootless.log" \
    runuser -u "$ROOTLESS_USER" -- env -i \
    HOME="$R_HOME" USER="$ROOTLESS_USER" LOGNAME="$ROOTLESS_USER" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    XDG_RUNTIME_DIR="$R_XDG" \
    podman system service --time=0 "unix://$R_SOCK"
  wait_daemon "podman-rootless-$ROOTLESS_USER" 20 "$LOG_DIR/podman-rootless.log" podman_rl_ok
  say "podman (rootless): started as $ROOTLESS_USER uid $R_UID ($(since "$t"))"
fi

# ---------------------------------------------------------------- summary ---

ver_containerd=$(ctr --connect-timeout 2s --address "$CONTAINERD_SOCK" version 2>/dev/null | awk '/^Server:/ { s = 1 } s && /Version:/ { print $2; exit }')
ver_docker=$(curl -fsS --max-time 5 --unix-socket "$DOCKER_SOCK" http://d/version 2>/dev/null \
  | sed -n 's/.*"Version":"\([^"]*\)".*"ApiVersion".*/\1/p' | head -1)
[[ -n "$ver_docker" ]] || ver_docker=$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')
podman_ver() { # SOCKET
  curl -fsS --max-time 5 -o /dev/null -D - --unix-socket "$1" http://d/_ping 2>/dev/null \
    | tr -d '\r' | awk -F': ' 'tolower($1) == "libpod-api-version" { print $2 }'
}
ver_podman_root=$(podman_ver "$PODMAN_ROOT_SOCK")
ver_podman_rl=$(podman_ver "$R_SOCK")
rl_driver=$(as_user podman info --format '{{.Store.GraphDriverName}}' 2>/dev/null || echo '?')

write_if_changed "$CI_ENV" 0644 "# Written by sandstorm scripts/host-setup.sh; source it before running tests.
SANDSTORM_CONTAINERD_SOCKET=$CONTAINERD_SOCK
SANDSTORM_DOCKER_SOCKET=unix://$DOCKER_SOCK
SANDSTORM_PODMAN_SOCKET=unix://$PODMAN_ROOT_SOCK
SANDSTORM_PODMAN_ROOTLESS_SOCKET=unix://$R_SOCK
SANDSTORM_ROOTLESS_USER=$ROOTLESS_USER
SANDSTORM_ROOTLESS_UID=$R_UID
SANDSTORM_ROOTLESS_XDG_RUNTIME_DIR=$R_XDG
" || true

ver_runsc=$(/usr/bin/runsc --version 2>/dev/null | awk 'NR == 1 { print $3 }' || true)
say "summary: containerd ${ver_containerd:-?} | docker server ${ver_docker:-?} | podman root ${ver_podman_root:-?} | podman rootless ${ver_podman_rl:-?} ($ROOTLESS_USER uid $R_UID, storage $rl_driver) | gvisor runsc ${ver_runsc:-?} ($RUNSC)"
say "env: $CI_ENV  logs: $LOG_DIR"
say "host setup done ($(since "$T0"))"
