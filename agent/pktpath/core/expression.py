"""tcpdump expressions (pcap-filter(7)), compiled by libpcap into classic BPF.

Each expression is compiled twice: for Ethernet frames (DLT_EN10MB), which most hooks see, and
for bare IP packets (DLT_RAW), which hooks on devices without a link-layer header see. Both are
translated into eBPF (:mod:`pktpath.core.translate`), which the loader writes into every
program before the object loads.
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

from pktpath.core.errors import PktpathError, UsageError
from pktpath.core.libbpf import open_library
from pktpath.core.translate import translate

DLT_EN10MB = 1
DLT_RAW = 12  # Linux's value: IPv4 or IPv6, no link-layer header
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_Insn))]


class Compiled(NamedTuple):
    """One expression as classic BPF for both views, and their eBPF translation."""

    expression: str
    ethernet: tuple[tuple[int, int, int, int], ...]
    raw: tuple[tuple[int, int, int, int], ...]
    region: bytes  # the eBPF instructions of the programs' reserved region


def _libpcap() -> ctypes.CDLL:
    try:
        lib = open_library(None, "libpcap.so.0.8", "pcap")
    except OSError as exc:
        raise PktpathError(f"tcpdump expressions need libpcap ({exc}): install it (Debian: "
                           "apt-get install libpcap0.8)") from exc
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Program), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    return lib


def _compile_one(lib: ctypes.CDLL, expression: str,
                 linktype: int) -> tuple[tuple[int, int, int, int], ...]:
    handle = lib.pcap_open_dead(linktype, 262144)
    program = _Program()
    try:
        if lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1,
                            PCAP_NETMASK_UNKNOWN) != 0:
            error = lib.pcap_geterr(handle).decode(errors="replace")
            raise UsageError(f"bad filter expression {expression!r}: {error}")
        insns = tuple((program.bf_insns[i].code, program.bf_insns[i].jt,
                       program.bf_insns[i].jf, program.bf_insns[i].k)
                      for i in range(program.bf_len))
        lib.pcap_freecode(ctypes.byref(program))
        return insns
    finally:
        lib.pcap_close(handle)


def compile_expression(expression: str) -> Compiled:
    """Compile a tcpdump expression; UsageError when libpcap rejects it or it is too long."""
    lib = _libpcap()
    ethernet = _compile_one(lib, expression, DLT_EN10MB)
    try:
        raw = _compile_one(lib, expression, DLT_RAW)
    except UsageError:
        raw = ((0x06, 0, 0, 0),)  # link-layer only (e.g. "ether host"): no match without one
    try:
        region = translate(ethernet, raw)
    except UsageError as exc:
        raise UsageError(f"filter expression {expression!r}: {exc}") from None
    return Compiled(expression, ethernet, raw, region)
