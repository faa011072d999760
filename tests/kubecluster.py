"""A real Kubernetes API server for the tests: kube-apiserver with kine (SQLite) as its store.

Built from the Go module proxy by `make deps` (deps/build.sh, cached outside the repo), started
on random loopback ports, and stopped at the end. No controller manager and no kubelet run:
the harness creates ServiceAccounts and Node objects itself and sets pods' status as a kubelet
would. "Nodes" are network namespaces, "pods" are namespaces behind veths, and each node's
agent is a `pktpath agent` process with its own node name and the agent's ServiceAccount token.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from conftest import SLOWDOWN

import deps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN_TOKEN = "pktpath-test-admin-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ApiServer:
    """kube-apiserver + kine in workdir, on loopback."""

    workdir: str
    port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    commands: dict[str, tuple[list[str], str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def admin_kubeconfig(self) -> str:
        return os.path.join(self.workdir, "admin.kubeconfig")

    def start(self, timeout: float = 180) -> ApiServer:
        w = self.workdir
        os.makedirs(os.path.join(w, "kine"), exist_ok=True)
        kine_port, self.port = free_port(), free_port()
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                        "-out", f"{w}/sa.key"], check=True, capture_output=True)
        with open(f"{w}/tokens.csv", "w") as tokens:
            tokens.write(f"{ADMIN_TOKEN},admin,admin,system:masters\n")
        self._spawn("kine", [deps.path("kine"), f"--listen-address=127.0.0.1:{kine_port}",
                             "--metrics-bind-address=0"], cwd=os.path.join(w, "kine"))
        self._spawn("kube-apiserver", [
            deps.path("kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{kine_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}", f"--cert-dir={w}/pki",
            "--service-cluster-ip-range=10.200.249.0/24", "--endpoint-reconciler-type=none",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-signing-key-file={w}/sa.key",
            f"--service-account-key-file={w}/sa.key", f"--token-auth-file={w}/tokens.csv",
            "--authorization-mode=RBAC"], cwd=w)
        self._wait_ready(timeout)
        self._write_kubeconfig(self.admin_kubeconfig, ADMIN_TOKEN)
        return self

    def _spawn(self, name: str, cmd: list[str], cwd: str) -> None:
        log = open(os.path.join(self.workdir, f"{name}.log"), "ab")  # noqa: SIM115
        self.procs.append(subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=log))
        self.commands[name] = (cmd, cwd)

    def pause_apiserver(self, seconds: float) -> None:
        """Stop kube-apiserver (kine keeps the data), wait, start it again on the same port."""
        server = self.procs.pop()  # kube-apiserver is spawned last
        server.kill()  # an outage: no graceful shutdown
        server.wait(30)
        time.sleep(seconds)
        cmd, cwd = self.commands["kube-apiserver"]
        self._spawn("kube-apiserver", cmd, cwd)
        self._wait_ready(120)

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(f"{self.url}/readyz",
                                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            try:
                with urllib.request.urlopen(request, context=context, timeout=2) as reply:
                    if reply.read().strip() == b"ok":
                        return
            except OSError:
                pass
            time.sleep(0.5)
        with open(os.path.join(self.workdir, "kube-apiserver.log"), errors="replace") as out:
            log = out.read()[-3000:]
        self.stop()
        raise RuntimeError(f"kube-apiserver did not become ready:\n{log}")

    def _write_kubeconfig(self, path: str, token: str) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url,
                "certificate-authority": os.path.join(self.workdir, "pki", "apiserver.crt")}}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        }
        with open(path, "w") as out:
            json.dump(config, out)

    def kubectl(self, *args: str, kubeconfig: str | None = None, stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([deps.path("kubectl"), "--kubeconfig",
                               kubeconfig or self.admin_kubeconfig, *args],
                              input=stdin, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(self, manifest: str | dict[str, Any],
              **kwargs: Any) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", stdin=text, **kwargs)

    def get(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return out

    def token_kubeconfig(self, namespace: str, service_account: str) -> str:
        """A kubeconfig with a token of the ServiceAccount (TokenRequest API)."""
        token = self.kubectl("create", "token", service_account, "-n", namespace,
                             "--duration=3600s").stdout.strip()
        path = os.path.join(self.workdir, f"{namespace}.{service_account}.kubeconfig")
        self._write_kubeconfig(path, token)
        return path

    def namespace(self, name: str) -> None:
        """A namespace with its default ServiceAccount (no controller manager makes it)."""
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        self.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": name}})

    def node(self, name: str) -> None:
        self.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})

    def pod(self, namespace: str, name: str, node: str, ip: str) -> None:
        """A Pod scheduled on node, with the status a kubelet would write."""
        self.apply({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"nodeName": node, "automountServiceAccountToken": False,
                             "containers": [{"name": "app", "image": "registry.invalid/app"}]}})
        status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
        self.kubectl("patch", "pod", name, "-n", namespace, "--subresource=status",
                     "--type=merge", "-p", json.dumps(status))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


@dataclass
class AgentProcess:
    """A `pktpath agent` for one simulated node."""

    node: str
    host_netns: str
    kubeconfig: str
    logfile: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()  # more `pktpath agent` flags

    def start(self, timeout: float = 60 * SLOWDOWN) -> AgentProcess:
        self.port = free_port()
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        log = open(self.logfile, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pktpath", "agent", "--node", self.node, "--host-netns",
             self.host_netns, "--listen", f"127.0.0.1:{self.port}", *self.extra],
            cwd=REPO, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.node} exited: {self.log()[-2000:]}")
            try:
                if self.http("/healthz").startswith("ok"):
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"agent {self.node} did not become ready: {self.log()[-2000:]}")

    def http(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as reply:
            return str(reply.read().decode())

    def metrics(self) -> dict[str, float]:
        """Every sample by its name with labels (`name{a="b"}`) as /metrics writes it."""
        values = {}
        for line in self.http("/metrics").splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def log(self) -> str:
        with open(self.logfile, errors="replace") as log:
            return log.read()

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
