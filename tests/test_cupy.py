"""The cupy backend: cupy arrays in and out, the fused CUDA sweep, no torch needed.

Everything but the first test needs cupy and a CUDA device (``gpu`` marker): they skip
cleanly without them. The conformance tests (tests/test_conformance.py) cover cupy too.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sinklabel
from sinklabel.backends import BackendNotAvailable, get_backend
from sinklabel.problems import make_scores

ROOT = Path(__file__).resolve().parents[1]


def _cupy_backend():
    try:
        return get_backend("cupy")
    except BackendNotAvailable as exc:
        pytest.skip(str(exc))


def test_cupy_missing_or_without_a_device_names_the_extra():
    try:
        import cupy  # noqa: F401

        pytest.skip("cupy imports here")
    except ImportError:
        pass
    with pytest.raises(BackendNotAvailable, match=r"pip install 'sinklabel\[cupy\]'"):
        sinklabel.solve(make_scores(50, 3, seed=0), 10.0, backend="cupy")


gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize("kind", ["realistic", "collapsed", "neginf"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_cupy_solve_matches_numpy(kind, dtype):
    _cupy_backend()
    import cupy

    S_np = make_scores(3000, 37, kind=kind, seed=21, dtype=dtype)
    S = cupy.asarray(S_np)
    res = sinklabel.solve(S, 25.0)
    assert res.backend == "cupy"
    for x in (res.labels, res.log_u, res.log_v):
        assert isinstance(x, cupy.ndarray) and x.device == S.device
    assert res.labels.dtype == np.int64 and res.log_v.dtype == np.float64
    exact = S_np.astype(np.float64 if dtype == np.float64 else np.float32)
    ref = sinklabel.solve(exact, 25.0, backend="numpy")
    assert res.converged and res.error <= 1e-3
    lv = cupy.asnumpy(res.log_v)
    np.testing.assert_allclose(lv - lv.max(), ref.log_v - ref.log_v.max(), atol=0.125)
    labels = cupy.asnumpy(res.labels)
    X = 25.0 * exact.astype(np.float64) + ref.log_v
    for i in np.flatnonzero(labels != ref.labels):  # only near-ties may differ
        assert X[i, ref.labels[i]] - X[i, labels[i]] < 0.125


@gpu
@pytest.mark.parametrize("k", [1, 5, 33, 128, 1000, 3000, 8192, 9000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cupy_fused_sweep_every_row_width(k, dtype):
    B = _cupy_backend()
    import cupy

    rng = np.random.default_rng(k)
    n = 1031
    K = (np.exp(rng.normal(0, 2, (n, k))) * (rng.random((n, k)) > 0.2)).astype(dtype)
    K[:, 0] += 1e-3
    v, c = np.exp(rng.normal(0, 1, k)), rng.random(n) / n
    u_ref, acc_ref = get_backend("numpy").sweep(K, v, c)
    u, acc = B.sweep(cupy.asarray(K), cupy.asarray(v), cupy.asarray(c))
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(cupy.asnumpy(u), u_ref, rtol=tol)
    np.testing.assert_allclose(cupy.asnumpy(acc), acc_ref, rtol=tol)


@gpu
def test_cupy_routing_numpy_in_numpy_out_and_multi_head():
    _cupy_backend()
    import cupy

    S = make_scores(500, 6, seed=22)
    res = sinklabel.solve(S, 25.0, backend="cupy")
    assert res.backend == "cupy" and type(res.labels) is np.ndarray
    S3 = cupy.asarray(np.stack([make_scores(500, 6, seed=s) for s in range(3)]))
    res = sinklabel.solve(S3, 10.0)
    assert res.labels.shape == (3, 500) and isinstance(res.labels, cupy.ndarray)
    prior = cupy.asarray([100, 100, 100, 100, 50, 50])
    res = sinklabel.solve(cupy.asarray(S), 10.0, prior=prior)
    np.testing.assert_array_equal(res.heads[0].target_sizes, [100, 100, 100, 100, 50, 50])


@gpu
def test_cupy_works_without_torch():
    _cupy_backend()
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import cupy, sinklabel\n"
        "from sinklabel.problems import make_scores\n"
        "res = sinklabel.solve(cupy.asarray(make_scores(400, 5, seed=1)), 25.0)\n"
        "assert res.backend == 'cupy' and res.converged, res\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
