"""Print the kernel matrix (kernel x feature) from the guests' results; exit 1 when a feature
that tests/kernels/expected does not list as lacking on a kernel failed there.

Usage: python3 tests/kernels/table.py RESULTS_DIR KERNEL...
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def read_table(name: str) -> list[list[str]]:
    with open(os.path.join(HERE, name)) as table:
        return [line.split(None, 2) for line in table if line.strip() and line[0] != "#"]


def main(results: str, kernels: list[str]) -> int:
    features = [row[0] for row in read_table("features")]
    lacking = {(row[0], row[1]): row[2].strip() for row in read_table("expected")}
    width = max(len(f) for f in features) + 2
    print(f"{'feature':<{width}}" + "".join(f"{k:<12}" for k in kernels))
    regressions = []
    outcome: dict[tuple[str, str], str] = {}
    for kernel in kernels:
        try:
            with open(os.path.join(results, kernel, "results")) as f:
                lines = dict(line.split() for line in f if len(line.split()) == 2)
        except OSError:
            lines = {}
        for feature in features:
            result = lines.get(feature, "not run")
            expected_lack = lacking.get((kernel, feature))
            if result == "passed":
                outcome[kernel, feature] = "works"
            elif expected_lack:
                outcome[kernel, feature] = "lacks"
            else:
                outcome[kernel, feature] = "FAILED"
                regressions.append(f"{feature} on {kernel} ({result}; see "
                                   f"{os.path.join(results, kernel, 'pytest.log')})")
    for feature in features:
        print(f"{feature:<{width}}" + "".join(f"{outcome[k, feature]:<12}" for k in kernels))
    notes = sorted({f"{k} {f}: {why}" for (k, f), why in lacking.items() if k in kernels})
    for note in notes:
        print(f"  lacks: {note}")
    for regression in regressions:
        print(f"pktpath kernels: FAILED {regression}", file=sys.stderr)
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
