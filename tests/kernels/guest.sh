#!/bin/bash
# Runs inside a kernel of the matrix (booted by matrix.sh): the features' tests, each on its
# own, results as "name passed|failed" lines in $1/results, pytest's output in $1/<name>.log.
# $2 is the host's Python (the guest sees the host's files, not its PATH); $3, if given, the
# features to run (comma-separated names).
out=$1
python=$2
only=${3:-}
export PATH=$(dirname "$python"):$PATH
export PKTPATH_TEST_SLOWDOWN=5  # emulated: everything takes longer
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo" || exit 1
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mkdir -p /run/netns
for m in veth bridge br_netfilter vxlan nf_tables nft_chain_nat nft_compat xt_conntrack \
         nf_nat iptable_nat iptable_filter ip6_tables; do modprobe -q "$m" 2>/dev/null; done
uname -r > "$out/kernel"
: > "$out/results"
# an emulated kernel is slow and its timing uneven: a test may take several times its usual
# 300 s (the agent's, with its API server, 200-490 s under TCG), and a failure is tried once more
run_feature() {
  CI=true timeout 900 "$python" -m pytest -p no:cacheprovider -q -x -o timeout=840 "$1"
}
# but a feature tests/kernels/expected says this kernel lacks is tried once: it may fail, and
# a second try only spends the guest's time (on a slower machine the matrix's 2400 s ran out)
kernel=$(basename "$out")
lacks() { awk -v k="$kernel" -v f="$1" '!/^#/ && $1 == k && $2 == f {found = 1}
                                        END {exit !found}' tests/kernels/expected; }
grep -v '^#' tests/kernels/features | while read -r name test; do
  [ -n "$name" ] || continue
  [ -z "$only" ] || [[ ",$only," == *",$name,"* ]] || continue
  if run_feature "$test" > "$out/$name.log" 2>&1 ||
     { ! lacks "$name" && run_feature "$test" >> "$out/$name.log" 2>&1; }; then
    echo "$name passed" >> "$out/results"
  else
    echo "$name failed" >> "$out/results"
    cp -rL /tmp/pytest-of-*/pytest-current "$out/$name.tmp" 2>/dev/null  # logs of what ran
  fi
  sync  # the host sees this feature's log even if the guest is killed (time out) later
done
echo done >> "$out/results"
