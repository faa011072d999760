"""Classic BPF (what libpcap compiles a tcpdump expression into) translated into eBPF, for the
region every hook program reserves (``bpf/expression.h``), written in before the object loads.

The verifier then checks straight-line code once, on every kernel from 5.10: no loop helper,
no interpreter to explore. The region's contract: on entry r1 points to the scratch (the
view's first ``EXPR_SNAP`` bytes, then classic BPF's memory M[0..15]), r2 is the view's length
and r3 the view (0 Ethernet, 1 raw IP); on exit r0 is the verdict. A is r4, X is r5, r0 and r3
are temporaries. As in the kernel's own classic BPF, a load past the packet, a division by
zero or an unknown instruction returns 0 (not wanted). Loads past ``EXPR_SNAP`` bytes do too.

Only instructions reachable from the start are emitted (the verifier refuses unreachable
ones); what is left of the region is filled with ``ja +0``, which the JIT drops.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from pktpath.core.errors import UsageError
from pktpath.core.event import EXPR_MARK, EXPR_MEM_OFFSET, EXPR_SLOTS, EXPR_SNAP

ClassicInsn = tuple[int, int, int, int]  # code, jt, jf, k (struct sock_filter)

INSN = struct.Struct("<BBhi")  # struct bpf_insn: code, dst | src << 4, off, imm
MARK = INSN.pack(0xB7, 0, 0, EXPR_MARK)  # r0 = EXPR_MARK, the reserved slots

# eBPF opcode parts (linux/bpf.h)
LDX, STX, ALU, JMP, JMP32, ALU64 = 0x01, 0x03, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
MEM = 0x60
K, X = 0x00, 0x08
MOV, ADD, AND, LSH, NEG, END_OP = 0xB0, 0x00, 0x50, 0x60, 0x80, 0xD0
JA, JEQ, JGT, JNE, JLT = 0x00, 0x10, 0x20, 0x50, 0xA0
TO_BE = 0x08

R0, BUF, LEN, TMP, A, XR = 0, 1, 2, 3, 4, 5  # registers
SIZE_CODE = {4: W, 2: H, 1: B}


class Insn(NamedTuple):
    """One eBPF instruction; ``target`` names the label a jump goes to."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None


Item = Insn | str  # a str is a label: the instruction that follows it


class _Emitter:
    """Builds the symbolic program of one view."""

    def __init__(self, view: str, size: int) -> None:
        self.view = view
        self.size = size  # classic instructions in the view
        self.items: list[Item] = []
        self._labels = 0

    def label(self) -> str:
        self._labels += 1
        return f"{self.view}.local{self._labels}"

    def pc(self, index: int) -> str:
        """The label of classic instruction index (a jump out of the program rejects)."""
        return f"{self.view}.{index}" if index <= self.size else "reject"

    def add(self, *items: Item) -> None:
        self.items.extend(items)


def _mov32(dst: int, imm: int) -> Insn:
    return Insn(ALU | MOV | K, dst, imm=_s32(imm))


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _ja(target: str) -> Insn:
    return Insn(JMP | JA, target=target)


def _load(e: _Emitter, dst: int, size: int, offset: int | None) -> None:
    """dst = the size bytes at offset of the view (offset None: X + k, already in TMP)."""
    swap = [Insn(ALU | END_OP | TO_BE, dst, imm=size * 8)] if size > 1 else []
    if offset is not None:
        if offset + size > EXPR_SNAP:
            e.add(_ja("reject"))
            return
        e.add(Insn(JMP | JLT | K, LEN, imm=offset + size, target="reject"),
              Insn(LDX | MEM | SIZE_CODE[size], dst, BUF, off=offset), *swap)
        return
    e.add(Insn(JMP | JGT | K, TMP, imm=EXPR_SNAP - size, target="reject"),
          Insn(ALU64 | MOV | X, R0, TMP),
          Insn(ALU64 | ADD | K, R0, imm=size),
          Insn(JMP | JGT | X, R0, LEN, target="reject"),
          Insn(ALU64 | ADD | X, TMP, BUF),
          Insn(LDX | MEM | SIZE_CODE[size], dst, TMP), *swap)


