import numpy as np
import pytest

from sinklabel.problems import make_scores


def plan_from(S, lam, log_u, log_v):
    """The transport plan in float64 from potentials (the result's definition)."""
    with np.errstate(invalid="ignore"):
        X = lam * np.asarray(S, dtype=np.float64) + np.asarray(log_u)[:, None] + np.asarray(log_v)[None, :]
    return np.exp(X)


def assert_marginals(S, lam, head, tol, c=None, r=None, rtol_rows=1e-4):
    """Rows of the reported plan match c and columns r within tol (relative)."""
    n, k = np.shape(S)
    c = np.full(n, 1 / n) if c is None else c
    r = np.full(k, 1 / k) if r is None else r
    Q = plan_from(S, lam, head.log_u, head.log_v)
    assert np.isfinite(Q).all()
    np.testing.assert_allclose(Q.sum(1), c, rtol=rtol_rows, atol=1e-12)
    act = r > 0
    col_err = np.max(np.abs(Q.sum(0)[act] / r[act] - 1))
    assert col_err <= tol * 1.05 + 1e-5, (col_err, tol)
    assert abs(col_err - head.error) <= 1e-3 + 0.05 * head.error


@pytest.fixture
def realistic():
    return make_scores(2000, 20, seed=7)
