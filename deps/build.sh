#!/usr/bin/env bash
# Build the programs listed in deps/go-tools from the Go module proxy, into
# $PKTPATH_CACHE/<name>-<version>/<name> (default cache: /var/cache/pktpath). What is already
# there is kept, so a warm run takes a second. Called by `make deps`; pytest never builds.
#
# Progress goes to stderr. Go's own build and module caches live in a scratch folder under the
# cache while building and are removed afterwards: only the binaries are kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${PKTPATH_CACHE:-/var/cache/pktpath}
say() { echo "pktpath deps: $*" >&2; }

command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
if ! command -v go >/dev/null; then
  say "Go (1.25 or newer) is needed to build the test tools: install it, put it on PATH, run make deps again"
  exit 1
fi

mkdir -p "$CACHE"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-buildvcs=false -modcacherw"
scratch=$(mktemp -d "$CACHE/.build.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export GOPATH="$scratch/gopath" GOCACHE="$scratch/gocache"

# name version package, for each listed program not yet in the cache
missing=$(awk '!/^#/ && NF == 3' "$here/go-tools" | while read -r name version package; do
  [ -x "$CACHE/$name-$version/$name" ] || echo "$name $version $package"
done)
if [ -z "$missing" ]; then
  say "all tools of deps/go-tools are in $CACHE"
  exit 0
fi
say "building $(echo "$missing" | awk '{print $1, $2}' | paste -sd, - | sed 's/,/, /g') into $CACHE"
say "first time only: about 9 minutes on 2 cores (the kubernetes binaries take most of it)"
start=$SECONDS

install_binary() {  # built file, name, version
  mkdir -p "$CACHE/$2-$3"
  mv "$1" "$CACHE/$2-$3/$2.tmp" && mv "$CACHE/$2-$3/$2.tmp" "$CACHE/$2-$3/$2"
}

# k8s.io/kubernetes commands, one wrapper module (and one `go build`) per version
for K in $(echo "$missing" | awk '$3 ~ /^k8s\.io\/kubernetes\// {print $2}' | sort -u); do
  names=$(echo "$missing" | awk -v k="$K" '$2 == k && $3 ~ /^k8s\.io\/kubernetes\// {print $1}')
  packages=$(echo "$missing" | awk -v k="$K" '$2 == k && $3 ~ /^k8s\.io\/kubernetes\// {print $3}')
  say "kubernetes $K: downloading modules..."
  staging=v0.${K#v1.}
  KMOD=$(cd "$scratch" && go mod download -json "k8s.io/kubernetes@$K" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  mod="$scratch/kube-$K" && mkdir "$mod" && cd "$mod"
  go mod init pktpath-kube-tools >/dev/null 2>&1
  # kubernetes' go.mod points its k8s.io/* staging modules at ./staging, which module zips lack
  for m in $(sed -n 's#^[[:space:]]*\(replace[[:space:]]*\)\{0,1\}\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\2#p' "$KMOD"); do
    go mod edit -replace="$m=$m@$staging"
  done
  if grep '=>' "$KMOD" | grep -v '\./staging/' >&2; then
    say "kubernetes $K has replace lines besides its staging modules: add them to deps/build.sh"
    exit 1
  fi
  for p in $packages; do
    out=$(go get "$p@$K" 2>&1) || { echo "$out" >&2; exit 1; }
  done
  minor=${K#v1.}; minor=${minor%%.*}
  LD="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LD="$LD -X $p.gitVersion=$K -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  say "kubernetes $K: compiling $(echo $names) ($((SECONDS - start)) s so far)..."
  mkdir "$scratch/out-$K"
  # shellcheck disable=SC2086
  go build -p 2 -trimpath -ldflags "$LD" -o "$scratch/out-$K/" $packages
  for n in $names; do install_binary "$scratch/out-$K/$n" "$n" "$K"; done
  cd "$here"
done

# everything else: go install at the listed version
echo "$missing" | awk '$3 !~ /^k8s\.io\/kubernetes\//' | while read -r name version package; do
  say "$name $version: building ($((SECONDS - start)) s so far)..."
  GOBIN="$scratch/bin-$name" go install -trimpath -ldflags "-s -w" "$package@$version"
  install_binary "$scratch/bin-$name/$(basename "$package")" "$name" "$version"
done
say "done in $((SECONDS - start)) s; binaries in $CACHE"
