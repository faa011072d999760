"""The shipped BPF object's chains of calls fit the stack the matrix's kernels allow.

5.10 to 6.1 count every frame of a chain of calls (a program, the global functions it calls,
theirs), each rounded up to 32 bytes, against 512 bytes, and refuse the whole object
otherwise ("combined stack size of 4 calls is 576. Too large"). This kernel does not, so only
the kernel matrix, tens of minutes later, would say; here the frames are read from the
object's code (the deepest offset below r10 each function uses) and its call relocations.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from conftest import need
from pktpath.core.loader import object_path

MAX_STACK = 512  # MAX_BPF_STACK

_FUNCTION = re.compile(r"^[0-9a-f]+ <(?!LBB)(\S+)>:")
_BELOW_R10 = re.compile(r"r10 - (0x[0-9a-f]+|\d+)\)")
_FROM_R10 = re.compile(r"\b(r\d) = r10$")
_CALL = re.compile(r"R_BPF_64_32\s+(\S+)")


def frames_and_calls(dump: str) -> tuple[dict[str, int], dict[str, set[str]]]:
    """Each function's frame (bytes below r10 it reaches) and the functions it calls, from
    `llvm-objdump -dr`."""
    frames: dict[str, int] = {}
    calls: dict[str, set[str]] = {}
    current = ""
    from_r10: set[str] = set()  # registers holding r10 (then moved down by an add)
    for line in dump.splitlines():
        found = _FUNCTION.match(line)
        if found:
            current = found.group(1)
            frames[current], calls[current], from_r10 = 0, set(), set()
            continue
        if not current:
            continue
        text = line.split(":", 1)[-1].strip()
        depths = [int(n, 0) for n in _BELOW_R10.findall(text)]
        copied = _FROM_R10.search(text)
        if copied:
            from_r10.add(copied.group(1))
        else:
            moved = re.match(r"(r\d) \+= -(0x[0-9a-f]+|\d+)$", text)
            if moved and moved.group(1) in from_r10:
                depths.append(int(moved.group(2), 0))
            elif re.match(r"(r\d) = ", text):
                from_r10.discard(text.split()[0])
        if depths:
            frames[current] = max(frames[current], *depths)
        call = _CALL.search(line)
        if call:
            calls[current].add(call.group(1))
    return frames, calls


def deepest(name: str, frames: dict[str, int], calls: dict[str, set[str]]) -> tuple[int, list[str]]:
    """The stack the deepest chain of calls from name takes, as the kernel counts it, and the
    chain."""
    own = -(-max(frames[name], 1) // 32) * 32
    below = [deepest(callee, frames, calls) for callee in calls[name] if callee in frames]
    depth, chain = max(below, default=(0, []))
    return own + depth, [name, *chain]


def test_every_chain_of_calls_fits_in_512_bytes_of_stack() -> None:
    need(shutil.which("llvm-objdump") is not None, "llvm-objdump is not installed")
    dump = subprocess.run(["llvm-objdump", "-dr", "--no-show-raw-insn", object_path()],
                          capture_output=True, text=True, check=True).stdout
    frames, calls = frames_and_calls(dump)
    programs = [name for name in frames if name.startswith(("tp_btf_", "raw_tp_"))]
    assert len(programs) >= 20, f"expected every hook's programs, read {programs}"
    assert any(calls[p] & frames.keys() for p in programs), "no program calls a function"
    too_deep = {" -> ".join(chain): depth
                for depth, chain in (deepest(p, frames, calls) for p in programs)
                if depth > MAX_STACK}
    assert not too_deep, f"chains of calls over {MAX_STACK} bytes of stack: {too_deep}"


def test_the_reading_of_frames_sees_a_chain_too_deep() -> None:
    """The reader itself: a program of 312 bytes, calling one of 40, calling one of none (32,
    as any), calling one of 144, is 576 — what 6.1 counted for the object that had it."""
    dump = """
0000000000000000 <raw_tp_kfree_skb>:
       0:	*(u64 *)(r10 - 312) = r1
       1:	call -1
		0000000000000008:  R_BPF_64_32	ct_read
0000000000000000 <ct_read>:
       0:	r2 = r10
       1:	r2 += -40
       2:	call -1
		0000000000000010:  R_BPF_64_32	conn_track
0000000000000000 <conn_track>:
       0:	call -1
		0000000000000000:  R_BPF_64_32	conn_add
0000000000000000 <conn_add>:
       0:	*(u64 *)(r10 - 0x90) = r1
"""
    frames, calls = frames_and_calls(dump)
    assert frames == {"raw_tp_kfree_skb": 312, "ct_read": 40, "conn_track": 0, "conn_add": 144}
    assert deepest("raw_tp_kfree_skb", frames, calls) == (
        576, ["raw_tp_kfree_skb", "ct_read", "conn_track", "conn_add"])
