# The pktpath agent image (manifests/daemonset.yaml, charts/pktpath).
#   docker build -t ghcr.io/pktpath/agent:0.1.0 .
# The BPF object ships inside the package: no compiler or kernel headers in the image.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libbpf1 libpcap0.8 \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY agent /src/agent
RUN pip install --no-cache-dir /src && rm -rf /src
ENV PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["pktpath"]
CMD ["agent"]
