"""The command line as a user meets it: bad input, missing privilege, help, the demo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
from conftest import REPO, need
from netlab import Netlab
from pktpath.core.errors import PktpathError
from pktpath.host.privileges import (
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    require_btf,
    require_tracing,
)


def pktpath(*args: str, prefix: tuple[str, ...] = (), timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "pktpath", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("args, message", [
    (["trace", "--proto", "sctp"], "unknown protocol 'sctp': use icmp, icmp6, tcp, udp or arp"),
    (["trace", "--host", "10.200.0"], "'10.200.0' is not an IPv4 or IPv6 address"),
    (["trace", "--port", "99999"], "'99999' is not a port number (1-65535)"),
    (["trace", "--netns", "no-such-ns"], "unknown network namespace 'no-such-ns'"),
    (["trace", "--netns", "/no/such/path"], "network namespace path /no/such/path does not exist"),
    (["trace", "--netns", "/etc/hostname"], "/etc/hostname is not a network namespace file"),
    (["trace", "--netns", "12345"], "no network namespace has inode 12345"),
    (["trace", "-i", "nosuch0"], "no interface 'nosuch0' in any network namespace"),
    (["trace", "-i", "much-too-long-name0"], "is not a valid interface name"),
    (["trace", "--proto", "icmp", "--port", "80"], "--port applies to tcp and udp, not icmp"),
    (["trace", "--bogus"], "unrecognized arguments: --bogus"),
    (["trace", "-c", "0"], "'0' is not a positive number"),
    (["trace", "--buffer-size", "3M"], "must be a power of two"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_input_is_one_sentence_and_exit_2(args: list[str], message: str) -> None:
    proc = pktpath(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pktpath: ") and message in lines[0], lines[0]


def test_without_capabilities_it_says_what_it_needs(e2e: None) -> None:
    need(shutil.which("setpriv") is not None, "setpriv is not installed")
    proc = pktpath("trace", "--proto", "icmp",
                   prefix=("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"))
    assert proc.returncode == 1
    assert proc.stderr == ("pktpath: pktpath needs CAP_BPF and CAP_PERFMON (or root) to trace: "
                           "run it with sudo\n")


def test_capability_rule() -> None:
    require_tracing(1 << CAP_SYS_ADMIN)
    require_tracing((1 << CAP_BPF) | (1 << CAP_PERFMON))
    with pytest.raises(PktpathError, match="needs CAP_BPF and CAP_PERFMON"):
        require_tracing(1 << CAP_BPF)


def test_kernel_without_btf_is_named() -> None:
    with pytest.raises(PktpathError, match=r"this kernel has no BTF .* CONFIG_DEBUG_INFO_BTF=y"):
        require_btf("/nonexistent/vmlinux")


@pytest.mark.parametrize("command, columns", [("trace", "0"), ("demo", "50")])
def test_help_ends_with_examples(command: str, columns: str) -> None:
    """Help is sized to $COLUMNS when it is a width (50), to the terminal or 80 when not."""
    proc = pktpath(command, "--help", env={**os.environ, "COLUMNS": columns})
    assert proc.returncode == 0
    assert "examples:" in proc.stdout
    width = int(columns) - 2 if int(columns) else 78  # output to a pipe: no terminal
    described = proc.stdout.split("examples:")[0].splitlines()
    assert all(len(line) <= width for line in described), "a description is not wrapped"
    assert proc.stdout.rstrip().splitlines()[-1].lstrip().startswith("pktpath ")


@pytest.mark.parametrize("argv", [
    ["trace", "--host", "10.200.0.1", "--proto", "udp", "-c", "3", "--json", "tcp", "port", "9"],
    ["ping", "10.200.0.2", "--from", "blue", "--udp", "--port", "53", "-c", "2", "--report"],
    ["demo", "--json", "-c", "1"],
    ["drops", "--interval", "2", "--reason", "NO_SOCKET"],
    ["agent", "--node", "node-a", "--max-traces", "5", "--no-drop-watch"],
])
def test_a_command_parses_alike_with_only_its_own_flags_built(argv: list[str]) -> None:
    from pktpath.cli.main import build_parser

    assert build_parser(argv[0]).parse_args(argv) == build_parser().parse_args(argv)


def test_a_trace_reaches_its_load_without_the_heavy_modules() -> None:
    """What runs before the programs start loading (most of a start then runs beside them):
    argparse sizes its help with shutil, which imports bz2 and lzma (~3 ms), and dataclasses
    imports inspect, ast and more (~10 ms); pktpath needs neither there. Run without `site`,
    which may import shutil itself (this machine's pyenv does)."""
    code = ("import sys; from pktpath.cli.main import build_parser, filter_from_args; "
            "from pktpath.core.loader import Probes; "
            "args = build_parser('trace').parse_args(['trace', '--host', '10.200.0.1']); "
            "Probes.for_filter(filter_from_args(args)[0]); "
            "print(sorted({'shutil', 'bz2', 'lzma', 'dataclasses', 'inspect'} & "
            "set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.path.join(REPO, "agent")},
                          check=True)
    assert proc.stdout.strip() == "[]"


def test_demo_shows_the_article_path_and_removes_everything(e2e: None) -> None:
    before = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    proc = pktpath("demo", "--json", "-c", "2")
    assert proc.returncode == 0, proc.stderr
    everything = [json.loads(line) for line in proc.stdout.splitlines()]
    frees = [e for e in everything if e["hook"] == "kfree_skb"]
    assert [(f["ifname"], f["drop"]) for f in frees] == [("docker0", False)] * 2, "delivered"
    events = [e for e in everything if e["hook"] != "kfree_skb"]
    names = [(e["ifname"], {8: "request", 0: "reply"}[e["icmp_type"]]) for e in events]
    veth = events[1]["ifname"]
    assert veth.startswith("veth")
    one_ping = [("docker0", "request"), (veth, "request"), ("eth0", "request"),
                ("eth0", "reply"), (veth, "reply"), ("docker0", "reply")]
    assert names == one_ping * 2
    assert [e["netns_name"] for e in events[:3]] == ["host", "host", "container"]
    assert "2 of 2 pings answered" in proc.stderr
    assert "removed the demo's namespaces" in proc.stderr
    after = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    assert after == before


def test_demo_leftovers_of_a_killed_demo_are_removed(e2e: None) -> None:
    lab = Netlab(prefix="pktpath-demo-999999999")  # a pid that does not exist
    try:
        lab.ns("host")
        proc = pktpath("demo", "-c", "1")
        assert proc.returncode == 0, proc.stderr
        assert "removed pktpath-demo-999999999-host, left by a demo that was killed" in proc.stderr
        assert not os.path.exists("/run/netns/pktpath-demo-999999999-host")
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("[        host]          docker0 request #")
        assert lines[2].startswith("[   container]             eth0 request #")
        box = [line.split() for line in lines[lines.index("") + 1:]]
        assert box[0] == ["host", "|", "container"]
        assert box[2][:3] == ["|", "docker0", "--->"] and box[2][-3:] == ["--->", "eth0", "|"]
        assert box[3][:3] == ["|", "docker0", "<---"] and box[3][-3:] == ["<---", "eth0", "|"]
    finally:
        lab.cleanup()


def test_demo_interrupted_removes_everything(e2e: None) -> None:
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "pktpath", "demo", "-c", "100"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "pinging" in line:
            break
    mine = f"pktpath-demo-{proc.pid}-"
    assert any(n.startswith(mine) for n in os.listdir("/run/netns"))
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=20)
    assert proc.returncode == 0, rest
    assert "removed the demo's namespaces" in rest
    assert not any(n.startswith(mine) for n in os.listdir("/run/netns"))


