"""Time to tolerance: every installed backend beside POT and the paper's loop, size by size.

    pytest benchmarks --benchmark-only [--bench-full] [--bench-sizes NxK,...]
                      [--benchmark-json out.json]

One pytest-benchmark group per problem size: float32 realistic scores, lam = 25, every
method run until the cluster-marginal error is <= 1e-3 with the rows exact (see
``_methods.py``). ``extra_info`` holds the iterations, the final error, the seconds of one
streaming read of the matrix on the method's device and the reads per sweep (seconds per
iteration over that read). Fast methods first run once on a small problem (numba's JIT,
thread pools, CUDA context), then once untimed at the size, whose time sets 1-5 timed
rounds (3 with ``--bench-full``); the paper loop and POT run once. POT starts from the
paper loop's iteration count (the same iteration) and continues by tens until it meets
the tolerance, all timed (``_methods.pot_to_tol``).
A summary table is printed at the end (``conftest.py``).
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("pytest_benchmark", reason="pip install 'sinklabel[bench]'")

from _methods import LAM, TOL, device_methods, paper_loop, pot_to_tol, sinklabel_methods  # noqa: E402
from _suite import KINDS, NAMES, Row, rounds_for  # noqa: E402

from sinklabel.problems import make_scores  # noqa: E402

CPU = sinklabel_methods()
GPU = device_methods()
_on_device: dict = {}
_compiled: set = set()
_compiled_on: dict = {}


def _small():
    """The problem each fast method first runs on: large enough for the parallel paths
    (numba sweeps matrices under 2M entries on one thread), 15 MiB."""
    if "S" not in _compiled_on:
        _compiled_on["S"] = make_scores(40000, 100, seed=1)
    return _compiled_on["S"]


def _device_copy(method, size, S):
    """The scores on the GPU, once per size and backend; (copy, seconds of one read there)."""
    key = (method.backend, size)
    if key not in _on_device:
        _on_device.clear()  # one copy on the device at a time
        S_dev = method.to_device(S)
        _on_device[key] = (S_dev, method.read_seconds(S_dev))
    return _on_device[key]


def test_time_to_tol(benchmark, problem, paper_iterations, record, request, case):
    size, mid = case
    name, kind = NAMES[mid], KINDS[mid]
    full = request.config.getoption("--bench-full")
    n, k = size
    benchmark.group = f"{n} x {k} float32, lam {LAM:g}, tol {TOL:g}"
    S, read = problem(n, k)
    if kind == "cpu":
        if name not in CPU:
            pytest.skip(f"{name}: backend not installed")
        fn, args = CPU[name], (S,)
    elif kind == "gpu":
        fn = GPU[name]
        if fn.reason:
            pytest.skip(f"{name}: {fn.reason}")
        S_dev, read = _device_copy(fn, size, S)
        args = (S_dev,)
    elif kind == "paper":
        fn, args = paper_loop, (S,)
    else:
        pytest.importorskip("ot", reason="POT is not installed (pip install pot)")
        if size not in paper_iterations:  # the paper loop's benchmark was deselected: count untimed
            paper_iterations[size] = paper_loop(S)[0]
        fn, args = pot_to_tol(mid.split("-", 1)[1], paper_iterations[size]), (S,)

    if kind in ("cpu", "gpu"):
        if name not in _compiled:  # JIT, CUDA context, Triton: paid on a small problem, untimed
            fn(fn.to_device(_small()) if kind == "gpu" else _small())
            _compiled.add(name)
        t = time.perf_counter()  # one untimed warm-up at this size sets the number of rounds
        fn(*args)
        warm = time.perf_counter() - t
        rounds = rounds_for(warm, full)
        benchmark.extra_info["warmup_seconds"] = warm
    else:
        rounds = 1
    n_iter, err = benchmark.pedantic(fn, args=args, rounds=rounds, warmup_rounds=0, iterations=1)
    if kind == "paper":
        paper_iterations[size] = n_iter
    benchmark.extra_info.update(method=name, iterations=int(n_iter), error=float(err), read_seconds=read)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None:
        row = Row(size, mid, stats.stats.median, rounds, int(n_iter), float(err), read)
        benchmark.extra_info["reads_per_sweep"] = row.reads_per_sweep
        record(row)
    assert err <= TOL * 1.001, f"{name} stopped at error {err:.3g} > {TOL}"
