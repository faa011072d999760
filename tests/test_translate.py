"""The classic BPF -> eBPF translation gives the verdict classic BPF gives, on any packet.

Two small interpreters are the judges: one runs classic BPF as the kernel does (a load past the
packet, or a division by zero, returns 0), the other runs the translated eBPF region with the
contract of bpf/expression.h (r1 the scratch, r2 the length, r3 the view). Hypothesis draws the
packets; the programs are libpcap's for real tcpdump expressions, and hand-written ones for the
instructions libpcap rarely emits (ALU by X, scratch memory, MSH, indirect loads).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pktpath.core.errors import UsageError
from pktpath.core.event import EXPR_MEM_OFFSET, EXPR_SLOTS, EXPR_SNAP
from pktpath.core.expression import compile_expression
from pktpath.core.translate import INSN, MARK, ClassicInsn, find_region, translate

M32 = 0xFFFFFFFF


def classic_alu(op: int, a: int, src: int) -> int:
    """A op src as classic BPF computes it (src is not zero for a division)."""
    if op in (0x60, 0x70) and src >= 32:
        return 0
    results = {0x00: a + src, 0x10: a - src, 0x20: a * src, 0x40: a | src, 0x50: a & src,
               0x60: a << min(src, 32), 0x70: a >> min(src, 32), 0x80: -a, 0xA0: a ^ src}
    if op in (0x30, 0x90):
        return a // src if op == 0x30 else a % src
    return results[op]


def run_classic(program: Sequence[ClassicInsn], pkt: bytes) -> int:
    """Classic BPF as the kernel runs it."""
    a = x = pc = 0
    mem = [0] * 16

    def load(off: int, size: int) -> int | None:
        if off < 0 or off + size > len(pkt):
            return None
        return int.from_bytes(pkt[off:off + size], "big")

    while pc < len(program):
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 7
        if cls in (0, 1):
            size = {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
            mode = code & 0xE0
            value: int | None
            if mode == 0x00:
                value = k
            elif mode == 0x20:
                value = load(k, size)
            elif mode == 0x40:
                value = load(x + k, size)
            elif mode == 0x60:
                value = mem[k & 15]
            elif mode == 0x80:
                value = len(pkt)
            else:  # MSH
                byte = load(k, 1)
                value = None if byte is None else (byte & 0xF) << 2
            if value is None:
                return 0
            if cls == 0:
                a = value
            else:
                x = value
        elif cls == 2:
            mem[k & 15] = a
        elif cls == 3:
            mem[k & 15] = x
        elif cls == 4:
            op, src = code & 0xF0, x if code & 0x08 else k
            if op in (0x30, 0x90) and src == 0:
                return 0
            a = classic_alu(op, a, src) & M32
        elif cls == 5:
            op, src = code & 0xF0, x if code & 0x08 else k
            if op == 0x00:
                pc += k
                continue
            taken = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += jt if taken else jf
        elif cls == 6:
            return a if code & 0x18 == 0x10 else k
        else:
            if code & 0xF8 == 0:
                x = a
            else:
                a = x
    return 0


def run_region(region: bytes, pkt: bytes, view: int) -> int:
    """The translated region, with bpf/expression.h's contract; returns r0 at its end."""
    memory = bytearray(EXPR_MEM_OFFSET + 64)
    memory[:min(len(pkt), EXPR_SNAP)] = pkt[:EXPR_SNAP]
    base = 1 << 40  # r1: where the scratch is
    r = [0] * 11
    r[1], r[2], r[3] = base, len(pkt), view
    insns = [INSN.unpack_from(region, i) for i in range(0, len(region), INSN.size)]
    pc = steps = 0
    while pc < len(insns):
        steps += 1
        assert steps < 100_000, "the region loops"
        code, regs, off, imm = insns[pc]
        dst, srcr = regs & 0xF, regs >> 4
        pc += 1
        cls = code & 7
        if cls in (0x04, 0x07):  # ALU, ALU64
            wide = cls == 0x07
            op = code & 0xF0
            src = r[srcr] if code & 0x08 else imm & (2**64 - 1)
            mask = 2**64 - 1 if wide else M32
            d, s = r[dst] & mask, src & mask
            if op == 0xD0:  # END to big endian
                size = imm // 8
                r[dst] = int.from_bytes((r[dst] & ((1 << imm) - 1)).to_bytes(size, "little"),
                                        "big")
                continue
            value = {0xB0: s, 0x00: d + s, 0x10: d - s, 0x20: d * s,
                     0x30: d // s if s else 0, 0x40: d | s, 0x50: d & s,
                     0x60: d << (s & (63 if wide else 31)), 0x70: d >> (s & (63 if wide else 31)),
                     0x80: -d, 0x90: d % s if s else d, 0xA0: d ^ s}[op]
            r[dst] = value & mask
        elif cls == 0x01:  # LDX MEM
            size = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[code & 0x18]
            at = r[srcr] + off - base
            assert 0 <= at <= len(memory) - size, f"load outside the scratch at {at}"
            r[dst] = int.from_bytes(memory[at:at + size], "little")
        elif cls == 0x03:  # STX MEM (W)
            at = r[dst] + off - base
            assert 0 <= at <= len(memory) - 4
            memory[at:at + 4] = (r[srcr] & M32).to_bytes(4, "little")
        elif cls in (0x05, 0x06):  # JMP, JMP32
            op = code & 0xF0
            if op == 0x00:
                pc += off
                continue
            mask = M32 if cls == 0x06 else 2**64 - 1
            d = r[dst] & mask
            s = (r[srcr] if code & 0x08 else imm) & mask
            taken = {0x10: d == s, 0x20: d > s, 0x30: d >= s, 0x40: bool(d & s),
                     0x50: d != s, 0xA0: d < s}[op]
            if taken:
                pc += off
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    return r[0] & M32


