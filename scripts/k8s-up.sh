#!/usr/bin/env bash
# k8s-up.sh — a real single-node Kubernetes (the version k8s-build.sh built)
# on this host, for the Kubernetes backend: etcd (Debian's), kube-apiserver,
# controller-manager, scheduler, and a kubelet on a containerd of its own
# (CRI on, cgroupfs, its own root, state and CNI config, so the test
# daemons are untouched), all on 127.0.0.1, no systemd, no registry (the
# pause image is built here). Idempotent: what runs is left running.
#
#   scripts/k8s-up.sh && export KUBECONFIG=/var/lib/sandstorm/k8s/admin.kubeconfig
#
# Stop: pkill -f /var/lib/sandstorm/k8s (every component runs with a path
# under it) and pkill -f 'containerd --config /var/lib/sandstorm/k8s'.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
VERSION=${K8S_VERSION:-1.35.4}
B=${SANDSTORM_K8S_CACHE:-/var/cache/sandstorm/k8s}/v$VERSION/bin
S=/var/lib/sandstorm/k8s
R=/run/sandstorm/k8s
L=/var/log/sandstorm
# The node's address: on an interface of its own, so the API server
# reaches the kubelet (logs, attach, exec) and Pods reach sandstorm's
# gateway at an address of this host that no other network uses.
NODE_IP=${SANDSTORM_K8S_NODE_IP:-10.245.0.1}
NS=${SANDSTORM_K8S_NAMESPACE:-sandstorm}
export PATH=/usr/local/go/bin:$PATH
T0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }
say() { printf '==> %s\n' "$*"; }
die() { printf '==> ERROR: %s\n' "$*" >&2; exit 1; }
K() { "$B/kubectl" --kubeconfig "$S/admin.kubeconfig" "$@"; }

[[ $EUID -eq 0 ]] || die "must run as root"
"$here/k8s-build.sh"
# etcd, and openssl for the certificates: on a fresh machine these may be missing.
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  say "packages: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi

if ! ip -4 addr show dev sk8s-node 2>/dev/null | grep -q "inet $NODE_IP/"; then
  # A bridge with no ports: this kernel has no dummy interfaces.
  ip link add sk8s-node type bridge 2>/dev/null || true
  ip addr add "$NODE_IP/32" dev sk8s-node 2>/dev/null || true
  ip link set sk8s-node up
  say "node address: $NODE_IP on sk8s-node"
fi

# What the kubernetes backend and its tests need to find this cluster.
write_env() {
  cat > /run/sandstorm/k8s.env <<EOT
# Written by sandstorm scripts/k8s-up.sh: the project's single-node cluster.
KUBECONFIG=$S/admin.kubeconfig
SANDSTORM_K8S_NAMESPACE=$NS
SANDSTORM_K8S_NODE_CONTAINERD=$R/containerd.sock
SANDSTORM_K8S_SECCOMP_PROFILE=sandstorm.json
SANDSTORM_K8S_GATEWAY_HOST=$NODE_IP
EOT
}

if [[ -f $S/admin.kubeconfig ]] && pgrep -f "^$B/kubelet " >/dev/null && K get --raw /readyz >/dev/null 2>&1 && K get node sandstorm-k8s -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; then
  write_env
  say "kubernetes v$VERSION: already up (KUBECONFIG=$S/admin.kubeconfig; env in /run/sandstorm/k8s.env)"
  exit 0
fi

