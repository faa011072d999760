#!/bin/bash
# Runs inside a kernel of the matrix (booted by matrix.sh): the features' tests in one pytest
# session (under emulation a Python start and pytest's collection take minutes: paid once, not
# once per feature), then once more for those that failed; results as "name passed|failed"
# lines in $1/results, pytest's output in $1/pytest.log.
# $2 is the host's Python (the guest sees the host's files, not its PATH); $3, if given, the
# features to run (comma-separated names). PKTPATH_GUEST_MOUNTS lists "tag:path" pairs of
# read-only trees matrix.sh exported with a page cache (the root's own 9p mount has none: every
# stat and read of an import crossed to the host).
out=$1
python=$2
only=${3:-}
for mount in $PKTPATH_GUEST_MOUNTS; do
  mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=524288 \
    "${mount%%:*}" "${mount#*:}" || echo "pktpath kernels: cannot mount ${mount#*:} cached" >&2
done
export PATH=$(dirname "$python"):$PATH
export PKTPATH_TEST_SLOWDOWN=5  # emulated: everything takes longer
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo" || exit 1
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mkdir -p /run/netns
for m in veth bridge br_netfilter vxlan nf_tables nft_chain_nat nft_compat xt_conntrack \
         nf_nat iptable_nat iptable_filter ip6_tables; do modprobe -q "$m" 2>/dev/null; done
kernel=$(basename "$out")
uname -r > "$out/kernel"
: > "$out/results"
: > "$out/pytest.log"
declare -A test_of
names=() tests=()
while read -r name test; do
  [ -n "$name" ] && [[ $name != \#* ]] || continue
  [ -z "$only" ] || [[ ",$only," == *",$name,"* ]] || continue
  names+=("$name") && tests+=("$test") && test_of[$name]=$test
done < tests/kernels/features
# a test may take several times its usual 300 s here (tcpdump expressions: 160 s in 6.1 under
# TCG); -rA names every test's outcome in the log, --durations the time each took
run_session() {
  CI=true "$python" -m pytest -p no:cacheprovider -q -rA --durations=0 -o timeout=840 "$@" >> "$out/pytest.log" 2>&1
  sync  # the host sees the log even if the guest is killed (time out) later
}
passed() { grep -qxF "PASSED ${test_of[$1]}" "$out/pytest.log"; }
# a feature tests/kernels/expected says this kernel lacks may fail: it is not tried again
lacks() { awk -v k="$kernel" -v f="$1" '!/^#/ && $1 == k && $2 == f {found = 1}
                                        END {exit !found}' tests/kernels/expected; }
run_session "${tests[@]}"
again=()
for name in "${names[@]}"; do passed "$name" || lacks "$name" || again+=("${test_of[$name]}"); done
if [ ${#again[@]} -gt 0 ]; then
  echo "pktpath kernels: trying again: ${again[*]}" >> "$out/pytest.log"
  run_session "${again[@]}"
fi
for name in "${names[@]}"; do
  if passed "$name"; then echo "$name passed"; else echo "$name failed"; fi >> "$out/results"
done
grep -q failed "$out/results" && cp -rL /tmp/pytest-of-*/pytest-current "$out/tmp" 2>/dev/null
echo done >> "$out/results"
sync
