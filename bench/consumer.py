#!/usr/bin/env python3
"""User-space consumer throughput: ctypes callback vs a small C extension, everything traced.

With no filter, a UDP flood between two namespaces produces events faster than Python reads
them; each consumer drains the ring buffer for the same time and we count events received and
lost (kernel counter). A sample of each batch is then timed two ways, on one core: decoded
(record -> hop), and as `pktpath trace --json` writes it (record -> hop with its fate and time
since the packet's first hop -> JSON line -> file). Last, the ring read alone: a flood fills a
64 MiB ring nothing reads, and one consume drains it, with pktpath's callback (a slice of
the record's char pointer) and with the ctypes.string_at it replaced.

    sudo python3 bench/consumer.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import importlib.util
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from overhead import DST, PORT, Topology, build_flood  # noqa: E402
from pktpath.cli.stream import formatter  # noqa: E402
from pktpath.core.event import Counter  # noqa: E402
from pktpath.core.fate import FateJudge  # noqa: E402
from pktpath.core.filters import TraceFilter  # noqa: E402
from pktpath.core.latency import SinceFirst  # noqa: E402
from pktpath.core.libbpf import RingBufferCallback  # noqa: E402
from pktpath.core.loader import Probes  # noqa: E402
from pktpath.core.packet import Recent  # noqa: E402
from pktpath.core.symbols import DropReasons, Symbols  # noqa: E402
from pktpath.core.tracer import MAX_BATCH, hop_from_record  # noqa: E402

SAMPLE = 2000  # records of each batch decoded (and timed)
READ_RING = 64 << 20  # the ring filled, then drained, to time the read alone


def slice_reader(out: list[bytes]) -> Callable[[Any, Any, int], int]:
    """A callback as pktpath's tracer reads records: a char pointer, copied by a slice."""
    def read(_ctx: Any, data: Any, size: int) -> int:
        out.append(data[:size])
        return 0
    return read


def batch_reader(out: list[bytes]) -> Callable[[Any, Any, int], int]:
    """slice_reader stopping at MAX_BATCH records, as the tracer's callback does: libbpf's
    poll returns only when the ring is empty, which a flood faster than the reader never lets
    it be (one poll would then take the whole flood)."""
    def read(_ctx: Any, data: Any, size: int) -> int:
        out.append(data[:size])
        return -errno.E2BIG if len(out) >= MAX_BATCH else 0
    return read


def string_at_reader(out: list[bytes]) -> Callable[[Any, Any, int], int]:
    """The callback before 2026-12-02: an address, copied by ctypes.string_at (a foreign call
    per record)."""
    def read(_ctx: Any, data: Any, size: int) -> int:
        out.append(ctypes.string_at(data, size))
        return 0
    return read


OLD_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
READERS: dict[str, tuple[Any, Callable[[list[bytes]], Callable[[Any, Any, int], int]]]] = {
    "data[:size]": (RingBufferCallback, slice_reader),
    "string_at": (OLD_CALLBACK, string_at_reader),
}


