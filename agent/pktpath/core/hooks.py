"""The hook table: every tracepoint pktpath attaches, whether it is on by default, the flag
that turns it off (or on), and what the output lacks when the kernel refuses it.

The hook lists of ``trace``, ``ping`` and the agent, the ``trace`` flags that choose hooks and
the one-line notice for a hook that did not attach are all derived from :data:`HOOKS`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from pktpath.core.event import Hook


class Older(NamedTuple):
    """The program for kernels whose tracepoint passes fewer arguments."""

    program: str  # its name after the program type (raw_tp_<program>)
    args: int  # the tracepoint arguments it reads
    without: str  # what the output lacks with it


class HookSpec(NamedTuple):
    """One hook: its tracepoint, default, choosing flag and what is missing without it."""

    hook: Hook
    default: bool  # attached unless its flag says otherwise
    flag: str | None  # the trace flag that turns it off (default) or on (opt-in); None: always
    without: str  # what the output lacks when the hook cannot attach
    args: int = 1  # the tracepoint arguments its program reads
    older: Older | None = None  # for kernels whose tracepoint has fewer

    @property
    def tracepoint(self) -> str:
        """The tracepoint's name (net_dev_queue, kfree_skb, ...)."""
        return self.hook.tracepoint


HOOKS = (
    HookSpec(Hook.NET_DEV_QUEUE, True, None, "transmits are not shown"),
    HookSpec(Hook.NETIF_RECEIVE_SKB, True, None, "receives are not shown"),
    HookSpec(Hook.KFREE_SKB, True, "--no-drops", "drops are not shown", args=3,
             older=Older("kfree_skb_noreason", 2, "drop reasons are not named (kfree_skb has "
                         "none before Linux 5.17)")),
    HookSpec(Hook.ICMP_SEND, True, "--no-drops", "ICMP errors the kernel sends are not named",
             args=3),
    # frees after use end the tracking of a packet
    HookSpec(Hook.CONSUME_SKB, True, "--no-track",
             "a tracked packet's identity may be reused sooner"),
    # routing lookups run once per table per packet: opt-in
    HookSpec(Hook.FIB_TABLE_LOOKUP, False, "--routes", "IPv4 routes are not shown", args=4),
    HookSpec(Hook.FIB6_TABLE_LOOKUP, False, "--routes", "IPv6 routes are not shown", args=4),
    # the drop watch's (pktpath drops, the agent): never a trace's, so no flag selects it
    HookSpec(Hook.DROP_COUNT, False, None, "drops are not counted", args=3,
             older=Older("drop_count_noreason", 2, "drop reasons are not named (kfree_skb has "
                         "none before Linux 5.17)")),
)
BY_HOOK = {spec.hook: spec for spec in HOOKS}
FLAGS = tuple(dict.fromkeys(spec.flag for spec in HOOKS if spec.flag))


def select_hooks(flags: Collection[str] = ()) -> tuple[Hook, ...]:
    """The hooks to attach when the given flags (of :data:`FLAGS`) were set: the defaults,
    less those a flag turns off, plus the opt-in hooks a flag turns on."""
    return tuple(spec.hook for spec in HOOKS if spec.default != (spec.flag in flags))


DEFAULT_HOOKS = select_hooks()


class Choice(NamedTuple):
    """The program a kernel allows for a hook: its name (after the program type) and what is
    missing with it; or, when none fits, why."""

    program: str | None = None
    note: str | None = None
    error: str | None = None


def choose_program(hook: Hook, args: int | None) -> Choice:
    """The program for hook on a kernel whose tracepoint passes args arguments (None: the
    kernel has no such tracepoint)."""
    spec = BY_HOOK[hook]
    if args is None:
        return Choice(error=f"this kernel has no tracepoint {hook.tracepoint}")
    if args >= spec.args:
        return Choice(hook.program)
    if spec.older is not None and args >= spec.older.args:
        return Choice(spec.older.program, spec.older.without)
    return Choice(error=f"this kernel's {hook.tracepoint} has {args} arguments, pktpath reads "
                        f"{spec.args}")


def without(hook: Hook) -> str:
    """What the output lacks when hook cannot attach."""
    return BY_HOOK[hook].without
