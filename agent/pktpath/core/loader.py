"""Load pktpath's BPF object, set its filter, attach its hooks, and read its ring buffer.

Each hook exists as a ``tp_btf`` and a ``raw_tp`` program (some also in a variant for kernels
whose tracepoint passes fewer arguments: the kernel's BTF says which fits; a ``tp_btf`` load
first assumes current kernels and reads the BTF only if refused). ``tp_btf`` is tried first;
when the kernel refuses to load it, the object is loaded again with the ``raw_tp`` programs.
A translated tcpdump expression is written into each program's reserved region before
loading. A hook that cannot attach is reported and the others keep working. Everything
attached is owned by this process: closing the :class:`Probes` (or the process dying)
detaches it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from pktpath.core.errors import PktpathError
from pktpath.core.event import (
    ADDR_BLOOM_STRUCT,
    ADDR_BLOOM_WORDS,
    CONFIG_OFFSETS,
    CONFIG_STRUCT,
    DROP_KEY_STRUCT,
    DROP_SLOT_STRUCT,
    Counter,
    Hook,
    addr_hash,
)
from pktpath.core.hooks import BY_HOOK, DEFAULT_HOOKS, choose_program
from pktpath.core.libbpf import Libbpf, LibbpfError
from pktpath.core.symbols import tracepoint_args
from pktpath.core.translate import INSN, find_region

if TYPE_CHECKING:
    from pktpath.core.filters import TraceFilter

HOOK_TYPES = ("tp_btf", "raw_tp")
DEFAULT_RING_BYTES = 4 << 20
TRACK_TABLES = ("track_skb", "track_head")  # sized together by map_entries["tracked"]


REFUSE_ENV = "PKTPATH_REFUSE_HOOKS"


def object_path() -> str:
    """Path of the BPF object: the one shipped inside the package, or $PKTPATH_BPF_OBJECT."""
    # beside this module (importlib.resources would cost every start a few ms of imports)
    return os.environ.get("PKTPATH_BPF_OBJECT") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "pktpath.bpf.o")


class Maps(NamedTuple):
    """The file descriptors of the object's maps, looked up by name once after loading."""

    events: int  # the ring buffer
    counters: int  # per-CPU counters (enum pktpath_counter)
    netns_set: int  # namespaces to trace, when the filter has netns_set
    trace_addrs: int  # the agent's traces' addresses and their bits, with trace_set
    trace_bloom: int  # a bit per hash of those addresses
    drop_counts: int  # the drop watch's per-CPU counts (struct pktpath_drop_key)
    drop_last: int  # per CPU, its last drop place and the drops there not yet in drop_counts

    @classmethod
    def of(cls, bpf: Libbpf, obj: int) -> Maps:
        """Look every map of the loaded object up by its name in bpf/ (the field's name)."""
        fds = {}
        for name in cls._fields:
            found = bpf.check_ptr(bpf.lib.bpf_object__find_map_by_name(obj, name.encode()),
                                  f"finding map {name}")
            fds[name] = bpf.lib.bpf_map__fd(found)
        return cls(**fds)


class HookStatus:
    """What happened to one hook: attached with a program type, or why not (a plain class:
    see :mod:`pktpath.core.record` on dataclasses)."""

    __slots__ = ("error", "hook", "hook_type", "note", "program")

    def __init__(self, hook: Hook, hook_type: str | None = None, error: str | None = None,
                 program: str | None = None, note: str | None = None) -> None:
        self.hook = hook
        self.hook_type = hook_type
        self.error = error
        self.program = program  # the program's name after its type: net_dev_queue, ...
        self.note = note  # what is missing with the program this kernel allows

    def __repr__(self) -> str:
        return (f"HookStatus({self.hook.name}, hook_type={self.hook_type!r}, "
                f"error={self.error!r}, program={self.program!r}, note={self.note!r})")


