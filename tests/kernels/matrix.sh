#!/usr/bin/env bash
# The kernel matrix: boot each kernel of deps/kernels under QEMU (virtme-ng, TCG: this
# machine's nested KVM cannot run these kernels) one after another, run the features of
# tests/kernels/features inside with the host's pktpath and Python, print a kernel x feature
# table, and fail when a feature that tests/kernels/expected says works on a kernel fails.
#
# Usage: tests/kernels/matrix.sh [KERNEL...]   (default: every kernel of deps/kernels)
#        PKTPATH_FEATURES=agent,udp tests/kernels/matrix.sh 5.10   (some features only)
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${PKTPATH_CACHE:-/var/cache/pktpath}
say() { echo "pktpath kernels: $*" >&2; }
python=$(python3 -c 'import sys; print(sys.executable)')
command -v vng >/dev/null || { say "vng (virtme-ng) is missing: run make deps"; exit 1; }
bash "$repo/deps/kernels.sh" || exit 1
kernels=("$@")
[ ${#kernels[@]} -gt 0 ] || mapfile -t kernels < <(awk '!/^#/ && NF == 3 {print $1}' "$repo/deps/kernels")
results=$(mktemp -d "${TMPDIR:-/tmp}/pktpath-kernels.XXXXXX")
for name in "${kernels[@]}"; do
  out="$results/$name" && mkdir -p "$out"
  vmlinuz=$(ls "$CACHE/kernels/$name/boot"/vmlinuz-*)
  say "$name: booting $(basename "$vmlinuz") under QEMU (TCG, a few minutes)..."
  start=$SECONDS
  # the guest sees the host's files, but vng hides /var/cache behind a tmpfs: show the cache
  timeout 2400 vng -r "$vmlinuz" --disable-kvm --memory 3G --cpus 2 --rwdir "$out" \
    --rodir "$CACHE=$CACHE" \
    --exec "PKTPATH_CACHE=$CACHE bash $repo/tests/kernels/guest.sh $out $python ${PKTPATH_FEATURES:-}" > "$out/console.log" 2>&1
  say "$name: $(grep -c passed "$out/results" 2>/dev/null || echo 0) passed in $((SECONDS - start)) s ($out)"
done
python3 "$repo/tests/kernels/table.py" "$results" "${kernels[@]}"
