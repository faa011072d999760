#!/usr/bin/env bash
# Fetch the kernels listed in deps/kernels from Debian's mirror (a private apt configuration:
# the system's sources are left alone) and unpack each into $PKTPATH_CACHE/kernels/<name>/
# (boot/vmlinuz-*, lib/modules/*). What is already there is kept. Progress on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${PKTPATH_CACHE:-/var/cache/pktpath}
say() { echo "pktpath kernels: $*" >&2; }

missing=$(awk '!/^#/ && NF == 3' "$here/kernels" | while read -r name suite package; do
  ls "$CACHE/kernels/$name/boot"/vmlinuz-* >/dev/null 2>&1 || echo "$name $suite $package"
done)
if [ -z "$missing" ]; then
  say "all kernels of deps/kernels are in $CACHE/kernels"
  exit 0
fi
apt_dir=$(mktemp -d "${TMPDIR:-/tmp}/pktpath-apt.XXXXXX")
trap 'rm -rf "$apt_dir"' EXIT
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
echo "$missing" | awk '{print "deb http://deb.debian.org/debian", $2, "main"}' | sort -u \
  > "$apt_dir/sources.list"
apt=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
     -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
say "reading Debian's package lists ($(echo "$missing" | awk '{print $2}' | sort -u | paste -sd' '))..."
apt-get "${apt[@]}" update -qq
echo "$missing" | while read -r name suite package; do
  say "$name: downloading $package..."
  (cd "$apt_dir" && apt-get "${apt[@]}" download -qq "$package")
  out="$CACHE/kernels/$name"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  dpkg -x "$apt_dir/${package}"_*.deb "$out.tmp"
  rm -f "$apt_dir/${package}"_*.deb
  # the package leaves modules.dep to its postinst: without it the guest finds no module
  for modules in "$out.tmp"/lib/modules/* "$out.tmp"/usr/lib/modules/*; do
    [ -d "$modules" ] || continue
    /sbin/depmod -b "${modules%/lib/modules/*}" "$(basename "$modules")"
  done
  rm -rf "$out" && mv "$out.tmp" "$out"
  say "$name: $(ls "$out/boot" | grep vmlinuz) in $out"
done