def test_agent_says_whether_its_host_namespace_is_missing_or_unreadable(tmp_path: Any) -> None:
    missing = pktpath("agent", "--node", "n1", "--host-netns", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"pktpath: the node's network namespace "
                                     f"{tmp_path / 'nope'} does not exist")
    # /proc/1/ns/net of a process this one may not inspect (PID 1 here is hidden from everyone;
    # elsewhere, a normal user looking at init's)
    unreadable = "/proc/1/ns/net"
    try:
        os.stat(unreadable)
    except PermissionError:
        pass
    else:
        pytest.skip("this process may open /proc/1/ns/net")
    denied = pktpath("agent", "--node", "n1", "--host-netns", unreadable)
    assert denied.returncode == 1
    assert denied.stderr == ("pktpath: the node's network namespace /proc/1/ns/net cannot be "
                             "opened (permission denied): give the agent the host PID namespace "
                             "and CAP_SYS_PTRACE, or --host-netns /proc/self/ns/net when it "
                             "shares the host's network\n")


@pytest.mark.parametrize("track", [True, False])
def test_a_trace_without_filter_says_how_to_make_it_lighter(track: bool) -> None:
    import io
    from types import SimpleNamespace

    from pktpath.cli.stream import announce
    from pktpath.core.event import Hook
    from pktpath.core.filters import TraceFilter
    from pktpath.core.loader import HookStatus, LoadReport

    report = LoadReport()
    report.hooks = [HookStatus(Hook.NET_DEV_QUEUE, hook_type="tp_btf")]
    err = io.StringIO()
    announce(SimpleNamespace(report=report, filter=TraceFilter(track=track)),  # type: ignore[arg-type]
             err)
    heavy, tracing = err.getvalue().splitlines()
    assert heavy.startswith("pktpath: no filter: tracing every packet on every interface is heavy")
    assert ("add --no-track" in heavy) is track  # it is already lighter without tracking
    assert tracing == "pktpath: tracing every packet at net_dev_queue (tp_btf); Ctrl-C stops"
