"""The edges of issue 13 outside the command line: feasibility of -inf patterns, lam too large
for the scores, probabilities passed as scores, big-endian input, the Result's repr, equality
and hash, the lazy submodules and the library's silent logging."""

import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest

import sinklabel
from sinklabel._feasibility import check_feasible, has_neginf
from sinklabel._sizes import integer_sizes
from sinklabel._validate import (
    LAM_SCALE_LIMIT,
    check_lam_scale,
    looks_like_probabilities,
)
from sinklabel.problems import make_scores

WIRING = "lead wires into the driver"

# -- feasibility of the -inf pattern (item 7) ------------------------------------------------


def _lp_feasible(M, lo, hi, c):
    """Whether a plan on the allowed pairs ``M`` has point masses c and cluster masses in
    [lo, hi]: the LP itself (scipy's HiGHS), the reference for check_feasible."""
    linprog = pytest.importorskip("scipy.optimize").linprog
    n, k = M.shape
    idx = np.argwhere(M)
    e = len(idx)
    a_eq = np.zeros((n, e))
    a_eq[idx[:, 0], np.arange(e)] = 1
    a_ub = np.zeros((2 * k, e))
    a_ub[idx[:, 1], np.arange(e)] = 1
    a_ub[k + idx[:, 1], np.arange(e)] = -1
    res = linprog(np.zeros(e), A_ub=a_ub, b_ub=np.r_[hi, -lo], A_eq=a_eq, b_eq=c, method="highs")
    return res.status == 0


def _violated(M, message, lo, c):
    """The cluster set named in ``message`` really violates Hall's condition."""
    import re

    found = re.search(r"cluster\(s\) \[([\d, ]+)\]|cluster\(s\) (\d+) need|cluster (\d+) needs", message)
    assert found, message
    A = [int(x) for x in next(g for g in found.groups() if g).split(",")]
    reach = M[:, A].any(axis=1)
    return c[reach].sum() < lo[A].sum() - 1e-12