mkdir -p /run/sandstorm $S/pki $S/etcd $S/kubelet $S/containerd $R/containerd $S/cni/net.d $L
cd $S/pki
if [[ ! -f ca.crt ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=sandstorm-k8s-ca" 2>/dev/null
  cat > api.ext <<EOT
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
EOT
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile api.ext 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/CN=admin/O=system:masters" 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
fi
cat > $S/admin.kubeconfig <<EOT
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:6443", certificate-authority: $S/pki/ca.crt}}]
users: [{name: admin, user: {client-certificate: $S/pki/admin.crt, client-key: $S/pki/admin.key}}]
contexts: [{name: local, context: {cluster: local, user: admin}}]
current-context: local
EOT
cat > $S/containerd.toml <<EOT
version = 2
root = "$S/containerd"
state = "$R/containerd"
[grpc]
  address = "$R/containerd.sock"
[ttrpc]
  address = "$R/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
EOT
cat > $S/cni/net.d/10-sandstorm-k8s.conflist <<EOT
{"cniVersion": "0.4.0", "name": "sandstorm-k8s", "plugins": [
 {"type": "bridge", "bridge": "sk8s0", "isGateway": true, "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
 {"type": "loopback"}]}
EOT

# start NAME CMD...: start CMD in the background unless a process with its
# command line runs already.
start() {
  local name=$1; shift
  if pgrep -f -x "$*" >/dev/null; then say "$name: running"; return; fi
  setsid "$@" >"$L/k8s-$name.log" 2>&1 </dev/null &
  say "$name: started (log $L/k8s-$name.log)"
}
wait_for() {
  local what=$1 tries=$2; shift 2
  local t; t=$(date +%s.%N)
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then say "$what ($(since "$t"))"; return; fi
    sleep 1
  done
  die "$what: not within ${tries}s (logs in $L/k8s-*.log)"
}
start containerd containerd --config $S/containerd.toml
wait_for "containerd: answers" 30 ctr -a $R/containerd.sock version
start etcd etcd --data-dir $S/etcd --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster default=http://127.0.0.1:2380
start apiserver $B/kube-apiserver --etcd-servers http://127.0.0.1:2379 --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port 6443 \
  --service-cluster-ip-range 10.96.0.0/24 --client-ca-file $S/pki/ca.crt --tls-cert-file $S/pki/apiserver.crt --tls-private-key-file $S/pki/apiserver.key \
  --service-account-key-file $S/pki/sa.pub --service-account-signing-key-file $S/pki/sa.key --service-account-issuer https://kubernetes.default.svc \
  --kubelet-preferred-address-types InternalIP,Hostname --authorization-mode RBAC --kubelet-client-certificate $S/pki/admin.crt --kubelet-client-key $S/pki/admin.key
wait_for "kube-apiserver: ready" 90 K get --raw /readyz
start controller-manager $B/kube-controller-manager --kubeconfig $S/admin.kubeconfig --authentication-kubeconfig $S/admin.kubeconfig --authorization-kubeconfig $S/admin.kubeconfig \
  --service-account-private-key-file $S/pki/sa.key --root-ca-file $S/pki/ca.crt --cluster-signing-cert-file $S/pki/ca.crt --cluster-signing-key-file $S/pki/ca.key \
  --use-service-account-credentials --leader-elect=false --bind-address 127.0.0.1
start scheduler $B/kube-scheduler --kubeconfig $S/admin.kubeconfig --authentication-kubeconfig $S/admin.kubeconfig --authorization-kubeconfig $S/admin.kubeconfig --leader-elect=false --bind-address 127.0.0.1

# No registry: the pod sandbox image is built here.
t=$(date +%s.%N)
(cd "$repo" && CGO_ENABLED=0 GOFLAGS= go build -o "$S/pauseimage" ./cmd/pauseimage)
"$S/pauseimage" -o "$S/pause.tar" >/dev/null
ctr -a $R/containerd.sock -n k8s.io images import "$S/pause.tar" >/dev/null
say "pause image: built and imported ($(since "$t"))"
if [[ -f $repo/build/sandstorm-test.tar ]]; then
  ctr -a $R/containerd.sock -n k8s.io images import "$repo/build/sandstorm-test.tar" >/dev/null
  say "test image: imported"
fi

cat > $S/kubelet.yaml <<EOT
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: $NODE_IP
healthzBindAddress: 127.0.0.1
podPidsLimit: ${SANDSTORM_K8S_POD_PIDS:-1024}
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: $S/pki/ca.crt}}
authorization: {mode: AlwaysAllow}
tlsCertFile: $S/pki/apiserver.crt
tlsPrivateKeyFile: $S/pki/apiserver.key
containerRuntimeEndpoint: unix://$R/containerd.sock
cgroupsPerQOS: true
enforceNodeAllocatable: []
evictionHard: {}
imageGCHighThresholdPercent: 100
resolvConf: /etc/resolv.conf
EOT
# sandstorm's seccomp profile, where the kubelet looks for Localhost ones
# (SANDSTORM_K8S_SECCOMP_PROFILE=sandstorm.json selects it).
mkdir -p $S/kubelet/seccomp
cp "$repo/oci/seccomp.json" $S/kubelet/seccomp/sandstorm.json
start kubelet $B/kubelet --kubeconfig $S/admin.kubeconfig --config $S/kubelet.yaml --root-dir $S/kubelet --hostname-override sandstorm-k8s --node-ip $NODE_IP
# The node's Ready in etcd may be a stopped kubelet's: its own health first.
wait_for "kubelet: healthy" 60 curl -fsS http://127.0.0.1:10248/healthz
wait_for "node sandstorm-k8s: Ready" 120 sh -c "'$B/kubectl' --kubeconfig '$S/admin.kubeconfig' get node sandstorm-k8s -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
# sandstorm's namespace, Pod Security restricted enforced.
K create namespace "$NS" --dry-run=client -o yaml | K apply -f - >/dev/null
K label --overwrite namespace "$NS" pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted >/dev/null
say "namespace $NS: Pod Security restricted enforced"
write_env
say "kubernetes v$VERSION up ($(since "$T0")): KUBECONFIG=$S/admin.kubeconfig; env in /run/sandstorm/k8s.env"
