#!/usr/bin/env bash
# Build the images of deps/images/recipes without a registry or a Docker daemon: a Debian root
# filesystem from mmdebstrap, made into an OCI image by umoci, saved as an OCI archive in
# $PKTPATH_CACHE/images/<name>-<key>.tar (default cache /var/cache/pktpath). What is already
# there is kept; the agent image is keyed by the working tree's files, so it is rebuilt (about
# 20 s) when they change. Prints one line per image on stdout: `name reference archive`.
# Progress on stderr. Import an archive with
#   ctr -n k8s.io images import --base-name REFERENCE-without-tag ARCHIVE
# or copy it anywhere with `skopeo copy oci-archive:ARCHIVE docker://...`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
CACHE=${PKTPATH_CACHE:-/var/cache/pktpath}
MIRROR=${PKTPATH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
out_dir="$CACHE/images"
say() { echo "pktpath images: $*" >&2; }
recipe() { awk -v n="$1" '!/^#/ && $1 == n {print $2, $3}' "$here/images/recipes"; }
hash_of() { sha256sum | cut -c1-12; }

for tool in mmdebstrap umoci gcc; do
  command -v "$tool" >/dev/null || { say "$tool is missing: run make deps (it installs it)"; exit 1; }
done
mkdir -p "$out_dir"
scratch=$(mktemp -d "$out_dir/.build.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# layout NAME TAG: a new OCI layout in the scratch folder with an empty image NAME:TAG
new_layout() {
  umoci init --layout "$scratch/$1"
  umoci new --image "$scratch/$1:$2"
}

# add_layer IMAGE DIR: DIR's contents as the image's next layer, at /. The tar is GNU tar's:
# `umoci insert` (0.4.7) leaves a layer's last entry unpadded and the archive unterminated
add_layer() {
  tar --numeric-owner --sort=name -C "$2" -cf "$scratch/layer.tar" .
  umoci raw add-layer --image "$1" "$scratch/layer.tar"
  rm -f "$scratch/layer.tar"
}

# save NAME TAG ARCHIVE: the layout as an OCI archive, written atomically
save() {
  umoci gc --layout "$scratch/$1"
  tar -C "$scratch/$1" -cf "$3.tmp" . && mv "$3.tmp" "$3"
}

# rootfs DIR PACKAGES: a minimal Debian bookworm with PACKAGES, without apt's caches
rootfs() {
  mmdebstrap --quiet --variant=essential --include="$2" \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/share/doc "$1"/usr/share/man' \
    bookworm "$1" "$MIRROR" >&2
}

# pause: the pod sandbox's process, static, alone in its image
read -r ref _ < <(recipe pause)
key=$(cat "$here/images/pause.c" <(recipe pause) <(echo layers-by-tar) | hash_of)
archive="$out_dir/pause-$key.tar"
if [ ! -s "$archive" ]; then
  say "pause: compiling (static)..."
  mkdir -p "$scratch/pause-root"
  gcc -Os -static -o "$scratch/pause-root/pause" "$here/images/pause.c"
  strip "$scratch/pause-root/pause"
  new_layout pause "${ref##*:}"
  add_layer "$scratch/pause:${ref##*:}" "$scratch/pause-root"
  umoci config --image "$scratch/pause:${ref##*:}" --config.entrypoint /pause
  save pause "${ref##*:}" "$archive"
fi
echo "pause $ref $archive"

# workload: what test pods run (python3 for listeners, ping, nft for drops, a shell)
read -r ref packages < <(recipe workload)
key=$(echo "$(recipe workload) layers-by-tar" | hash_of)
archive="$out_dir/workload-$key.tar"
if [ ! -s "$archive" ]; then
  start=$SECONDS
  say "workload: Debian bookworm with $packages (about a minute the first time)..."
  rootfs "$scratch/workload-root" "$packages"
  new_layout workload "${ref##*:}"
  add_layer "$scratch/workload:${ref##*:}" "$scratch/workload-root"
  umoci config --image "$scratch/workload:${ref##*:}" --config.cmd sleep --config.cmd infinity
  save workload "${ref##*:}" "$archive"
  say "workload: built in $((SECONDS - start)) s"
fi
echo "workload $ref $archive"

# agent: a Debian base layer (cached by its package list), then a layer with the wheels of the
# working tree's pktpath and its dependencies, installed offline by the image's own pip
read -r ref packages < <(recipe agent)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")
base_key=$(echo "$(recipe agent) layers-by-tar" | hash_of)
deps_key=$(sed -n '/^dependencies/p' "$repo/pyproject.toml" | cat - <(echo "$base_key") | hash_of)
tree_key=$(cd "$repo" && git ls-files -co --exclude-standard -- agent pyproject.toml README.md \
  deps/images.sh deps/images/recipes | grep -v '__pycache__' | LC_ALL=C sort | xargs cat \
  | cat - <(echo "$deps_key") | hash_of)
tag="$version-$tree_key"
archive="$out_dir/agent-$tree_key.tar"
if [ ! -s "$archive" ]; then
  start=$SECONDS
  base="$out_dir/agent-base-$base_key"
  if [ ! -d "$base/layout" ]; then
    say "agent: Debian bookworm base with $packages (about a minute the first time)..."
    rm -rf "$base.tmp" && mkdir -p "$base.tmp"
    rootfs "$base.tmp/rootfs" "$packages"
    umoci init --layout "$base.tmp/layout"
    umoci new --image "$base.tmp/layout:base"
    add_layer "$base.tmp/layout:base" "$base.tmp/rootfs"
    rm -rf "$base" && mv "$base.tmp" "$base"
  fi
  wheels="$out_dir/agent-wheels-$deps_key"
  if [ ! -d "$wheels" ]; then
    say "agent: downloading the wheels of pktpath's dependencies..."
    rm -rf "$wheels.tmp"
    python3 -m pip wheel -q --wheel-dir "$wheels.tmp" "$repo" >&2
    rm -f "$wheels.tmp"/pktpath-*.whl
    mv "$wheels.tmp" "$wheels"
  fi
  say "agent: pktpath $version from the working tree (key $tree_key)..."
  python3 -m pip wheel -q --no-deps --wheel-dir "$scratch/wheel" "$repo" >&2
  # install with the image's pip, offline, into a separate root that becomes the layer
  work="$base/rootfs/tmp/pktpath-install"
  rm -rf "$work" && mkdir -p "$work"
  cp "$wheels"/*.whl "$scratch"/wheel/*.whl "$work/"
  chroot "$base/rootfs" python3 -m pip install -q --no-index --find-links /tmp/pktpath-install \
    --root /tmp/pktpath-install/layer --break-system-packages --no-warn-script-location \
    --root-user-action=ignore pktpath >&2
  mv "$work/layer" "$scratch/agent-layer"
  rm -rf "$work"
  cp -a "$base/layout" "$scratch/agent"
  umoci tag --image "$scratch/agent:base" "$tag"
  umoci rm --image "$scratch/agent:base"
  add_layer "$scratch/agent:$tag" "$scratch/agent-layer"
  umoci config --image "$scratch/agent:$tag" --config.entrypoint pktpath --config.cmd agent \
    --config.env PYTHONDONTWRITEBYTECODE=1
  save agent "$tag" "$archive"
  say "agent: built in $((SECONDS - start)) s"
  # the working tree's older images: keep the two newest besides this one
  { ls -t "$out_dir"/agent-*.tar | grep -v -x -F "$archive" || true; } | tail -n +3 | xargs -r rm -f
fi
echo "agent $ref:$tag $archive"