class LoadReport:
    """The outcome of loading: one status per hook, and why tp_btf was not used if it was not."""

    __slots__ = ("fallback_reason", "hooks")

    def __init__(self) -> None:
        self.hooks: list[HookStatus] = []
        self.fallback_reason: str | None = None

    @property
    def attached(self) -> list[HookStatus]:
        """The hooks that are attached."""
        return [h for h in self.hooks if h.hook_type]


class Probes:
    """The loaded and attached BPF object. Use as a context manager."""

    def __init__(
        self,
        config: bytes,
        *,
        hooks: Iterable[Hook] = DEFAULT_HOOKS,
        hook_type: str = "auto",
        ring_bytes: int = DEFAULT_RING_BYTES,
        libbpf: Libbpf | None = None,
        path: str | None = None,
        expression: bytes = b"",
        map_entries: Mapping[str, int] | None = None,
    ) -> None:
        if len(config) != CONFIG_STRUCT.size:
            raise ValueError(f"config is {len(config)} bytes, expected {CONFIG_STRUCT.size}")
        if hook_type not in ("auto", *HOOK_TYPES):
            raise ValueError(f"hook_type must be auto, tp_btf or raw_tp, not {hook_type!r}")
        if ring_bytes < 4096 or ring_bytes & (ring_bytes - 1):
            raise PktpathError(
                f"ring buffer size {ring_bytes} must be a power of two of at least 4096 bytes",
                exit_code=2,
            )
        self._config = config
        self._expression = expression  # eBPF for the programs' reserved region, if any
        self._hooks = list(hooks)
        self._hook_type = hook_type
        self._ring_bytes = ring_bytes
        self._map_entries = dict(map_entries or {})  # map name -> max_entries, to shrink maps
        slots = self._map_entries.get("tracked", 1)  # the programs mask a hash with it
        if slots < 1 or slots & (slots - 1):
            raise PktpathError(f"the tracking tables need a power of two of slots, not {slots}")
        self._bpf = libbpf or Libbpf()
        self._path = path or object_path()
        self._obj: int | None = None
        self._maps: Maps | None = None
        self._links: list[int] = []
        self._rings: list[tuple[int, object]] = []
        self._netns: set[int] = set()
        self._trace_addrs: dict[bytes, int] = {}
        # hooks to treat as refused by the kernel: how a test (or a user) sees what pktpath
        # does on a kernel without them
        self._refused = set(filter(None, os.environ.get(REFUSE_ENV, "").split(",")))
        self.report = LoadReport()
        self._opening: threading.Thread | None = None  # open() running in the background
        self._open_error: BaseException | None = None
        self._chosen = False  # the programs were chosen by the kernel's tracepoints
        self._prepared: str | None = None  # the program type the opened object is set up for

    @classmethod
    def for_filter(cls, trace_filter: TraceFilter, *, hooks: Iterable[Hook] = DEFAULT_HOOKS,
                   hook_type: str = "auto", ring_bytes: int = DEFAULT_RING_BYTES,
                   map_entries: Mapping[str, int] | None = None) -> Probes:
        """The probes a trace filter needs: its config, its expression's eBPF."""
        region = trace_filter.expression.region if trace_filter.expression else b""
        return cls(trace_filter.config(), hooks=hooks, hook_type=hook_type,
                   ring_bytes=ring_bytes, expression=region, map_entries=map_entries)

    def __enter__(self) -> Probes:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def maps(self) -> Maps:
        """The loaded object's maps (after :meth:`open`)."""
        if self._maps is None:
            raise PktpathError("pktpath's BPF object is not loaded")
        return self._maps

    @property
    def libbpf(self) -> Libbpf:
        """The libbpf these probes use."""
        return self._bpf

    # -- loading -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin :meth:`open`: the first object is opened and configured here (a few ms of
        Python, while the interpreter is free), then the kernel verifies its programs (most
        of a start, in C) in a thread while the caller does other work, such as importing
        what reads the events. The :meth:`open` that follows waits for it and raises what it
        raised."""
        def run() -> None:
            try:
                self._finish(types)
            except BaseException as exc:  # handed to open() in the caller's thread
                self._open_error = exc

        try:
            types = self._begin()
        except BaseException as exc:
            self._open_error = exc
            return
        self._opening = threading.Thread(target=run, name="pktpath-load", daemon=True)
        self._opening.start()

    def _wait_opening(self) -> None:
        if self._opening is not None:
            self._opening.join()
            self._opening = None

    def open(self) -> None:
        """Open, configure, load and attach; raise PktpathError when nothing could attach."""
        if self._opening is None and self._open_error is None:
            self._finish(self._begin())
            return
        self._wait_opening()
        error, self._open_error = self._open_error, None
        if error is not None:
            raise error

    def _begin(self) -> tuple[str, ...]:
        """Open and configure the object for the first program type to try (tp_btf: with
        the programs current kernels take). The program types to try."""
        if not os.path.exists(self._path):
            raise PktpathError(f"the BPF object {self._path} is missing: reinstall pktpath "
                               "(or run 'make -C bpf' in a source checkout)")
        types = HOOK_TYPES if self._hook_type == "auto" else (self._hook_type,)
        self._choose_programs(None)
        if types[0] == "tp_btf":
            self._prepare(types[0])
        return types

    def _finish(self, types: tuple[str, ...]) -> None:
        """Load (the first type as _begin prepared it) and attach."""
        self._attach(self._load_first(types))

    def _load_first(self, types: tuple[str, ...]) -> str:
        """Load the first program type the kernel accepts.

        Which program fits a hook depends on its tracepoint's arguments, read from the
        kernel's BTF (~15 ms, a tenth of a start). A tp_btf load does without: it assumes what
        current kernels pass, and the verifier refuses a program that reads an argument its
        tracepoint lacks (or a tracepoint the kernel lacks). Only then, and before a raw_tp
        load (whose arguments the kernel checks only when it attaches), are they read: a load
        the assumption made fail is tried again with the programs that fit."""
        refused: list[tuple[str, LibbpfError]] = []
        pending = list(types)
        while pending:
            hook_type = pending[0]
            if hook_type != "tp_btf" and not self._chosen:
                self._choose_programs(self._tracepoint_args())
            try:
                self._load(hook_type, quiet=True)
            except LibbpfError as err:
                self._close_object()
                if not self._chosen:
                    assumed = self._wanted(hook_type)
                    self._choose_programs(self._tracepoint_args())
                    if self._wanted(hook_type) != assumed:
                        continue  # the same type again, with the programs that fit
                pending.pop(0)
                refused.append((hook_type, err))
                self.report.fallback_reason = f"{hook_type}: {_reason(err)}"
                continue
            return hook_type
        raise _refusal([(kind, self._said(kind, err)) for kind, err in refused])

    def _tracepoint_args(self) -> dict[str, int | None]:
        return tracepoint_args(self._bpf, [h.tracepoint for h in self._hooks])

    def _said(self, hook_type: str, err: LibbpfError) -> LibbpfError:
        """A refusal again, with what libbpf and the verifier said (a quiet load drops it):
        only when nothing loaded, so a fallback costs a start no second load."""
        try:
            self._load(hook_type, quiet=False)
        except LibbpfError as loud:
            err = loud
        self._close_object()
        return err

    def _choose_programs(self, args: Mapping[str, int | None] | None) -> None:
        """Per hook, the program the running kernel's tracepoint fits (by its arguments), or
        why none: a kernel without the tracepoint, or with fewer arguments than pktpath reads.
        args None: assume each tracepoint passes what the newest program reads."""
        self._chosen = args is not None
        self.report.hooks = []
        for hook in self._hooks:
            passed = BY_HOOK[hook].args if args is None else args.get(hook.tracepoint)
            choice = choose_program(hook, passed)
            self.report.hooks.append(HookStatus(hook, error=choice.error, program=choice.program,
                                                note=choice.note))

    def _wanted(self, hook_type: str) -> set[str]:
        """The names of the programs the chosen ones are, as hook_type programs."""
        return {f"{hook_type}_{s.program}" for s in self.report.hooks if s.program}

    def _load(self, hook_type: str, *, quiet: bool) -> None:
        """Load the object (opened and configured for hook_type first, unless it is)."""
        obj = self._obj if self._obj and self._prepared == hook_type else self._prepare(hook_type)
        self._prepared = None
        self._bpf.take_log()
        self._bpf.load_object(obj, f"loading {hook_type} programs", quiet=quiet)
        self._maps = Maps.of(self._bpf, obj)

    def _prepare(self, hook_type: str) -> int:
        """Open the object and configure it for the chosen hook_type programs: which load,
        the filter, the expression, the maps' sizes. Returns it."""
        bpf = self._bpf
        lib = bpf.lib
        self._close_object()
        self._obj = obj = bpf.check_ptr(lib.bpf_object__open_file(self._path.encode(), None),
                                        f"opening {self._path}")
        wanted = self._wanted(hook_type)
        for prog in self._programs():
            name = lib.bpf_program__name(prog).decode()
            bpf.check_int(lib.bpf_program__set_autoload(prog, name in wanted), f"autoload {name}")
            if self._expression and name in wanted:
                self._write_expression(prog, name)
        rodata = bpf.check_ptr(lib.bpf_object__find_map_by_name(obj, b".rodata"),
                               "finding .rodata")
        size = ctypes.c_size_t()
        init = bpf.check_ptr(lib.bpf_map__initial_value(rodata, ctypes.byref(size)),
                             "reading .rodata")
        if size.value != len(self._config):
            raise PktpathError(f"the BPF object's config is {size.value} bytes, pktpath "
                               f"expects {len(self._config)}: reinstall pktpath")
        map_entries = dict(self._map_entries)
        config = self._sized_tracking(map_entries)
        ctypes.memmove(init, config, len(config))
        ring = bpf.check_ptr(lib.bpf_object__find_map_by_name(obj, b"events"), "events")
        bpf.check_int(lib.bpf_map__set_max_entries(ring, self._ring_bytes), "sizing events")
        if not any(s.hook == Hook.DROP_COUNT and s.program for s in self.report.hooks):
            # only the drop watch counts into it: preallocated per CPU, it costs a big node's
            # start milliseconds for nothing
            map_entries.setdefault("drop_counts", 1)
        for name, entries in map_entries.items():
            found = bpf.check_ptr(lib.bpf_object__find_map_by_name(obj, name.encode()), name)
            bpf.check_int(lib.bpf_map__set_max_entries(found, entries), f"sizing {name}")
        self._prepared = hook_type
        return obj

    def _sized_tracking(self, map_entries: dict[str, int]) -> bytes:
        """The config with the tracking tables' size, which map_entries["tracked"] (slots in
        each, a power of two) asks for: it becomes both tables' entries in map_entries, and
        the programs' mask. A trace that tracks nothing gets tables of one slot."""
        slots = map_entries.pop("tracked", None)
        if not self._config[CONFIG_OFFSETS["track"][0]]:
            slots = 1
        if slots is None:
            return self._config
        config = bytearray(self._config)
        struct.pack_into("<I", config, CONFIG_OFFSETS["track_slots"][0], slots)
        for table in TRACK_TABLES:
            map_entries[table] = slots
        return bytes(config)

    def _write_expression(self, prog: int, name: str) -> None:
        """Write the translated tcpdump expression into the program's reserved region."""
        lib = self._bpf.lib
        count = lib.bpf_program__insn_cnt(prog)
        code = ctypes.string_at(lib.bpf_program__insns(prog), count * INSN.size)
        at = find_region(code)
        if at is None:
            return  # a program that runs no expression (routes)
        start = at * INSN.size
        patched = code[:start] + self._expression + code[start + len(self._expression):]
        buf = ctypes.create_string_buffer(patched, len(patched))
        self._bpf.check_int(lib.bpf_program__set_insns(prog, buf, count),
                            f"writing the filter expression into {name}")

    def _programs(self) -> list[int]:
        progs: list[int] = []
        prog = None
        while True:
            prog = self._bpf.lib.bpf_object__next_program(self._obj, prog)
            if not prog:
                return progs
            progs.append(prog)

    def _attach(self, hook_type: str) -> None:
        lib = self._bpf.lib
        by_name = {lib.bpf_program__name(p).decode(): p for p in self._programs()}
        for status in self.report.hooks:
            hook = status.hook
            if status.error:
                continue
            prog = by_name.get(f"{hook_type}_{status.program}")
            if hook.tracepoint in self._refused:
                status.error = f"{hook_type}/{hook.tracepoint}: refused ({REFUSE_ENV})"
                continue
            if prog is None:
                status.error = f"no {hook_type} program for {hook.tracepoint} in the object"
                continue
            link = lib.bpf_program__attach(prog)
            if not link:
                err = ctypes.get_errno() or errno.EINVAL
                status.error = f"{hook_type}/{hook.tracepoint}: {os.strerror(err)}"
                continue
            self._links.append(link)
            status.hook_type = hook_type
        if not self._links:
            errors = "; ".join(h.error or "" for h in self.report.hooks)
            raise PktpathError(f"no hook could be attached: {errors}")

    # -- reading -------------------------------------------------------------------------

    def ring_buffer(self, on_record: Callable[[Any, Any, int], int]) -> int:
        """A libbpf ring_buffer calling on_record(ctx, data, size) for each event
        (:meth:`Libbpf.ring_buffer`)."""
        rb, cb = self._bpf.ring_buffer(self.maps.events, on_record)
        self._rings.append((rb, cb))
        return rb

    def poll(self, rb: int, timeout_ms: int) -> int:
        """Wait up to timeout_ms for events and consume them; returns how many, or -errno."""
        return int(self._bpf.lib.ring_buffer__poll(rb, timeout_ms))

    def consume(self, rb: int) -> int:
        """Consume whatever is in the ring buffer without waiting."""
        return int(self._bpf.lib.ring_buffer__consume(rb))

    def counters(self) -> dict[Counter, int]:
        """The kernel-side counters, summed over CPUs."""
        lib = self._bpf.lib
        fd = self.maps.counters
        ncpu = self._bpf.check_int(lib.libbpf_num_possible_cpus(), "counting CPUs")
        values = (ctypes.c_uint64 * ncpu)()
        result = {}
        for counter in Counter:
            key = ctypes.c_uint32(counter)
            self._bpf.check_int(lib.bpf_map_lookup_elem(fd, ctypes.byref(key), values),
                                "reading counters")
            result[counter] = sum(values)
        return result

    def drop_counts(self) -> dict[bytes, int]:
        """The drop watch's counts, summed over CPUs, by raw struct pktpath_drop_key: the
        map's, then each CPU's drops at its last place not moved into the map yet. A move
        between the two reads can hide drops from this reading (never count them twice)."""
        lib = self._bpf.lib
        fd = self.maps.drop_counts
        ncpu = self._bpf.check_int(lib.libbpf_num_possible_cpus(), "counting CPUs")
        values = (ctypes.c_uint64 * ncpu)()
        key = ctypes.create_string_buffer(DROP_KEY_STRUCT.size)
        found: dict[bytes, int] = {}
        previous = None
        while lib.bpf_map_get_next_key(fd, previous, key) == 0:
            if lib.bpf_map_lookup_elem(fd, key, values) == 0:  # else deleted meanwhile
                found[key.raw] = sum(values)
            previous = ctypes.create_string_buffer(key.raw, DROP_KEY_STRUCT.size)
        slots = ctypes.create_string_buffer(DROP_SLOT_STRUCT.size * ncpu)
        zero = ctypes.c_uint32(0)
        self._bpf.check_int(lib.bpf_map_lookup_elem(self.maps.drop_last, ctypes.byref(zero),
                                                    slots), "reading drop_last")
        for cpu in range(ncpu):
            raw, count, _dev = DROP_SLOT_STRUCT.unpack_from(slots.raw,
                                                            cpu * DROP_SLOT_STRUCT.size)
            if count:
                found[raw] = found.get(raw, 0) + count
        return found

    def set_netns(self, inodes: Iterable[int]) -> None:
        """Make the netns set exactly inodes (used when the filter has netns_set)."""
        lib = self._bpf.lib
        fd = self.maps.netns_set
        wanted = set(inodes)
        for inode in self._netns - wanted:
            key = ctypes.c_uint32(inode)
            lib.bpf_map_delete_elem(fd, ctypes.byref(key))
        one = ctypes.c_uint8(1)
        for inode in wanted - self._netns:
            key = ctypes.c_uint32(inode)
            ret = lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(one), 0)
            self._bpf.check_int(ret, "updating the netns set")
        self._netns = wanted

    def set_trace_addresses(self, traces: Mapping[bytes, int]) -> None:
        """Make trace_addrs exactly traces: a 16-byte address (IPv4 mapped into IPv6) ->
        the bits of the traces it is an end of (used when the filter has trace_set)."""
        lib = self._bpf.lib
        fd = self.maps.trace_addrs
        for addr in set(self._trace_addrs) - set(traces):
            key = ctypes.create_string_buffer(addr, 16)
            lib.bpf_map_delete_elem(fd, key)
        for addr, bits in traces.items():
            if self._trace_addrs.get(addr) == bits:
                continue
            key, value = ctypes.create_string_buffer(addr, 16), ctypes.c_uint64(bits)
            ret = lib.bpf_map_update_elem(fd, key, ctypes.byref(value), 0)
            self._bpf.check_int(ret, "updating the traces' addresses")
        self._trace_addrs = dict(traces)
        words = [0] * ADDR_BLOOM_WORDS
        for addr in traces:  # set after the addresses are in: no packet of them is missed
            bit = addr_hash(addr)
            words[bit // 64] |= 1 << (bit % 64)
        zero, bloom = ctypes.c_uint32(0), ctypes.create_string_buffer(
            ADDR_BLOOM_STRUCT.pack(*words), ADDR_BLOOM_STRUCT.size)
        ret = lib.bpf_map_update_elem(self.maps.trace_bloom, ctypes.byref(zero), bloom, 0)
        self._bpf.check_int(ret, "updating the traces' address bits")

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Detach every hook and free everything; safe to call twice."""
        self._wait_opening()
        lib = self._bpf.lib
        for rb, _cb in self._rings:
            lib.ring_buffer__free(rb)
        self._rings.clear()
        for link in self._links:
            lib.bpf_link__destroy(link)
        self._links.clear()
        self._close_object()

    def _close_object(self) -> None:
        self._prepared = None
        if self._obj:
            self._bpf.lib.bpf_object__close(self._obj)
            self._obj = None
            self._maps = None


def _reason(err: LibbpfError) -> str:
    """A refusal in one line: libbpf's error and the verifier's last word, if it said one."""
    said = [line.strip() for line in err.log.splitlines()
            if line.strip() and not line.startswith(("libbpf:", "--", "processed ", "Validating"))]
    return f"{err}: {said[-1]}" if said else str(err)


def _refusal(refused: list[tuple[str, LibbpfError]]) -> PktpathError:
    """The error when every program type was refused: each type's reason, what to do."""
    reasons = "; ".join(f"{kind}: {_reason(err)}" for kind, err in refused)
    last = refused[-1][1]
    hint = ""
    if all(err.errno in (errno.EPERM, errno.EACCES) for _, err in refused):
        hint = " (if pktpath lacks CAP_BPF and CAP_PERFMON, run it with sudo)"
    return PktpathError(f"the kernel refused pktpath's BPF programs ({reasons}){hint}; "
                        f"verifier log:\n{_tail(last.log)}")


def _tail(log: str, lines: int = 30) -> str:
    return "\n".join(log.splitlines()[-lines:])
