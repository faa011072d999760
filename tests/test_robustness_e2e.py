"""End-to-end robustness: refused hooks, malformed packets, a long flood, faults during
tracing, SIGKILL, least privilege."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from badframes import frames
from conftest import REPO, need, rss_mib
from netlab import Netlab, docker_like
from pktpath.core import loader
from pktpath.core.errors import PktpathError
from pktpath.core.expression import compile_expression
from pktpath.core.filters import TraceFilter, parse_host
from pktpath.core.libbpf import LibbpfError
from pktpath.core.loader import Probes
from pktpath.core.packet import decode
from pktpath.core.symbols import tracepoint_args
from pktpath.core.translate import INSN
from test_trace_e2e import hop, loaded_programs, programs_gone

CORPUS = os.path.join(os.path.dirname(__file__), "corpus")


@pytest.mark.parametrize("hook, missing, args", [
    ("kfree_skb", "drops are not shown", []),
    ("icmp_send", "ICMP errors the kernel sends are not named", []),
    ("consume_skb", "a tracked packet's identity may be reused sooner", []),
    ("net_dev_queue", "transmits are not shown", []),
    ("netif_receive_skb", "receives are not shown", []),
    ("fib_table_lookup", "IPv4 routes are not shown", ["--routes"]),
])
def test_a_refused_hook_is_one_notice_and_the_rest_works(lab: Netlab, trace: Any, hook: str,
                                                          missing: str, args: list[str]) -> None:
    net = docker_like(lab, 85)
    run = trace("--proto", "icmp", "--host", net.container_addr, "--json", *args,
                env={"PKTPATH_REFUSE_HOOKS": hook})
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    events = run.stop().events()
    notices = [line for line in run.stderr_lines if "not attached" in line]
    assert notices == [f"pktpath: hook {hook} not attached (tp_btf/{hook}: refused "
                       f"(PKTPATH_REFUSE_HOOKS)); {missing}; the other hooks keep working"]
    assert run.returncode == 0
    hooks = {e["hook"] for e in events}
    assert hook not in hooks
    h, c = net.host.inode, net.container.inode
    if hook != "netif_receive_skb":
        assert (c, "eth0", "request") in [hop(e) for e in events], "receives still shown"
    if hook != "net_dev_queue":
        assert [hop(e) for e in events if e["hook"] == "net_dev_queue"][:2] == [
            (h, "docker0", "request"), (h, net.veth, "request")]


def test_malformed_frames_are_traced_and_decoded_as_far_as_they_go(lab: Netlab,
                                                                   trace: Any) -> None:
    a, b = lab.ns("bad-a"), lab.ns("bad-b")
    lab.veth(a, "eth0", b, "eth0")
    run = trace("ether[6:4] = 0x02000000", "--json", "--no-track")
    sent = frames()
    script = ("import socket, sys, json; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); "
              "s.bind(('eth0', 0)); "
              "[s.send(bytes.fromhex(f)) for f in json.load(sys.stdin)]")
    subprocess.run(["ip", "netns", "exec", a.name, sys.executable, "-c", script],
                   input=json.dumps([f.hex() for f in sent.values()]), text=True, check=True)
    time.sleep(0.3)
    events = run.stop().events()
    assert run.returncode == 0, run.stderr
    by_mac: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_mac.setdefault(event.get("eth_src", "?"), []).append(event)
    for n, name in enumerate(sent, 1):
        seen = by_mac.get(f"02:00:00:00:00:{n:02x}", [])
        places = [(e["netns"], e["ifname"], e["hook"]) for e in seen]
        assert (a.inode, "eth0", "net_dev_queue") in places, (name, places)
        assert (b.inode, "eth0", "netif_receive_skb") in places, (name, places)
    first = {name: by_mac[f"02:00:00:00:00:{n:02x}"][0] for n, name in enumerate(sent, 1)}
    assert first["truncated-ipv4"]["truncated"] is True
    assert first["ihl-below-5"]["truncated"] is True
    assert (first["bogus-total-length"]["icmp_type"], first["bogus-total-length"]["src"]) == (
        8, "10.200.99.1")
    assert (first["twelve-ipv6-extension-headers"]["proto"],
            first["twelve-ipv6-extension-headers"]["dport"]) == ("udp", 53)
    assert first["vlan-in-vlan"]["proto"] == "icmp"
    assert (first["truncated-arp"]["family"], first["truncated-arp"]["truncated"]) == (
        "arp", True)
    assert (first["zero-length-udp"]["sport"], first["zero-length-udp"]["dport"]) == (1000, 2000)
    assert first["header-only-ipv4"]["len"] == 14


def test_the_corpus_is_the_bad_frames_and_decodes() -> None:
    """The committed corpus (tests/corpus) holds every bad frame; each decodes, whole and cut
    at every length, with and without its Ethernet header."""
    stored = {name.removesuffix(".bin") for name in os.listdir(CORPUS)}
    assert set(frames()) <= stored
    for name in sorted(stored):
        with open(os.path.join(CORPUS, name + ".bin"), "rb") as f:
            frame = f.read()
        for cut in range(len(frame) + 1):
            decode(frame[:cut], True, 0)
            if cut >= 14:
                decode(frame[14:cut], False, int.from_bytes(frame[12:14], "big"))


def test_thirty_second_flood_with_everything_traced(lab: Netlab) -> None:
    a, b = lab.ns("flood-a"), lab.ns("flood-b")
    lab.veth(a, "eth0", b, "eth0")
    a.ip("addr", "add", "10.200.31.1/24", "dev", "eth0")
    b.ip("addr", "add", "10.200.31.2/24", "dev", "eth0")
    flood = subprocess.Popen(
        ["ip", "netns", "exec", a.name, sys.executable, "-c",
         "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
         "end = time.monotonic() + 40\n"
         "while time.monotonic() < end:\n"
         "    for _ in range(1000): s.sendto(b'x' * 18, ('10.200.31.2', 9))"])
    proc = subprocess.Popen([sys.executable, "-m", "pktpath", "trace", "--json"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(5)
        early = rss_mib(proc.pid)
        time.sleep(25)
        late = rss_mib(proc.pid)
        assert proc.poll() is None, "pktpath survived 30 s of flood"
        stopped = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
        took = time.monotonic() - stopped
    finally:
        flood.kill()
        flood.wait()
        if proc.poll() is None:
            proc.kill()
    print(f"\nflood: RSS {early:.0f} MiB at 5 s, {late:.0f} MiB at 30 s; Ctrl-C took {took:.2f} s")
    assert proc.returncode == 0, err
    assert took < 1.0, f"Ctrl-C took {took:.2f} s"
    assert late - early < 30 and late < 250, (early, late)
    lines = err.splitlines()
    assert any("events lost: the ring buffer was full" in line for line in lines), err[-500:]
    assert lines[-1].startswith("pktpath: ") and " events shown, " in lines[-1]


def test_sigkill_leaves_nothing_attached(lab: Netlab, trace: Any) -> None:
    before = {p["id"] for p in loaded_programs()}
    run = trace("--proto", "icmp", "--host", "10.200.32.9")
    ours = {p["id"] for p in loaded_programs() if p["id"] not in before}
    assert len(ours) == 5
    run.stop(signal.SIGKILL)
    assert programs_gone(ours), "the kernel still holds a killed pktpath's programs"


def test_programs_loading_in_the_background_are_closed_or_their_error_raised(e2e: None) -> None:
    """`pktpath trace` loads its programs in a thread while it imports the rest: closing
    before open() waits for the load and detaches it; a load that failed raises in open()."""
    before = {p["id"] for p in loaded_programs()}
    probes = Probes.for_filter(TraceFilter(hosts=(parse_host("10.200.33.9"),)))
    probes.start()
    probes.close()
    # the load is over when close() returns (else what it attaches next would stay)
    assert not [t for t in threading.enumerate() if t.name == "pktpath-load"]
    deadline = time.monotonic() + 5  # the kernel frees programs after RCU
    while left := [p["name"] for p in loaded_programs() if p["id"] not in before
                   and p["name"].startswith(("tp_btf_", "raw_tp_"))]:
        assert time.monotonic() < deadline, f"still loaded after close(): {left}"
        time.sleep(0.1)

    probes = Probes.for_filter(TraceFilter(hosts=(parse_host("10.200.33.9"),)))
    probes.start()
    probes.open()
    ours = {p["id"] for p in loaded_programs() if p["id"] not in before}
    assert len(ours) == 5
    probes.close()
    assert programs_gone(ours)

    missing = Probes(TraceFilter().config(), path="/nonexistent/pktpath.bpf.o")
    missing.start()
    with pytest.raises(PktpathError, match=r"/nonexistent/pktpath\.bpf\.o is missing"):
        missing.open()
    missing.close()


def test_a_tp_btf_load_assumes_current_tracepoints_and_reads_the_btf_only_if_refused(
        e2e: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """tp_btf programs are verified against the kernel's tracepoints, so the first load
    assumes what current kernels pass and reads no BTF; raw_tp programs are checked only when
    they attach, so their choice reads it first."""
    reads: list[list[str]] = []

    def counted(lib: Any, names: list[str]) -> dict[str, int | None]:
        reads.append(names)
        return tracepoint_args(lib, names)

    monkeypatch.setattr(loader, "tracepoint_args", counted)
    host = TraceFilter(hosts=(parse_host("10.200.33.9"),))
    with Probes.for_filter(host, hook_type="tp_btf") as probes:
        assert {s.hook_type for s in probes.report.hooks} == {"tp_btf"}
    assert reads == []
    with Probes.for_filter(host, hook_type="raw_tp") as probes:
        assert {s.hook_type for s in probes.report.hooks} == {"raw_tp"}
    assert len(reads) == 1


@pytest.mark.parametrize("lie, program, note, error", [
    # a kernel before 5.17: kfree_skb passes no reason
    ({"kfree_skb": 2}, "kfree_skb_noreason", "drop reasons are not named", None),
    # a kernel without the tracepoint
    ({"icmp_send": None}, None, None, "this kernel has no tracepoint icmp_send"),
])
def test_a_tp_btf_load_refused_for_an_assumed_tracepoint_loads_the_programs_that_fit(
        e2e: None, monkeypatch: pytest.MonkeyPatch, lie: dict[str, int | None],
        program: str | None, note: str | None, error: str | None) -> None:
    """When the kernel refuses the assumed programs and its BTF says a tracepoint differs,
    tp_btf is loaded again with the programs that fit (the older one, or none for a missing
    tracepoint) before raw_tp is tried. This kernel passes every argument: the BTF read and
    the verifier's refusal of the first load are altered here (the kernel matrix has the
    real older kernels)."""
    monkeypatch.setattr(loader, "tracepoint_args",
                        lambda lib, names: {**tracepoint_args(lib, names), **lie})
    loaded: list[tuple[str, bool]] = []
    load = Probes._load

    def refuse_first(self: Probes, hook_type: str, *, quiet: bool) -> None:
        loaded.append((hook_type, "tp_btf_kfree_skb" in self._wanted(hook_type)))
        if len(loaded) == 1:
            raise LibbpfError(f"loading {hook_type} programs: Invalid argument", errno.EINVAL)
        load(self, hook_type, quiet=quiet)

    monkeypatch.setattr(Probes, "_load", refuse_first)
    before = {p["id"] for p in loaded_programs()}
    with Probes.for_filter(TraceFilter(hosts=(parse_host("10.200.33.9"),))) as probes:
        hook = next(s for s in probes.report.hooks if s.hook.tracepoint in lie)
        assert (hook.program, hook.error) == (program, error)
        assert (hook.note is None) if note is None else note in (hook.note or "")
        attached = {s.hook.tracepoint for s in probes.report.attached}
        assert attached == {"net_dev_queue", "netif_receive_skb", "kfree_skb", "icmp_send",
                            "consume_skb"} - ({"icmp_send"} if error else set())
        assert {s.hook_type for s in probes.report.attached} == {"tp_btf"}
        assert probes.report.fallback_reason is None
        assert loaded == [("tp_btf", True), ("tp_btf", program is None)]
        ours = [p for p in loaded_programs() if p["id"] not in before]
        assert len(ours) == len(attached)


def test_a_refused_program_is_refused_with_the_verifiers_words(e2e: None) -> None:
    """Loads run without libbpf's log (thousands of lines); a refusal is loaded again with it,
    so the error still says what the verifier said."""
    udp = TraceFilter(expression=compile_expression("udp"))
    assert udp.expression is not None
    exit_first = INSN.pack(0x95, 0, 0, 0)  # the rest of the region can no longer be reached
    probes = Probes(udp.config(), hook_type="tp_btf",
                    expression=exit_first + udp.expression.region[INSN.size:])
    with pytest.raises(PktpathError, match=r"\(tp_btf: .*: unreachable insn \d+\)"):
        probes.open()
    probes.close()


def test_interface_renamed_and_namespace_deleted_while_tracing(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 86)
    run = trace("--proto", "icmp", "--host", net.container_addr, "--json", "--no-drops")
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    net.host.ip("link", "set", net.veth, "down")
    net.host.ip("link", "set", net.veth, "name", "renamed0")
    net.host.ip("link", "set", "renamed0", "up")
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    subprocess.run(["ip", "netns", "del", net.container.name], check=True)
    lab.spaces.remove(net.container)
    net.host.sh("ping", "-c1", "-W1", net.container_addr, check=False)
    time.sleep(0.2)
    events = run.stop().events()
    assert run.returncode == 0, run.stderr
    names = [e["ifname"] for e in events if e["netns"] == net.host.inode]
    assert names[:2] == ["docker0", net.veth]
    assert "renamed0" in names, "the new name is shown after the rename"
    last = [e for e in events if e.get("icmp_seq") is not None][-1]
    assert (last["netns"], last["ifname"]) == (net.host.inode, "docker0"), \
        "after the namespace is gone the ping only reaches the bridge (no port left)"


def setpriv(*caps: str) -> tuple[str, ...]:
    """Run as root but with exactly these capabilities (and no others, even when execing)."""
    need(shutil.which("setpriv") is not None, "setpriv (util-linux) is not installed")
    listed = ",".join(["-all", *(f"+{c}" for c in caps)])
    return ("setpriv", f"--inh-caps={listed}", f"--ambient-caps={listed}",
            f"--bounding-set={listed}", "--")


def test_trace_runs_with_exactly_cap_bpf_and_cap_perfmon(lab: Netlab) -> None:
    net = docker_like(lab, 87)
    proc = subprocess.Popen([*setpriv("bpf", "perfmon"), sys.executable, "-m", "pktpath", "trace",
                             "--proto", "icmp", "--host", net.container_addr, "-c", "6",
                             "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "tracing" in line, line + proc.stderr.read()
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    events = [json.loads(x) for x in out.splitlines()]
    assert [(e["ifname"], e["icmp_type"]) for e in events] == [
        ("docker0", 8), (net.veth, 8), ("eth0", 8), ("eth0", 0), (net.veth, 0), ("docker0", 0)]

    done = subprocess.run([*setpriv("bpf"), sys.executable, "-m", "pktpath", "trace"], cwd=REPO,
                          capture_output=True, text=True, timeout=30, check=False)
    assert (done.returncode, done.stderr) == (1, "pktpath: pktpath needs CAP_BPF and "
                                              "CAP_PERFMON (or root) to trace: run it with sudo\n")


def test_ping_needs_raw_sockets_and_namespace_entry(lab: Netlab) -> None:
    net = docker_like(lab, 88)
    args = [sys.executable, "-m", "pktpath", "ping", "--from", net.host.name, net.container_addr,
            "-c", "2", "--interval", "0.2", "--timeout", "0.5", "--json"]
    done = subprocess.run([*setpriv("bpf", "perfmon", "net_raw", "sys_admin"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["report"]["hubs"]) == 6
    for caps, says in [(("bpf", "perfmon", "sys_admin"), "CAP_NET_RAW"),
                       (("bpf", "perfmon", "net_raw"), "CAP_SYS_ADMIN")]:
        done = subprocess.run([*setpriv(*caps), *args], cwd=REPO, capture_output=True,
                              text=True, timeout=30, check=False)
        assert done.returncode == 1, done.stderr
        assert says in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_json_marks_each_gap_and_the_gaps_add_up_to_the_kernels_count(lab: Netlab,
                                                                       trace: Any) -> None:
    a, b = lab.ns("gap-a"), lab.ns("gap-b")
    lab.veth(a, "eth0", b, "eth0")
    a.ip("addr", "add", "10.200.33.1/24", "dev", "eth0")
    b.ip("addr", "add", "10.200.33.2/24", "dev", "eth0")
    a.sh("ping", "-c1", "-W2", "10.200.33.2")
    datagrams = 20000
    run = trace("--proto", "udp", "--port", "7000", "--buffer-size", "4096", "--no-drops",
                "--json")
    for _ in range(2):  # two bursts a second apart: each leaves its gap where it happened
        a.sh(sys.executable, "-c",
             "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
             f"[s.sendto(b'x', ('10.200.33.2', 7000)) for _ in range({datagrams // 2})]")
        time.sleep(1.2)
    run.stop()
    objects = [json.loads(line) for line in run.stdout.splitlines()]
    gaps = [o["gap"] for o in objects if "gap" in o]
    shown = [o for o in objects if "gap" not in o]
    summary = run.stderr_lines[-1].split()
    assert summary[1:] == [str(len(shown)), "events", "shown,", summary[4], "lost"]
    lost = int(summary[4])
    assert len(gaps) >= 2 and sum(g["lost"] for g in gaps) == lost
    assert gaps[-1]["lost_total"] == lost
    assert len(shown) + lost == 2 * datagrams, "shown + lost is what the hooks saw"
    first_gap = objects.index({"gap": gaps[0]})
    assert 0 < first_gap < len(objects) - 1, "the first gap is marked inside the stream"
