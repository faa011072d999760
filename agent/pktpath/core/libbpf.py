"""ctypes bindings to the few libbpf (libbpf.so.1) calls pktpath uses.

Only this module touches libbpf. Every call that can fail raises :class:`LibbpfError` with the
call, the object it was about, the errno and what libbpf printed while it ran (the verifier log
on a failed load).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import Any

from pktpath.core.errors import PktpathError

_c_void_p = ctypes.c_void_p

# int (*)(void *ctx, void *data, size_t size); data as a char pointer: data[:size] copies the
# record in one step (with an address and ctypes.string_at, a foreign call per record, the
# read took 1.3-1.6 times as long: bench/consumer.py)
_RecordPointer = ctypes.POINTER(ctypes.c_char)
RingBufferCallback = ctypes.CFUNCTYPE(ctypes.c_int, _c_void_p, _RecordPointer, ctypes.c_size_t)
# int (*)(enum libbpf_print_level level, const char *fmt, va_list ap)
_PrintCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, _c_void_p)

LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2


PRINT_BUFFER_BYTES = 1 << 20  # a whole verifier log; its last lines say why

class LibbpfError(PktpathError):
    """A libbpf call failed; ``errno`` holds the positive error number."""

    def __init__(self, message: str, err: int, log: str = "") -> None:
        super().__init__(message, exit_code=1)
        self.errno = err
        self.log = log


def _declare(lib: ctypes.CDLL, name: str, restype: Any, argtypes: list[Any]) -> None:
    func = getattr(lib, name)
    func.restype = restype
    func.argtypes = argtypes


def open_library(path: str | None, soname: str, name: str) -> ctypes.CDLL:
    """path, else the library by its soname, else wherever ctypes finds it (which runs
    ldconfig: a few ms of every start, so only when the soname is not found)."""
    if path:
        return ctypes.CDLL(path, use_errno=True)
    try:
        return ctypes.CDLL(soname, use_errno=True)
    except OSError:
        from ctypes.util import find_library  # imports subprocess, tempfile: when needed

        found = find_library(name)
        if not found:
            raise
        return ctypes.CDLL(found, use_errno=True)


class Libbpf:
    """The loaded libbpf shared library, with typed functions and a captured log."""

    def __init__(self, path: str | None = None) -> None:
        path = path or os.environ.get("PKTPATH_LIBBPF")
        try:
            self.lib = open_library(path, "libbpf.so.1", "bpf")
        except OSError as exc:
            raise PktpathError(
                f"cannot load libbpf ({exc}): install it (Debian: apt-get install libbpf1)",
                exit_code=1,
            ) from exc
        self._libc = open_library(None, "libc.so.6", "c")
        self._libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                         _c_void_p]
        self.log_lines: list[str] = []
        self._print_buf: ctypes.Array[ctypes.c_char] | None = None
        self._print_cb = _PrintCallback(self._on_print)
        lib = self.lib
        p, i, u32, sz = _c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t
        s = ctypes.c_char_p
        functions: list[tuple[str, Any, list[Any]]] = [
            ("libbpf_set_print", p, [_PrintCallback]),
            ("bpf_object__open_file", p, [s, p]),
            ("bpf_object__load", i, [p]),
            ("bpf_object__close", None, [p]),
            ("bpf_object__next_program", p, [p, p]),
            ("bpf_object__find_map_by_name", p, [p, s]),
            ("bpf_program__name", s, [p]),
            ("bpf_program__section_name", s, [p]),
            ("bpf_program__set_autoload", i, [p, ctypes.c_bool]),
            ("bpf_program__autoload", ctypes.c_bool, [p]),
            ("bpf_program__insns", p, [p]),
            ("bpf_program__insn_cnt", sz, [p]),
            ("bpf_program__set_insns", i, [p, p, sz]),
            ("bpf_program__attach", p, [p]),
            ("bpf_link__destroy", i, [p]),
            ("bpf_map__initial_value", p, [p, ctypes.POINTER(sz)]),
            ("bpf_map__set_max_entries", i, [p, u32]),
            ("bpf_map__fd", i, [p]),
            ("bpf_map_lookup_elem", i, [i, p, p]),
            ("bpf_map_update_elem", i, [i, p, p, ctypes.c_uint64]),
            ("bpf_map_delete_elem", i, [i, p]),
            ("bpf_map_get_next_key", i, [i, p, p]),
            ("libbpf_num_possible_cpus", i, []),
            ("ring_buffer__new", p, [i, RingBufferCallback, p, p]),
            ("ring_buffer__poll", i, [p, i]),
            ("ring_buffer__consume", i, [p]),
            ("ring_buffer__free", None, [p]),
            ("btf__load_vmlinux_btf", p, []),
            ("btf__find_by_name_kind", ctypes.c_int32, [p, s, u32]),
            ("btf__type_by_id", p, [p, u32]),
            ("btf__name_by_offset", s, [p, u32]),
            ("btf__free", None, [p]),
        ]
        for name, res, args in functions:
            _declare(lib, name, res, args)
        lib.libbpf_set_print(self._print_cb)

    def _on_print(self, level: int, fmt: bytes, ap: int | None) -> int:
        # a verifier log comes in one call and may be long: the reason is at its end
        if level > LIBBPF_INFO:
            return 0  # thousands of debug lines per load: not even formatted
        if self._print_buf is None:
            self._print_buf = ctypes.create_string_buffer(PRINT_BUFFER_BYTES)
        buf = self._print_buf
        self._libc.vsnprintf(buf, len(buf), fmt, ap)
        self.log_lines.extend(buf.value.decode(errors="replace").splitlines())
        return 0

    def load_object(self, obj: int, what: str, *, quiet: bool = True) -> None:
        """bpf_object__load, raising LibbpfError. quiet: libbpf's thousands of debug lines
        are not handed to Python at all (each would wait for the interpreter lock, held by
        whatever else runs), nor its warnings: a failed quiet load says only its errno, so
        load again without quiet to learn why. libbpf's print function is the process's:
        another thread's lines during a quiet load are dropped too."""
        lib = self.lib
        if quiet:
            lib.libbpf_set_print(_PrintCallback())
        try:
            ret = lib.bpf_object__load(obj)
        finally:
            if quiet:
                lib.libbpf_set_print(self._print_cb)
        self.check_int(ret, what)

    def take_log(self) -> str:
        """What libbpf printed since the last call, and forget it."""
        text = "\n".join(self.log_lines)
        self.log_lines.clear()
        return text

    def check_ptr(self, ptr: int | None, what: str) -> int:
        """Raise LibbpfError when a pointer-returning call returned NULL."""
        if not ptr:
            err = ctypes.get_errno() or errno.EINVAL
            raise LibbpfError(f"{what}: {os.strerror(err)}", err, self.take_log())
        return ptr

    def check_int(self, ret: int, what: str) -> int:
        """Raise LibbpfError when an int-returning call returned a negative error."""
        if ret < 0:
            err = -ret
            raise LibbpfError(f"{what}: {os.strerror(err)}", err, self.take_log())
        return ret

    def ring_buffer(self, map_fd: int,
                    callback: Callable[[Any, Any, int], int]) -> tuple[int, Any]:
        """A ring_buffer consuming map_fd; callback(ctx, data, size) runs for each record,
        as libbpf calls it: ``data[:size]`` is the record (valid only during the call).

        Returns the ring_buffer pointer and the ctypes callback, which the caller must keep
        alive as long as the ring buffer.
        """
        cb = RingBufferCallback(callback)  # called directly: a wrapper is a call per record
        rb = self.check_ptr(self.lib.ring_buffer__new(map_fd, cb, None, None), "ring_buffer__new")
        return rb, cb
