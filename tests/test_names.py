"""Names instead of numbers: containers from cgroups, namespaces named by what pins them."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from typing import Any

import pytest
from netlab import Netlab
from pktpath.core.errors import UsageError
from pktpath.host.names import NetnsNames, container_of_cgroup
from pktpath.host.places import pid_by_cgroup, resolve_from

ID = "3f2a9c1b7d0e" + "a" * 52
POD = "0f1e2d3c-4b5a-6978-8a9b-aabbccddeeff"


@pytest.mark.parametrize("cgroup, expected", [
    (f"0::/system.slice/docker-{ID}.scope\n", (ID, None)),
    (f"12:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n", (ID, None)),
    (f"0::/machine.slice/libpod-{ID}.scope/container\n", (ID, None)),
    (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
     f"{POD.replace('-', '_')}.slice/cri-containerd-{ID}.scope\n", (ID, POD)),
    (f"0::/kubepods/burstable/pod{POD}/{ID}\n", (ID, POD)),
    (f"0::/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/crio-{ID}.scope\n",
     (ID, POD)),
    ("0::/user.slice/user-0.slice/session-3.scope\n", (None, None)),
    ("", (None, None)),
])
def test_container_of_cgroup(cgroup: str, expected: tuple[str | None, str | None]) -> None:
    assert container_of_cgroup(cgroup) == expected


def test_container_found_by_id_prefix_in_a_proc_tree(tmp_path: Any) -> None:
    for pid, cgroup in ((10, "0::/init.scope"), (42, f"0::/system.slice/docker-{ID}.scope"),
                        (43, f"0::/system.slice/docker-{'b' * 64}.scope")):
        os.makedirs(tmp_path / str(pid))
        (tmp_path / str(pid) / "cgroup").write_text(cgroup + "\n")
    assert pid_by_cgroup("3f2a9c", str(tmp_path)) == 42
    assert pid_by_cgroup(ID, str(tmp_path)) == 42
    assert pid_by_cgroup("cccc", str(tmp_path)) is None
    os.makedirs(tmp_path / "44")
    (tmp_path / "44" / "cgroup").write_text(f"0::/docker/3f2a{'c' * 60}\n")
    with pytest.raises(UsageError, match="ambiguous"):
        pid_by_cgroup("3f2a", str(tmp_path))


def test_namespaces_named_by_ip_netns_and_by_process(lab: Netlab) -> None:
    named = lab.ns("named")
    names = NetnsNames(known={12345: "shop/web-0"})
    assert names(named.inode) == named.name
    assert names(12345) == "shop/web-0"
    sleeper = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        path = f"/proc/{sleeper.pid}/ns/net"
        deadline = time.monotonic() + 5
        while os.stat(path).st_ino == os.stat("/proc/self/ns/net").st_ino:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        names.rescan()
        assert names(os.stat(path).st_ino) == f"pid:{sleeper.pid} (sleep)"
        assert resolve_from(f"pid:{sleeper.pid}").inode == os.stat(path).st_ino
    finally:
        sleeper.kill()
        sleeper.wait()
    assert names(1) == "1", "an inode nothing names stays a number"


def test_pcapng_blocks(tmp_path: Any) -> None:
    from pktpath.core.event import Hook
    from pktpath.core.tracer import hop_from_record
    from pktpath.view.pcapng import LINKTYPE_ETHERNET, PcapngWriter, open_private
    from test_output import eth, ipv4, record

    path = str(tmp_path / "x.pcapng")
    with open_private(path) as out:
        writer = PcapngWriter(out, lambda inode: f"ns{inode}")
        frame = eth(0x0800) + ipv4(1, bytes([8, 0, 0, 0, 0, 1, 0, 1]))
        for _ in range(2):
            writer.write(hop_from_record(record(frame, hook=Hook.NET_DEV_QUEUE, ifname="eth0")))
    assert os.stat(path).st_mode & 0o777 == 0o600
    data = (tmp_path / "x.pcapng").read_bytes()
    blocks = []
    offset = 0
    while offset < len(data):
        kind, length = struct.unpack_from("<II", data, offset)
        assert struct.unpack_from("<I", data, offset + length - 4)[0] == length
        blocks.append((kind, data[offset + 8:offset + length - 4]))
        offset += length
    assert [kind for kind, _ in blocks] == [0x0A0D0D0A, 1, 6, 6], "one interface, two packets"
    assert struct.unpack_from("<H", blocks[1][1])[0] == LINKTYPE_ETHERNET
    assert b"eth0@ns" in blocks[1][1]
    assert frame in blocks[2][1] and b"hook=net_dev_queue packet=0x" in blocks[2][1]
