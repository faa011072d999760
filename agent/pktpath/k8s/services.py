"""Names for Service addresses on the command line: each ClusterIP of a cluster as
``svc NAMESPACE/NAME``, read once from the cluster `--kubeconfig` points at."""

from __future__ import annotations

from pktpath.core.errors import UsageError


def service_names(kubeconfig: str) -> dict[str, str]:
    """Every ClusterIP of the cluster -> ``svc namespace/name``; UsageError when the cluster
    cannot be read."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        api = client.CoreV1Api(
            config.new_client_from_config(config_file=kubeconfig))  # type: ignore[no-untyped-call]
        services = api.list_service_for_all_namespaces(_request_timeout=10).items
    except (ConfigException, OSError) as exc:
        raise UsageError(f"--kubeconfig {kubeconfig}: {exc}") from None
    except Exception as exc:  # the API server refused or is away
        raise UsageError(f"--kubeconfig {kubeconfig}: cannot list Services "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0]}); it needs "
                         "list on services in every namespace") from None
    names = {}
    for svc in services:
        spec, meta = svc.spec, svc.metadata
        if spec is None or meta is None:
            continue
        for ip in spec.cluster_ips or [spec.cluster_ip or ""]:
            if ip and ip != "None":
                names[ip] = f"svc {meta.namespace}/{meta.name}"
    return names
