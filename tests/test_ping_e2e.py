"""End-to-end: `pktpath ping` sends its own probes and reports, mtr-style, where they went."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import REPO, need
from netlab import Netlab, docker_like, routed

COLUMNS = ["Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev"]


def pktpath(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pktpath", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False)


def report(*args: str) -> dict[str, Any]:
    done = pktpath("ping", "--interval", "0.2", "--timeout", "0.5", "--json", *args)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["report"])


def rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(h["netns_name"], h["ifname"], h["dir"]) for h in report["hubs"]]


def test_report_through_a_bridge_into_a_container(lab: Netlab) -> None:
    net = docker_like(lab, 71)
    got = report("--from", net.host.name, net.container_addr, "-c", "5")
    h, c = net.host.name, net.container.name
    assert rows(got) == [(h, "docker0", "request"), (h, net.veth, "request"),
                         (c, "eth0", "request"), (c, "eth0", "reply"),
                         (h, net.veth, "reply"), (h, "docker0", "reply")]
    assert got["mtr"]["src"] == h and got["mtr"]["dst"] == net.container_addr
    assert got["mtr"]["tests"] == 5
    for hub in got["hubs"]:
        assert (hub["Snt"], hub["Loss%"]) == (5, 0.0), hub
        assert 0 < hub["Best"] <= hub["Avg"] <= hub["Wrst"], hub
        assert hub["netns"] == (net.host.inode if hub["netns_name"] == h else net.container.inode)
        assert "drop_reason" not in hub
    assert [hub["count"] for hub in got["hubs"]] == [1, 2, 3, 4, 5, 6]
    assert [hub["host"] for hub in got["hubs"]][:3] == [f"docker0@{h}", f"{net.veth}@{h}",
                                                       f"eth0@{c}"]


def test_report_through_a_router_over_ipv4_and_tcp(lab: Netlab) -> None:
    net = routed(lab, 72, 73)
    a, r, b = net.c1.name, net.router.name, net.c2.name
    got = report("--from", net.c1.name, net.c2_addr, "-c", "5")
    assert rows(got) == [(a, "eth0", "request"), (r, "to-c1", "request"),
                         (r, "to-c2", "request"), (b, "eth0", "request"),
                         (b, "eth0", "reply"), (r, "to-c2", "reply"), (r, "to-c1", "reply"),
                         (a, "eth0", "reply")]
    assert all((hub["Snt"], hub["Loss%"]) == (5, 0.0) for hub in got["hubs"])

    # TCP SYN to a closed port: the SYN goes all the way, the RST comes back
    got = report("--from", net.c1.name, "--tcp", "--port", "5432", net.c2_addr, "-c", "3")
    assert rows(got) == [(a, "eth0", "request"), (r, "to-c1", "request"),
                         (r, "to-c2", "request"), (b, "eth0", "request"),
                         (b, "eth0", "reply"), (r, "to-c2", "reply"), (r, "to-c1", "reply"),
                         (a, "eth0", "reply")]
    assert all((hub["Snt"], hub["Loss%"]) == (3, 0.0) for hub in got["hubs"])


def test_ipv6_udp_probes_from_a_pid(lab: Netlab) -> None:
    net = docker_like(lab, 74)
    with net.host.process("sleep", "60") as sleeper:
        got = report("--from", f"pid:{sleeper.pid}", "--udp", "--port", "53",
                     net.container_addr6, "-c", "3")
    h, c = net.host.name, net.container.name
    # the datagram arrives; the port is closed, so the reply is an ICMPv6 error: not a probe's
    assert rows(got)[:3] == [(h, "docker0", "request"), (h, net.veth, "request"),
                             (c, "eth0", "request")]
    assert got["hubs"][2]["Loss%"] == 0.0


def test_a_drop_rule_in_the_container_is_on_its_row(lab: Netlab) -> None:
    need(shutil.which("iptables") is not None, "iptables is not installed")
    net = docker_like(lab, 75)
    net.container.sh("iptables", "-A", "INPUT", "-p", "icmp", "-j", "DROP")
    got = report("--from", net.host.name, net.container_addr, "-c", "4")
    container_row = next(h for h in got["hubs"] if h["netns_name"] == net.container.name)
    assert (container_row["ifname"], container_row["dir"]) == ("eth0", "request")
    assert container_row["drop_reason"] == "NETFILTER_DROP"
    assert container_row["drops"] == 4
    assert not [h for h in got["hubs"] if h["dir"] == "reply" and h["Loss%"] < 100]


def test_text_report_has_mtr_columns_and_the_diagram(lab: Netlab) -> None:
    net = docker_like(lab, 76)
    done = pktpath("ping", "--from", net.host.name, net.container_addr, "--report", "-c", "3",
                   "--interval", "0.2", "--timeout", "0.5")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Start: ")
    assert lines[1].split()[-7:] == COLUMNS
    assert lines[2].split()[:5] == ["1.|--", net.host.name, "docker0", "request", "0.0%"]
    assert lines[5].split()[:4] == ["4.|--", net.container.name, "eth0", "reply"]
    box = lines[lines.index("") + 1:]
    assert box[0].split() == [net.host.name, "|", net.container.name]
    assert box[2] .split() == ["|", "docker0", "--->", net.veth, "--->", "eth0", "|"]
    assert box[3].split() == ["|", "docker0", "<---", net.veth, "<---", "eth0", "|"]


def test_bad_ping_command_lines(e2e: None) -> None:
    for args, says in [
        (["10.200.1.1", "--udp"], "--udp needs --port N"),
        (["10.200.1.1", "--port", "80"], "--port goes with --udp or --tcp"),
        (["not an address"], "is not an IP address or a name that resolves"),
        (["10.200.1.1", "--from", "no-such-place"], "is not an `ip netns` name"),
        (["10.200.1.1", "--from", "pid:999999999"], "no process 999999999"),
        (["10.200.1.1", "--tcp", "--port", "70000"], "is not a port number"),
    ]:
        done = pktpath("ping", *args, "--report")
        assert done.returncode == 2, (args, done.stderr)
        assert says in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_live_table_in_tmux_shows_rows_and_q_quits(lab: Netlab) -> None:
    need(shutil.which("tmux") is not None, "tmux is not installed")
    net = docker_like(lab, 77)
    session = f"pktpath-test-{os.getpid()}"
    marker = f"/tmp/{session}.rc"
    command = (f"cd {REPO} && env -u COLUMNS -u LINES {sys.executable} -m pktpath ping "
               f"--from {net.host.name} "
               f"{net.container_addr} --interval 0.2; echo $? > {marker}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "30",
                    command], check=True)
    try:
        screen = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                    capture_output=True, text=True, check=False).stdout
            if f"{net.container.name}  eth0" in screen and "reply" in screen:
                break
            time.sleep(0.3)
        lines = [line.split() for line in screen.splitlines()]
        assert ["Hop", "Namespace", "Interface", "Dir", *COLUMNS, "Fate"] in lines, screen
        assert any(line[:4] == ["3", net.container.name, "eth0", "request"] for line in lines)
        assert any(" ".join(line[1:]).startswith("probes sent, 0 events lost keys: q quit")
                   for line in lines), screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 5
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        with open(marker, encoding="ascii") as f:
            assert f.read().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False,
                       capture_output=True)
        if os.path.exists(marker):
            os.unlink(marker)


@pytest.mark.parametrize("v6", [False, True])
def test_trace_names_namespaces_and_draws_the_path(lab: Netlab, trace: Any, v6: bool) -> None:
    net = docker_like(lab, 78)
    dst = net.container_addr6 if v6 else net.container_addr
    run = trace("--proto", "icmp6" if v6 else "icmp", "--host", dst, "--diagram", "--no-drops")
    net.host.sh("ping", "-c1", "-W2", dst)
    lines = [line for line in run.stop().stdout.splitlines()
             if "neighbor-" not in line and "arp " not in line]
    assert lines[0].startswith(f"[{net.host.name:>12}]          docker0 request #")
    assert lines[2].startswith(f"[{net.container.name:>12}]             eth0 request #")
    box = lines[lines.index("") + 1:]
    assert box[0].split() == [net.host.name, "|", net.container.name]
    assert box[2].split() == ["|", "docker0", "--->", net.veth, "--->", "eth0", "|"]
    assert box[3].split() == ["|", "docker0", "<---", net.veth, "<---", "eth0", "|"]

    run = trace("--proto", "icmp", "--host", net.container_addr, "--json")
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    events = run.stop().events()
    assert [e["netns_name"] for e in events[:3]] == [net.host.name, net.host.name,
                                                     net.container.name]


def test_pcapng_file_read_back_with_tshark(lab: Netlab, trace: Any, tmp_path: Any) -> None:
    need(shutil.which("tshark") is not None, "tshark is not installed")
    net = docker_like(lab, 79)
    path = str(tmp_path / "trace.pcapng")
    run = trace("--proto", "icmp", "--host", net.container_addr, "-w", path, "--no-drops")
    net.host.sh("ping", "-c2", "-i0.2", "-W2", net.container_addr)
    run.stop()
    assert "12 packets written to" in run.stderr, run.stderr
    assert os.stat(path).st_mode & 0o777 == 0o600
    fields = subprocess.run(
        ["tshark", "-r", path, "-T", "fields", "-E", "separator=;", "-e", "frame.comment",
         "-e", "icmp.type", "-e", "icmp.seq", "-e", "frame.interface_name"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(fields) == 12
    comment, icmp_type, seq, interface = fields[0].split(";")
    assert comment.startswith(f"netns={net.host.name} ({net.host.inode}) ifname=docker0 "
                              "hook=net_dev_queue packet=0x")
    assert (icmp_type, seq, interface) == ("8", "1", f"docker0@{net.host.name}")
    assert [f.split(";")[1] for f in fields[:6]] == ["8", "8", "8", "0", "0", "0"]
    assert fields[2].split(";")[3] == f"eth0@{net.container.name}"


def test_output_file_is_never_written_through_a_symlink(lab: Netlab, tmp_path: Any) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    link = tmp_path / "trace.pcapng"
    link.symlink_to(target)
    done = pktpath("trace", "--proto", "icmp", "-w", str(link), "-c", "1", timeout=20)
    assert done.returncode == 2
    assert "is a symbolic link" in done.stderr
    assert target.read_text() == "keep me"


def writable_cgroup_root() -> str | None:
    """A cgroup hierarchy a test may make a container's cgroup in (v1 pids, else v2)."""
    for root in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(os.path.join(root, "cgroup.procs")) and os.access(root, os.W_OK):
            return root
    return None