def build_ext(workdir: str) -> object:
    path = os.path.join(workdir, "ringbuf_ext" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC",
                    f"-I{sysconfig.get_paths()['include']}", os.path.join(HERE, "ringbuf_ext.c"),
                    "-o", path, "-lbpf"], check=True)
    spec = importlib.util.spec_from_file_location("ringbuf_ext", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(kind: str, ext: object, topo: Topology, flood: str, seconds: float,
        symbols: Symbols) -> tuple[float, ...]:
    """(records received/s, lost/s, decoded/s, decoded and written as JSON/s) for one
    consumer over one flood."""
    with Probes(TraceFilter().config()) as probes, open(os.devnull, "w") as out:
        lib = probes._bpf.lib
        fd = lib.bpf_map__fd(lib.bpf_object__find_map_by_name(probes._obj, b"events"))
        judge, since = FateJudge(DropReasons(probes.libbpf), symbols), SinceFirst()
        packets = Recent()  # as the tracer decodes
        to_json = formatter(True)
        records: list[bytes] = []
        if kind == "ctypes":
            rb = probes.ring_buffer(batch_reader(records))

            def poll() -> list[bytes]:
                probes.poll(rb, 50)
                batch = records[:]
                records.clear()
                return batch
        else:
            crb = ext.open(fd)  # type: ignore[attr-defined]

            def poll() -> list[bytes]:
                return ext.poll(crb, 50)  # type: ignore[attr-defined, no-any-return]

        def decode(batch: list[bytes]) -> None:
            for record in batch:
                hop_from_record(record)

        def write(batch: list[bytes]) -> None:
            hops = (hop_from_record(record, judge, since, packets) for record in batch)
            out.write("".join(to_json(hop) + "\n" for hop in hops if hop is not None))

        sender = threading.Thread(target=subprocess.run, args=(
            ["ip", "netns", "exec", topo.a, "taskset", "-c", "1", flood, DST, str(PORT),
             str(seconds)],), kwargs={"capture_output": True})
        received = 0.0
        times = {"decoded": 0.0, "json": 0.0}  # seconds the sample took, scaled to the batch
        start = time.monotonic()
        sender.start()
        while sender.is_alive():
            batch = poll()
            received += len(batch)
            sample = batch[:SAMPLE]
            for what, work in (("decoded", decode), ("json", write)):
                t = time.perf_counter()
                work(sample)
                times[what] += (time.perf_counter() - t) / max(len(sample), 1) * len(batch)
        elapsed = time.monotonic() - start
        lost = probes.counters()[Counter.LOST]
        return (received / elapsed, lost / elapsed,
                *(received / spent if spent else 0.0 for spent in times.values()))


def read_alone(kind: str, topo: Topology, flood: str, seconds: float) -> float:
    """Records/s libbpf hands one ring-buffer callback of this kind: a flood fills a ring
    nothing reads, then one consume drains it (the read alone: no decoding)."""
    callback_type, body = READERS[kind]
    records: list[bytes] = []
    callback = callback_type(body(records))
    lib = ctypes.CDLL("libbpf.so.1")  # a handle of its own: ring_buffer__new typed for kind
    lib.ring_buffer__new.restype = ctypes.c_void_p
    lib.ring_buffer__new.argtypes = [ctypes.c_int, callback_type, ctypes.c_void_p,
                                     ctypes.c_void_p]
    lib.ring_buffer__consume.argtypes = lib.ring_buffer__free.argtypes = [ctypes.c_void_p]
    with Probes(TraceFilter().config(), ring_bytes=READ_RING) as probes:
        rb = lib.ring_buffer__new(probes.maps.events, callback, None, None)
        subprocess.run(["ip", "netns", "exec", topo.a, "taskset", "-c", "1", flood, DST,
                        str(PORT), str(seconds)], capture_output=True, check=True)
        start = time.perf_counter()
        lib.ring_buffer__consume(rb)
        elapsed = time.perf_counter() - start
        lib.ring_buffer__free(rb)
    return len(records) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, ...]]] = {"ctypes": [], "c-extension": []}
    symbols = Symbols()
    with tempfile.TemporaryDirectory() as workdir, Topology() as topo:
        flood, ext = build_flood(workdir), build_ext(workdir)
        reads: dict[str, list[float]] = {kind: [] for kind in READERS}
        for _ in range(args.rounds):
            for kind in results:
                results[kind].append(run(kind, ext, topo, flood, args.seconds, symbols))
            for kind, rates in reads.items():
                rates.append(read_alone(kind, topo, flood, min(args.seconds, 1.5)))
    print(f"{sys.executable} {sys.version.split()[0]}")
    print(f"{'consumer':<14}{'received/s':>12}{'lost/s':>12}{'decoded/s':>12}{'JSON/s':>12}"
          "  (medians)")
    for kind, rows in results.items():
        print(f"{kind:<14}" + "".join(f"{statistics.median(r[i] for r in rows):>12,.0f}"
                                      for i in range(4)))
    print("ring read alone (a full ring drained by one callback, medians): " + ", ".join(
        f"{kind} {statistics.median(rates):,.0f} records/s" for kind, rates in reads.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