def test_check_feasible_agrees_with_the_lp_on_random_patterns():
    rng = np.random.default_rng(0)
    infeasible = checked = 0
    for trial in range(900):
        n = int(rng.integers(2, 25))
        k = int(rng.integers(1, min(n, 8) + 1))
        M = rng.random((n, k)) < rng.uniform(0.05, 0.6)
        M[np.arange(n), rng.integers(0, k, n)] = True  # no all -inf row (refused earlier)
        S = np.where(M, rng.standard_normal((n, k)), -np.inf)
        mode = trial % 3
        if mode == 0:  # Sinkhorn masses: 1/N per point, the equipartition
            lo = hi = np.full(k, 1 / k)
            c = np.full(n, 1 / n)
        elif mode == 1:  # balanced labels: integer sizes
            lo = hi = integer_sizes(n, None, k).astype(float)
            c = np.ones(n)
        else:  # K not dividing N: sizes N // K or N // K + 1, the optimiser's choice
            lo = np.full(k, n // k, dtype=float)
            hi = lo + (n % k > 0)
            c = np.ones(n)
        want = _lp_feasible(M, lo, hi, c)
        checked += 1
        infeasible += not want
        if want:
            check_feasible(S, lo, c, hi=hi)
        else:
            with pytest.raises(ValueError, match="the -inf entries admit no plan") as info:
                check_feasible(S, lo, c, hi=hi)
            if mode != 2:
                assert _violated(M, str(info.value), lo, c), str(info.value)
    assert infeasible > 50 and checked - infeasible > 50  # both kinds were exercised


@pytest.mark.parametrize("seed", [0, 1])
def test_check_feasible_accepts_large_feasible_patterns(seed):
    # every point keeps its preferred cluster, 30 % of the pairs are -inf: feasible. The
    # augmenting moves' rounding (3e-14 of the total) once read as a missing point here
    n, k = 100_000, 50
    S = make_scores(n, k, kind="neginf", seed=seed)
    check_feasible(S, np.full(k, 1 / k), np.full(n, 1 / n), neginf=True)


def test_check_feasible_names_the_cluster_and_its_reach():
    S = make_scores(20_000, 100, seed=0)
    S[:, 5] = -np.inf
    S[:10, 5] = 0.0
    with pytest.raises(
        ValueError,
        match=r"`scores`: the -inf entries admit no plan with the cluster masses: cluster 5 needs "
        r"200 point\(s\) but only 10 point\(s\) can reach it",
    ):
        check_feasible(S, np.full(100, 0.01), np.full(20_000, 1 / 20_000))


def test_check_feasible_names_a_set_of_clusters():
    S = make_scores(2000, 10, seed=0)
    S[:300, 3:] = -np.inf  # 300 points confined to clusters 0-2 (room for 600): feasible
    check_feasible(S, np.full(10, 0.1), np.full(2000, 1 / 2000))
    S[:700, 3:] = -np.inf  # 700 confined there: clusters 3-9 need 1400, 1300 reach them
    with pytest.raises(
        ValueError,
        match=r"cluster\(s\) \[3, 4, 5, 6, 7, 8, 9\] \(7 cluster\(s\)\) need 1400 point\(s\) but "
        r"only 1300 point\(s\) can reach them",
    ):
        check_feasible(S, np.full(10, 200.0), np.ones(2000), what="balanced sizes")


def test_check_feasible_zero_mass_clusters_and_stranded_points():
    S = np.zeros((4, 3))
    S[0, :2] = -np.inf  # point 0 may only join cluster 2
    lo = np.array([0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"point 0 has finite scores only for clusters whose"):
        check_feasible(S, lo, np.full(4, 0.25))
    check_feasible(S, np.array([0.25, 0.25, 0.5]), np.full(4, 0.25))


def test_has_neginf_and_the_no_neginf_path_reads_once(monkeypatch):
    S = make_scores(3000, 20, seed=1)
    assert not has_neginf(S)
    S[2999, 19] = -np.inf
    assert has_neginf(S)
    # without -inf the check is the min-reduction pass and nothing else
    import sinklabel._feasibility as feas

    monkeypatch.setattr(feas, "_Problem", None)  # would fail if reached
    check_feasible(make_scores(3000, 20, seed=1), np.full(20, 0.05), np.full(3000, 1 / 3000))
    check_feasible(S, np.full(20, 0.05), np.full(3000, 1 / 3000), neginf=False)


def test_has_neginf_torch_half():
    torch = pytest.importorskip("torch")
    S = torch.zeros(5, 3, dtype=torch.float16)
    assert not has_neginf(S)
    S[4, 2] = float("-inf")
    assert has_neginf(S)
    with pytest.raises(ValueError, match="cluster 2 needs"):
        S[:, 2] = float("-inf")
        S[0, 2] = 0
        check_feasible(S, np.full(3, 1 / 3), np.full(5, 0.2))


def test_solve_refuses_an_infeasible_pattern_before_any_sweep():
    S = make_scores(2000, 20, seed=0)
    S[:, 5] = -np.inf
    S[:10, 5] = 0.0  # 10 points may join cluster 5, which needs 100
    with pytest.raises(ValueError, match=r"cluster 5 needs 100 point\(s\) but only 10"):
        sinklabel.solve(S, 25.0, max_iter=2000)


def _rounding_trap():
    """Masses that admit a plan whose rounded integer sizes do not: clusters 0 and 1 need
    10.5 points each (21 reach them), largest-remainder rounding gives both 11."""
    S = make_scores(100, 4, seed=0).astype(np.float64)
    S[21:, :2] = -np.inf
    prior = np.array([0.105, 0.105, 0.395, 0.395])
    return S, prior


def test_check_feasible_integer_sizes_stricter_than_masses():
    S, prior = _rounding_trap()
    check_feasible(S, prior, np.full(100, 0.01))  # the Sinkhorn masses: a plan exists
    sizes = integer_sizes(100, prior, 4)
    assert list(sizes) == [11, 11, 39, 39]
    with pytest.raises(
        ValueError,
        match=r"admit no plan with the balanced sizes: cluster\(s\) \[0, 1\] \(2 cluster\(s\)\) "
        r"need 22 point\(s\) but only 21 point\(s\) can reach them",
    ):
        check_feasible(S, sizes, np.ones(100), what="balanced sizes")


def test_solve_refuses_infeasible_balanced_sizes():
    S, prior = _rounding_trap()
    with pytest.raises(ValueError, match=r"admit no plan with the balanced sizes"):
        sinklabel.solve(S, 25.0, prior=prior, balanced=True)


# -- lam too large for the scores (item 8) ---------------------------------------------------


def test_check_lam_scale_message_and_bound():
    S = make_scores(300, 5, seed=0)
    m = float(np.abs(S).max())
    check_lam_scale(0.99 * LAM_SCALE_LIMIT / m, m)
    with pytest.raises(
        ValueError,
        match=r"`lam` = 1e\+308 is too large for `scores`: lam \* max\|S\| = .* the largest usable "
        r"lam for these scores is",
    ):
        check_lam_scale(1e308, m)
    # through the solve: the scan's extent (tested against numpy in test_conformance) sets it
    with pytest.raises(ValueError, match=r"the largest usable lam for these scores is"):
        sinklabel.solve(S, 1.01 * LAM_SCALE_LIMIT / m)


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lam_at_the_limit_is_finite(backend, dtype):
    """The bound is safe: at 0.99 of it every backend returns finite potentials, no warning."""
    if backend not in sinklabel.available_backends():
        pytest.skip(f"{backend} not installed")
    S = make_scores(300, 5, seed=0, kind="neginf", dtype=dtype)
    lam = 0.99 * LAM_SCALE_LIMIT / float(np.abs(S[np.isfinite(S)]).max())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        res = sinklabel.solve(S, lam, backend=backend, max_iter=50)
    assert np.isfinite(np.asarray(res.log_u)).all() and not np.isnan(np.asarray(res.log_v)).any()


@pytest.mark.parametrize(
    "scale, lam", [(1.0, 1e308), (1e300, 25.0), (1.0, 1e36)], ids=["lam1e308", "scores1e300", "lam1e36"]
)
def test_solve_refuses_lam_too_large(scale, lam):
    S = make_scores(300, 5, seed=0).astype(np.float64) * scale
    with pytest.raises(ValueError, match=r"the largest usable lam for these scores is"):
        sinklabel.solve(S, lam)


# -- probabilities passed as scores (item 9) --------------------------------------------------


def test_probabilities_warn_once():
    S = make_scores(2000, 10, seed=0)
    with pytest.warns(UserWarning, match=r"`scores` look like probabilities.*pass np.log\(p\)") as rec:
        sinklabel.solve(np.exp(S), 10.0)
    assert len([w for w in rec if "probabilities" in str(w.message)]) == 1
    with pytest.warns(UserWarning, match=r"`scores` heads \[1\] look like probabilities") as rec:
        sinklabel.solve([S, np.exp(S)], 10.0)
    assert len([w for w in rec if "probabilities" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinklabel.solve(S, 10.0)  # log-probabilities: silent
    assert not looks_like_probabilities(S)
    assert not looks_like_probabilities(np.exp(S) * 0.5)  # rows do not sum to 1
    assert not looks_like_probabilities(np.zeros((4, 1)))  # one cluster: log p = 0 is valid


# -- big-endian scores (item 5, API) ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_big_endian_scores(dtype):
    S = make_scores(400, 5, seed=2)
    big = S.astype(dtype)
    native = big.astype(big.dtype.newbyteorder("="))
    res = sinklabel.solve(big, 10.0)
    np.testing.assert_array_equal(res.labels, sinklabel.solve(native, 10.0).labels)
    assert sinklabel.solve([S.astype(dtype)] * 2, 10.0).labels.shape == (2, 400)
    with pytest.raises(TypeError, match=r"got dtype int32"):
        sinklabel.solve(np.zeros((5, 2), dtype=">i4"))


# -- the Result (item 11) --------------------------------------------------------------------


def test_result_repr_equality_hash():
    S = make_scores(300, 5, seed=0)
    res = sinklabel.solve(S, 10.0)
    text = repr(res)
    assert len(text) < 400, text
    for part in ("labels shape=(300,)", "n_iter=", "converged=True", "sizes=60..60", "backend="):
        assert part in text
    assert len(repr(res.heads[0])) < 400 and "sizes=60..60" in repr(res.heads[0])
    other = sinklabel.solve(S, 10.0)
    assert res == res and res != other  # identity
    assert hash(res) == hash(res) and len({res, res, other}) == 2
    assert res.heads[0] == res.heads[0] and hash(res.heads[0]) == hash(res.heads[0])
    multi = sinklabel.solve([S, S[:, :3]], 10.0)
    assert "n_clusters=(5, 3)" in repr(multi) and "labels shape=(2, 300)" in repr(multi)
    assert "head 'a'" in multi.report(["a", "b"])


def test_submodules_reachable_and_lazy():
    code = (
        "import sys, sinklabel; "
        "assert 'ot' not in sys.modules and 'torch' not in sys.modules; "
        "assert 'sinklabel.exact' not in sys.modules; "
        "f = sinklabel.exact.solve_exact; p = sinklabel.problems.make_scores; "
        "assert 'ot' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        sinklabel.nope  # noqa: B018


def test_library_logging_is_silent_unless_configured():
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("sinklabel").handlers)
    code = "import logging, sinklabel; logging.getLogger('sinklabel').warning('a message nobody configured')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr


# -- packaging: one version rule, an SPDX license (item 13) ---------------------------------


def test_version_rule_and_license_are_consistent():
    import re
    from importlib import metadata
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # an SPDX expression, not the deprecated table
    assert (root / "LICENSE").read_text().startswith("MIT License")
    floor = project["requires-python"]
    assert floor == ">=3.10"
    makefile = (root / "Makefile").read_text()
    pin = re.search(r"^TORCH \?= torch==([\d.]+)$", makefile, re.M).group(1)
    readme = (root / "README.md").read_text()
    assert f"torch=={pin}" in readme and "Python ≥ 3.10" in readme
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
    assert "sys.version_info < (3, 10)" in makefile
    try:
        torch_meta = metadata.metadata("torch")
    except metadata.PackageNotFoundError:
        pytest.skip("torch not installed")
    if torch_meta["Version"].split("+")[0] == pin:
        # the pinned torch's own floor is the project's
        assert torch_meta["Requires-Python"] == floor


@pytest.mark.parametrize(
    "n,balanced,prior,checks",
    [
        (2000, True, None, ["balanced sizes"]),  # K divides N: the masses' check is the sizes' / N
        (2000, False, None, ["cluster masses"]),
        (2003, True, None, ["cluster masses", "balanced sizes"]),  # sizes N // K or N // K + 1
        (2000, True, "probability", ["cluster masses", "balanced sizes"]),  # r * N not integer
    ],
)
def test_feasibility_is_checked_once_where_the_two_checks_coincide(n, balanced, prior, checks, monkeypatch):
    from sinklabel import _driver

    seen = []
    real = _driver.check_feasible

    def spy(S, lo, c, **kw):
        seen.append(kw.get("what", "cluster masses"))
        return real(S, lo, c, **kw)

    monkeypatch.setattr(_driver, "check_feasible", spy)
    S = make_scores(n, 10, kind="neginf", seed=3)
    p = None if prior is None else np.linspace(1.0, 2.0, 10) / np.linspace(1.0, 2.0, 10).sum()
    res = sinklabel.solve(S, 25.0, prior=p, balanced=balanced)
    assert seen == checks and res.converged


def test_the_one_feasibility_check_still_refuses_when_k_divides_n():
    S = make_scores(2000, 10, kind="neginf", seed=3)
    S[:, :2] = -np.inf
    S[:300, :2] = 0.0  # clusters 0-1 need 400 points, 300 reach them
    with pytest.raises(
        ValueError,
        match=r"admit no plan with the balanced sizes: cluster\(s\) \[0, 1\] \(2 cluster\(s\)\) "
        r"need 400 point\(s\) but only 300 point\(s\) can reach them",
    ):
        sinklabel.solve(S, 25.0)


@pytest.mark.parametrize("seed", range(6))
def test_feasibility_pass_compiled_is_the_numpy_pass(seed, monkeypatch):
    pytest.importorskip("numba")
    from sinklabel import _feasibility

    rng = np.random.default_rng(seed)
    n, k = (3000, 13) if seed % 2 else (700, 64)  # K not / a multiple of 8
    S = rng.standard_normal((n, k)).astype(np.float32 if seed < 3 else np.float64)
    S[rng.random((n, k)) < 0.6] = -np.inf
    S[:5] = -np.inf
    S[:5, 0] = 1.0  # rows that reach cluster 0 only: stranded where it is closed
    hi = np.full(k, 1.0)
    if seed % 3 == 0:
        hi[0] = 0.0
    c = np.full(n, 1.0) if seed % 2 else rng.random(n)
    c[7] = 0.0
    monkeypatch.setattr(_feasibility, "_compiled_pattern", lambda S: None)
    ref = _feasibility._Problem(S, hi, hi, c, "scores", "sizes")
    monkeypatch.undo()
    assert _feasibility._compiled_pattern(S) is not None
    got = _feasibility._Problem(S, hi, hi, c, "scores", "sizes")
    np.testing.assert_array_equal(got.bits, ref.bits)
    np.testing.assert_array_equal(got.assign, ref.assign)
    np.testing.assert_allclose(got.reach, ref.reach, rtol=1e-12, atol=0)
    assert got.stranded == ref.stranded[: len(got.stranded)] and bool(got.stranded) == bool(ref.stranded)
    assert (ref.stranded[:1] == [0]) == (seed % 3 == 0)  # rows 0-4 reach the closed cluster only
