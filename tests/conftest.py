"""Fixtures: test networks, and a `pktpath trace` run in the background.

End-to-end tests need root, the kernel's BTF, iproute2 and ping. Without them they skip on a
developer's machine and fail under CI (CI=true), where everything must run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from netlab import Netlab

import deps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI", "").lower() == "true"
# how much slower than this machine the tests run: the kernel matrix's guests are emulated
# (QEMU without KVM) and set it, so waits for a process to start or a trace to end stretch
SLOWDOWN = float(os.environ.get("PKTPATH_TEST_SLOWDOWN", "1"))


# a test that uses one of these needs root, the kernel's BPF or the API server: it is marked
# e2e, so `pytest -m "not e2e"` runs the unit tests alone, in seconds, as any user
E2E_FIXTURES = {"e2e", "lab", "trace", "drops", "cluster", "agents", "realnode", "images"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs an end-to-end fixture as e2e; the real node's tests last.

    The real node (tests/realcluster.py) lives from its first test to the end of the session;
    its pods' namespaces and kubelet's traffic would be seen by the other tests' system-wide
    tracing, so the tests that use it run after all the others.
    """
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: "realnode" in getattr(item, "fixturenames", ()))


@functools.cache
def kernel_tracepoints() -> dict[str, int | None]:
    """Arguments of the tracepoints whose presence changes what a test may expect."""
    from pktpath.core.libbpf import Libbpf
    from pktpath.core.symbols import tracepoint_args

    return tracepoint_args(Libbpf(), ["kfree_skb", "icmp_send"])


def reason(name: str) -> str:
    """The drop reason a test expects: name, or UNKNOWN on a kernel that gives none (< 5.17)."""
    args = kernel_tracepoints()["kfree_skb"]
    return name if args is not None and args >= 3 else "UNKNOWN"


def kernel_sends_icmp_events() -> bool:
    """Whether the kernel has the icmp:icmp_send tracepoint (5.10 has not)."""
    return kernel_tracepoints()["icmp_send"] is not None


def need(condition: bool, what: str) -> None:
    """Skip (or under CI fail) unless condition holds."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI must run this test but {what}")
        pytest.skip(what)


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def e2e() -> None:
    """Requirements of a test with real BPF programs and namespaces."""
    need(os.geteuid() == 0, "it needs root")
    need(os.path.exists("/sys/kernel/btf/vmlinux"), "the kernel has no BTF")
    for tool in ("ip", "ping"):
        need(shutil.which(tool) is not None, f"{tool} is not installed")


@pytest.fixture
def lab(e2e: None) -> Iterator[Netlab]:
    """A fresh set of namespaces, removed afterwards whatever happens."""
    netlab = Netlab()
    try:
        yield netlab
    finally:
        netlab.cleanup()


@dataclass
class TraceRun:
    """A `pktpath trace` process: started, waited for 'tracing', then stopped."""

    args: list[str]
    proc: subprocess.Popen[str] | None = None
    stderr_lines: list[str] = field(default_factory=list)
    stdout_chunks: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)
    stdout: str = ""
    returncode: int | None = None
    env: dict[str, str] | None = None  # added to the environment
    command: str = "trace"  # or drops

    def start(self, timeout: float = 20 * SLOWDOWN) -> TraceRun:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pktpath", self.command, *self.args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(self.env or {})})
        assert self.proc.stderr is not None
        ready = threading.Event()

        def read_stderr() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr_lines.append(line.rstrip("\n"))
                if "tracing" in line or "counting drops" in line:
                    ready.set()
            ready.set()

        def read_stdout() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for chunk in iter(lambda: self.proc.stdout.read(65536), ""):  # type: ignore[union-attr]
                self.stdout_chunks.append(chunk)

        self.readers = [threading.Thread(target=f, daemon=True) for f in (read_stderr, read_stdout)]
        for reader in self.readers:
            reader.start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError(f"pktpath {self.command} did not start: {self.stderr}")
        return self

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10) -> TraceRun:
        assert self.proc is not None
        if self.proc.poll() is None:
            time.sleep(0.1)
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 10) -> TraceRun:
        """Wait for the process to end; collect its output."""
        assert self.proc is not None
        self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(timeout)
        self.stdout = "".join(self.stdout_chunks)
        self.returncode = self.proc.returncode
        return self

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def _runs(command: str) -> Iterator[Any]:
    """Start `pktpath COMMAND ARGS...` runs; every one still running is killed afterwards."""
    runs: list[TraceRun] = []

    def start(*args: str, env: dict[str, str] | None = None) -> TraceRun:
        run = TraceRun(list(args), env=env, command=command)
        runs.append(run)
        return run.start()

    yield start
    for run in runs:
        if run.proc and run.proc.poll() is None:
            run.proc.kill()
            run.proc.communicate()


@pytest.fixture
def trace(e2e: None) -> Iterator[Any]:
    """Start `pktpath trace ARGS...`; every run is stopped at the end of the test."""
    yield from _runs("trace")


@pytest.fixture
def drops(e2e: None) -> Iterator[Any]:
    """Start `pktpath drops ARGS...`; every run is stopped at the end of the test."""
    yield from _runs("drops")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real kube-apiserver (with kine) with the CRD and the agent's RBAC applied."""
    from kubecluster import ApiServer

    need(os.geteuid() == 0, "it needs root")
    need(shutil.which("openssl") is not None, "openssl is not installed")
    absent = deps.missing("kube-apiserver", "kubectl", "kine", "helm")
    need(absent is None, str(absent))
    server = ApiServer(str(tmp_path_factory.mktemp("apiserver"))).start()
    try:
        server.kubectl("apply", "-f", os.path.join(REPO, "manifests", "crd.yaml"),
                       "-f", os.path.join(REPO, "manifests", "rbac.yaml"))
        server.kubectl("wait", "--for=condition=established", "--timeout=60s",
                       "crd/packettraces.pktpath.dev")
        server.agent_kubeconfig = server.token_kubeconfig("pktpath-system", "pktpath-agent")
        yield server
    finally:
        server.stop()


