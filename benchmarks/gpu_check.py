"""One-shot check of sinklabel's GPU paths, then timings beside the anchors on the same card.

Run (a machine with a CUDA GPU, torch, triton, cupy; numba and POT optional)::

    PYTHONPATH=. python3 benchmarks/gpu_check.py            # about 6-8 minutes on one H100
    PYTHONPATH=. python3 benchmarks/gpu_check.py --quick    # CPU: torch + TRITON_INTERPRET, ~2 min

Part 1, correctness (fresh random problems, seed printed): every GPU path (torch CUDA with
plain ops, torch CUDA with the fused Triton kernel, cupy) against the numpy reference:
labels (equal, or different only at near-ties), column potentials, marginal errors of the
returned plan (recomputed on the host in float64), outputs' library/dtype/device, the
fused sweep alone at row widths that exercise every kernel shape, and TF32 on/off giving
bit-identical results. Any failure makes the exit status 1.

Part 2, timings at N = 1,281,167, K = 3,000 (ImageNet; float32 scores generated on the
device by a torch port of :func:`sinklabel.problems.make_scores`, deterministic per seed),
lam = 25, tol = 1e-3 (max relative cluster-marginal error, rows exact) for every solver:

- the floor: one device-to-device copy of the N x K matrix (bandwidth = 2 x bytes / time)
  and one streaming read (``S.sum()``);
- sinklabel torch (fused Triton sweep): one solve end to end, and one sweep alone
  (bandwidth = bytes of the kernel / time: the issue's target is >= 80 % of the copy's);
  a few Triton launch configurations beside the default; the plain two-mat-vec sweep;
- sinklabel cupy: one solve, one sweep;
- ten heads: ten 15 GB score matrices do not fit one card together, so each head is
  generated into the same buffer, solved, and overwritten (scores 15.4 GB + kernel 15.4 GB
  resident); the time reported is the sum of the ten solves, generation excluded;
- the paper's loop in torch (float64 ``P**lam``, two mat-vecs per iteration, its error
  checked every 10 iterations), on the same matrix;
- POT ``ot.sinkhorn`` with the torch backend, float64 and float32, if POT imports. POT
  holds M, exp(-M/reg), a scaled copy of it and the plan at once (5 N x K arrays at its
  peak: 154 GB in float64), so it runs on the first N' rows that fit the free memory, and
  sinklabel is timed on the same N' rows beside it. POT's stop rule is the L2 norm of the
  column-marginal error; ``stopThr = tol / K`` implies our max-relative error <= tol.

Each part has a time budget (``--budget`` seconds in all); a solver cut off by it reports
the iterations it made and its error then. The table is printed and appended to
benchmarks/RESULTS.md (``--results``; ``--quick`` writes nothing unless asked).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

QUICK = "--quick" in sys.argv or "--cpu" in sys.argv
if QUICK:
    # must precede the first import of triton: the fused kernel then runs on CPU tensors
    os.environ.setdefault("TRITON_INTERPRET", "1")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sinklabel  # noqa: E402
from sinklabel.backends import BackendNotAvailable, get_backend  # noqa: E402
from sinklabel.backends import _torch as torch_backend  # noqa: E402
from sinklabel.problems import make_scores  # noqa: E402

try:
    import cupy  # noqa: F401

    get_backend("cupy")
    HAVE_CUPY = True
except (ImportError, BackendNotAvailable):
    HAVE_CUPY = False
try:
    from sinklabel.backends import _triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False
try:
    import ot

    HAVE_POT = True
except ImportError:
    HAVE_POT = False

NUMPY = get_backend("numpy")
FAST = "0" if QUICK else "auto"  # the torch backend's Triton switch for timings
TORCH = get_backend("torch")


# -- helpers -------------------------------------------------------------------------------
class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    if HAVE_CUPY and device.startswith("cuda"):
        import cupy

        cupy.cuda.Device().synchronize()


def timed(fn, device: str):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def median_time(fn, device: str, rounds: int = 5) -> float:
    fn()  # warm-up: compilation and allocation are never timed
    return float(np.median([timed(fn, device)[0] for _ in range(rounds)]))


def free_gpu() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if HAVE_CUPY:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()


def host(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if hasattr(x, "get") and not isinstance(x, np.ndarray):
        return x.get()
    return np.asarray(x)


def make_scores_torch(n, k, *, seed, device, dtype=torch.float32, out=None, block=1 << 16):
    """The "realistic" mixture of :func:`sinklabel.problems.make_scores`, generated on ``device``.

    Deterministic for a seed and device type (not bit-equal to the numpy generator); the
    first rows do not depend on ``n``.
    """
    root = np.random.default_rng(seed)
    popularity = root.dirichlet(np.full(k, 0.3))
    bias = 0.5 * np.log(popularity + 1e-12)
    bias -= bias.max()
    pop = torch.tensor(popularity, device=device)
    bias_t = torch.tensor(bias, device=device, dtype=torch.float32)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    out = torch.empty((n, k), dtype=dtype, device=device) if out is None else out
    for start in range(0, n, block):
        m = min(n, start + block) - start
        true = torch.multinomial(pop, m, replacement=True, generator=gen)
        group = torch.rand(m, generator=gen, device=device)
        lo = torch.rand(m, generator=gen, device=device)
        boost = torch.where(group < 0.2, 5 + 5 * lo, torch.where(group < 0.7, 0.5 + 2.5 * lo, 0.0))
        spread = torch.where(group < 0.7, 1.0, 0.2)
        logits = torch.randn((m, k), generator=gen, device=device) * spread[:, None] + bias_t
        logits[torch.arange(m, device=device), true] += boost
        out[start : start + m] = torch.log_softmax(logits, dim=1).to(dtype)
    return out


# -- part 1: correctness -----------------------------------------------------------------
class Checks:
    def __init__(self):
        self.rows: list[tuple[str, str, bool, str]] = []

    def add(self, path: str, what: str, ok: bool, detail: str = "") -> None:
        self.rows.append((path, what, bool(ok), detail))
        print(f"  [{'ok' if ok else 'FAIL'}] {path:14s} {what:44s} {detail}", flush=True)

    @property
    def failed(self) -> int:
        return sum(not ok for _, _, ok, _ in self.rows)


def plan_errors(S, lam, log_u, log_v):
    """(row error, column error) of the plan exp(lam S + log_u + log_v), in float64 on the host."""
    S = np.asarray(S, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        Q = np.exp(lam * S + log_u[:, None] + log_v[None, :])
    n, k = S.shape
    rows = np.abs(Q.sum(1) * n - 1).max()
    cols = np.abs(Q.sum(0) * k - 1).max()
    return rows, cols


def compare(checks, path, S_exact, res, ref, lam, tol, lib, device):
    """Conformance of one result (at ``tol``) against the numpy reference (same problem).

    The answer must be valid: the plan rebuilt on the host in float64 from the returned
    potentials has rows exact and columns within ``tol``; labels agree (>= 99 %, the rest
    near-ties under the reference potentials, allowing for their difference). At
    ``tol = 1e-3`` potentials are determined only loosely (a cluster that few points like
    has a flat dual direction): their difference is reported here and checked at a tight
    tolerance by :func:`compare_tight`.
    """
    h, r = res.heads[0], ref.heads[0]
    types_ok = all(
        (isinstance(x, torch.Tensor) and str(x.device).startswith(device.split(":")[0]))
        if lib == "torch"
        else (type(x).__module__.startswith("cupy") if lib == "cupy" else isinstance(x, np.ndarray))
        for x in (res.labels, h.log_u, h.log_v)
    )
    dtypes_ok = host(res.labels).dtype == np.int64 and host(h.log_v).dtype == np.float64
    lu, lv = host(h.log_u), host(h.log_v)
    dv = np.abs((lv - lv.max()) - (r.log_v - r.log_v.max())).max()
    labels = host(res.labels)
    X = lam * np.asarray(S_exact, np.float64) + r.log_v
    diff = np.flatnonzero(labels != r.labels)
    gaps = X[diff, r.labels[diff]] - X[diff, labels[diff]] if diff.size else np.zeros(0)
    row_err, col_err = plan_errors(S_exact, lam, lu, lv)
    ok = (
        types_ok
        and dtypes_ok
        and h.converged == r.converged
        and diff.size <= 0.01 * labels.size
        and (gaps <= 2 * dv + 5e-3 * lam).all()
        and col_err <= 1.05 * tol + 1e-5
        and row_err <= 1e-4
    )
    checks.add(
        path,
        f"solve N={S_exact.shape[0]} K={S_exact.shape[1]} {np.asarray(S_exact).dtype} lam={lam:g}",
        ok,
        f"its {h.n_iter}/{r.n_iter} ref, labels differ {diff.size}"
        f" (max gap {gaps.max() if diff.size else 0:.1e}),"
        f" |dlog_v| {dv:.1e}, col err {col_err:.2e}, row err {row_err:.1e}"
        + ("" if types_ok and dtypes_ok else " WRONG OUTPUT TYPE/DEVICE"),
    )


def compare_tight(checks, path, S_exact, res, ref, lam, tol):
    """Column potentials against the reference, both solved to a tight ``tol``."""
    lv, rv = host(res.log_v), ref.log_v
    dv = np.abs((lv - lv.max()) - (rv - rv.max())).max()
    limit = (2e-3 if tol >= 1e-6 else 1e-4) * lam
    checks.add(
        path,
        f"potentials at tol={tol:g} N={S_exact.shape[0]} K={S_exact.shape[1]} {np.asarray(S_exact).dtype}",
        res.converged and ref.converged and dv <= limit,
        f"|dlog_v| {dv:.1e} (limit {limit:.1e}), its {res.n_iter}/{ref.n_iter} ref",
    )


def part1(device: str, seed: int, budget: Budget) -> Checks:
    print(f"\n== part 1: correctness against the numpy reference (seed {seed}) ==", flush=True)
    checks = Checks()
    rng = np.random.default_rng(seed)
    paths = []  # (name, library, USE_TRITON)
    if QUICK:
        paths.append(("torch-cpu", "torch", "0"))
    else:
        paths.append(("torch-plain", "torch", "0"))
    if HAVE_TRITON:
        paths.append(("torch-triton", "torch", "auto"))
    if HAVE_CUPY and device.startswith("cuda"):
        paths.append(("cupy", "cupy", "auto"))
    if QUICK:
        shapes = [((300, 7), [100 / 7]), ((400, 64), [10.0])]
        widths = [1, 5, 128, 1000]
    else:  # K = 3000 is ImageNet's row width (Triton BLOCK_K 4096, cupy 256 threads x 12)
        # 100/7 is not a float32: catches a float64 parameter narrowed on its way to a kernel
        shapes = [((4000, 50), [100 / 7, 25.0]), ((3000, 3000), [10.0])]
        widths = [1, 5, 33, 128, 1000, 3000, 4096, 8192, 9000]
    tol = 1e-3

    # the fused sweep alone, every row width (kernel shapes and the wide fallback)
    for name, lib, use_triton in paths:
        B = get_backend(lib)
        torch_backend.USE_TRITON = use_triton
        dev = "cpu" if name == "torch-cpu" else device
        for k in widths:
            for dtype in (np.float32, np.float64):
                n = 97 if QUICK else int(rng.integers(200, 600) if k >= 3000 else rng.integers(500, 3000))
                K = np.exp(rng.normal(0, 2, (n, k))) * (rng.random((n, k)) > 0.2)
                K[:, 0] += 1e-3
                K = K.astype(dtype)
                v, c = np.exp(rng.normal(0, 1, k)), rng.random(n) / n
                u_ref, acc_ref = NUMPY.sweep(K, v, c)
                if lib == "torch":
                    args = [torch.from_numpy(x).to(dev) for x in (K, v, c)]
                else:
                    import cupy

                    args = [cupy.asarray(x) for x in (K, v, c)]
                u, acc = B.sweep(*args)
                tol_s = 2e-6 if dtype == np.float32 else 1e-13
                eu = np.abs(host(u) / u_ref - 1).max()
                ea = np.abs(host(acc) / acc_ref - 1).max()
                checks.add(
                    name,
                    f"sweep n={n} k={k} {np.dtype(dtype).name}",
                    max(eu, ea) <= tol_s,
                    f"rel err u {eu:.1e}, acc {ea:.1e}",
                )
                if k <= 1000:  # Newton's sweep: the rows' curvature (dense float64 products here)
                    _, _, W = B.sweep_hessian(*args, 1e-3)
                    W_ref = NUMPY.sweep_hessian(K, v, c, 1e-3)[2]
                    ew = np.abs(W - W_ref).max() / max(np.abs(W_ref).max(), 1e-300)
                    checks.add(name, f"sweep_hessian n={n} k={k} {np.dtype(dtype).name}",
                               ew <= 10 * tol_s, f"rel err W {ew:.1e}")  # fmt: skip

    # the log step that writes its kernel, and a partial rebuild (the driver's start, rescues
    # and absorptions), against the numpy reference
    for name, lib, use_triton in paths:
        B = get_backend(lib)
        torch_backend.USE_TRITON = use_triton
        dev = "cpu" if name == "torch-cpu" else device
        for dtype in (np.float32, np.float64):
            n, k = (97, 33) if QUICK else (2000, 300)
            S_np = make_scores(n, k, kind="neginf", seed=int(rng.integers(2**31)), dtype=dtype)
            g, log_c = rng.normal(0, 3, k), np.full(n, -np.log(n))
            a_ref, lse_ref = NUMPY.log_sweep(S_np, 25.0, g, log_c)
            K_ref = NUMPY.build_kernel(S_np, 25.0, a_ref, g)
            rows = np.sort(rng.choice(n, n // 7, replace=False)).astype(np.int64)
            a2 = a_ref + rng.normal(0, 1, n)
            want = K_ref.copy()
            want[rows] = NUMPY.build_kernel(S_np[rows], 25.0, a2[rows], g)
            if lib == "torch":
                S, gd, cd, ad = (torch.from_numpy(x).to(dev) for x in (S_np, g, log_c, a2))
            else:
                import cupy

                S, gd, cd, ad = (cupy.asarray(x) for x in (S_np, g, log_c, a2))
            a, lse, Kmat = B.log_sweep_build(S, 25.0, gd, cd)
            tol_k = 2e-6 if dtype == np.float32 else 1e-12
            ek = np.abs(host(Kmat) - K_ref).max() / K_ref.max()
            ea = max(np.abs(host(a) - a_ref).max(), np.abs(host(lse) - lse_ref).max())
            checks.add(name, f"log_sweep_build {np.dtype(dtype).name}", ea <= 1e-9 and ek <= tol_k,
                       f"a/lse abs err {ea:.1e}, kernel rel err {ek:.1e}")  # fmt: skip
            Kmat = B.build_rows(S, 25.0, ad, gd, Kmat, rows)
            er = np.abs(host(Kmat) - want).max() / want.max()
            checks.add(name, f"build_rows {np.dtype(dtype).name}", er <= tol_k, f"rel err {er:.1e}")

    # whole solves on fresh problems; the reference is solved once per problem and dtype
    problems = []
    for first, ((n, k), lams) in enumerate(shapes):
        for kind in ("realistic", "collapsed", "neginf"):
            for lam in lams:
                S_np = make_scores(n, k, kind=kind, seed=int(rng.integers(2**31)))
                problems.append((S_np, lam, first == 0 and not QUICK))
    refs: dict = {}
    for name, lib, use_triton in paths:
        torch_backend.USE_TRITON = use_triton
        dev = "cpu" if name == "torch-cpu" else device
        for p, (S_np, lam, all_dtypes) in enumerate(problems):
            if budget.left() < 0:
                checks.add(name, "time budget", False, "part 1 ran out of time")
                return checks
            dtypes = ["float32"]
            if all_dtypes:
                dtypes += ["float64", "bfloat16" if lib == "torch" else "float16"]
            for dt in dtypes:
                if lib == "torch":
                    S = torch.from_numpy(S_np).to(dev, getattr(torch, dt))
                    exact = S.cpu().to(torch.float64 if dt == "float64" else torch.float32).numpy()
                else:
                    import cupy

                    S = cupy.asarray(S_np.astype(dt))
                    exact = S.get().astype(np.float64 if dt == "float64" else np.float32)
                key = (p, dt)
                tight = 1e-7 if dt == "float64" else 1e-5
                if key not in refs:
                    refs[key] = (
                        sinklabel.solve(exact, lam, tol=tol, backend="numpy"),
                        sinklabel.solve(exact, lam, tol=tight, backend="numpy"),
                    )
                res = sinklabel.solve(S, lam, tol=tol, backend=lib)
                compare(checks, name, exact, res, refs[key][0], lam, tol, lib, dev)
                res = sinklabel.solve(S, lam, tol=tight, backend=lib)
                compare_tight(checks, name, exact, res, refs[key][1], lam, tight)

        # numpy in, numpy out, computed on the device
        S_np = make_scores(1000, 20, seed=int(rng.integers(2**31)))
        res = sinklabel.solve(S_np, 25.0, backend=lib, device=dev)
        checks.add(
            name,
            "numpy in -> numpy out",
            type(res.labels) is np.ndarray and res.backend == lib,
            f"backend {res.backend}, labels {type(res.labels).__name__}",
        )

    # TF32 must not change anything (torch paths on CUDA), whichever API turns it on
    if device.startswith("cuda"):
        S = torch.from_numpy(make_scores(3000, 300, seed=int(rng.integers(2**31)))).to(device)
        m = torch.backends.cuda.matmul
        new_api = hasattr(m, "fp32_precision")
        saved = m.fp32_precision if new_api else m.allow_tf32
        settings = [
            ("off", lambda: setattr(m, *(("fp32_precision", "ieee") if new_api else ("allow_tf32", False))))
        ]
        settings.append(("allow_tf32=True", lambda: setattr(m, "allow_tf32", True)))
        settings.append(
            ("set_float32_matmul_precision('high')", lambda: torch.set_float32_matmul_precision("high"))
        )
        if new_api:
            settings.append(("fp32_precision='tf32'", lambda: setattr(m, "fp32_precision", "tf32")))
        for name, lib, use_triton in paths:
            if lib != "torch":
                continue
            torch_backend.USE_TRITON = use_triton
            out = []
            for _, turn_on in settings:
                turn_on()
                out.append(sinklabel.solve(S, 25.0))
                setattr(m, "fp32_precision" if new_api else "allow_tf32", saved)
            same = all(o.n_iter == out[0].n_iter and torch.equal(o.log_v, out[0].log_v) for o in out)
            checks.add(
                name,
                "TF32 on (3 ways) / off: identical results",
                same,
                f"its {[o.n_iter for o in out]} ({', '.join(x for x, _ in settings)})",
            )
        torch.set_float32_matmul_precision("highest")
        setattr(m, "fp32_precision" if new_api else "allow_tf32", saved)
    torch_backend.USE_TRITON = "auto"
    return checks


# -- part 2: timings -----------------------------------------------------------------------
class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, what, time_s="", its="", ratio="", note=""):
        row = (what, time_s, its, ratio, note)
        self.rows.append(row)
        print("  " + " | ".join(row), flush=True)

    def markdown(self) -> str:
        head = "| what | time | iterations | ratio | note |\n|---|---|---|---|---|\n"
        return head + "\n".join("| " + " | ".join(r) + " |" for r in self.rows)


def ms(t):
    return f"{t * 1e3:,.1f} ms" if t < 10 else f"{t:,.1f} s"


def paper_loop(S, lam, tol, budget_s, dtype=torch.float64, check=10):
    """SeLa's Sinkhorn in torch: P = p**lam, two mat-vecs per iteration (cluster then point
    scaling), our error (max relative column error, rows exact) every ``check`` iterations,
    read for free from the next iteration's first mat-vec."""
    n, k = S.shape
    dev = S.device
    P = torch.empty((n, k), dtype=dtype, device=dev)
    step = max(1, (1 << 26) // k)
    for s in range(0, n, step):
        P[s : s + step] = torch.exp(lam * S[s : s + step].to(torch.float64)).to(dtype)
    c = torch.full((n,), 1.0 / n, dtype=dtype, device=dev)
    r = torch.ones(k, dtype=dtype, device=dev)
    sync(str(dev))
    t0 = time.perf_counter()
    it, err = 0, float("inf")
    while True:
        PTc = P.T @ c
        if it and it % check == 0:
            err = float((r * PTc * k - 1).abs().max())  # columns of diag(c) P diag(r)
            if err <= tol or not np.isfinite(err) or time.perf_counter() - t0 > budget_s:
                break
        r = (1.0 / k) / PTc
        c = (1.0 / n) / (P @ r)  # rows exact
        it += 1
    sync(str(dev))
    t = time.perf_counter() - t0
    P = None
    return t, it, err


def pot_anchor(S_rows, lam, tol, budget_s, dtype):
    n, k = S_rows.shape
    M = -(S_rows.to(dtype))
    a = torch.full((n,), 1.0 / n, dtype=dtype, device=M.device)
    b = torch.full((k,), 1.0 / k, dtype=dtype, device=M.device)
    # a short run measures the cost per iteration, then the cap follows from the budget
    t_short, _ = timed(
        lambda: ot.sinkhorn(a, b, M, 1.0 / lam, numItermax=21, stopThr=0.0, warn=False), str(M.device)
    )
    free_gpu()
    per_it = t_short / 21
    cap = int(max(50, min(20000, budget_s / max(per_it, 1e-6))))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t, (G, log) = timed(
            lambda: ot.sinkhorn(a, b, M, 1.0 / lam, numItermax=cap, stopThr=tol / k, log=True, warn=False),
            str(M.device),
        )
    its = int(log["niter"]) + 1
    col = G.sum(0, dtype=torch.float64) * k
    err = float((col - 1).abs().max())
    finite = bool(torch.isfinite(G).all())
    G = M = None
    free_gpu()
    note = "; ".join(str(w.message)[:60] for w in caught)
    return t, its, err, finite, note, cap


def part2(device: str, budget: Budget, n: int, k: int, heads: int, table: Table) -> None:
    lam, tol = 25.0, 1e-3
    print(f"\n== part 2: timings, N={n:,} K={k:,} lam={lam:g} tol={tol:g} on {device} ==", flush=True)
    bytes_f32 = n * k * 4
    t_gen, S = timed(lambda: make_scores_torch(n, k, seed=0, device=device), device)
    table.add(f"generate scores (float32, {bytes_f32 / 1e9:.2f} GB, on the device)", ms(t_gen))

    # the floor
    dst = torch.empty_like(S)
    t_copy = median_time(lambda: dst.copy_(S), device)
    dst = None
    copy_bw = 2 * bytes_f32 / t_copy
    t_read = median_time(lambda: S.sum(), device)
    table.add(
        "floor: device-to-device copy of S", ms(t_copy), "", "", f"{copy_bw / 1e9:,.0f} GB/s (read+write)"
    )
    table.add(
        "floor: one streaming read of S (S.sum())",
        ms(t_read),
        "",
        f"{t_read / t_copy:.2f}x copy",
        f"{bytes_f32 / t_read / 1e9:,.0f} GB/s",
    )
    free_gpu()

    # sinklabel torch (Triton on CUDA), one head
    torch_backend.USE_TRITON = FAST  # the interpreter (--quick) is for correctness, not speed
    sinklabel.solve(make_scores_torch(4097, k, seed=1, device=device), lam, tol=tol)  # compile, warm up
    t_solve, res = timed(lambda: sinklabel.solve(S, lam, tol=tol, max_iter=20000), device)
    path = "triton" if HAVE_TRITON and device.startswith("cuda") else "plain"
    table.add(
        f"sinklabel torch ({path}), 1 head, end to end",
        ms(t_solve),
        f"{res.n_iter:,}",
        "",
        f"converged={res.converged}, err {res.error:.1e}",
    )
    one_head = (t_solve, res.n_iter)

    # one sweep alone, on the kernel the solver builds
    def kernel_of(B, S_any):
        Sg = B.adopt(S_any)
        a = B.full(n, -np.log(k), like=Sg)
        b = B.full(k, 0.0, like=Sg)
        return B.build_kernel(Sg, lam, a, b), B.full(k, 1.0, like=Sg), B.full(n, 1.0 / n, like=Sg)

    Kmat, v, c = kernel_of(TORCH, S)
    kbytes = Kmat.numel() * Kmat.element_size()
    configs = [("default", None)]
    if HAVE_TRITON and device.startswith("cuda"):
        configs += [
            (f"BLOCK_N={bn} warps={w} per_sm={p}", (bn, w, p))
            for bn, w, p in [(2, 8, 4), (2, 8, 2), (1, 8, 2), (1, 16, 2), (4, 8, 2), (1, 4, 8), (2, 4, 8)]
        ]
    best = None
    for label, cfg in configs:
        if budget.left() < 60 and cfg is not None:
            break
        if HAVE_TRITON:
            from sinklabel.backends import _triton

            _triton.CONFIG_OVERRIDE = cfg
        try:
            t = median_time(lambda: TORCH.sweep(Kmat, v, c), device)
        except Exception as exc:  # a launch configuration the card refuses
            table.add(f"sweep, Triton {label}", "failed", "", "", str(exc)[:60])
            continue
        bw = kbytes / t
        table.add(
            f"sinklabel torch sweep ({path}, {label})",
            ms(t),
            "1",
            f"{bw / copy_bw:.0%} of copy BW",
            f"{bw / 1e9:,.0f} GB/s read",
        )
        if best is None or t < best[0]:
            best = (t, label)
    if HAVE_TRITON:
        from sinklabel.backends import _triton

        _triton.CONFIG_OVERRIDE = None
        block_n, _, warps, programs = _triton.config(n, k, torch.device(device))
        if best is not None and len(configs) > 1:
            table.add(
                "fastest sweep configuration",
                ms(best[0]),
                "",
                f"{kbytes / best[0] / copy_bw:.0%} of copy BW",
                f"{best[1]} (default: BLOCK_N={block_n} warps={warps}, {programs} programs)",
            )
    t_sweep = float(median_time(lambda: TORCH.sweep(Kmat, v, c), device))
    torch_backend.USE_TRITON = "0"
    t_plain = median_time(lambda: TORCH.sweep(Kmat, v, c), device)
    torch_backend.USE_TRITON = FAST  # the interpreter (--quick) is for correctness, not speed
    table.add(
        "sinklabel torch sweep (plain: two mat-vecs)",
        ms(t_plain),
        "1",
        f"{kbytes / t_plain / copy_bw:.0%} of copy BW",
        f"{t_plain / t_sweep:.2f}x the default sweep",
    )
    # the rare passes (start, absorptions): exact log-domain sweep and kernel build
    g = TORCH.full(k, 0.0, like=S)
    log_c = TORCH.full(n, -np.log(n), like=S)
    a = TORCH.full(n, -np.log(k), like=S)
    variants = [("Triton", FAST), ("torch ops", "0")] if path == "triton" else [("torch ops", "0")]
    for label, switch in variants:
        torch_backend.USE_TRITON = switch
        t_ls = median_time(lambda: TORCH.log_sweep(S, lam, g, log_c), device, rounds=3)
        t_b = median_time(lambda: TORCH.build_kernel(S, lam, a, g, out=Kmat), device, rounds=3)
        table.add(f"sinklabel torch log sweep ({label})", ms(t_ls), "", f"{t_ls / t_sweep:.1f}x a sweep")
        table.add(f"sinklabel torch kernel build ({label})", ms(t_b), "", f"{t_b / t_sweep:.1f}x a sweep")
    torch_backend.USE_TRITON = FAST
    Kmat = v = c = g = log_c = a = None
    free_gpu()

    # cupy, one head
    if HAVE_CUPY and device.startswith("cuda") and budget.left() > 60:
        import cupy

        B = get_backend("cupy")
        Sc = cupy.from_dlpack(S)
        sinklabel.solve(cupy.asarray(make_scores(4097, k, seed=1)), lam, tol=tol)  # compile
        t_c, res_c = timed(lambda: sinklabel.solve(Sc, lam, tol=tol, max_iter=20000), device)
        table.add(
            "sinklabel cupy, 1 head, end to end",
            ms(t_c),
            f"{res_c.n_iter:,}",
            f"{t_c / one_head[0]:.2f}x torch",
            f"converged={res_c.converged}",
        )
        free_gpu()
        Kc, vc, cc = kernel_of(B, Sc)
        t = median_time(lambda: B.sweep(Kc, vc, cc), device)
        table.add(
            "sinklabel cupy sweep (fused CUDA kernel)",
            ms(t),
            "1",
            f"{kbytes / t / copy_bw:.0%} of copy BW",
            f"{kbytes / t / 1e9:,.0f} GB/s read",
        )
        Kc = vc = cc = Sc = None
        free_gpu()

    # the paper's loop in torch, float64 (and float32, which underflows)
    if budget.left() > 60:
        t_p, it_p, err_p = paper_loop(S, lam, tol, min(90.0, budget.left() * 0.3))
        reached = err_p <= tol
        table.add(
            "paper's loop in torch, float64 P**lam (two mat-vecs)",
            ms(t_p),
            f"{it_p:,}",
            f"{t_p / one_head[0]:.1f}x sinklabel"
            if reached
            else f"{t_p / it_p / (one_head[0] / one_head[1]):.1f}x per it",
            "reached tol" if reached else f"cut off by the budget at err {err_p:.1e}",
        )
        free_gpu()
        t_p, it_p, err_p = paper_loop(S, lam, tol, 5.0, dtype=torch.float32)
        table.add(
            "paper's loop in torch, float32 P**lam",
            ms(t_p),
            f"{it_p:,}",
            "",
            f"error {err_p:.2g} ({'NaN/inf: underflow' if not np.isfinite(err_p) else 'finite'})",
        )
        free_gpu()

    # ten heads, head by head through one score buffer
    if heads > 1 and budget.left() > 30:
        total, its, done = 0.0, [], 0
        for t in range(heads):
            if budget.left() < 30 + (total / max(done, 1)):
                break
            make_scores_torch(n, k, seed=100 + t, device=device, out=S)
            dt, r = timed(lambda: sinklabel.solve(S, lam, tol=tol, max_iter=20000), device)
            total += dt
            its.append(r.n_iter)
            done += 1
        note = (
            f"scores regenerated into one buffer per head ({bytes_f32 / 1e9:.2f} GB scores "
            f"+ {bytes_f32 / 1e9:.2f} GB kernel resident)"
        )
        if done < heads:
            note += f"; budget allowed {done} heads, time scaled x{heads / done:.1f}"
        table.add(
            f"sinklabel torch, {heads} heads, sum of solves",
            ms(total * heads / max(done, 1)),
            f"{int(np.mean(its)) if its else 0:,} mean",
            "",
            note,
        )
        free_gpu()

    # POT with the torch backend, on the first N' rows that fit
    if not HAVE_POT:
        table.add("POT ot.sinkhorn (torch backend)", "skipped", "", "", "POT does not import here")
        return
    # N' rows: POT's five N' x K float64 arrays and our float32 copy of the rows fit what is
    # free once the full matrix is gone; the same rows serve both POT runs
    free_gpu()
    if device.startswith("cuda"):
        free_after = torch.cuda.mem_get_info()[0] + bytes_f32 - (2 << 30)
        rows = int(min(n, 0.85 * free_after / (5 * k * 8 + k * 4)))
    else:
        rows = n
    sub = S[:rows].clone()
    S = None
    free_gpu()
    t_ours, r_ours = timed(lambda: sinklabel.solve(sub, lam, tol=tol, max_iter=20000), device)
    table.add(
        f"sinklabel torch on the first N'={rows:,} rows",
        ms(t_ours),
        f"{r_ours.n_iter:,}",
        "",
        f"err {r_ours.error:.1e}",
    )
    free_gpu()
    for dtype in (torch.float64, torch.float32):
        name = f"POT ot.sinkhorn torch {str(dtype).replace('torch.', '')}, N'={rows:,}"
        if budget.left() < 30:
            table.add(name, "skipped", "", "", "time budget spent")
            continue
        try:
            t_pot, it_pot, err_pot, finite, note, cap = pot_anchor(
                sub, lam, tol, min(90.0, budget.left() * 0.45), dtype
            )
        except torch.cuda.OutOfMemoryError as exc:
            table.add(name, "OOM", "", "", str(exc)[:60])
            free_gpu()
            continue
        reached = finite and err_pot <= tol
        table.add(
            name,
            ms(t_pot),
            f"{it_pot:,}",
            f"{t_pot / t_ours:.1f}x sinklabel" if reached else "",
            ("reached tol" if reached else f"err {err_pot:.2g}, finite={finite}, cap {cap}")
            + (f"; {note}" if note else ""),
        )
    sub = None
    free_gpu()


# -- main -----------------------------------------------------------------------------------
def versions() -> str:
    import platform

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"numpy {np.__version__}"]
    for mod in ("triton", "cupy", "numba", "ot"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            parts.append(f"{mod} missing")
    return ", ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", "--cpu", action="store_true", help="CPU: torch + Triton interpreter, small sizes"
    )
    ap.add_argument("--seed", type=int, default=None, help="problems of part 1 (default: fresh)")
    ap.add_argument(
        "--budget", type=float, default=None, help="seconds for everything (default 420; quick 240)"
    )
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument(
        "--results", default=None, help="markdown file to append to (default benchmarks/RESULTS.md)"
    )
    ap.add_argument("--skip-timings", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.quick
    if not cuda and not args.quick:
        print("no CUDA device: running the CPU parts (as --quick)", file=sys.stderr)
        args.quick = True
    device = "cuda" if cuda else "cpu"
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    budget = Budget(args.budget or (420.0 if cuda else 240.0))
    n = args.n or (1_281_167 if cuda else 20_000)
    k = args.k or (3_000 if cuda else 300)
    heads = args.heads or (10 if cuda else 2)
    card = torch.cuda.get_device_name() if cuda else "CPU (torch, Triton interpreter for the kernel)"
    print(f"sinklabel GPU check on {card}\n{versions()}", flush=True)
    if not QUICK and args.quick:
        print("note: TRITON_INTERPRET could not be set before Triton was imported", file=sys.stderr)
    t0 = time.perf_counter()
    part1_budget = Budget(min(150.0 if cuda else 150.0, budget.left() * 0.4))
    checks = part1(device, seed, part1_budget)
    table = Table()
    if not args.skip_timings:
        part2(device, budget, n, k, heads, table)
    wall = time.perf_counter() - t0
    verdict = "PASS" if checks.failed == 0 else f"FAIL ({checks.failed} of {len(checks.rows)} checks)"
    print(f"\ncorrectness: {verdict}; wall {wall:.0f} s", flush=True)

    results = args.results or (None if args.quick else os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    if results:
        fails = [r for r in checks.rows if not r[2]]
        lines = [
            "",
            f"## GPU check: {card} ({time.strftime('%Y-%m-%d')})",
            "",
            f"`PYTHONPATH=. python3 benchmarks/gpu_check.py{' --quick' if args.quick else ''}` "
            f"(seed {seed}, wall {wall:.0f} s); {versions()}.",
            "",
            f"Correctness against the numpy reference: **{verdict}** over {len(checks.rows)} checks "
            f"({', '.join(sorted({r[0] for r in checks.rows}))}).",
        ]
        lines += [f"- FAIL {p}: {w}: {d}" for p, w, _, d in fails[:20]]
        if table.rows:
            lines += [
                "",
                f"Timings at N = {n:,}, K = {k:,}, lam = 25, tol = 1e-3, float32 scores; one solve each "
                "(sweeps: median of 5 after a warm-up). Ten heads: each head regenerated into one "
                "buffer, so only one head's scores and kernel are resident.",
                "",
                table.markdown(),
            ]
        with open(results, "a") as f:
            f.write("\n".join(lines) + "\n")
        print(f"appended to {results}")
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
