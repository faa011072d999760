"""The hook table: what trace attaches for each combination of its flags."""

from __future__ import annotations

import os

import pytest
from pktpath.core.event import Hook
from pktpath.core.hooks import (
    DEFAULT_HOOKS,
    FLAGS,
    HOOKS,
    Choice,
    choose_program,
    select_hooks,
    without,
)

PATH = (Hook.NET_DEV_QUEUE, Hook.NETIF_RECEIVE_SKB)


@pytest.mark.parametrize("flags, hooks", [
    ((), (*PATH, Hook.KFREE_SKB, Hook.ICMP_SEND, Hook.CONSUME_SKB)),
    (("--no-drops",), (*PATH, Hook.CONSUME_SKB)),
    (("--no-track",), (*PATH, Hook.KFREE_SKB, Hook.ICMP_SEND)),
    (("--no-drops", "--no-track"), PATH),
    (("--routes",), (*PATH, Hook.KFREE_SKB, Hook.ICMP_SEND, Hook.CONSUME_SKB,
                     Hook.FIB_TABLE_LOOKUP, Hook.FIB6_TABLE_LOOKUP)),
])
def test_flags_choose_hooks(flags: tuple[str, ...], hooks: tuple[Hook, ...]) -> None:
    assert select_hooks(flags) == hooks


def test_every_hook_of_the_kernel_side_is_in_the_table_once() -> None:
    assert sorted(spec.hook for spec in HOOKS) == sorted(Hook)
    assert select_hooks() == DEFAULT_HOOKS
    assert FLAGS == ("--no-drops", "--no-track", "--routes")
    assert without(Hook.KFREE_SKB) == "drops are not shown"


@pytest.mark.parametrize("hook, args, choice", [
    (Hook.KFREE_SKB, 5, Choice("kfree_skb")),  # 6.11+: reason and the receiving socket
    (Hook.KFREE_SKB, 3, Choice("kfree_skb")),
    (Hook.KFREE_SKB, 2, Choice("kfree_skb_noreason", "drop reasons are not named (kfree_skb "
                               "has none before Linux 5.17)")),
    (Hook.ICMP_SEND, None, Choice(error="this kernel has no tracepoint icmp_send")),
    (Hook.FIB_TABLE_LOOKUP, 3, Choice(error="this kernel's fib_table_lookup has 3 arguments, "
                                            "pktpath reads 4")),
])
def test_the_program_a_kernel_allows(hook: Hook, args: int | None, choice: Choice) -> None:
    assert choose_program(hook, args) == choice


def test_tracepoint_arguments_read_from_this_kernels_btf() -> None:
    from conftest import need
    from pktpath.core.libbpf import Libbpf
    from pktpath.core.symbols import tracepoint_args

    need(os.path.exists("/sys/kernel/btf/vmlinux"), "the kernel has no BTF")
    args = tracepoint_args(Libbpf(), ["net_dev_queue", "fib_table_lookup", "kfree_skb",
                                      "no_such_tracepoint"])
    assert args["net_dev_queue"] == 1
    assert args["fib_table_lookup"] == 4
    assert args["kfree_skb"] is not None and args["kfree_skb"] >= 3  # 6.18: with a reason
    assert args["no_such_tracepoint"] is None


def test_drop_reasons_are_the_kernels_enum_read_when_first_asked() -> None:
    from conftest import need
    from pktpath.core.libbpf import Libbpf
    from pktpath.core.symbols import DropReasons, drop_reasons

    need(os.path.exists("/sys/kernel/btf/vmlinux"), "the kernel has no BTF")
    libbpf = Libbpf()
    reasons = DropReasons(libbpf)
    assert reasons._names is None  # a trace that meets no drop never reads them
    by_name = {name: value for value, name in reasons.items()}
    assert by_name["NO_SOCKET"] == by_name["NOT_SPECIFIED"] + 1  # the enum, prefix removed
    assert "NETFILTER_DROP" in by_name and reasons == drop_reasons(libbpf)
