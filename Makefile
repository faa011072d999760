# pktpath developer targets. `sudo make deps test` on a fresh Debian machine runs everything.
# `make deps` installs and builds all the tests need (pytest never builds): Debian packages,
# the Python package with its test tools, and the programs of deps/go-tools (deps/build.sh,
# cached in $PKTPATH_CACHE, default /var/cache/pktpath).
PYTHON ?= python3
APT_PACKAGES := clang llvm libbpf-dev libbpf1 libpcap0.8 bpftool make gcc iproute2 iputils-ping tmux tshark \
	iptables nftables util-linux libcap2-bin openssl \
	qemu-system-x86 busybox-static kmod \
	containerd runc containernetworking-plugins mmdebstrap umoci

.PHONY: deps deps-packages deps-tools deps-images deps-kernels bpf test kernels lint bench \
	bench-deps cluster cluster-down

deps: deps-packages deps-tools deps-images deps-kernels  ## install and build what the tests need (Debian, root)

deps-packages:
	@echo "pktpath deps: Debian packages and the Python package..." >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null
	$(PYTHON) -m pip install -q --root-user-action=ignore -e '.[test]'

deps-tools:  ## build the programs of deps/go-tools into $PKTPATH_CACHE (minutes the first time)
	bash deps/build.sh

deps-images:  ## the agent, workload and pause images, without a registry ($PKTPATH_CACHE/images)
	bash deps/images.sh >/dev/null

deps-kernels:  ## fetch the kernels of deps/kernels into $PKTPATH_CACHE/kernels
	bash deps/kernels.sh

bpf:  ## rebuild the shipped BPF object from bpf/
	$(MAKE) -C bpf

lint:
	ruff check .
	mypy

test: lint  ## the whole suite: shipped object, lint, types, unit and end-to-end tests
	$(MAKE) -C bpf check
	$(PYTHON) -m pytest -ra

kernels:  ## the kernel matrix: each kernel of deps/kernels booted under QEMU, features tested
	bash tests/kernels/matrix.sh

bench:  ## the benchmark suite (see bench/suite.py --help; peers need make bench-deps)
	$(PYTHON) bench/suite.py --rounds 5 --seconds 2

bench-deps:  ## the peers the suite compares with
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bpftrace linux-perf iperf3

cluster:  ## a real one-node cluster with pktpath installed by helm; prints KUBECONFIG=... last
	@$(PYTHON) tests/realcluster.py up

cluster-down:  ## remove everything `make cluster` set up
	@$(PYTHON) tests/realcluster.py down
