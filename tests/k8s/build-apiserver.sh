#!/usr/bin/env bash
# Build the test Kubernetes API server, a kubectl of the same version, the store (kine,
# SQLite) and helm (to render the chart) from the Go module proxy.
#
# Usage: tests/k8s/build-apiserver.sh [CACHE_DIR]
# Progress goes to stderr; the binaries land in CACHE_DIR/kube-<version>/, whose path is printed
# on stdout, and are reused when already there (a cold build takes 5-30 minutes on 2 cores).
set -euo pipefail
K=${KUBE_VERSION:-v1.37.2}
KINE=${KINE_VERSION:-v0.17.5}
HELM=${HELM_VERSION:-v3.22.0}
CACHE=${1:-${PKTPATH_CACHE:-/var/cache/pktpath}}
OUT="$CACHE/kube-$K"
mkdir -p "$OUT"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-buildvcs=false

missing=""
for b in kube-apiserver kubectl; do [ -x "$OUT/$b" ] || missing="$missing $b"; done
if [ -n "$missing" ]; then
  echo "building$missing $K into $OUT (first time only, 5-30 min)..." >&2
  S=v0.${K#v1.}
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  KMOD=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$K" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  mkdir "$work/kas" && cd "$work/kas"
  go mod init kasbuild >/dev/null 2>&1
  for m in $(sed -n 's#^[[:space:]]*\(replace[[:space:]]*\)\{0,1\}\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\2#p' "$KMOD"); do
    go mod edit -replace="$m=$m@$S"
  done
  if grep '=>' "$KMOD" | grep -v '\./staging/' >&2; then
    echo "kubernetes $K has replace lines besides its staging modules: add them here" >&2
    exit 1
  fi
  for b in $missing; do go get "k8s.io/kubernetes/cmd/$b@$K" >&2; done
  minor=${K#v1.}; minor=${minor%%.*}
  LD="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LD="$LD -X $p.gitVersion=$K -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  for b in $missing; do
    go build -p 2 -trimpath -ldflags "$LD" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$OUT/$b.tmp" "$OUT/$b"
  done
  cd / && rm -rf "$work"
fi

if [ ! -x "$OUT/kine" ]; then
  echo "building kine $KINE into $OUT..." >&2
  GOBIN="$OUT/kine-bin" go install "github.com/k3s-io/kine@$KINE" >&2
  mv "$OUT/kine-bin/kine" "$OUT/kine" && rmdir "$OUT/kine-bin"
fi
if [ ! -x "$OUT/helm" ]; then
  echo "building helm $HELM into $OUT..." >&2
  GOBIN="$OUT/helm-bin" go install "helm.sh/helm/v3/cmd/helm@$HELM" >&2
  mv "$OUT/helm-bin/helm" "$OUT/helm" && rmdir "$OUT/helm-bin"
fi
echo "$OUT"
