#!/usr/bin/env python3
"""What the verifier does with pktpath's programs: instructions processed and time per program.

Loads the BPF object for `pktpath trace --host 10.200.99.99` (nothing attached), as tp_btf and
as raw_tp, with the verifier's statistics asked for (log level 4), and prints per program the
instructions it processed and its verification time, and `bpf_object__load`'s time; medians
of N loads, objects alternated (these machines are noisy).

    sudo python3 bench/verifier.py                                    # this checkout's object
    sudo python3 bench/verifier.py --loads 5 /tmp/before/agent/pktpath/core/pktpath.bpf.o \\
        agent/pktpath/core/pktpath.bpf.o
"""

from __future__ import annotations

import argparse
import ctypes
import re
import statistics
import sys
import time

from pktpath.core.filters import TraceFilter, parse_host
from pktpath.core.loader import Probes, object_path

_STATS = re.compile(r"verification time (\d+) usec.*?processed (\d+) insns", re.S)


def load(path: str, hook_type: str) -> tuple[float, dict[str, tuple[int, float]]]:
    """One load: bpf_object__load's ms, and per program (instructions, verification ms)."""
    probes = Probes(TraceFilter(hosts=(parse_host("10.200.99.99"),)).config(),
                    hook_type=hook_type, path=path)
    probes._begin()
    if hook_type == "raw_tp":
        probes._choose_programs(probes._tracepoint_args())
        probes._prepare("raw_tp")
    lib = probes.libbpf.lib
    lib.bpf_program__set_log_level.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.bpf_program__set_log_buf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    logs = {}
    for prog in probes._programs():
        if lib.bpf_program__autoload(prog):
            logs[lib.bpf_program__name(prog).decode()] = buf = ctypes.create_string_buffer(1 << 16)
            lib.bpf_program__set_log_buf(prog, buf, len(buf))
            lib.bpf_program__set_log_level(prog, 4)
    assert probes._obj is not None
    start = time.perf_counter()
    probes.libbpf.load_object(probes._obj, f"loading {hook_type} programs")
    took = (time.perf_counter() - start) * 1000
    probes.close()
    stats = {}
    for name, buf in logs.items():
        found = _STATS.search(buf.value.decode())
        if found:
            stats[name] = (int(found.group(2)), int(found.group(1)) / 1000)
    return took, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("objects", nargs="*", default=[object_path()])
    parser.add_argument("--loads", type=int, default=3)
    args = parser.parse_args()
    for hook_type in ("tp_btf", "raw_tp"):
        runs: dict[str, list[tuple[float, dict[str, tuple[int, float]]]]] = {
            path: [] for path in args.objects}
        for _ in range(args.loads):
            for path in args.objects:
                runs[path].append(load(path, hook_type))
        for path, loads in runs.items():
            programs = sorted(loads[0][1])
            insns = sum(loads[0][1][p][0] for p in programs)
            verify = statistics.median(sum(s[p][1] for p in programs) for _, s in loads)
            took = statistics.median(t for t, _ in loads)
            print(f"{hook_type} {path}: {insns:,} instructions processed, verifying {verify:.0f} "
                  f"ms, bpf_object__load {took:.0f} ms (medians of {len(loads)})")
            for program in programs:
                print(f"  {program:<32} {loads[0][1][program][0]:>7,} insns "
                      f"{statistics.median(s[program][1] for _, s in loads):6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
