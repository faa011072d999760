#!/usr/bin/env bash
# The kernel matrix: boot each kernel of deps/kernels under QEMU (virtme-ng, TCG: this
# machine's nested KVM cannot run these kernels) in two lanes, run the features of
# tests/kernels/features inside with the host's pktpath and Python, print a kernel x feature
# table, and fail when a feature that tests/kernels/expected says works on a kernel fails.
#
# Usage: tests/kernels/matrix.sh [KERNEL...]   (default: every kernel of deps/kernels)
#        PKTPATH_FEATURES=agent-tracer,udp tests/kernels/matrix.sh 5.10   (some features only)
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
# Python, its packages, this checkout and the cache are exported again read-only with the
# guest's page cache (guest.sh mounts them over their own paths): through the root's uncached
# 9p a Python start took 5-15 s and pytest's collection 1-2.5 minutes
"$python" -m compileall -q "$repo/agent" "$repo/tests" >/dev/null  # pycs the guest cannot write
mapfile -t trees < <("$python" - "$repo" "$CACHE" <<'PY'
import os, sys, sysconfig
paths = [sysconfig.get_path(n) for n in ("stdlib", "platstdlib", "purelib", "platlib")]
paths += [p for p in sys.path if p.endswith("-packages")] + sys.argv[1:]
if sys.prefix not in ("/", "/usr"):  # a Python of its own (pyenv, venv): its binary and libpython
    paths.append(sys.prefix)
trees = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})
for tree in trees:
    if not any(tree.startswith(other + "/") for other in trees):
        print(tree)
PY
)
qemu_opts=() mounts=()
for i in "${!trees[@]}"; do
  qemu_opts+=(-fsdev "local,id=pk$i,path=${trees[$i]},security_model=none,readonly=on"
              -device "virtio-9p-pci,fsdev=pk$i,mount_tag=pk$i")
  mounts+=("pk$i:${trees[$i]}")
done
# Two lanes side by side, a guest of one CPU in each: the first kernel (the oldest, 5.10: its 9p
# is the slowest) in one, the others one after another in the other. A guest of two CPUs kept
# about one core busy (6.1 alone: 22.5 CPU minutes in 21 minutes); three such guests at once
# on two cores made the tests' time-outs fail.
boot() {
  local name=$1 out="$results/$1" start=$SECONDS vmlinuz
  mkdir -p "$out"
  vmlinuz=$(ls "$CACHE/kernels/$name/boot"/vmlinuz-*)
  say "$name: booting $(basename "$vmlinuz") under QEMU (TCG, 15-40 minutes)..."
  # the guest sees the host's files, but vng hides /var/cache behind a tmpfs: show the cache
  timeout 3000 vng -v -r "$vmlinuz" --disable-kvm --memory 4G --cpus 1 --rwdir "$out" \
    --rodir "$CACHE=$CACHE" --qemu-opts="${qemu_opts[*]}" \
    --exec "PKTPATH_CACHE=$CACHE PKTPATH_GUEST_MOUNTS='${mounts[*]}' bash $repo/tests/kernels/guest.sh $out $python ${PKTPATH_FEATURES:-}" \
    < /dev/null > "$out/console.log" 2>&1
  say "$name: $(grep -c passed "$out/results" 2>/dev/null || echo 0) passed in $((SECONDS - start)) s ($out)"
}
boot "${kernels[0]}" &
for name in "${kernels[@]:1}"; do boot "$name"; done
wait
python3 "$repo/tests/kernels/table.py" "$results" "${kernels[@]}"
