"""Shared problems for the CPU benchmark suite (``pytest benchmarks --benchmark-only``).

Sizes: ``SINKLABEL_BENCH_SIZES="20000x100,200000x1000"`` (the default). Each size's
problem is generated once per session (float32 realistic scores, seed 0), with the
floor every sweep is compared against: one parallel streaming read of the matrix.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")

from sinklabel.problems import make_scores  # noqa: E402

DEFAULT_SIZES = "20000x100,200000x1000"


def bench_sizes() -> list[tuple[int, int]]:
    spec = os.environ.get("SINKLABEL_BENCH_SIZES", DEFAULT_SIZES)
    return [tuple(int(x) for x in item.split("x")) for item in spec.split(",") if item]


def floor_seconds(S: np.ndarray, rounds: int = 9) -> float:
    """Median time of one parallel streaming read of ``S`` (numba), or of ``S.sum()``."""
    try:
        from _floor import stream_read
    except ImportError:  # no numba: numpy's single-threaded sum
        stream_read = np.sum
    stream_read(S)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        stream_read(S)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


_problems: dict = {}


@pytest.fixture(scope="session")
def problem():
    """``problem(n, k)`` -> (S float32, floor seconds), cached for the session."""

    def get(n: int, k: int):
        if (n, k) not in _problems:
            _problems.clear()  # one size in memory at a time
            S = make_scores(n, k, seed=0)
            _problems[(n, k)] = (S, floor_seconds(S))
        return _problems[(n, k)]

    return get
