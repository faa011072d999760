"""The hook table: what trace attaches for each combination of its flags."""

from __future__ import annotations

import pytest
from pktpath.core.event import Hook
from pktpath.core.hooks import DEFAULT_HOOKS, FLAGS, HOOKS, select_hooks, without

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