def test_ping_from_a_container_found_by_its_cgroup(lab: Netlab) -> None:
    """No runtime answers for this ID: pktpath finds the process by the container ID in its
    cgroup (as Docker's cgroupfs layout writes it), and names the namespace by it."""
    root = writable_cgroup_root()
    need(root is not None, "no writable cgroup hierarchy")
    assert root is not None
    net = docker_like(lab, 89)
    container_id = f"c0ffee{os.getpid():08x}".ljust(64, "0")
    group = os.path.join(root, "docker", container_id)
    try:
        with net.container.process("sleep", "60") as sleeper:
            os.makedirs(group)
            with open(os.path.join(group, "cgroup.procs"), "w") as procs:
                procs.write(str(sleeper.pid))
            # the namespace lives on in the sleeper only: no `ip netns` name for it any more
            subprocess.run(["ip", "netns", "del", net.container.name], check=True)
            lab.spaces.remove(net.container)
            got = report("--from", container_id[:12], net.host_addr, "-c", "2")
    finally:
        for path in (group, os.path.dirname(group)):
            with contextlib.suppress(OSError):  # the parent may be a real runtime's
                os.rmdir(path)
    short = container_id[:12]
    assert rows(got) == [(short, "eth0", "request"), (net.host.name, net.veth, "request"),
                         (net.host.name, "docker0", "request"), (net.host.name, "docker0", "reply"),
                         (net.host.name, net.veth, "reply"), (short, "eth0", "reply")]
    assert got["mtr"]["src"] == container_id[:12]
