"""A PacketTrace spec, checked beyond what the CRD schema can say."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0}


class SpecError(ValueError):
    """The spec cannot be traced; the message says why, for the status condition."""


def parse_duration(text: str) -> float:
    """Seconds in a duration like ``30s``, ``200ms`` or ``2m``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise SpecError(f"{text!r} is not a duration like 30s, 200ms or 2m")
    return float(match.group(1)) * _UNIT[match.group(2)]


@dataclass(frozen=True)
class Endpoint:
    """One end of a trace: a pod (namespace/name), an IP, or (as destination) a Service."""

    pod: str | None = None
    namespace: str | None = None
    ip: str | None = None
    service: str | None = None

    def __str__(self) -> str:
        if self.service:
            return f"svc {self.namespace}/{self.service}"
        return f"{self.namespace}/{self.pod}" if self.pod else str(self.ip)


@dataclass(frozen=True)
class TraceSpec:
    """What a PacketTrace asks for."""

    source: Endpoint
    destination: Endpoint
    protocol: str = "icmp"
    port: int = 0
    probe_count: int = 0  # 0: only watch
    probe_interval: float = 1.0
    timeout: float = 30.0
    filter: str = ""  # a tcpdump expression narrowing what is traced


def _endpoint(raw: Any, default_namespace: str, what: str) -> Endpoint:
    kinds = ("pod", "ip", "service") if what == "destination" else ("pod", "ip")
    if not isinstance(raw, Mapping) or sum(bool(raw.get(k)) for k in kinds) != 1:
        raise SpecError(f"spec.{what} needs exactly one of {', '.join(kinds[:-1])} or "
                        f"{kinds[-1]}")
    if raw.get("port") and not raw.get("service"):
        raise SpecError(f"spec.{what}.port goes with service (a pod's port is spec.port)")
    if raw.get("ip"):
        try:
            ip = str(ipaddress.ip_address(str(raw["ip"])))
        except ValueError:
            raise SpecError(f"spec.{what}.ip {raw['ip']!r} is not an IP address") from None
        return Endpoint(ip=ip)
    namespace = str(raw.get("namespace") or default_namespace)
    if raw.get("service"):
        return Endpoint(service=str(raw["service"]), namespace=namespace)
    return Endpoint(pod=str(raw["pod"]), namespace=namespace)


def parse_spec(spec: Mapping[str, Any], namespace: str) -> TraceSpec:
    """The trace a spec asks for; raises SpecError with a sentence for the status."""
    protocol = str(spec.get("protocol", "icmp"))
    if protocol not in ("icmp", "tcp", "udp"):
        raise SpecError(f"spec.protocol {protocol!r} is not icmp, tcp or udp")
    port = int(spec.get("port") or 0)
    destination = spec.get("destination")
    service_port = int(destination.get("port") or 0) if isinstance(destination, Mapping) else 0
    if service_port:
        if port and port != service_port:
            raise SpecError(f"spec.port {port} and spec.destination.port {service_port} differ: "
                            "give one")
        port = service_port
    if isinstance(destination, Mapping) and destination.get("service") and protocol == "icmp":
        raise SpecError("a Service is traced with tcp or udp and its port (kube-proxy does not "
                        "forward ICMP to its endpoints)")
    if protocol == "icmp" and port:
        raise SpecError("spec.port is not allowed with icmp")
    if protocol != "icmp" and not 0 < port < 65536:
        raise SpecError(f"spec.port (1-65535) is required with {protocol}")
    probe = spec.get("probe") or {}
    count = int(probe.get("count", 0))
    if count < 0:
        raise SpecError("spec.probe.count must be positive")
    return TraceSpec(
        source=_endpoint(spec.get("source"), namespace, "source"),
        destination=_endpoint(destination, namespace, "destination"),
        protocol=protocol,
        port=port,
        probe_count=count,
        probe_interval=parse_duration(str(probe.get("interval", "1s"))),
        timeout=parse_duration(str(spec.get("timeout", "30s"))),
        filter=str(spec.get("filter") or "").strip(),
    )
