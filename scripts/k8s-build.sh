#!/usr/bin/env bash
# k8s-build.sh — build Kubernetes' node and control-plane binaries
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kubectl) from the Go module proxy, for the single-node test cluster of the
# Kubernetes backend. Idempotent: binaries already built for the version are
# kept; Go's module and build caches live under /var/cache so a rebuild after
# a change is incremental. One phase line per binary, with its duration.
#
#   scripts/k8s-build.sh            # K8S_VERSION, default 1.35.4
#
# Why 1.35: upstream says it is the last release that supports containerd
# 1.x, and this host runs Debian's containerd 1.6. k8s.io/kubernetes cannot
# be `go install`ed (its go.mod replaces the staging modules with ./staging,
# which the module zip omits), so a wrapper module requires it and pins each
# staging module to the matching v0.<minor>.<patch>.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
phase="$here/phase.sh"
VERSION=${K8S_VERSION:-1.35.4}
CACHE=${SANDSTORM_K8S_CACHE:-/var/cache/sandstorm/k8s}
OUT="$CACHE/v$VERSION/bin"
MOD="$CACHE/v$VERSION/module"
export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=local GOFLAGS=
export GOMODCACHE=${GOMODCACHE:-/var/cache/sandstorm/gomod} GOCACHE=${K8S_GOCACHE:-$CACHE/gocache}
say() { printf '==> %s\n' "$*"; }

binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
missing=()
for b in "${binaries[@]}"; do
  [[ -x "$OUT/$b" ]] || missing+=("$b")
done
if ((${#missing[@]} == 0)); then
  say "kubernetes v$VERSION: all ${#binaries[@]} binaries built already ($OUT)"
  exit 0
fi
mkdir -p "$OUT" "$MOD"

minor=${VERSION#*.}
# The staging modules, as k8s.io/kubernetes's own go.mod lists them.
upstream=$(cd / && go list -m -f '{{.GoMod}}' "k8s.io/kubernetes@v$VERSION")
mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$upstream")
((${#staging[@]} > 20)) || { echo "==> ERROR: no staging modules found in $upstream" >&2; exit 1; }
{
  echo "module sandstorm.dev/k8sbuild"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes v$VERSION"
  echo
  echo "replace ("
  for m in "${staging[@]}"; do
    echo "	$m => $m v0.$minor"
  done
  echo ")"
} >"$MOD/go.mod"
cat >"$MOD/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
cd "$MOD"
[[ -f go.sum ]] || "$phase" "kubernetes v$VERSION: go mod tidy (module cache $GOMODCACHE)" go mod tidy
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*}"
for b in "${missing[@]}"; do
  "$phase" "kubernetes v$VERSION: build $b" go build -tags tools -trimpath -ldflags "$ldflags" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b"
  mv "$OUT/$b.tmp" "$OUT/$b"
done
say "kubernetes v$VERSION: ${binaries[*]} in $OUT"
