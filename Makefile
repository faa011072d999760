# pktpath developer targets. `sudo make deps test` on a fresh Debian machine runs everything.
PYTHON ?= python3
APT_PACKAGES := clang llvm libbpf-dev libbpf1 libpcap0.8 bpftool make gcc iproute2 iputils-ping tmux tshark \
	iptables nftables util-linux libcap2-bin openssl

.PHONY: deps bpf test lint bench bench-deps

deps:  ## install what building and testing need (Debian, as root)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES)
	$(PYTHON) -m pip install -q --root-user-action=ignore -e '.[test]'

bpf:  ## rebuild the shipped BPF object from bpf/
	$(MAKE) -C bpf

lint:
	ruff check .
	mypy

test: lint  ## the whole suite: shipped object, lint, types, unit and end-to-end tests
	$(MAKE) -C bpf check
	$(PYTHON) -m pytest -ra

bench:  ## the benchmark suite (see bench/suite.py --help; peers need make bench-deps)
	$(PYTHON) bench/suite.py --rounds 5 --seconds 2

bench-deps:  ## the peers the suite compares with
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bpftrace linux-perf
