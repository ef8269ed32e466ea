"""CPU time to tolerance, every installed backend beside POT and the paper's loop.

    pytest benchmarks --benchmark-only [--benchmark-json out.json]

One group per problem size (``SINKLABEL_BENCH_SIZES``, default 20000x100,200000x1000):
float32 realistic scores, lam = 25, every method run until the cluster-marginal error is
<= 1e-3 with the rows exact (see ``_methods.py``). ``extra_info`` holds the iterations,
the final error, and seconds per iteration divided by one parallel streaming read of the
float32 matrix (the floor). Warm-up rounds keep numba's JIT and torch's start-up out of
the timings; POT's float64 solvers run once per size (``sinkhorn_log`` only up to 2M
entries). ``python benchmarks/cpu_report.py`` prints the same comparison as a table.
"""

from __future__ import annotations

import pytest
from _methods import TOL, calibrate_pot, paper_loop, pot_method, sinklabel_methods
from conftest import bench_sizes

SIZES = bench_sizes()
FAST = sinklabel_methods()
_pot_iters: dict = {}


def _ids(size):
    return f"{size[0]}x{size[1]}"


def _run(benchmark, problem, size, name, fn, rounds, warmup):
    S, floor = problem(*size)
    benchmark.group = f"{size[0]} x {size[1]} float32, lam 25, tol {TOL:g}"
    n_iter, err = benchmark.pedantic(fn, args=(S,), rounds=rounds, warmup_rounds=warmup, iterations=1)
    per_iter = benchmark.stats.stats.median / max(n_iter, 1)
    benchmark.extra_info.update(
        method=name,
        iterations=int(n_iter),
        error=float(err),
        floor_seconds=floor,
        seconds_per_iteration_over_floor=per_iter / floor,
    )
    assert err <= TOL * 1.001, f"{name} stopped at error {err:.3g} > {TOL}"


@pytest.mark.parametrize("size", SIZES, ids=_ids)
@pytest.mark.parametrize("name", sorted(FAST))
def test_sinklabel(benchmark, problem, size, name):
    big = size[0] * size[1] > 50_000_000
    _run(benchmark, problem, size, name, FAST[name], rounds=3 if big else 5, warmup=1)


@pytest.mark.parametrize("size", SIZES, ids=_ids)
def test_paper_loop(benchmark, problem, size):
    _run(benchmark, problem, size, "paper loop (float64)", paper_loop, rounds=1, warmup=0)


@pytest.mark.parametrize("size", [s for s in SIZES if s[0] * s[1] <= 200_000_000], ids=_ids)
@pytest.mark.parametrize("method", ["sinkhorn", "sinkhorn_log"])
def test_pot(benchmark, problem, size, method):
    pytest.importorskip("ot")
    if method == "sinkhorn_log" and size[0] * size[1] > 2_000_000:
        pytest.skip("POT sinkhorn_log: 50-300x a kernel sweep per iteration; small sizes only")
    S, _ = problem(*size)
    key = (size, method)
    if key not in _pot_iters:  # untimed: the iterations POT needs for the same tolerance
        start, _ = paper_loop(S)
        _pot_iters[key] = calibrate_pot(method, S, start)
    fn = pot_method(method, _pot_iters[key])
    _run(benchmark, problem, size, f"POT {method} (float64)", fn, rounds=1, warmup=0)