@pytest.fixture
def agents(cluster: Any, tmp_path: Any) -> Iterator[Any]:
    """Start `pktpath agent` processes for nodes; all stopped at the end of the test."""
    from kubecluster import AgentProcess

    started: list[AgentProcess] = []

    def start(node: str, host_netns: str, *extra: str) -> AgentProcess:
        agent = AgentProcess(node, host_netns, cluster.agent_kubeconfig,
                             str(tmp_path / f"agent-{node}.log"), extra=extra).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


@pytest.fixture(scope="session")
def realnode() -> Iterator[Any]:
    """A real one-node cluster (kubelet, containerd, CNI, kube-proxy) with pktpath installed by
    helm (tests/realcluster.py), for the session; removed completely at its end."""
    from realcluster import NODE_LINK, Cluster

    need(os.geteuid() == 0, "the real node needs root")
    absent = deps.missing("kine", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                          "kubelet", "kube-proxy", "kubectl", "helm")
    need(absent is None, str(absent))
    for tool in ("containerd", "runc", "mmdebstrap", "umoci"):
        need(shutil.which(tool) is not None, f"{tool} is not installed: run `make deps`")
    if os.path.exists(f"/sys/class/net/{NODE_LINK}"):
        pytest.fail("a cluster from `make cluster` is up (it has the node's address): "
                    "run `make cluster-down` first")
    node = Cluster(f"/run/pktpath-test-cluster.{os.getpid()}")
    node.up()
    try:
        yield node
    finally:
        node.down()


@pytest.fixture(scope="session")
def images() -> dict[str, tuple[str, str]]:
    """The images of deps/images.sh: name -> (reference, OCI archive). Built by `make deps`;
    the agent's is rebuilt here (about 20 s) when the working tree changed since."""
    need(os.geteuid() == 0, "building images needs root (mmdebstrap, chroot)")
    for tool in ("mmdebstrap", "umoci"):
        need(shutil.which(tool) is not None, f"{tool} is not installed: run `make deps`")
    out = subprocess.run(["bash", os.path.join(REPO, "deps", "images.sh")], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return {name: (ref, archive) for name, ref, archive in
            (line.split() for line in out.splitlines() if line.strip())}
