"""The torch backend: routing, outputs following inputs, half precisions, the Triton kernel.

CPU paths run everywhere; CUDA tests carry the ``gpu`` marker and skip without a GPU.
The Triton kernel runs here on CPU tensors through ``TRITON_INTERPRET=1``, which must be
set before Triton is first imported: ``test_triton_interpreter`` re-runs this file's
``interp`` tests in a subprocess with it set.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sinklabel
from sinklabel._arrays import to_host
from sinklabel.backends import BackendNotAvailable, get_backend
from sinklabel.problems import make_scores

from .conftest import assert_marginals

torch = pytest.importorskip("torch")

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available()
needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
ROOT = Path(__file__).resolve().parents[1]


host = to_host  # sinklabel._arrays: the one conversion to the host


def assert_matches_numpy(S_np, res, lam, ref=None):
    """The same answer as the numpy reference, to the tolerance.

    The plan rebuilt on the host from the returned potentials has its marginals within
    ``tol``; labels agree except at near-ties. At ``tol = 1e-3`` the potentials
    themselves are pinned down only loosely (a cluster few points like has a flat dual
    direction, and accelerated trajectories differ with the summation order), so they
    are compared loosely here and tightly in ``test_potentials_match_numpy_when_tight``.
    """
    ref = sinklabel.solve(S_np, lam, backend="numpy", tol=res.tol) if ref is None else ref
    for h, r, S in zip(res.heads, ref.heads, S_np if ref.multi_head else [S_np]):
        assert h.converged == r.converged and h.error <= res.tol
        lv, rv = host(h.log_v), r.log_v
        dv = np.abs((lv - lv.max()) - (rv - rv.max())).max()
        assert dv <= 0.02 * lam
        labels = host(h.labels)
        X = lam * np.asarray(S, np.float64) + rv
        differ = np.flatnonzero(labels != r.labels)
        assert differ.size <= 0.01 * labels.size
        for i in differ:  # only near-ties may differ
            assert X[i, r.labels[i]] - X[i, labels[i]] <= 2 * dv + 5e-3 * lam
        assert_marginals(S, lam, type(h)(**{**h.__dict__, "log_u": host(h.log_u), "log_v": lv}), res.tol)


@pytest.mark.parametrize("kind", ["realistic", "collapsed", "neginf"])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-7)])
def test_potentials_match_numpy_when_tight(kind, dtype, tol):
    S = make_scores(2000, 30, kind=kind, seed=31, dtype=dtype)
    res = sinklabel.solve(torch.from_numpy(S), 25.0, tol=tol)
    ref = sinklabel.solve(S, 25.0, tol=tol, backend="numpy")
    assert res.converged and ref.converged
    lv, rv = host(res.log_v), ref.log_v
    limit = 2e-3 * 25 if dtype == np.float32 else 1e-4 * 25
    np.testing.assert_allclose(lv - lv.max(), rv - rv.max(), atol=limit)


# -- routing -------------------------------------------------------------------------
def test_auto_picks_torch_for_tensors_and_keeps_numpy_on_the_cpu():
    S = make_scores(300, 6, seed=3)
    assert sinklabel.solve(torch.from_numpy(S), 25.0).backend == "torch"
    assert sinklabel.solve(S, 25.0).backend in ("numpy", "numba")
    assert sinklabel.solve(S, 25.0, device="cpu").backend in ("numpy", "numba")


def test_numpy_scores_on_the_torch_backend_come_back_as_numpy():
    S = make_scores(300, 6, seed=4)
    res = sinklabel.solve(S, 25.0, backend="torch")
    assert res.backend == "torch"
    for x in (res.labels, res.log_u, res.log_v):
        assert type(x) is np.ndarray
    assert res.labels.dtype == np.int64 and res.log_v.dtype == np.float64
    assert_matches_numpy(S, res, 25.0)


def test_torch_scores_on_the_numpy_backend_come_back_as_torch():
    S = make_scores(300, 6, seed=5)
    res = sinklabel.solve(torch.from_numpy(S).to(torch.bfloat16), 25.0, backend="numpy")
    assert res.backend == "numpy"
    assert isinstance(res.labels, torch.Tensor) and res.labels.dtype == torch.int64
    assert res.log_u.dtype == torch.float64


def test_device_cpu_is_accepted_and_bad_devices_are_refused():
    S = make_scores(200, 4, seed=6)
    assert sinklabel.solve(S, 10.0, backend="torch", device="cpu").backend == "torch"
    with pytest.raises(ValueError, match="`device` must name a torch device"):
        sinklabel.solve(S, 10.0, backend="torch", device="gpu7")
    with pytest.raises(ValueError, match="computes on the CPU; got device='cuda'"):
        sinklabel.solve(S, 10.0, backend="numpy", device="cuda")
    with pytest.raises(TypeError, match="`device` must be a string"):
        sinklabel.solve(S, 10.0, device=3.5)


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_says_so():
    S = make_scores(200, 4, seed=6)
    with pytest.raises(ValueError, match="torch finds no CUDA device"):
        sinklabel.solve(S, 10.0, device="cuda")


def test_missing_backends_name_their_extra(monkeypatch):
    from sinklabel import backends

    for name in ("torch", "cupy"):
        monkeypatch.delitem(backends._cache, name, raising=False)
        monkeypatch.setitem(sys.modules, f"sinklabel.backends._{name}", None)
        with pytest.raises(BackendNotAvailable, match=rf"pip install 'sinklabel\[{name}\]'"):
            sinklabel.solve(make_scores(50, 3, seed=0), 10.0, backend=name)


# -- outputs follow inputs -------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
def test_dtypes_and_half_precisions(dtype):
    S_np = make_scores(400, 8, kind="collapsed", seed=7)
    S = torch.from_numpy(S_np).to(getattr(torch, dtype))
    res = sinklabel.solve(S, 25.0)
    assert res.labels.dtype == torch.int64 and res.labels.device == S.device
    assert res.log_u.dtype == res.log_v.dtype == torch.float64
    # half precisions are computed in float32 from the rounded scores
    exact = S.to(torch.float64 if dtype == "float64" else torch.float32).numpy()
    assert_matches_numpy(exact, res, 25.0)


def test_multi_head_tensor_and_list():
    S3 = np.stack([make_scores(300, 6, seed=s) for s in range(3)])
    res = sinklabel.solve(torch.from_numpy(S3), 10.0)
    assert res.labels.shape == (3, 300) and isinstance(res.labels, torch.Tensor)
    assert_matches_numpy(S3, res, 10.0, ref=sinklabel.solve(S3, 10.0, backend="numpy"))
    heads = [make_scores(300, 4, seed=1), make_scores(300, 9, seed=2)]
    res = sinklabel.solve([torch.from_numpy(h) for h in heads], 10.0)
    assert [h.log_v.shape[0] for h in res.heads] == [4, 9]


def test_warm_start_from_a_torch_result():
    S = torch.from_numpy(make_scores(500, 10, seed=8))
    cold = sinklabel.solve(S, 25.0)
    warm = sinklabel.solve(S, 25.0, init=cold)
    assert warm.n_iter < cold.n_iter
    warm2 = sinklabel.solve(S, 25.0, init=cold.log_v)
    assert warm2.n_iter == warm.n_iter


def test_weights_and_integer_prior_as_tensors():
    S_np = make_scores(300, 3, seed=9)
    prior = torch.tensor([100, 120, 80])
    w = torch.linspace(0.5, 1.5, 300, dtype=torch.float64)
    res = sinklabel.solve(torch.from_numpy(S_np), 10.0, prior=prior, weights=w)
    ref = sinklabel.solve(S_np, 10.0, prior=prior.numpy(), weights=w.numpy(), backend="numpy")
    np.testing.assert_array_equal(res.heads[0].target_sizes, [100, 120, 80])
    np.testing.assert_allclose(
        host(res.log_v) - host(res.log_v).max(), ref.log_v - ref.log_v.max(), atol=0.05
    )


def test_checks_every_sweep_on_the_cpu_and_tf32_flag_untouched():
    from sinklabel.backends import _torch
    from sinklabel.backends._torch import gpu_checks_every

    B = get_backend("torch")
    assert B.checks_every(torch.zeros(2, 2)) == 1
    # on a GPU: every sweep once a sweep reads >= 64 MiB (Anderson needs the checks)
    assert gpu_checks_every((50_000, 128), False) == 10
    assert gpu_checks_every((1_281_167, 3000), False) == 1
    assert gpu_checks_every((3, 10_000, 1000), True) == 1
    m = torch.backends.cuda.matmul
    flag = "fp32_precision" if hasattr(m, "fp32_precision") else "allow_tf32"
    saved = getattr(m, flag)
    sinklabel.solve(torch.from_numpy(make_scores(100, 3, seed=0)), 10.0)
    with _torch._no_tf32():
        assert getattr(m, flag) in ("ieee", False)
    assert getattr(m, flag) == saved


def test_plain_path_when_triton_is_switched_off(monkeypatch):
    from sinklabel.backends import _torch

    monkeypatch.setattr(_torch, "USE_TRITON", "0")
    assert _torch.TorchBackend._use_triton(torch.zeros(1)) is None
    S = make_scores(300, 6, seed=10)
    assert_matches_numpy(S, sinklabel.solve(torch.from_numpy(S), 25.0), 25.0)


# -- the Triton kernel under the interpreter (CPU) -----------------------------------
def test_triton_interpreter():
    """Run the ``interp`` tests below in a fresh process with TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    if INTERP:
        pytest.skip("already under the interpreter: the interp tests run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1", "SINKLABEL_TRITON": "auto"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "interp_",
            str(Path(__file__)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]


def test_triton_kernels_compile_for_sm90_without_spills():
    """Build every Triton kernel for an H100 (sm_90) ahead of time: no GPU needed.

    The interpreter runs the kernels' logic; this catches what only the compiler sees
    (types, launch shapes) and checks the default launch shapes keep rows in registers.
    """
    triton = pytest.importorskip("triton")
    if INTERP:
        pytest.skip("kernels are interpreted in this process")
    import shutil
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from sinklabel.backends import _triton as T

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (bin_dir / "ptxas").exists():
        pytest.skip("Triton ships no ptxas here")
    tl = T.tl
    target = GPUTarget("cuda", 90, 32)

    def build(fn, types, consts, warps):
        sig = {**types, **{name: "constexpr" for name in consts}}
        kernel = triton.compile(
            ASTSource(fn=fn, signature=sig, constexprs=consts), target=target, options={"num_warps": warps}
        )
        dump = shutil.which("cuobjdump", path=str(bin_dir))
        if dump is None:
            return
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run([dump, "--dump-resource-usage", f.name], capture_output=True, text=True)
        assert "STACK:0 " in usage.stdout, usage.stdout  # no register spills

    vec = {"v_ptr": "*fp64", "c_ptr": "*fp64", "u_ptr": "*fp64", "N": "i32", "Kc": "i32", "stride_n": "i32"}
    for k in (128, 3000):
        block_n, block_k, warps, _ = T.config(10**6, k, torch.device("cpu"))
        build(
            T._sweep_kernel,
            {"K_ptr": "*fp32", "part_ptr": "*fp32", **vec},
            {"BLOCK_N": block_n, "BLOCK_K": block_k, "ACC": tl.float32},
            warps,
        )
    for st, half in (("*fp32", False), ("*bf16", True)):
        block_n, block_k, warps, _ = T._row_config(10**6, 3000, torch.device("cpu"))
        rows = {
            "S_ptr": st,
            "g_ptr": "*fp64",
            "logc_ptr": "*fp64",
            "a_ptr": "*fp64",
            "pmax_ptr": "*fp64",
            "psum_ptr": "*fp64",
            "N": "i32",
            "Kc": "i32",
            "stride_n": "i32",
            "lam_ptr": "*fp64",
        }
        build(T._log_sweep_kernel, rows, {"BLOCK_N": block_n, "BLOCK_K": block_k, "HALF": half}, warps)
        elem = {
            "S_ptr": st,
            "a_ptr": "*fp64",
            "b_ptr": "*fp64",
            "out_ptr": "*fp32",
            "N": "i32",
            "Kc": "i32",
            "stride_s": "i32",
            "stride_o": "i32",
            "par_ptr": "*fp64",
        }
        build(T._build_kernel, elem, {"BLOCK_N": 8, "BLOCK_K": 256, "HALF": half}, 4)


interp = pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1 (see test_triton_interpreter)")


@interp
@pytest.mark.parametrize("n,k", [(1, 1), (37, 5), (300, 64), (129, 300), (40, 3000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interp_fused_sweep_matches_numpy(n, k, dtype):
    from sinklabel.backends import _triton

    rng = np.random.default_rng(n * k)
    K = np.exp(rng.normal(0, 2, (n, k))) * (rng.random((n, k)) > 0.2)
    K[:, 0] += 1e-3  # every row has mass
    K = K.astype(np.float64 if dtype == torch.float64 else np.float32)
    v = np.exp(rng.normal(0, 1, k))
    c = rng.random(n) / n
    u_ref, acc_ref = get_backend("numpy").sweep(K, v, c)
    u, acc = _triton.sweep(torch.from_numpy(K), torch.from_numpy(v), torch.from_numpy(c))
    assert u.dtype == acc.dtype == torch.float64
    tol = 2e-6 if dtype == torch.float32 else 1e-13
    np.testing.assert_allclose(u.numpy(), u_ref, rtol=tol)
    np.testing.assert_allclose(acc.numpy(), acc_ref, rtol=tol)


@interp
def test_interp_kernel_strided_rows_and_wide_fallback():
    from sinklabel.backends import _triton

    B = get_backend("torch")
    big = torch.rand(50, 12, dtype=torch.float32) + 0.1
    view = big[:, :9]  # row stride 12, not 9
    v, c = torch.rand(9, dtype=torch.float64) + 0.5, torch.full((50,), 0.02, dtype=torch.float64)
    u, acc = _triton.sweep(view, v, c)
    u_ref, acc_ref = get_backend("numpy").sweep(view.contiguous().numpy(), v.numpy(), c.numpy())
    np.testing.assert_allclose(acc.numpy(), acc_ref, rtol=2e-6)
    assert not _triton.fits(torch.zeros(2, _triton.MAX_FUSED_K + 1))
    assert not _triton.fits(torch.zeros(4, 3)[:, ::2])  # column stride 2
    wide = torch.rand(3, _triton.MAX_FUSED_K + 1)
    ones_k, ones_n = np.ones(wide.shape[1]), np.ones(3)
    u, acc = B.sweep(wide, torch.from_numpy(ones_k), torch.from_numpy(ones_n))
    acc_ref = get_backend("numpy").sweep(wide.numpy(), ones_k, ones_n)[1]
    np.testing.assert_allclose(acc.numpy(), acc_ref, rtol=2e-6)


@interp
@pytest.mark.parametrize("n,k", [(1, 1), (199, 5), (64, 300), (30, 3000)])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_interp_log_sweep_and_build_match_numpy(n, k, dtype, monkeypatch):
    from sinklabel.backends import _triton

    calls = []
    for name in ("log_sweep", "build_kernel"):
        real = getattr(_triton, name)
        monkeypatch.setattr(_triton, name, lambda *a, _f=real, _n=name: calls.append(_n) or _f(*a))
    B, ref = get_backend("torch"), get_backend("numpy")
    S = torch.from_numpy(make_scores(n, k, kind="neginf", seed=n + k)).to(getattr(torch, dtype))
    S_np = S.to(torch.float64 if dtype == "float64" else torch.float32).numpy()
    rng = np.random.default_rng(k)
    g = rng.normal(0, 3, k)
    g[k // 2] = -np.inf if k > 1 else g[0]  # an inactive cluster
    log_c = np.full(n, -np.log(n))
    log_c[0] = -np.inf if n > 1 else log_c[0]  # a point of weight 0
    lam = 100 / 7  # not a float32: must reach the kernels in float64
    a, lse = B.log_sweep(S, lam, torch.from_numpy(g), torch.from_numpy(log_c))
    a_ref, lse_ref = ref.log_sweep(S_np, lam, g, log_c)
    np.testing.assert_allclose(a.numpy(), a_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse.numpy(), lse_ref, rtol=1e-12, atol=1e-12)
    K = B.build_kernel(S, lam, torch.from_numpy(a_ref), torch.from_numpy(g))
    K_ref = ref.build_kernel(S_np, lam, a_ref, g)
    assert K.numpy().dtype == K_ref.dtype
    np.testing.assert_allclose(K.numpy(), K_ref, rtol=1e-6 if dtype != "float64" else 1e-14, atol=0)
    assert calls == ["log_sweep", "build_kernel"]


@interp
@pytest.mark.parametrize("kind", ["realistic", "collapsed", "neginf"])
def test_interp_solve_through_triton_matches_numpy(kind, monkeypatch):
    from sinklabel.backends import _triton

    calls = []
    real = _triton.sweep
    monkeypatch.setattr(_triton, "sweep", lambda *a: calls.append(1) or real(*a))
    S = make_scores(150, 5, kind=kind, seed=11)
    res = sinklabel.solve(torch.from_numpy(S), 10.0)
    assert calls, "the fused kernel was not used"
    assert_matches_numpy(S, res, 10.0)


# -- CUDA ------------------------------------------------------------------------------
@pytest.mark.parametrize("use_triton", ["auto", "0"])
@pytest.mark.parametrize("kind", ["realistic", "collapsed", "neginf"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_matches_numpy(kind, dtype, use_triton, monkeypatch):
    from sinklabel.backends import _torch

    monkeypatch.setattr(_torch, "USE_TRITON", use_triton)
    S_np = make_scores(3000, 37, kind=kind, seed=12)
    S = torch.from_numpy(S_np).to("cuda", getattr(torch, dtype))
    res = sinklabel.solve(S, 25.0)
    for x in (res.labels, res.log_u, res.log_v):
        assert x.device == S.device
    exact = S.cpu().to(torch.float64 if dtype == "float64" else torch.float32).numpy()
    assert_matches_numpy(exact, res, 25.0)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_numpy_in_numpy_out_and_tf32_changes_nothing(monkeypatch):
    from sinklabel.backends import _torch

    S = make_scores(2000, 50, seed=13)
    res = sinklabel.solve(S, 25.0, device="cuda")
    assert res.backend == "torch" and type(res.labels) is np.ndarray
    m = torch.backends.cuda.matmul
    flag = "fp32_precision" if hasattr(m, "fp32_precision") else "allow_tf32"
    off, on = ("ieee", "tf32") if flag == "fp32_precision" else (False, True)
    for use_triton in ("auto", "0"):
        monkeypatch.setattr(_torch, "USE_TRITON", use_triton)
        out = []
        for tf32 in (off, on):
            monkeypatch.setattr(m, flag, tf32)
            out.append(sinklabel.solve(S, 25.0, device="cuda"))
        assert out[0].n_iter == out[1].n_iter
        np.testing.assert_array_equal(out[0].log_v, out[1].log_v)
