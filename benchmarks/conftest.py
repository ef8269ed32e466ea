"""The pytest-benchmark suite: options, shared problems, and the summary printed at the end.

    pytest benchmarks --benchmark-only                  # quick: one moderate size (make bench)
    pytest benchmarks --benchmark-only --bench-full     # RESULTS.md's sizes, POT sinkhorn_log
    pytest benchmarks --benchmark-only --bench-sizes 100000x1000[,...]

``SINKLABEL_BENCH_SIZES`` is read when ``--bench-sizes`` is not given. Each size's problem
is generated once (float32 realistic scores, seed 0) with the floor every sweep is
compared against: one parallel streaming read of the matrix. The plan and the summary's
format live in ``_suite.py``; the methods in ``_methods.py``.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from _suite import Row, case_id, plan, summary_lines

ROWS = pytest.StashKey[list]()


def pytest_addoption(parser):
    group = parser.getgroup("sinklabel benchmarks")
    group.addoption(
        "--bench-full",
        action="store_true",
        default=False,
        help="the comparison of benchmarks/RESULTS.md: 20000x100 and 200000x1000, POT sinkhorn_log "
        "at the small size, 3 rounds per fast method (about 15-25 minutes on 2 cores)",
    )
    group.addoption(
        "--bench-sizes",
        default=None,
        metavar="NxK[,NxK...]",
        help="problem sizes instead of the mode's (default: $SINKLABEL_BENCH_SIZES, else the mode's)",
    )


def bench_full(config) -> bool:
    return bool(config.getoption("--bench-full", default=False))


def bench_cases(config):
    sizes = config.getoption("--bench-sizes", default=None) or os.environ.get("SINKLABEL_BENCH_SIZES")
    try:
        return plan(bench_full(config), sizes)
    except ValueError as exc:
        raise pytest.UsageError(f"--bench-sizes / SINKLABEL_BENCH_SIZES: {exc}") from None


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = bench_cases(metafunc.config)
        metafunc.parametrize("case", cases, ids=[case_id(*c) for c in cases])


def pytest_configure(config):
    bench_cases(config)  # a bad --bench-sizes stops here, with the reason, before collection
    config.stash[ROWS] = []


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
    from sinklabel.problems import make_scores

    def get(n: int, k: int):
        if (n, k) not in _problems:
            _problems.clear()  # one size in memory at a time (the cases run size by size)
            S = make_scores(n, k, seed=0)
            _problems[(n, k)] = (S, floor_seconds(S))
        return _problems[(n, k)]

    return get


@pytest.fixture(scope="session")
def paper_iterations():
    """Size -> the paper loop's iterations, filled by its benchmark (POT starts there)."""
    return {}


@pytest.fixture
def record(request):
    """``record(Row)``: keep a measurement for the summary."""
    return request.config.stash[ROWS].append


@pytest.hookimpl(optionalhook=True)  # a pytest-benchmark hook: pytest-benchmark may be absent
def pytest_benchmark_update_machine_info(config, machine_info):
    from _machine import machine

    machine_info["sinklabel"] = {"machine": machine(), "mode": "full" if bench_full(config) else "quick"}


def _skipped(terminalreporter) -> list[tuple[str, str]]:
    out = []
    for rep in terminalreporter.stats.get("skipped", []):
        if "[" not in rep.nodeid or "benchmarks/" not in rep.nodeid.replace("\\", "/"):
            continue
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        out.append((rep.nodeid.split("[", 1)[1].rstrip("]"), reason.removeprefix("Skipped: ")))
    return out


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    rows: list[Row] = config.stash.get(ROWS, [])
    skipped = _skipped(terminalreporter)
    if not rows and not skipped:
        return
    from _machine import load, machine
    from _methods import LAM, TOL

    mode = "full (--bench-full)" if bench_full(config) else "quick (add --bench-full for RESULTS.md's sizes)"
    header = f"{mode}; {machine()}; load average {load()}"
    terminalreporter.write_sep("=", "sinklabel: time to tolerance")
    for line in summary_lines(rows, LAM, TOL, header, skipped):
        terminalreporter.write_line(line)
