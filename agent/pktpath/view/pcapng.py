"""``pktpath trace -w FILE``: the traced packets as pcap-ng, readable by Wireshark and tshark.

One interface description block per (namespace, interface), named ``ifname@namespace``; an
enhanced packet block per event with a comment saying where and at which hook it was seen and
which packet it is (``packet=0x…``, the same for every hop of one packet). Frames seen with
their Ethernet header are LINKTYPE_ETHERNET interfaces, the rest LINKTYPE_RAW (IP first).

The file is created with mode 0600 and never through a symbolic link planted at its path.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import BinaryIO

from pktpath.core.errors import UsageError
from pktpath.core.tracer import Hop

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT, _IF_NAME, _IF_DESCRIPTION, _IF_TSRESOL = 0, 1, 2, 3, 9
_SHB_USERAPPL = 4


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def open_private(path: str) -> BinaryIO:
    """path opened for writing, mode 0600, refusing a symbolic link at path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if os.path.islink(path):
            raise UsageError(f"{path} is a symbolic link; pktpath does not write through "
                             "one (remove it or choose another path)") from None
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    return os.fdopen(fd, "wb")


class PcapngWriter:
    """Writes hops to a pcap-ng file; name_of names a namespace inode."""

    def __init__(self, out: BinaryIO, name_of: Callable[[int], str] = str) -> None:
        self._out = out
        self._name_of = name_of
        self._interfaces: dict[tuple[int, str, int], int] = {}
        # pcap-ng wants wall-clock time; events carry CLOCK_MONOTONIC
        self._offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        body = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1)
        body += _option(_SHB_USERAPPL, b"pktpath") + _option(_OPT_END, b"")
        out.write(_block(_SHB, body))
        self.packets = 0

    def _interface(self, netns: int, ifname: str, linktype: int) -> int:
        key = (netns, ifname, linktype)
        if key not in self._interfaces:
            name = f"{ifname or '-'}@{self._name(netns)}"
            body = struct.pack("<HHI", linktype, 0, 0)
            body += _option(_IF_NAME, name.encode())
            body += _option(_IF_DESCRIPTION, f"netns {netns}".encode())
            body += _option(_IF_TSRESOL, bytes([9])) + _option(_OPT_END, b"")
            self._out.write(_block(_IDB, body))
            self._interfaces[key] = len(self._interfaces)
        return self._interfaces[key]

    def _name(self, netns: int) -> str:
        return self._name_of(netns)

    def write(self, hop: Hop) -> None:
        """One packet block for a hop (nothing for a routing event or an empty capture)."""
        e = hop.event
        if e.flow or not e.data:
            return
        linktype = LINKTYPE_ETHERNET if e.l2 else LINKTYPE_RAW
        index = self._interface(e.netns, e.ifname, linktype)
        stamp = e.time_ns + self._offset_ns
        hook = hop.hook.tracepoint if hop.hook else f"hook-{e.hook}"
        comment = (f"netns={self._name(e.netns)} ({e.netns}) ifname={e.ifname or '-'} "
                   f"hook={hook} packet=0x{e.packet:x}")
        if hop.fate is not None:
            comment += (f" drop={hop.fate.reason}" if hop.fate.drop else " delivered")
        data = bytes(e.data)
        body = struct.pack("<IIIII", index, stamp >> 32, stamp & 0xFFFFFFFF, len(data),
                           max(e.len, len(data)))
        body += data + b"\0" * (-len(data) % 4)
        body += _option(_OPT_COMMENT, comment.encode()) + _option(_OPT_END, b"")
        self._out.write(_block(_EPB, body))
        self.packets += 1
