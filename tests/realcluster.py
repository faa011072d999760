"""A real one-node Kubernetes cluster on this machine, for the tests and for people.

kine + kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy
(nftables mode) from `make deps` (deps/go-tools); containerd, runc and the CNI plugins from
Debian; a bridge CNI network; the images of deps/images.sh imported into containerd; pktpath
installed with `helm install` from charts/pktpath. Every address is inside 10.200.0.0/16. No
systemd: processes are started here and ended by PID.

Everything done to the machine is written to a state file as it is done, so that `down` (also
from another process: `make cluster-down`) undoes exactly that, in reverse, even after a failed
or interrupted `up`: processes, the pods' processes and cgroups, mounts, links, network
namespaces, nftables tables, the sysctls kubelet and kube-proxy change, and the files.

    python3 tests/realcluster.py up      # prints KUBECONFIG=<path> as its last line
    python3 tests/realcluster.py down
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import deps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = "/run/pktpath-cluster"
NODE = "pktpath-node"
NODE_IP = "10.200.250.1"
NODE_LINK, NODE_PEER = "pkn-node", "pkn-peer"
POD_CIDR = "10.200.100.0/24"
BRIDGE = "pktpath-cni0"
SERVICE_CIDR = "10.200.200.0/24"
API_PORT = 16443
CGROUP_ROOT = "pktpath-cluster"
AGENT_NAMESPACE = "pktpath-system"
CNI_BIN = "/usr/lib/cni"
# what kubelet (protectKernelDefaults off) and kube-proxy may change, restored by `down`
SYSCTLS = ["vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
           "net/ipv4/conf/all/route_localnet", "net/bridge/bridge-nf-call-iptables",
           "net/bridge/bridge-nf-call-ip6tables", "net/netfilter/nf_conntrack_max",
           "net/netfilter/nf_conntrack_tcp_be_liberal",
           "net/netfilter/nf_conntrack_tcp_timeout_established",
           "net/netfilter/nf_conntrack_tcp_timeout_close_wait"]
IDENTITIES = {  # component: (user, group) of its token
    "admin": ("admin", "system:masters"),
    "kubelet": (f"system:node:{NODE}", "system:nodes"),
    "kube-proxy": ("system:kube-proxy", "system:node-proxier"),
    "kube-controller-manager": ("system:kube-controller-manager", ""),
    "kube-scheduler": ("system:kube-scheduler", ""),
}


def say(message: str) -> None:
    """Progress, on stderr."""
    print(f"pktpath cluster: {message}", file=sys.stderr, flush=True)


class ClusterError(RuntimeError):
    """The cluster could not be brought up; the message says what failed and where to look."""


@dataclass
class Cluster:
    """The cluster whose state lives in workdir."""

    workdir: str = DEFAULT_DIR

    # ---- the state file: what has been done, so that it can be undone ----

    @property
    def state_file(self) -> str:
        return os.path.join(self.workdir, "state.json")

    def state(self) -> dict[str, Any]:
        try:
            with open(self.state_file) as f:
                state: dict[str, Any] = json.load(f)
                return state
        except FileNotFoundError:
            return {}

    def _record(self, key: str, value: Any) -> None:
        state = self.state()
        if isinstance(state.get(key), dict) and isinstance(value, dict):
            state[key].update(value)
        else:
            state[key] = value
        with open(self.state_file + ".tmp", "w") as f:
            json.dump(state, f, indent=1)
        os.replace(self.state_file + ".tmp", self.state_file)

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    @property
    def admin_kubeconfig(self) -> str:
        return self.path("admin.kubeconfig")

    @property
    def images(self) -> dict[str, tuple[str, str]]:
        """name → (reference, archive), from the state file."""
        return {k: (v[0], v[1]) for k, v in self.state().get("images", {}).items()}

    def is_up(self) -> bool:
        return os.path.exists(self.state_file)

    # ---- up ----

    def up(self, install: bool = True) -> None:
        """Bring the cluster up (and pktpath into it with helm); undo everything on failure."""
        if self.is_up():
            raise ClusterError(f"a cluster is already up in {self.workdir}: use it, or run "
                               "`make cluster-down` first")
        self._check_parts()
        start = time.monotonic()
        os.makedirs(self.path("logs"))
        self._record("created", time.time())
        try:
            self._images()
            self._host()
            self._control_plane()
            self._node()
            self._wait_node_ready()
            if install:
                self.install_pktpath()
        except BaseException:
            kept = f"/tmp/pktpath-cluster-logs.{int(time.time())}"
            shutil.copytree(self.path("logs"), kept, dirs_exist_ok=True)
            say(f"failed: removing what was set up; the components' logs are in {kept}")
            self.down()
            raise
        say(f"up in {time.monotonic() - start:.0f} s")

    def _check_parts(self) -> None:
        missing = deps.missing("kine", "kube-apiserver", "kube-controller-manager",
                               "kube-scheduler", "kubelet", "kube-proxy", "kubectl", "helm")
        if missing:
            raise ClusterError(missing)
        for tool in ("containerd", "runc", "ctr", "nft", "mmdebstrap", "umoci"):
            if shutil.which(tool) is None:
                raise ClusterError(f"{tool} is not installed: run `make deps`")
        if not os.path.exists(os.path.join(CNI_BIN, "bridge")):
            raise ClusterError(f"the CNI plugins are not in {CNI_BIN}: run `make deps`")
        if os.geteuid() != 0:
            raise ClusterError("the cluster needs root (it runs kubelet and containerd)")

    def _images(self) -> None:
        say("images (deps/images.sh)...")
        out = subprocess.run(["bash", os.path.join(REPO, "deps", "images.sh")], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        images = {name: [ref, archive] for name, ref, archive in
                  (line.split() for line in out.splitlines() if line.strip())}
        self._record("images", images)

    def _host(self) -> None:
        """sysctls, the node's address, /run/netns shared, the CNI network's files."""
        saved = {}
        for key in SYSCTLS:
            try:
                with open(f"/proc/sys/{key}") as f:
                    saved[key] = f.read().strip()
            except OSError:
                pass
        self._record("sysctls", saved)
        _write("/proc/sys/net/ipv4/ip_forward", "1")
        self._record("links", [NODE_LINK, BRIDGE])
        _run("ip", "link", "add", NODE_LINK, "type", "veth", "peer", "name", NODE_PEER)
        _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", NODE_LINK)
        _run("ip", "link", "set", NODE_LINK, "up")
        _run("ip", "link", "set", NODE_PEER, "up")
        self._record("netns_before", sorted(os.listdir("/run/netns"))
                     if os.path.isdir("/run/netns") else [])
        if not os.path.isdir("/run/netns"):
            os.makedirs("/run/netns")
        # the agent's HostToContainer mount of /run/netns needs it shared
        if _propagation("/run/netns") != "shared":
            if _propagation("/run/netns") is None:
                _run("mount", "--bind", "/run/netns", "/run/netns")
                self._record("netns_bind", True)
            _run("mount", "--make-shared", "/run/netns")
        self._record("containerd_shims_before", _shim_sockets())
        os.makedirs(self.path("cni", "net.d"))
        network = {"cniVersion": "1.0.0", "name": "pktpath", "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
            "hairpinMode": True, "ipam": {
                "type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.path("cni", "ipam")}}]}
        with open(self.path("cni", "net.d", "10-pktpath.conflist"), "w") as f:
            json.dump(network, f, indent=1)

    def _control_plane(self) -> None:
        w = self.workdir
        os.makedirs(self.path("kine"))
        _run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
             self.path("sa.key"))
        tokens = {name: secrets.token_hex(16) for name in IDENTITIES}
        with open(self.path("tokens.csv"), "w") as f:
            for name, (user, group) in IDENTITIES.items():
                f.write(f'{tokens[name]},{user},{user},"{group}"\n')
        kine_port = 16379
        say("kine and kube-apiserver...")
        self._spawn("kine", [deps.path("kine"), f"--listen-address=127.0.0.1:{kine_port}",
                             "--metrics-bind-address=0"], cwd=self.path("kine"))
        self._spawn("kube-apiserver", [
            deps.path("kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{kine_port}",
            f"--bind-address={NODE_IP}", f"--advertise-address={NODE_IP}",
            f"--secure-port={API_PORT}", f"--cert-dir={w}/pki",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-signing-key-file={w}/sa.key",
            f"--service-account-key-file={w}/sa.key", f"--token-auth-file={w}/tokens.csv",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            "--kubelet-preferred-address-types=InternalIP"])
        for name in IDENTITIES:
            self._kubeconfig(name, tokens[name])
        self._wait(lambda: self.kubectl("get", "--raw=/readyz", check=False).returncode == 0,
                   60, "kube-apiserver to be ready", "kube-apiserver")
        say("kube-controller-manager and kube-scheduler...")
        self._spawn("kube-controller-manager", [
            deps.path("kube-controller-manager"),
            f"--kubeconfig={self.path('kube-controller-manager.kubeconfig')}",
            f"--service-account-private-key-file={w}/sa.key",
            f"--root-ca-file={w}/pki/apiserver.crt", "--leader-elect=false",
            "--secure-port=0", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--use-service-account-credentials=true"])
        self._spawn("kube-scheduler", [
            deps.path("kube-scheduler"),
            f"--kubeconfig={self.path('kube-scheduler.kubeconfig')}", "--leader-elect=false",
            "--secure-port=0"])

    def _node(self) -> None:
        say("containerd and the images...")
        self._containerd()
        for _name, (ref, archive) in self.images.items():
            self.ctr("images", "import", "--base-name", ref.rsplit(":", 1)[0], archive)
        say("kubelet and kube-proxy...")
        _make_cgroups(CGROUP_ROOT)
        kubelet = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "readOnlyPort": 0, "healthzPort": 0,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}", "failCgroupV1": False,
            "failSwapOn": False, "makeIPTablesUtilChains": False,
            "containerRuntimeEndpoint": f"unix://{self.path('containerd', 'containerd.sock')}",
            "podLogsDir": self.path("pod-logs"), "imageGCHighThresholdPercent": 100,
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%"},
            "serializeImagePulls": False, "resolvConf": "/etc/resolv.conf",
        }
        with open(self.path("kubelet.yaml"), "w") as f:
            json.dump(kubelet, f, indent=1)
        self._spawn("kubelet", [
            deps.path("kubelet"), f"--config={self.path('kubelet.yaml')}",
            f"--kubeconfig={self.path('kubelet.kubeconfig')}",
            f"--root-dir={self.path('kubelet')}", f"--hostname-override={NODE}",
            f"--node-ip={NODE_IP}"])
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": self.path("kube-proxy.kubeconfig")},
            "mode": "nftables", "clusterCIDR": POD_CIDR, "hostnameOverride": NODE,
            "healthzBindAddress": "", "metricsBindAddress": "",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
        }
        with open(self.path("kube-proxy.yaml"), "w") as f:
            json.dump(proxy, f, indent=1)
        self._record("nft_tables", [["ip", "kube-proxy"], ["ip6", "kube-proxy"]])
        self._spawn("kube-proxy", [deps.path("kube-proxy"),
                                   f"--config={self.path('kube-proxy.yaml')}"])

    def _containerd(self) -> None:
        c = self.path("containerd")
        os.makedirs(c)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{c}/root"
state = "{c}/state"
[grpc]
  address = "{c}/containerd.sock"
[ttrpc]
  address = "{c}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{c}/opt"
[{cri}]
  sandbox_image = "{self.images['pause'][0]}"
  restrict_oom_score_adj = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  Root = "{c}/runc"
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{self.path('cni', 'net.d')}"
"""
        with open(os.path.join(c, "config.toml"), "w") as f:
            f.write(config)
        self._spawn("containerd", ["containerd", "--config", os.path.join(c, "config.toml")])
        self._wait(lambda: self.ctr("version", check=False).returncode == 0, 30,
                   "containerd to answer", "containerd")

    def _wait_node_ready(self) -> None:
        def ready() -> bool:
            out = self.kubectl("get", "node", NODE, "-o",
                               "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                               check=False)
            return out.stdout.strip() == "True"

        self._wait(ready, 120, f"node {NODE} to be Ready", "kubelet")
        self._wait(lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default",
                                        check=False).returncode == 0,
                   60, "the default ServiceAccount", "kube-controller-manager")

    def install_pktpath(self) -> None:
        """`helm install` of charts/pktpath with the image built here; waits for Ready."""
        ref = self.images["agent"][0]
        repository, tag = ref.rsplit(":", 1)
        say(f"helm install pktpath ({ref})...")
        self.helm("install", "pktpath", os.path.join(REPO, "charts", "pktpath"),
                  "--namespace", AGENT_NAMESPACE, "--create-namespace",
                  "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                  "--set", "image.pullPolicy=Never", "--wait", "--timeout", "180s")
        self.kubectl("rollout", "status", "daemonset/pktpath-agent", "-n", AGENT_NAMESPACE,
                     "--timeout=120s")

    # ---- down ----

    def down(self) -> None:
        """Undo everything the state file records; safe to call twice, or after a failed up."""
        state = self.state()
        if not state:
            say(f"no cluster in {self.workdir}")
            return
        start = time.monotonic()
        procs = state.get("pids", {})
        for name in ("kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager"):
            _end(procs.get(name))
        self._kill_pods()
        for name in ("containerd", "kube-apiserver", "kine"):
            _end(procs.get(name))
        for shim in set(_shim_sockets()) - set(state.get("containerd_shims_before", [])):
            _quiet("rm", "-f", shim)
        for name in sorted(set(_netns_names()) - set(state.get("netns_before", []))):
            if name.startswith("cni-"):
                _quiet("umount", f"/run/netns/{name}")
                _quiet("rm", "-f", f"/run/netns/{name}")
        for mount in reversed(_mounts_under(self.workdir)):
            _quiet("umount", "-l", mount)
        if state.get("netns_bind"):
            _quiet("umount", "/run/netns")
        for family, table in state.get("nft_tables", []):
            _quiet("nft", "delete", "table", family, table)
        for link in state.get("links", []):
            _quiet("ip", "link", "del", link)
        for key, value in state.get("sysctls", {}).items():
            try:
                _write(f"/proc/sys/{key}", value)
            except OSError as exc:
                say(f"could not restore {key}={value}: {exc}")
        _remove_cgroups(CGROUP_ROOT)
        for link in _container_log_links(self.path("pod-logs")):
            os.unlink(link)
        shutil.rmtree(self.workdir, ignore_errors=True)
        say(f"down in {time.monotonic() - start:.0f} s")

    def _kill_pods(self) -> None:
        """End every process in the pods' cgroups (the shims go with containerd's socket)."""
        for _ in range(50):
            pids = _cgroup_pids(CGROUP_ROOT) | _shim_pids(self.path("containerd"))
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        say("some pod processes did not end: " + ", ".join(map(str, sorted(pids))))

    # ---- helpers ----

    def _spawn(self, name: str, cmd: list[str], cwd: str | None = None) -> None:
        log = open(self.path("logs", f"{name}.log"), "ab")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=cwd or self.workdir, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self._record("pids", {name: proc.pid})

    def log(self, name: str, tail: int = 3000) -> str:
        try:
            with open(self.path("logs", f"{name}.log"), errors="replace") as f:
                return f.read()[-tail:]
        except OSError:
            return ""

    def _wait(self, done: Any, timeout: float, what: str, component: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            pid = self.state().get("pids", {}).get(component)
            if pid and not _alive(pid):
                break
            time.sleep(0.5)
        raise ClusterError(f"gave up waiting for {what} ({timeout:.0f} s); the end of "
                           f"{self.path('logs', component + '.log')}:\n{self.log(component)}")

    def _kubeconfig(self, name: str, token: str) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "pktpath",
            "clusters": [{"name": "pktpath", "cluster": {
                "server": f"https://{NODE_IP}:{API_PORT}",
                "certificate-authority": self.path("pki", "apiserver.crt")}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "pktpath", "context": {"cluster": "pktpath", "user": name}}],
        }
        with open(self.path(f"{name}.kubeconfig"), "w") as f:
            json.dump(config, f, indent=1)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                kubeconfig: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """kubectl as the cluster's admin (or with kubeconfig)."""
        proc = subprocess.run([deps.path("kubectl"), "--kubeconfig",
                               kubeconfig or self.admin_kubeconfig, *args],
                              input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def helm(self, *args: str) -> str:
        env = dict(os.environ, KUBECONFIG=self.admin_kubeconfig,
                   HELM_CACHE_HOME=self.path("helm", "cache"),
                   HELM_CONFIG_HOME=self.path("helm", "config"),
                   HELM_DATA_HOME=self.path("helm", "data"))
        proc = subprocess.run([deps.path("helm"), *args], capture_output=True, text=True,
                              env=env, timeout=300)
        if proc.returncode != 0:
            raise ClusterError(f"helm {' '.join(args[:2])} failed: {proc.stderr.strip()}\n"
                               + self.describe_agent())
        return proc.stdout

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ctr", "--address", self.path("containerd", "containerd.sock"),
                               "-n", "k8s.io", *args], capture_output=True, text=True,
                              timeout=300)
        if check and proc.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def describe_agent(self) -> str:
        """What the agent's pods are doing, for error messages."""
        out = self.kubectl("describe", "pods", "-n", AGENT_NAMESPACE, check=False)
        logs = self.kubectl("logs", "-n", AGENT_NAMESPACE, "daemonset/pktpath-agent",
                            "--tail=40", check=False)
        return f"{out.stdout[-3000:]}\n{logs.stdout}{logs.stderr}"


