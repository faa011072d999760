"""Names the running kernel gives to numbers: drop reasons (from its BTF), code addresses
(from /proc/kallsyms)."""

from __future__ import annotations

import bisect
import ctypes
from collections.abc import Iterator, Mapping

from pktpath.core.libbpf import Libbpf

BTF_KIND_PTR = 2
BTF_KIND_ENUM = 6
BTF_KIND_TYPEDEF = 8
BTF_KIND_FUNC_PROTO = 13
DROP_REASON_PREFIX = "SKB_DROP_REASON_"


class _BtfEnum(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32),
                ("size", ctypes.c_uint32)]


def enum_values(libbpf: Libbpf, name: str) -> dict[int, str]:
    """Value -> name of an enum of the running kernel (empty when its BTF lacks it)."""
    lib = libbpf.lib
    btf = lib.btf__load_vmlinux_btf()
    if not btf:
        return {}
    try:
        type_id = lib.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_ENUM)
        if type_id <= 0:
            return {}
        ptr = lib.btf__type_by_id(btf, type_id)
        btf_type = _BtfType.from_address(ptr)
        count = btf_type.info & 0xFFFF
        entries = (_BtfEnum * count).from_address(ptr + ctypes.sizeof(_BtfType))
        return {e.val: lib.btf__name_by_offset(btf, e.name_off).decode() for e in entries}
    finally:
        lib.btf__free(btf)


def tracepoint_args(libbpf: Libbpf, tracepoints: list[str]) -> dict[str, int | None]:
    """How many arguments each tracepoint passes on the running kernel (from its BTF typedef
    btf_trace_<name>, a pointer to a function whose first argument is the tracepoint's data);
    None for a tracepoint the kernel lacks, or when the kernel has no BTF."""
    lib = libbpf.lib
    found: dict[str, int | None] = dict.fromkeys(tracepoints)
    btf = lib.btf__load_vmlinux_btf()
    if not btf:
        return found
    try:
        for name in tracepoints:
            type_id = lib.btf__find_by_name_kind(btf, f"btf_trace_{name}".encode(),
                                                 BTF_KIND_TYPEDEF)
            if type_id <= 0:
                continue
            for kind in (BTF_KIND_PTR, BTF_KIND_FUNC_PROTO):  # typedef -> pointer -> function
                pointed = _BtfType.from_address(lib.btf__type_by_id(btf, type_id)).size
                btf_type = _BtfType.from_address(lib.btf__type_by_id(btf, pointed))
                if (btf_type.info >> 24) & 0x1F != kind:
                    break
                type_id = pointed
            else:
                found[name] = (btf_type.info & 0xFFFF) - 1
    finally:
        lib.btf__free(btf)
    return found


def drop_reasons(libbpf: Libbpf) -> dict[int, str]:
    """enum skb_drop_reason of the running kernel, names without SKB_DROP_REASON_."""
    return {value: name.removeprefix(DROP_REASON_PREFIX)
            for value, name in enum_values(libbpf, "skb_drop_reason").items()}


class DropReasons(Mapping[int, str]):
    """drop_reasons() read when first asked: a trace that meets no drop never parses the
    kernel's BTF for them (~10 ms of its start)."""

    def __init__(self, libbpf: Libbpf) -> None:
        self._libbpf = libbpf
        self._names: dict[int, str] | None = None

    def _read(self) -> dict[int, str]:
        if self._names is None:
            self._names = drop_reasons(self._libbpf)
        return self._names

    def __getitem__(self, value: int) -> str:
        return self._read()[value]

    def __iter__(self) -> Iterator[int]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())


NAMED_MEMORY = 4096  # code addresses whose names a Symbols remembers


class Symbols:
    """Kernel text symbols from /proc/kallsyms, to name code addresses (``sym+0xoff``)."""

    def __init__(self, path: str = "/proc/kallsyms") -> None:
        entries: list[tuple[int, str]] = []
        try:
            with open(path, encoding="ascii", errors="replace") as kallsyms:
                for line in kallsyms:
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] in "tTwW":
                        address = int(parts[0], 16)
                        if address:
                            entries.append((address, parts[2]))
        except OSError:
            pass
        entries.sort()
        self._addresses = [a for a, _ in entries]
        self._names = [n for _, n in entries]
        self._named: dict[int, str] = {}  # name()'s answers: a flood frees at few places

    def name(self, address: int) -> str:
        """``function+0xoffset``, or the address in hex when it cannot be named."""
        named = self._named.get(address)
        if named is None:
            i = bisect.bisect_right(self._addresses, address) - 1
            named = (f"0x{address:x}" if i < 0 or not address
                     else f"{self._names[i]}+0x{address - self._addresses[i]:x}")
            if len(self._named) < NAMED_MEMORY:
                self._named[address] = named
        return named

    def function(self, address: int) -> str | None:
        """The function containing address, or None."""
        i = bisect.bisect_right(self._addresses, address) - 1
        return self._names[i] if i >= 0 and address else None
