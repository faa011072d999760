"""Where the programs that `make deps` builds (deps/go-tools) are, for the tests.

pytest never builds them: a test that needs one and finds it missing fails at once under CI
(and skips elsewhere) with one sentence naming the command that builds it.
"""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(REPO, "deps", "go-tools")


def cache_dir() -> str:
    """The cache deps/build.sh fills (PKTPATH_CACHE, default /var/cache/pktpath)."""
    return os.environ.get("PKTPATH_CACHE") or "/var/cache/pktpath"


def versions() -> dict[str, str]:
    """Each listed program's version, from deps/go-tools."""
    found = {}
    with open(TABLE) as table:
        for line in table:
            fields = line.split()
            if len(fields) == 3 and not line.startswith("#"):
                found[fields[0]] = fields[1]
    return found


def path(name: str) -> str:
    """Where the listed program `name` is (or would be) in the cache."""
    return os.path.join(cache_dir(), f"{name}-{versions()[name]}", name)


def missing(*names: str) -> str | None:
    """A sentence saying which of the programs are not built and how to build them, or None."""
    absent = [f"{name} {versions()[name]}" for name in names if not os.access(path(name), os.X_OK)]
    if not absent:
        return None
    return (f"{', '.join(absent)} not found in {cache_dir()}: run `make deps` "
            "(it builds them from Go modules, about 9 minutes the first time)")