def _translate_one(e: _Emitter, index: int, insn: ClassicInsn) -> None:
    code, jt, jf, k = insn
    cls = code & 0x07
    if cls in (0x00, 0x01):  # LD, LDX
        dst = A if cls == 0x00 else XR
        size = {0x00: 4, 0x08: 2, 0x10: 1}.get(code & 0x18, 0)
        mode = code & 0xE0
        if mode == 0x00:  # IMM
            e.add(_mov32(dst, k))
        elif mode == 0x20 and size:  # ABS
            _load(e, dst, size, k)
        elif mode == 0x40 and size:  # IND: X + k
            if k >= EXPR_SNAP:
                e.add(_ja("reject"))
            else:
                e.add(Insn(ALU64 | MOV | X, TMP, XR), Insn(ALU64 | ADD | K, TMP, imm=k))
                _load(e, dst, size, None)
        elif mode == 0x60:  # MEM
            e.add(Insn(LDX | MEM | W, dst, BUF, off=EXPR_MEM_OFFSET + 4 * (k & 15)))
        elif mode == 0x80:  # LEN
            e.add(Insn(ALU | MOV | X, dst, LEN))
        elif mode == 0xA0 and cls == 0x01:  # MSH: X = 4 * (P[k] & 0xf)
            _load(e, XR, 1, k)
            e.add(Insn(ALU | AND | K, XR, imm=0xF), Insn(ALU | LSH | K, XR, imm=2))
        else:
            e.add(_ja("reject"))
    elif cls in (0x02, 0x03):  # ST, STX: M[k] = A or X
        e.add(Insn(STX | MEM | W, BUF, A if cls == 0x02 else XR,
                   off=EXPR_MEM_OFFSET + 4 * (k & 15)))
    elif cls == 0x04:  # ALU on A
        _alu(e, code & 0xF0, bool(code & 0x08), k)
    elif cls == 0x05:  # JMP
        op = code & 0xF0
        if op == 0x00:
            e.add(_ja(e.pc(index + 1 + k)))
        elif op in (0x10, 0x20, 0x30, 0x40) and jt == jf:
            e.add(_ja(e.pc(index + 1 + jt)))
        elif op in (0x10, 0x20, 0x30, 0x40):
            if code & 0x08:
                test = Insn(JMP32 | op | X, A, XR, target=e.pc(index + 1 + jt))
            else:
                test = Insn(JMP32 | op | K, A, imm=_s32(k), target=e.pc(index + 1 + jt))
            e.add(test, _ja(e.pc(index + 1 + jf)))
        else:
            e.add(_ja("reject"))
    elif cls == 0x06:  # RET
        rval = code & 0x18
        value = {0x10: Insn(ALU | MOV | X, R0, A), 0x08: Insn(ALU | MOV | X, R0, XR)}.get(
            rval, _mov32(R0, k))
        e.add(value, _ja("end"))
    elif (code & 0xF8) == 0x00:  # MISC TAX
        e.add(Insn(ALU | MOV | X, XR, A))
    else:  # MISC TXA
        e.add(Insn(ALU | MOV | X, A, XR))


def _alu(e: _Emitter, op: int, by_x: bool, k: int) -> None:
    if op == NEG:
        e.add(Insn(ALU | NEG, A))
        return
    if op not in (0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xA0):
        e.add(_ja("reject"))
        return
    if op in (0x30, 0x90):  # DIV, MOD: by zero returns 0
        if not by_x and k == 0:
            e.add(_ja("reject"))
            return
        if by_x:
            e.add(Insn(JMP | JEQ | K, XR, imm=0, target="reject"))
    if op in (0x60, 0x70):  # LSH, RSH: by 32 or more gives 0
        if not by_x:
            e.add(_mov32(A, 0) if k > 31 else Insn(ALU | op | K, A, imm=k))
            return
        zero, done = e.label(), e.label()
        e.add(Insn(JMP | JGT | K, XR, imm=31, target=zero), Insn(ALU | op | X, A, XR),
              _ja(done), zero, _mov32(A, 0), done)
        return
    e.add(Insn(ALU | op | X, A, XR) if by_x else Insn(ALU | op | K, A, imm=_s32(k)))


def _view(view: str, program: Sequence[ClassicInsn]) -> list[Item]:
    e = _Emitter(view, len(program))
    e.add(_mov32(A, 0), _mov32(XR, 0))
    for index, insn in enumerate(program):
        e.add(e.pc(index))
        _translate_one(e, index, insn)
    e.add(e.pc(len(program)), _ja("reject"))  # falling off the end (never, for libpcap's)
    return e.items


def _positions(items: list[Item]) -> dict[str, int]:
    """Each label's instruction index."""
    where: dict[str, int] = {}
    count = 0
    for item in items:
        if isinstance(item, str):
            where[item] = count
        else:
            count += 1
    return where


def _reachable(items: list[Item]) -> list[Item]:
    """The items without instructions no path from the start reaches."""
    insns = [i for i in items if isinstance(i, Insn)]
    where = _positions(items)
    seen: set[int] = set()
    todo = [0]
    while todo:
        n = todo.pop()
        if n in seen or n >= len(insns):
            continue
        seen.add(n)
        insn = insns[n]
        if insn.target is not None:
            todo.append(where[insn.target])
        if insn.code != JMP | JA:
            todo.append(n + 1)
    kept: list[Item] = []
    n = 0
    for item in items:
        if isinstance(item, str):
            kept.append(item)
        else:
            if n in seen:
                kept.append(item)
            n += 1
    return kept


def _resolve(items: list[Item]) -> Iterator[bytes]:
    """The instructions encoded, each jump's offset counted to its label."""
    where = _positions(items)
    n = 0
    for item in items:
        if isinstance(item, str):
            continue
        off = where[item.target] - n - 1 if item.target is not None else item.off
        yield INSN.pack(item.code, item.dst | item.src << 4, off, item.imm)
        n += 1


def translate(ethernet: Sequence[ClassicInsn], raw: Sequence[ClassicInsn],
              slots: int = EXPR_SLOTS) -> bytes:
    """Both views' classic BPF as the eBPF of the reserved region: exactly slots
    instructions. UsageError when they do not fit."""
    items: list[Item] = [Insn(JMP | JNE | K, TMP, imm=0, target="raw"), "ether",
                         *_view("ether", ethernet), "raw", *_view("raw", raw),
                         "reject", _mov32(R0, 0), "end"]
    code = b"".join(_resolve(_reachable(items)))
    used = len(code) // INSN.size
    if used > slots:
        raise UsageError(f"the filter expression needs {used} eBPF instructions; pktpath has "
                         f"room for {slots} in the kernel: simplify it")
    return code + INSN.pack(JMP | JA, 0, 0, 0) * (slots - used)


def find_region(program: bytes, slots: int = EXPR_SLOTS) -> int | None:
    """Index of the first instruction of a program's reserved region, or None."""
    run = MARK * slots
    at = program.find(run)
    while at >= 0 and at % INSN.size:
        at = program.find(run, at + 1)
    return at // INSN.size if at >= 0 else None
