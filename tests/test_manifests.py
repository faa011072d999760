"""The manifests and the Helm chart: the same objects, valid for the API server, least privilege."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
import yaml
from conftest import REPO

import deps


def documents(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for name in ("rbac.yaml", "daemonset.yaml"):
        with open(os.path.join(REPO, "manifests", name)) as f:
            found.update(documents(f.read()))
    return found


def test_chart_crd_is_the_manifest_crd() -> None:
    with open(os.path.join(REPO, "manifests", "crd.yaml")) as a, \
         open(os.path.join(REPO, "charts", "pktpath", "crds", "packettraces.yaml")) as b:
        assert a.read() == b.read(), "copy manifests/crd.yaml to charts/pktpath/crds/"


def test_chart_renders_what_the_manifests_hold(cluster: Any) -> None:
    chart = os.path.join(REPO, "charts", "pktpath")
    rendered = subprocess.run([deps.path("helm"), "template", "pktpath", chart,
                               "--namespace", "pktpath-system"], capture_output=True, text=True,
                              check=True).stdout
    from_chart = documents(rendered)
    from_manifests = {k: v for k, v in manifests().items() if k[0] != "Namespace"}
    assert from_chart == from_manifests


def test_manifests_are_valid_for_the_api_server(cluster: Any) -> None:
    for name in ("crd.yaml", "rbac.yaml", "daemonset.yaml"):
        proc = cluster.kubectl("apply", "--dry-run=server", "-f",
                               os.path.join(REPO, "manifests", name), check=False)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("verb, resource, allowed", [
    ("list", "pods", True),
    ("watch", "nodes", True),
    ("watch", "packettraces.pktpath.dev", True),
    ("patch", "packettraces.pktpath.dev/status", True),
    ("create", "events", True),
    ("get", "secrets", False),
    ("list", "configmaps", False),
    ("create", "pods", False),
    ("delete", "pods", False),
    ("patch", "packettraces.pktpath.dev", False),
    ("create", "packettraces.pktpath.dev", False),
    ("delete", "packettraces.pktpath.dev", False),
    ("update", "nodes", False),
])
def test_the_agent_may_do_only_what_it_needs(cluster: Any, verb: str, resource: str,
                                             allowed: bool) -> None:
    if "/" in resource:
        resource, sub = resource.split("/")
        args = [verb, resource, "--subresource", sub]
    else:
        args = [verb, resource]
    proc = cluster.kubectl("auth", "can-i", *args, "-A", kubeconfig=cluster.agent_kubeconfig,
                           check=False)
    assert proc.stdout.strip() == ("yes" if allowed else "no"), proc.stderr
