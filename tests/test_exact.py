"""The exact LP reference against brute force, and its refusals."""

import itertools

import numpy as np
import pytest

from sinklabel._sizes import integer_sizes
from sinklabel.exact import objective, solve_exact

pytest.importorskip("ot")


def brute_force(S, allowed_sizes):
    n, k = S.shape
    best = None
    for labels in itertools.product(range(k), repeat=n):
        sizes = np.bincount(labels, minlength=k)
        if not allowed_sizes(sizes):
            continue
        val = objective(S, np.array(labels))
        if best is None or val < best:
            best = val
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n,k", [(6, 3), (7, 3), (8, 3), (7, 2)])
def test_matches_brute_force_including_k_not_dividing_n(seed, n, k):
    S = np.log(np.random.default_rng(seed).dirichlet(np.ones(k), size=n))
    lo, hi = n // k, -(-n // k)
    ex = solve_exact(S)
    assert ex.sizes.min() >= lo and ex.sizes.max() <= hi and ex.sizes.sum() == n
    best = brute_force(S, lambda s: s.min() >= lo and s.max() <= hi)
    assert ex.objective == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_prior_sizes_and_largest_remainder():
    S = np.log(np.random.default_rng(3).dirichlet(np.ones(3), size=7))
    ex = solve_exact(S, prior=np.array([4, 2, 1]))
    np.testing.assert_array_equal(ex.sizes, [4, 2, 1])
    assert ex.objective == pytest.approx(brute_force(S, lambda s: list(s) == [4, 2, 1]), rel=1e-12)
    # 7 * [0.5, 0.25, 0.25] = [3.5, 1.75, 1.75] -> remainders .5, .75, .75 -> [3, 2, 2]
    np.testing.assert_array_equal(integer_sizes(7, np.array([0.5, 0.25, 0.25]), 3), [3, 2, 2])
    # ties go to the lower index
    np.testing.assert_array_equal(integer_sizes(4, np.full(3, 1 / 3), 3), [2, 1, 1])
    np.testing.assert_array_equal(integer_sizes(10, None, 4), [3, 3, 2, 2])
    ex = solve_exact(S, prior=np.array([0.5, 0.25, 0.25]))
    np.testing.assert_array_equal(ex.sizes, [3, 2, 2])


def test_neginf_pairs_are_avoided_or_infeasible():
    S = np.log(np.random.default_rng(0).dirichlet(np.ones(3), size=6))
    S[0, 0] = S[1, 0] = -np.inf
    ex = solve_exact(S)
    assert ex.labels[0] != 0 and ex.labels[1] != 0
    bad = np.zeros((4, 2))
    bad[:, 0] = -np.inf
    bad[0, 0] = 0.0  # cluster 0 needs 2 points but only point 0 can go there
    with pytest.raises(ValueError, match="infeasible"):
        solve_exact(bad)


def test_iteration_cap_is_an_error_never_an_answer():
    S = np.log(np.random.default_rng(0).dirichlet(np.ones(10), size=200))
    with pytest.raises(RuntimeError, match="MAX_ITER_REACHED"):
        solve_exact(S, max_iter=2)


@pytest.mark.parametrize(
    "scores, exc, match",
    [
        (np.zeros(3), ValueError, "non-empty 2-D"),
        (np.zeros((3, 2), dtype=int), TypeError, "floating-point"),
        (np.array([[0.0, np.nan], [0.0, 0.0]]), ValueError, "NaN or \\+inf"),
    ],
)
def test_bad_input(scores, exc, match):
    with pytest.raises(exc, match=match):
        solve_exact(scores)
