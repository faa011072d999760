#!/usr/bin/env python3
"""The suite's floor: attach bench/floor.bpf.c's programs (each returns at once) to the
tracepoints pktpath's (a) uses, say "tracing", and hold them until SIGTERM or SIGINT.

    sudo python3 bench/floor.py            # builds the object with clang first
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agent"))
from pktpath.core.libbpf import Libbpf  # noqa: E402


def build(workdir: str) -> str:
    """floor.bpf.c compiled, with pktpath's vmlinux.h."""
    obj = os.path.join(workdir, "floor.bpf.o")
    subprocess.run([os.environ.get("CLANG", "clang"), "-g", "-O2", "-target", "bpf",
                    "-D__TARGET_ARCH_x86", "-I", os.path.join(HERE, "..", "bpf"), "-c",
                    os.path.join(HERE, "floor.bpf.c"), "-o", obj], check=True)
    return obj


def main() -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    bpf = Libbpf()
    lib = bpf.lib
    with tempfile.TemporaryDirectory() as workdir:
        path = build(workdir)
        obj = bpf.check_ptr(lib.bpf_object__open_file(path.encode(), None), f"opening {path}")
    links = []
    try:
        bpf.load_object(obj, "loading the floor's programs")
        prog = None
        while prog := lib.bpf_object__next_program(obj, prog):
            links.append(bpf.check_ptr(lib.bpf_program__attach(prog), "attaching"))
        print(f"tracing: {len(links)} programs that return at once", file=sys.stderr,
              flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        for link in links:
            lib.bpf_link__destroy(link)
        lib.bpf_object__close(obj)
    return 0


if __name__ == "__main__":
    sys.exit(main())