# ---- the machine ----

def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


def _quiet(*cmd: str) -> None:
    subprocess.run(cmd, capture_output=True)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def _end(pid: int | None, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after grace seconds; reaps it when it is our child."""
    if not pid or not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            _reap(pid)
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _propagation(path: str) -> str | None:
    """'shared' or 'private' for a mount point, None when path is not one."""
    proc = subprocess.run(["findmnt", "-n", "-o", "PROPAGATION", "--mountpoint", path],
                          capture_output=True, text=True)
    return proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout.split() else None


def _netns_names() -> list[str]:
    return os.listdir("/run/netns") if os.path.isdir("/run/netns") else []


def _shim_sockets() -> list[str]:
    folder = "/run/containerd/s"
    return [os.path.join(folder, s) for s in os.listdir(folder)] if os.path.isdir(folder) else []


def _shim_pids(containerd_dir: str) -> set[int]:
    """containerd-shim processes started for our containerd (their -address names it)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if cmd and b"containerd-shim" in cmd[0] and any(
                a.startswith(containerd_dir.encode()) for a in cmd):
            found.add(int(pid))
    return found


def _cgroup_dirs(root: str) -> list[str]:
    """Every cgroup folder under root in every mounted hierarchy, deepest first."""
    found = []
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        top = os.path.join("/sys/fs/cgroup", hierarchy, root)
        for folder, _dirs, _files in os.walk(top):
            found.append(folder)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def _cgroup_pids(root: str) -> set[int]:
    pids = set()
    for folder in _cgroup_dirs(root):
        try:
            with open(os.path.join(folder, "cgroup.procs")) as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


def _make_cgroups(root: str) -> None:
    """The pods' parent cgroup in every v1 hierarchy (kubelet wants it there before it starts)."""
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        top = os.path.join("/sys/fs/cgroup", hierarchy)
        if hierarchy == "unified" or not os.path.exists(os.path.join(top, "cgroup.procs")):
            continue
        os.makedirs(os.path.join(top, root), exist_ok=True)
        for inherited in ("cpuset.cpus", "cpuset.mems"):  # empty in a new cpuset cgroup
            if os.path.exists(os.path.join(top, inherited)):
                with open(os.path.join(top, inherited)) as f:
                    _write(os.path.join(top, root, inherited), f.read().strip())


def _remove_cgroups(root: str) -> None:
    for folder in _cgroup_dirs(root):
        try:
            os.rmdir(folder)
        except OSError as exc:
            say(f"could not remove cgroup {folder}: {exc}")


def _mounts_under(top: str) -> list[str]:
    """Mount points at or under top, in mount order."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == top or point.startswith(top.rstrip("/") + "/"):
                found.append(point)
    return found


def _container_log_links(logs: str) -> list[str]:
    """kubelet's /var/log/containers symlinks into our pods' log folder."""
    folder = "/var/log/containers"
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in os.listdir(folder)
            if os.readlink(os.path.join(folder, n)).startswith(logs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="realcluster", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", default=os.environ.get("PKTPATH_CLUSTER_DIR", DEFAULT_DIR),
                        help=f"where the cluster's state lives (default {DEFAULT_DIR})")
    parser.add_argument("--no-install", action="store_true",
                        help="bring the cluster up without installing pktpath")
    args = parser.parse_args(argv)
    cluster = Cluster(args.dir)
    try:
        if args.action == "up":
            cluster.up(install=not args.no_install)
            print(f"KUBECONFIG={cluster.admin_kubeconfig}")
        else:
            cluster.down()
    except ClusterError as exc:
        say(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
