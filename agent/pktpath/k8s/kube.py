"""The few Kubernetes API calls the agent makes, with its field managers.

Every write is a server-side apply of the status subresource: each node's part under the field
manager ``pktpath-agent-<node>``, the merged view under ``pktpath-merge`` guarded by the
resourceVersion it was computed from, so concurrent agents never overwrite each other.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL, KIND = "pktpath.dev", "v1alpha1", "packettraces", "PacketTrace"
APPLY = "application/apply-patch+yaml"
MERGE_MANAGER = "pktpath-merge"

log = logging.getLogger("pktpath.agent")


class Conflict(Exception):
    """The object changed since it was read."""


@dataclass(frozen=True)
class PodInfo:
    """A pod as the agent needs it."""

    namespace: str
    name: str
    node: str | None
    ips: tuple[str, ...]

    @property
    def ref(self) -> str:
        """namespace/name"""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServiceInfo:
    """A Service as a trace needs it: its ClusterIP and ports, and the ready endpoints'
    addresses when it was read."""

    namespace: str
    name: str
    cluster_ip: str | None  # None for a headless Service
    ports: tuple[tuple[int, str], ...]  # (port, protocol in lower case)
    ready: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        """namespace/name"""
        return f"{self.namespace}/{self.name}"


def _pod_info(pod: Any) -> PodInfo:
    ips = tuple(p.ip for p in (pod.status.pod_ips or []) if p.ip) if pod.status else ()
    if not ips and pod.status and pod.status.pod_ip:
        ips = (pod.status.pod_ip,)
    return PodInfo(pod.metadata.namespace, pod.metadata.name, pod.spec.node_name, ips)


def _as_dict(obj: object) -> dict[str, Any]:
    """A custom object as the API client returns it (a dict, typed as object)."""
    if not isinstance(obj, dict):
        raise TypeError(f"expected a JSON object from the API, got {type(obj).__name__}")
    return obj


def now_rfc3339() -> str:
    """The current time as Kubernetes writes it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """A Kubernetes API client for the agent (in-cluster config, else $KUBECONFIG)."""

    def __init__(self, errors: Any = None) -> None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        self.core = client.CoreV1Api()
        self.discovery = client.DiscoveryV1Api()
        self.custom = client.CustomObjectsApi()
        self._errors = errors  # a callable counting API errors, for the metrics
        self._lock = threading.Lock()

    def _failed(self) -> None:
        if self._errors:
            self._errors()

    def get_pod(self, namespace: str, name: str) -> PodInfo | None:
        """The pod, or None when it does not exist."""
        try:
            return _pod_info(self.core.read_namespaced_pod(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            self._failed()
            raise

    def get_service(self, namespace: str, name: str) -> ServiceInfo | None:
        """The Service with its ready endpoints' addresses, or None when it does not exist."""
        try:
            svc = self.core.read_namespaced_service(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            self._failed()
            raise
        spec = svc.spec
        if spec is None:
            return ServiceInfo(namespace, name, None, ())
        ip = spec.cluster_ip if spec.cluster_ip not in (None, "", "None") else None
        ports = tuple((p.port, (p.protocol or "TCP").lower()) for p in spec.ports or [])
        slices = self.discovery.list_namespaced_endpoint_slice(
            namespace, label_selector=f"kubernetes.io/service-name={name}")
        ready = tuple(sorted({
            address for piece in slices.items for e in piece.endpoints or []
            if e.conditions is None or e.conditions.ready is not False
            for address in e.addresses or []}))
        return ServiceInfo(namespace, name, ip, ports, ready)

    def pods_on_node(self, node: str) -> list[PodInfo]:
        """The pods scheduled on node."""
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}")
        return [_pod_info(p) for p in pods.items]

    def pod_with_ip(self, ip: str) -> PodInfo | None:
        """The pod that has ip, if any."""
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"status.podIP={ip}")
        return _pod_info(pods.items[0]) if pods.items else None

    def get_trace(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The PacketTrace, or None when it is gone."""
        try:
            body = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            return _as_dict(body)
        except ApiException as exc:
            if exc.status == 404:
                return None
            self._failed()
            raise

    def apply_status(self, namespace: str, name: str, status: Mapping[str, Any], manager: str,
                     resource_version: str | None = None) -> dict[str, Any] | None:
        """Server-side apply of status fields; None when the trace is gone.

        With resource_version, raises Conflict when the object changed since then.
        """
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata,
                "status": dict(status)}
        try:
            result = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, field_manager=manager, force=True,
                _content_type=APPLY)
            return _as_dict(result)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from exc
            self._failed()
            raise

    def pod_event(self, namespace: str, name: str, reason: str, message: str,
                  kind: str = "Warning") -> None:
        """Record a Kubernetes Event on a pod (`kubectl describe pod` and `get events` show it)."""
        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}.", namespace=namespace),
            involved_object=client.V1ObjectReference(api_version="v1", kind="Pod", name=name,
                                                     namespace=namespace),
            reason=reason, message=message[:1024], type=kind,
            source=client.V1EventSource(component="pktpath-agent"),
            first_timestamp=now, last_timestamp=now, count=1)
        try:
            self.core.create_namespaced_event(namespace, event)
        except ApiException:
            self._failed()
            raise

    def event(self, trace: Mapping[str, Any], reason: str, message: str,
              kind: str = "Normal", component: str = "pktpath-agent") -> None:
        """Record a Kubernetes Event on the trace (`kubectl describe` shows it)."""
        meta = trace["metadata"]
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.",
                                         namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=KIND, name=meta["name"],
                namespace=meta["namespace"], uid=meta.get("uid")),
            reason=reason, message=message[:1024], type=kind,
            source=client.V1EventSource(component=component),
            first_timestamp=datetime.datetime.now(datetime.UTC),
            last_timestamp=datetime.datetime.now(datetime.UTC), count=1)
        try:
            self.core.create_namespaced_event(meta["namespace"], event)
        except ApiException as exc:
            self._failed()
            log.warning("could not record event %s on %s: %s", reason, meta["name"], exc.reason)
