"""Every bad input is refused with a message naming the argument, the rule and the value."""

import numpy as np
import pytest

import sinklabel
from sinklabel.backends import BackendNotAvailable, get_backend

S = np.log(np.random.default_rng(0).dirichlet(np.ones(4), size=50))


@pytest.mark.parametrize(
    "scores, exc, match",
    [
        (np.zeros(5), ValueError, r"`scores` must be 2-D .* got shape \(5,\)"),
        (np.zeros((2, 3, 4, 5)), ValueError, r"got shape \(2, 3, 4, 5\)"),
        (np.zeros((0, 4)), ValueError, r"`scores` is empty; got shape \(0, 4\)"),
        (np.zeros((5, 0)), ValueError, r"`scores` is empty"),
        (np.zeros((5, 2), dtype=np.int64), TypeError, r"floating-point .* got dtype int64"),
        (np.zeros((5, 2), dtype=np.complex128), TypeError, r"got dtype complex128"),
        (np.zeros((5, 2), dtype=bool), TypeError, r"got dtype bool"),
        ([[0.0, 1.0]], TypeError, r"`scores\[0\]` must be a numpy, torch or cupy array"),
        ("abc", TypeError, r"`scores` must be a numpy, torch or cupy array .* got str"),
        ([], ValueError, r"empty list"),
        ([np.zeros((4, 2)), np.zeros((5, 2))], ValueError, r"same points; got n_points \[4, 5\]"),
        ([np.zeros(4)], ValueError, r"`scores\[0\]` must be 2-D"),
        (np.zeros((3, 5)), ValueError, r"n_clusters <= n_points; got 5 clusters for 3 points"),
    ],
)
def test_bad_scores(scores, exc, match):
    with pytest.raises(exc, match=match):
        sinklabel.solve(scores, 10.0)


def test_nan_posinf_and_unreachable():
    bad = S.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"must not contain NaN; found one at \(3, 2\)"):
        sinklabel.solve(bad)
    bad = S.copy()
    bad[7, 1] = np.inf
    with pytest.raises(ValueError, match=r"must not contain \+inf; found one at \(7, 1\)"):
        sinklabel.solve(bad)
    bad = S.copy()
    bad[4, :] = -np.inf
    with pytest.raises(ValueError, match=r"row 4 is -inf for every cluster"):
        sinklabel.solve(bad)
    bad = S.copy()
    bad[:, 2] = -np.inf
    with pytest.raises(
        ValueError, match=r"column 2 is -inf for every point: that cluster cannot be reached"
    ):
        sinklabel.solve(bad)
    # an unreachable cluster is fine when the prior gives it no mass
    res = sinklabel.solve(bad, prior=np.array([1 / 3, 1 / 3, 0.0, 1 / 3]))
    assert res.sizes[2] == 0
    with pytest.raises(ValueError, match=r"`scores\[1\]` must not contain NaN"):
        sinklabel.solve([S, np.full_like(S, np.nan)])


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(lam=0), ValueError, r"`lam` must be finite and > 0; got 0.0"),
        (dict(lam=-3), ValueError, r"`lam` must be finite and > 0; got -3.0"),
        (dict(lam=np.inf), ValueError, r"`lam` must be finite"),
        (dict(lam="25"), TypeError, r"`lam` must be a real number > 0; got str"),
        (dict(lam=True), TypeError, r"`lam` must be a real number"),
        (dict(tol=0.0), ValueError, r"`tol` must be finite and > 0; got 0.0"),
        (dict(tol=None), TypeError, r"`tol` must be a real number"),
        (dict(max_iter=0), ValueError, r"`max_iter` must be >= 1; got 0"),
        (dict(max_iter=2.5), TypeError, r"`max_iter` must be an integer"),
        (dict(check_every=0), ValueError, r"`check_every` must be >= 1; got 0"),
        (dict(prior=np.array([0.5, 0.5, 0.5, -0.5])), ValueError, r"`prior` must be nonnegative"),
        (
            dict(prior=np.array([0.2, 0.2, 0.2, 0.2])),
            ValueError,
            r"`prior` must sum to 1 .* got sum 0.8",
        ),
        (
            dict(prior=np.array([10, 10, 10, 10])),
            ValueError,
            r"integer `prior` \(cluster sizes\) must sum to n_points=50; got sum 40",
        ),
        (
            dict(prior=np.ones(3) / 3),
            ValueError,
            r"`prior` must have shape \(4,\); got shape \(3,\)",
        ),
        (dict(prior=np.array([np.nan, 0.5, 0.25, 0.25])), ValueError, r"`prior` must be finite"),
        (dict(prior=np.zeros(4, dtype=complex)), TypeError, r"`prior` must be real numbers"),
        (dict(prior=np.zeros(4)), ValueError, r"`prior` must sum to 1"),
        (
            dict(weights=np.ones(49)),
            ValueError,
            r"`weights` must have shape \(50,\); got shape \(49,\)",
        ),
        (dict(weights=-np.ones(50)), ValueError, r"`weights` must be nonnegative"),
        (dict(weights=np.zeros(50)), ValueError, r"`weights` must have a positive entry"),
        (dict(weights=np.full(50, np.inf)), ValueError, r"`weights` must be finite"),
        (dict(backend="fortran"), ValueError, r"`backend` must be one of .* got 'fortran'"),
        (dict(backend=3), TypeError, r"`backend` must be a string"),
        (
            dict(init=np.zeros(3)),
            ValueError,
            r"`init` for head 0 must have shape \(4,\) .* got shape \(3,\)",
        ),
        (
            dict(init=np.array([0, np.nan, 0, 0])),
            ValueError,
            r"`init` for head 0 must not contain NaN",
        ),
        (dict(init="warm"), TypeError, r"`init` must be a previous Result"),
        (
            dict(init=[np.zeros(4), np.zeros(4)]),
            ValueError,
            r"`init` holds 2 head\(s\) but `scores` has 1",
        ),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sinklabel.solve(S, **kwargs)


def test_prior_list_must_match_heads():
    with pytest.raises(ValueError, match=r"`prior` holds 1 vectors but `scores` has 2 heads"):
        sinklabel.solve([S, S], prior=[np.ones(4) / 4])


def test_missing_backend_names_the_extra(monkeypatch):
    from sinklabel import backends

    monkeypatch.setitem(
        backends.BACKENDS, "ghost", ("sinklabel_ghost_module", "X", "ghost", "ghostlib")
    )
    with pytest.raises(BackendNotAvailable, match=r"pip install 'sinklabel\[ghost\]'"):
        get_backend("ghost")
    assert issubclass(BackendNotAvailable, ValueError)
    assert "ghost" not in sinklabel.available_backends()