EXPRESSIONS = ["icmp", "tcp and dst port 8080", "udp port 53", "host 10.200.0.1",
               "ip6 and udp", "tcp[13] & 2 != 0", "vlan and host 10.200.0.1", "arp",
               "ether host 02:00:00:00:00:01", "ip[8] < 64", "tcp[tcpflags] & tcp-syn != 0",
               "net 10.200.0.0/16 and not port 22", "ip and len > 100", "icmp6"]

HAND_WRITTEN: list[list[ClassicInsn]] = [
    # X = 4 * (P[14] & 0xf) (an IPv4 header length), A = P[X + 14 + 2] (a TCP port)
    [(0xB1, 0, 0, 14), (0x48, 0, 0, 16), (0x15, 0, 1, 80), (0x06, 0, 0, 1), (0x06, 0, 0, 0)],
    # scratch memory and ALU by X: M[3] = P[0]; X = P[1]; A = (M[3] * X) % 7 ^ 5 / X
    [(0x30, 0, 0, 0), (0x02, 0, 0, 3), (0x31, 0, 0, 1), (0x60, 0, 0, 3), (0x2C, 0, 0, 0),
     (0x94, 0, 0, 7), (0xA4, 0, 0, 5), (0x3C, 0, 0, 0), (0x16, 0, 0, 0)],
    # shifts by X (0-255: 32 and more give 0), JGT/JGE/JSET by X, TAX/TXA, LD LEN
    [(0x30, 0, 0, 2), (0x07, 0, 0, 0), (0x80, 0, 0, 0), (0x6C, 0, 0, 0), (0x87, 0, 0, 0),
     (0x20, 0, 0, 4), (0x2D, 1, 0, 0), (0x06, 0, 0, 2), (0x3D, 0, 1, 0), (0x06, 0, 0, 3),
     (0x4D, 0, 1, 0), (0x06, 0, 0, 4), (0x84, 0, 0, 0), (0x16, 0, 0, 0)],
    # an indirect load past the end, and RET A of a right shift by X
    [(0x31, 0, 0, 3), (0x50, 0, 0, 250), (0x7C, 0, 0, 0), (0x16, 0, 0, 0)],
]

packets = st.binary(min_size=0, max_size=EXPR_SNAP)
ports = st.sampled_from([22, 53, 80, 8080, 8080, 8080]) | st.integers(0, 0xFFFF)
ip4 = st.sampled_from([b"\x0a\xc8\x00\x01", b"\x0a\xc8\x00\x02"]) | st.binary(min_size=4,
                                                                                  max_size=4)
ip6 = st.sampled_from([bytes.fromhex("fd000200" + "0" * 23 + "1")]) | st.binary(min_size=16,
                                                                                 max_size=16)


