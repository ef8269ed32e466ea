"""The up-front checks' cost (issue 13) beside one read and beside the whole solve.

200,000 x 1,000 float32 by default: ``S.min()`` as the yardstick of one read,
the numba backend's ``scan`` (the one validation pass: NaN, +inf, dead rows and columns,
and the lam limit's ``max |S|`` and the -inf flag),
``check_feasible`` for the cluster masses and for the balanced sizes, the default solve
(which includes them), and an infeasible pattern refused before any sweep.

    python benchmarks/checks_report.py [--n 200000] [--k 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine  # noqa: E402

import sinklabel  # noqa: E402
from sinklabel._feasibility import check_feasible  # noqa: E402
from sinklabel.backends import get_backend  # noqa: E402
from sinklabel.problems import make_scores  # noqa: E402


def median_time(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def report(S: np.ndarray, kind: str) -> str:
    n, k = S.shape
    r, c = np.full(k, 1 / k), np.full(n, 1 / n)
    sizes = np.full(k, n // k)
    read = median_time(S.min)
    B = get_backend("numba")
    B.scan(S[:100])  # compile
    extent = median_time(lambda: B.scan(S))
    neginf = B.scan(S).neginf
    masses = median_time(lambda: check_feasible(S, r, c, neginf=neginf))
    balanced = median_time(
        lambda: check_feasible(S, sizes, np.ones(n), hi=sizes, what="balanced sizes", neginf=neginf)
    )
    sinklabel.solve(S[: min(n, 20_000)], 25.0)  # compile the kernels outside the timing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solve = median_time(lambda: sinklabel.solve(S, 25.0), reps=1)
    return (
        f"| {kind} (-inf: {neginf}) | {read:.3f} s | {extent:.3f} s ({extent / read:.1f} reads) "
        f"| {masses:.3f} s | {balanced:.3f} s | {solve:.2f} s |"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--k", type=int, default=1_000)
    args = p.parse_args(argv)
    n, k = args.n, args.k
    print(f"{_machine.machine()}, load {_machine.load()}; {n:,} x {k:,} float32, lam 25")
    print("| scores | one read | scan | feasibility, masses | feasibility, balanced | solve |")
    print("|---|---|---|---|---|---|")
    for kind in ("realistic", "neginf"):
        print(report(make_scores(n, k, kind=kind, seed=0), kind))
    S = make_scores(n, k, seed=0)
    S[10:, 5] = -np.inf  # cluster 5 reachable by 10 points only
    start = time.perf_counter()
    try:
        sinklabel.solve(S, 25.0)
        print("infeasible pattern: not refused (a bug)")
    except ValueError as exc:
        print(f"infeasible pattern refused after {time.perf_counter() - start:.2f} s: {exc}")


if __name__ == "__main__":
    main()
