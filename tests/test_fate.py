"""The fate rules on synthetic packets: what is a drop and what is delivery."""

from __future__ import annotations

import pytest
from pktpath.core.fate import FateJudge
from pktpath.core.packet import Packet
from pktpath.core.symbols import Symbols

REASONS = {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 6: "NETFILTER_DROP", 104: "QUEUE_PURGE",
           9: "IP_INHDR"}


class FakeSymbols(Symbols):
    """Five functions at known addresses."""

    def __init__(self) -> None:
        super().__init__("/nonexistent")  # nothing read: the five below instead
        self._addresses = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000]
        self._names = ["nf_hook_slow", "ip_local_deliver", "ip_forward", "ip_error",
                       "icmpv6_rcv"]


def judge() -> FateJudge:
    return FateJudge(REASONS, FakeSymbols())


REQUEST = Packet(family="ipv4", src="10.0.0.1", dst="10.0.0.2", ip_proto=1, icmp_type=8,
                 icmp_id=7, icmp_seq=1)
REPLY = Packet(family="ipv4", src="10.0.0.2", dst="10.0.0.1", ip_proto=1, icmp_type=0,
               icmp_id=7, icmp_seq=1)


def test_reply_whose_request_was_seen_is_delivered() -> None:
    j = judge()
    j.observe(REQUEST)
    fate = j.judge(REPLY, 3, 0x1010, ())
    assert (fate.drop, fate.reason) == (False, "NO_SOCKET")


def test_reply_nobody_asked_for_is_a_drop() -> None:
    fate = judge().judge(REPLY, 3, 0x1010, ())
    assert (fate.drop, fate.explain) == (True, "no socket was listening")


def test_queue_purge_is_not_a_drop() -> None:
    assert judge().judge(REPLY, 104, 0, ()).drop is False


@pytest.mark.parametrize("caller, hook", [(0x2008, "input"), (0x3008, "forward")])
def test_netfilter_hook_comes_from_the_caller_of_nf_hook_slow(caller: int, hook: str) -> None:
    fate = judge().judge(REQUEST, 6, 0x1010, (0x9999, 0x1010, caller))
    assert fate.explain == f"netfilter, ip family, {hook} hook"
    assert fate.location == "nf_hook_slow+0x10"


def test_ttl_and_location_explanations() -> None:
    expired = Packet(family="ipv4", ttl=1)
    assert judge().judge(expired, 9, 0x3010, ()).explain == "TTL expired"
    assert judge().judge(REQUEST, 2, 0x4010, ()).explain.startswith("no route")  # type: ignore[union-attr]
    assert judge().judge(REQUEST, 77, 0, ()).reason == "reason 77"


def test_evidence_memory_is_bounded() -> None:
    j = FateJudge(REASONS, FakeSymbols(), memory=2)
    j.observe(REQUEST)
    for seq in (2, 3):
        j.observe(Packet(src="10.0.0.1", dst="10.0.0.2", ip_proto=1, icmp_type=8, icmp_id=7,
                         icmp_seq=seq))
    assert j.judge(REPLY, 3, 0, ()).drop is True, "the oldest evidence was forgotten"


def test_an_icmp_error_is_tied_to_the_free_of_its_packet() -> None:
    j = judge()
    expired = Packet(family="ipv4", src="10.0.0.1", dst="10.0.9.9", ttl=1)
    j.icmp_sent(0xABC, expired, 11 << 8 | 0, 1500)
    other = j.judge(expired, 9, 0x3010, (), skb=0xDEF)
    assert other.icmp_sent is None
    fate = j.judge(expired, 9, 0x3010, (), skb=0xABC)
    assert fate.icmp_sent is not None
    assert fate.explain == ("TTL expired; ICMP time exceeded (TTL expired in transit) sent to "
                            "10.0.0.1")


@pytest.mark.parametrize("kind, code, mtu, text", [
    (3, 3, 0, "destination unreachable (port unreachable)"),
    (3, 4, 1280, "destination unreachable (fragmentation needed, next-hop MTU 1280)"),
    (3, 13, 0, "destination unreachable (communication administratively prohibited)"),
    (11, 1, 0, "time exceeded (fragment reassembly)"),
    (42, 7, 0, "ICMP type 42 code 7"),
])
def test_icmp_errors_in_words(kind: int, code: int, mtu: int, text: str) -> None:
    from pktpath.core.fate import icmp_error_text

    assert icmp_error_text(kind, code, mtu) == text


def test_an_answered_icmpv6_echo_request_freed_by_an_older_kernel_is_not_a_drop() -> None:
    request = Packet(family="ipv6", src="fd00:200::1", dst="fd00:200::2", ip_proto=58,
                     icmp_type=128, icmp_id=7, icmp_seq=1)
    reply = Packet(family="ipv6", src="fd00:200::2", dst="fd00:200::1", ip_proto=58,
                   icmp_type=129, icmp_id=7, icmp_seq=1)
    unanswered = judge().judge(request, 2, 0x5010, ())
    assert (unanswered.drop, unanswered.reason) == (True, "NOT_SPECIFIED")
    j = judge()
    j.observe(reply)  # the kernel sent the reply before freeing the request
    answered = j.judge(request, 2, 0x5010, ())
    assert (answered.drop, answered.explain) == (False, "the kernel answered the echo request")
    assert answered.consumed, "not shown, as newer kernels' consume_skb is not"
    elsewhere = j.judge(request, 2, 0x3010, ())  # freed in ip_forward: a drop all the same
    assert elsewhere.drop


def test_a_fate_decided_once_is_given_only_to_packets_it_fits() -> None:
    """A flood's frees share a fate decided once: never one decided for another family, TTL
    or (for echoes) for what the trace had seen then."""
    j = judge()
    stack = (0x9999, 0x1010, 0x2008)
    udp4, udp6 = Packet(family="ipv4", ip_proto=17), Packet(family="ipv6", ip_proto=17)
    assert j.judge(udp4, 6, 0x1010, stack) is j.judge(udp4, 6, 0x1010, stack)
    assert j.judge(udp6, 6, 0x1010, stack).explain == "netfilter, ip6 family, input hook"
    assert j.judge(udp4, 6, 0x1010, stack).explain == "netfilter, ip family, input hook"
    assert j.judge(udp4, 6, 0x1010, (0x9999, 0x1010, 0x3008)).explain.endswith("forward hook")  # type: ignore[union-attr]
    assert j.judge(Packet(family="ipv4", ttl=5), 9, 0x3010, ()).explain != "TTL expired"
    assert j.judge(Packet(family="ipv4", ttl=1), 9, 0x3010, ()).explain == "TTL expired"
    assert j.judge(REPLY, 3, 0x1010, ()).drop is True  # its request not seen yet
    j.observe(REQUEST)
    assert j.judge(REPLY, 3, 0x1010, ()).drop is False
    assert j.judge(udp4, 3, 0x1010, ()).drop is True