@st.composite
def ip_packets(draw: st.DrawFn) -> bytes:
    """IPv4 or IPv6 with TCP, UDP, ICMP or anything, fields drawn near what filters test."""
    proto = draw(st.sampled_from([1, 6, 6, 17, 58, draw(st.integers(0, 255))]))
    l4 = struct.pack("!HHIIBB", draw(ports), draw(ports), 0, 0, draw(st.integers(0, 15)) << 4,
                     draw(st.integers(0, 255))) + draw(st.binary(max_size=120))
    if draw(st.booleans()):
        ihl = draw(st.sampled_from([5, 6]) | st.integers(0, 15))
        total = draw(st.integers(0, 300))
        head = struct.pack("!BBHHHBBH", 0x40 | ihl, 0, total, 1, draw(st.sampled_from([0, 0x2000,
                           5])), draw(st.sampled_from([1, 64, 200])), proto, 0)
        head += draw(ip4) + draw(ip4) + b"\0" * max(0, ihl * 4 - 20)
        return head + l4
    return (struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + draw(ip6) + draw(ip6) + l4)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Ethernet frames (tagged or not) around IP, ARP or other ethertypes, maybe cut short."""
    macs = st.sampled_from([bytes.fromhex("020000000001")]) | st.binary(min_size=6, max_size=6)
    body = draw(ip_packets() | st.binary(max_size=60))
    ethertype = 0x86DD if body[:1] and body[0] >> 4 == 6 else 0x0800
    ethertype = draw(st.sampled_from([ethertype] * 4 + [0x0806, 0x8100,
                                                        draw(st.integers(0, 0xFFFF))]))
    if ethertype == 0x8100:
        body = struct.pack("!HH", draw(st.integers(0, 0xFFFF)), 0x0800) + body
    frame = draw(macs) + draw(macs) + struct.pack("!H", ethertype) + body
    cut = draw(st.sampled_from([False] * 3 + [True]))
    return frame[:draw(st.integers(0, len(frame)))] if cut else frame


@pytest.mark.parametrize("expression", EXPRESSIONS)
@settings(max_examples=200, deadline=None)
@given(frame=frames(), raw=ip_packets())
def test_libpcap_programs_give_the_same_verdict(expression: str, frame: bytes,
                                                raw: bytes) -> None:
    compiled = compile_expression(expression)
    frame, raw = frame[:EXPR_SNAP], raw[:EXPR_SNAP]
    assert run_region(compiled.region, frame, 0) == run_classic(compiled.ethernet, frame)
    assert run_region(compiled.region, raw, 1) == run_classic(compiled.raw, raw)


def ipv4_frame(proto: int, l4: bytes, src: bytes = b"\x0a\xc8\x00\x01",
               pad: int = 0) -> bytes:
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4) + pad, 1, 0, 64, proto, 0)
    return (bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip + src +
            b"\x0a\xc8\x00\x02" + l4 + b"\0" * pad)


ARP = bytes.fromhex("ffffffffffff020000000001") + b"\x08\x06" + b"\0\x01\x08\x00\x06\x04" + \
    b"\0\x01" + b"\0" * 20


@pytest.mark.parametrize("expression, frame", [
    ("icmp", ipv4_frame(1, struct.pack("!BBHHH", 8, 0, 0, 1, 1))),
    ("tcp and dst port 8080", ipv4_frame(6, struct.pack("!HHIIBBHHH", 40000, 8080, 0, 0, 0x50,
                                                        2, 0, 0, 0))),
    ("host 10.200.0.1", ipv4_frame(17, struct.pack("!HHHH", 1, 2, 8, 0))),
    ("udp port 53", ipv4_frame(17, struct.pack("!HHHH", 5353, 53, 8, 0))),
    ("ip and len > 60", ipv4_frame(17, struct.pack("!HHHH", 1, 2, 8, 0), pad=40)),
])
def test_the_judges_agree_on_a_match_and_a_miss(expression: str, frame: bytes) -> None:
    """The comparison above is not all zeros: a frame each expression matches, and ARP."""
    compiled = compile_expression(expression)
    assert run_classic(compiled.ethernet, frame) != 0
    assert run_region(compiled.region, frame, 0) == run_classic(compiled.ethernet, frame)
    assert run_region(compiled.region, frame[14:], 1) == run_classic(compiled.raw, frame[14:])
    assert run_classic(compiled.raw, frame[14:]) != 0
    assert run_region(compiled.region, ARP, 0) == run_classic(compiled.ethernet, ARP) == 0


@pytest.mark.parametrize("program", HAND_WRITTEN)
@settings(max_examples=300, deadline=None)
@given(pkt=packets)
def test_hand_written_programs_give_the_same_verdict(program: list[ClassicInsn],
                                                     pkt: bytes) -> None:
    region = translate(program, [(0x06, 0, 0, 0)])
    assert run_region(region, pkt, 0) == run_classic(program, pkt)


def test_the_region_is_exactly_the_reserved_size_and_found_by_its_marks() -> None:
    region = compile_expression("tcp").region
    assert len(region) == EXPR_SLOTS * INSN.size
    program = MARK * 3 + b"\x95" + b"\0" * 7 + MARK * EXPR_SLOTS
    assert find_region(program) == 4
    assert find_region(MARK * (EXPR_SLOTS - 1)) is None


def test_too_long_an_expression_is_refused_with_the_count() -> None:
    many = " or ".join(f"host 10.200.0.{i}" for i in range(1, 201))
    with pytest.raises(UsageError, match=r"needs \d+ eBPF instructions; pktpath has room for "
                                         r"2048 in the kernel: simplify it"):
        compile_expression(many)


def test_unreachable_classic_code_is_left_out() -> None:
    # the verifier refuses unreachable instructions: the dead return must not be emitted
    region = translate([(0x05, 0, 0, 1), (0x06, 0, 0, 7), (0x06, 0, 0, 9)], [(0x06, 0, 0, 0)])
    moves = [struct.unpack_from("<i", region, i + 4)[0] for i in range(0, len(region), 8)
             if region[i] == 0xB4 and region[i + 1] == 0]
    assert 9 in moves and 7 not in moves
