"""The solver, written once for every backend and for one or several processes.

:func:`solve` is :func:`arguments` (every check one process can make alone), then
:func:`prepare` (what needs every process's points: N, priors, point masses, the integer
target sizes, whether labels are balanced, the stream decision, the scans; no heavy work)
giving a :class:`Problem`, then :func:`run` (the iteration of :mod:`sinklabel._iteration`
per head and its labels: the plan's argmax, or exactly balanced labels by
:mod:`sinklabel._balanced`, across ranks by :mod:`sinklabel._balanced_ranks`).
:mod:`sinklabel.distributed` runs the same three steps on every rank with a backend that
combines the cluster quantities over the ranks.

Stabilisation, chosen by measurement (see ``benchmarks/RESULTS.md``): kernel-mode
Sinkhorn on a stabilised kernel, with *absorption* of the scalings into
log-potentials (Schmitzer 2019) whenever they leave ``[e^-tau, e^tau]``. Every solve
starts with one exact log-domain sweep (:meth:`Backend.log_sweep`): from the initial (or
warm-start) column potentials it makes every row exact and moves every column,
including clusters that no point likes (``lam * S`` of -600 and below), to the right
scale before the kernel is built. The kernel's rows then sum to 1 and every entry
that matters for the plan is far above float32's underflow; entries below
``exp(-86)`` are stored as exact zeros. The kernel iteration costs one read of the
N x K kernel per sweep (no ``exp``). An absorption rescales the stored kernel in place,
in the next sweep's read (:meth:`Backend.rescale_sweep`: that read plus a write); the
kernel is rebuilt from the scores only when entries stored as zero could hide more than ``e^-5 tol`` of a
cluster's mass, and the exact log-domain sweep re-enters only for non-finite values or a
proposal that jumps beyond the frame (see :mod:`sinklabel._iteration`).

Acceleration (:mod:`sinklabel._accel`): with the rows exact after every sweep, the
iteration is a fixed point of the column potentials alone, and the minimisation of a
smooth convex function of them. By default Newton steps on it (the sweep also gathers
the Hessian from each row's few entries of any weight; the K x K system is solved on the
host) where the backend gathers that cheaply, with safeguarded Anderson mixing of the
fixed-point map before Newton starts and after it gives up, and everywhere else: 5-15x
fewer sweeps than plain at lam 10-100 for Anderson, 2-3x fewer again for Newton. Every
proposal is evaluated by a real sweep, so the error reported is always that of a plan
with exact rows.

Memory: ``kernel="stored"`` allocates the kernel, the one N x K array of a solve;
``kernel="streamed"`` (:meth:`Backend.stream_sweep`) recomputes it from the scores at
every sweep and allocates none. Overwriting the scores with the kernel instead was
measured and rejected: a float32 kernel drops entries below ``exp(-86)`` of their row,
the potentials move by up to ~190 after the first sweep (realistic scores, lam 25), and
rebuilding from the kernel alone then loses ~4 % of the plan's mass for good (the solve
stalls at a 50 % marginal error).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._arrays import array_library, hand_back, stack, to_host
from ._balanced import balance_head, resolve_balanced, uncertified_message
from ._feasibility import check_feasible
from ._iteration import NEWTON_MAX_CLUSTERS, coarse_fraction, coarse_start, iterate, wants_coarse_start
from ._result import ConvergenceWarning, HeadResult, Result
from ._sizes import integer_sizes
from ._validate import (
    check_lam,
    check_lam_scale,
    check_max_iter,
    check_positive_float,
    check_prior,
    check_score_dtype,
    check_weights,
    split_heads,
)
from .backends import get_backend, pick_backend
from .backends._base import Backend

__all__ = ["solve", "assign", "SolveProgress", "Arguments", "Problem", "arguments", "prepare", "run"]

log = logging.getLogger("sinklabel")


@dataclass(frozen=True)
class SolveProgress:
    """What ``solve(..., callback=)`` receives at every convergence check of a head.

    Attributes
    ----------
    head : int
        Index of the head being solved (heads are solved one after another).
    n_heads : int
    n_iter : int
        Evaluations (sweeps and log-domain steps) of this head so far.
    error : float
        Its marginal error there, ``max_k |mass_k / r_k - 1|`` (global over the ranks of
        a distributed solve, equal on every rank).
    tol : float
    max_iter : int
    """

    head: int
    n_heads: int
    n_iter: int
    error: float
    tol: float
    max_iter: int


def _checks(head: int, n_heads: int, tol: float, max_iter: int, callback: Any) -> Callable:
    """The iteration's ``on_check`` for one head: an INFO record on the "sinklabel" logger
    (silent unless logging is configured) and the user's ``callback``."""

    def on_check(n_iter: int, error: float) -> None:
        log.info("head %d/%d: iteration %d, error %.3g (tol %g)", head + 1, n_heads, n_iter, error, tol)
        if callback is not None:
            callback(SolveProgress(head, n_heads, n_iter, float(error), tol, max_iter))

    return on_check


def _warm_start(init: Any, n_heads: int, lam: float, n_clusters: list[int]) -> list[np.ndarray]:
    """Column log-potentials to start each head from (zeros without ``init``)."""
    if init is None:
        return [np.zeros(k) for k in n_clusters]
    scale = 1.0
    if isinstance(init, Result):
        scale = lam / init.lam
        init = [h.log_v for h in init.heads]
    elif isinstance(init, HeadResult):
        init = [init.log_v]
    elif array_library(init) is not None:
        init = [init]
    elif not isinstance(init, (list, tuple)):
        raise TypeError(
            "`init` must be a previous Result, a HeadResult, or column log-potentials "
            f"(an array of shape (n_clusters,) or a list per head); got {type(init).__name__}"
        )
    if len(init) != n_heads:
        raise ValueError(f"`init` holds {len(init)} head(s) but `scores` has {n_heads}")
    out = []
    for t, (g, k) in enumerate(zip(init, n_clusters)):
        if isinstance(g, HeadResult):
            g = g.log_v
        g = np.asarray(to_host(g), dtype=np.float64)
        if g.shape != (k,):
            raise ValueError(
                f"`init` for head {t} must have shape ({k},) (one potential per cluster); "
                f"got shape {g.shape}"
            )
        if np.isnan(g).any() or np.isposinf(g).any():
            raise ValueError(f"`init` for head {t} must not contain NaN or +inf")
        with np.errstate(invalid="ignore"):
            g = g * scale
        # only differences between clusters matter; keep the numbers small
        finite = np.isfinite(g)
        if finite.any():
            g = g - g[finite].max()
        out.append(np.where(finite, g, -np.inf) if not finite.all() else g)
    return out


def solve(
    scores: Any,
    lam: float = 25.0,
    *,
    tol: float = 1e-3,
    max_iter: int = 5000,
    prior: Any = None,
    weights: Any = None,
    init: Any = None,
    backend: str = "auto",
    device: Any = None,
    check_every: int | None = None,
    balanced: bool | None = None,
    acceleration: str | None = "newton",
    kernel: str = "auto",
    callback: Callable[[SolveProgress], Any] | None = None,
) -> Result:
    """Solve the equipartition (balanced) label assignment of SeLa.

    Finds ``Q = diag(u) exp(lam * S) diag(v)`` with rows summing to the point masses
    and columns to the cluster masses (``1/K`` each by default), and hard labels: by
    default exactly balanced ones, the optimum of the paper's linear program with a
    certificate (see ``balanced``), else ``argmax_k Q[i, k]``.

    Parameters
    ----------
    scores : array of shape (n_points, n_clusters), (n_heads, n_points, n_clusters), or list
        Log-probabilities or logits (a per-row constant changes nothing); ``-inf`` marks a
        forbidden pair. numpy, torch or cupy; float16/bfloat16 are computed in float32.
        A list gives one head per array; heads may differ in ``n_clusters``.
    lam : float, default 25
        Inverse regularisation (the paper: 25 on ImageNet, 10 on CIFAR).
    tol : float, default 1e-3
        Stop when ``max_k |mass_k / r_k - 1| <= tol`` with the point masses exact.
    max_iter : int, default 5000
        Sweeps at most, per head; beyond it the head is returned with ``converged=False``
        and a :class:`ConvergenceWarning`.
    prior : array of shape (n_clusters,), optional
        Cluster masses: a probability vector, or integer sizes summing to ``n_points``.
        Default: the equipartition. For several heads with different ``n_clusters`` pass
        a list, one per head.
    weights : array of shape (n_points,), optional
        Nonnegative point masses (normalised to sum to 1). Default: uniform; weights that
        are all equal (to 1e-12 relative, e.g. ``np.ones(N)``) are that default.
    init : Result, HeadResult or array of shape (n_clusters,), optional
        Warm start from a previous solve (its column potentials; rescaled if ``lam``
        changed).
    backend : str or Backend, default "auto"
        ``"auto"`` picks the fastest installed backend for the scores' array library
        (torch for torch tensors, cupy for cupy arrays; for numpy arrays a CPU backend
        unless ``device`` names a GPU). ``"torch"`` with numpy scores computes on torch's
        CPU unless ``device`` says otherwise.
    device : str or torch.device, optional
        Where to compute, e.g. ``"cuda"`` or ``"cuda:1"``; default: where the scores
        are. Results come back in the scores' library and on their device either way.
    check_every : int, optional
        Sweeps between convergence checks (default: the backend's, 1 on the CPU).
    balanced : bool or None, default None
        ``True``: hard labels whose cluster sizes are exactly the integer target sizes
        (the equipartition, or the prior rounded by largest remainder) and that are an
        optimal solution of the paper's linear program, ``max sum_i S[i, y_i]`` under
        those sizes; with ``n_clusters`` not dividing ``n_points`` and no prior, sizes
        ``N // K`` or ``N // K + 1``, the optimiser choosing which clusters get the
        extra points (``target_sizes`` then reports its choice). Found by an auction
        warm-started from the Sinkhorn potentials (about 1 % of the solve's time at
        200,000 x 1,000) and certified by dual prices checked on every pair
        (``certified``, ``gap`` in the result; a :class:`ConvergenceWarning` if the
        certificate fails, the labels still exactly balanced). The scores are read on
        the host: numpy ones in place, a GPU array through one copy to host memory.
        ``False``: the argmax of the plan, as in the paper's code (sizes a few per cent
        off). ``None`` (default): exactly balanced labels whenever they are defined,
        i.e. unless unequal point ``weights`` are given (balanced labels count points);
        then the argmax. The same over the ranks of :func:`sinklabel.distributed.solve`.
        ``HeadResult.balanced`` says which labels were made.
    acceleration : {"newton", "anderson", None}, default "newton"
        ``"newton"``: Newton steps on the K column potentials: each sweep also gathers
        the curvature of the plan's rows from their few entries of any weight (a row's
        clusters with ``p > 1e-3``) and the K x K system is solved on the host; at
        ``lam`` 10-100 a handful of sweeps from the coarse start where Anderson takes
        tens. A step that raises both the objective and the error is retried with more
        damping; after three in a row (e.g. at ``lam`` = 1000, where the plan is nearly
        integral) the solve goes on with Anderson. Used up to 4096 clusters, with
        ``K^2 <= 16 N`` (the host's K x K solve then costs about a sweep), on the backends
        whose curvature costs a few sweeps (numba, stored or streamed kernel; torch / cupy
        on a GPU); elsewhere ``"newton"`` means Anderson.
        ``"anderson"``: safeguarded Anderson acceleration of the column potentials
        (memory 6), typically 5-15x fewer sweeps than plain Sinkhorn at ``lam`` 10-100;
        a proposal that makes the error worse is dropped and the iteration restarts
        from the best point, so it is never much slower than plain. Both decide at
        every sweep: with them, ``check_every`` defaults to 1 (an explicit
        ``check_every > 1`` turns them off). ``None``: plain Sinkhorn-Knopp, as in the
        paper.
    kernel : {"auto", "stored", "streamed"}, default "auto"
        ``"stored"``: build the stabilised kernel ``exp(lam S + a + b)`` once (one more
        N x K array of the scores' float dtype, float32 for half precisions) and sweep
        it: the fastest per sweep. ``"streamed"`` (CPU backends): recompute the kernel
        from the scores at every sweep, so the solve allocates no N x K array at all
        (ImageNet's 1.28M x 3000 float32, 15.4 GB, solves on a 24 GB machine); the
        scores are only read. ``"auto"``: stored, unless the kernel would take more
        than half of the memory available now and the backend can stream.
    callback : callable, optional
        Called as ``callback(info)`` at every convergence check, ``info`` a frozen
        :class:`SolveProgress` (head, n_heads, n_iter, error, tol, max_iter). Each check
        is also logged at INFO level on the ``"sinklabel"`` logger (silent unless logging
        is configured, e.g. ``logging.basicConfig(level=logging.INFO)``).

    Returns
    -------
    Result

    Examples
    --------
    >>> import numpy as np, sinklabel
    >>> S = np.log(np.random.default_rng(0).dirichlet(np.ones(4), size=400))
    >>> res = sinklabel.solve(S, lam=25)
    >>> res.converged, res.labels.shape
    (True, (400,))
    """
    args = arguments(
        scores, lam, tol=tol, max_iter=max_iter, prior=prior, weights=weights, init=init,
        backend=backend, device=device, check_every=check_every, balanced=balanced,
        acceleration=acceleration, kernel=kernel, callback=callback,
    )  # fmt: skip
    return run(prepare(args, args.backend), args.backend)


@dataclass(frozen=True)
class Arguments:
    """The arguments of :func:`solve`, checked as far as one process can check them alone.

    Made by :func:`arguments` without any exchange between processes (so that
    :mod:`sinklabel.distributed` can announce a bad argument on one rank to the others
    before they wait on it); :func:`prepare` completes them with what needs every
    process's points (the number of points, the point masses, the scans).
    """

    heads: list  # the caller's score matrices, one per head (this process's points)
    multi: bool
    backend: Backend  # the backend for this process's points
    device: Any
    lam: float
    tol: float
    max_iter: int
    check_every: int | None
    acceleration: str | None
    kernel: str
    balanced: bool | None  # as given; resolved by prepare
    callback: Any
    priors: list  # per head: None or the prior as given
    weights: np.ndarray | None  # this process's weights on the host, checked, not normalised
    warm: list  # per head: float64 column log-potentials to start from
    warm_given: bool  # whether they came from `init` (else zeros: a cold start)
    started: float  # time.perf_counter() at the call

    @property
    def n_local(self) -> int:
        return int(self.heads[0].shape[0])


def arguments(
    scores: Any,
    lam: float = 25.0,
    *,
    tol: float = 1e-3,
    max_iter: int = 5000,
    prior: Any = None,
    weights: Any = None,
    init: Any = None,
    backend: Any = "auto",
    device: Any = None,
    check_every: int | None = None,
    balanced: bool | None = None,
    acceleration: str | None = "newton",
    kernel: str = "auto",
    callback: Any = None,
) -> Arguments:
    """:func:`solve`'s arguments checked on this process alone (see :class:`Arguments`).

    ``backend`` may also be a :class:`~sinklabel.backends._base.Backend` instance.
    """
    started = time.perf_counter()
    lam = check_lam(lam)
    if acceleration not in ("newton", "anderson", None):
        raise ValueError(f"`acceleration` must be 'newton', 'anderson' or None; got {acceleration!r}")
    if kernel not in ("auto", "stored", "streamed"):
        raise ValueError(f"`kernel` must be 'auto', 'stored' or 'streamed'; got {kernel!r}")
    tol = check_positive_float(tol, "tol")
    max_iter = check_max_iter(max_iter)
    if check_every is not None:
        check_every = check_max_iter(check_every, "check_every")
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` must be callable or None; got {type(callback).__name__}")
    heads, multi, library = split_heads(scores)
    if device is not None and not isinstance(device, str) and type(device).__name__ != "device":
        raise TypeError(f"`device` must be a string such as 'cuda:0'; got {type(device).__name__}")
    if isinstance(backend, Backend):
        B = backend
    else:
        B = get_backend(pick_backend(library, device) if backend == "auto" else backend)
    for t, S in enumerate(heads):
        check_score_dtype(S, f"scores[{t}]" if multi else "scores")
    priors = list(prior) if (multi and isinstance(prior, (list, tuple))) else [prior] * len(heads)
    if len(priors) != len(heads):
        raise ValueError(f"`prior` holds {len(priors)} vectors but `scores` has {len(heads)} heads")
    n_local = heads[0].shape[0]
    if weights is not None:  # shape, finite, nonnegative here; the sum over processes in prepare
        weights = check_weights(weights, n_local, allsum=_no_total)
    warm = _warm_start(init, len(heads), lam, [h.shape[1] for h in heads])
    return Arguments(
        heads=heads, multi=multi, backend=B, device=device, lam=lam, tol=tol, max_iter=max_iter,
        check_every=check_every, acceleration=acceleration, kernel=kernel, balanced=balanced,
        callback=callback, priors=priors, weights=weights, warm=warm, warm_given=init is not None,
        started=started,
    )  # fmt: skip


def _no_total(x: Any) -> np.ndarray:
    """An ``allsum`` for :func:`check_weights` that leaves the weights unnormalised."""
    return np.ones_like(np.asarray(x, dtype=np.float64))


@dataclass(frozen=True)
class Problem:
    """A problem ready to run: :func:`prepare`'s output, :func:`run`'s input.

    Everything here is global (equal on every process of a shared solve) except the
    scores and the point masses, which are this process's.
    """

    args: Arguments
    scores: list  # the heads as the backend computes on them (its library, its device)
    n_points: int  # over every process
    point_masses: np.ndarray  # c: float64, this process's points, summing to 1 over all
    cluster_masses: list  # r per head: float64, summing to 1
    targets: list  # per head: the integer target sizes (see target_sizes)
    flexible: list  # per head: no prior, so N // K or N // K + 1 chosen by the optimiser
    balanced: bool
    stream: bool
    check_every: int
    memory: int  # Anderson memory (0: plain Sinkhorn-Knopp)
    newton: bool  # acceleration="newton": Newton steps (Anderson the fallback) where they pay
    neginf: list  # per head: whether the scores (of any process) hold -inf


def prepare(args: Arguments, backend: Backend) -> Problem:
    """Complete :func:`arguments` on ``backend``: the number of points, priors, point masses,
    target sizes, whether labels are balanced, the stream decision, the scans of the scores.

    No heavy work: one read of the scores (the scan, which also gives the ``lam`` limit
    and whether there is any ``-inf``) and their move to the backend. With a
    backend shared by several processes (:mod:`sinklabel.distributed`) every step that needs
    the other processes' points goes through its ``allsum`` / ``scan``, and every error
    raised here is raised on every process alike.
    """
    B = backend
    heads, multi = args.heads, args.multi
    n_local = args.n_local
    # N counts the points of every process sharing the solve (all of them are here in one)
    n_points = int(B.allsum(np.array([n_local]))[0])
    c_host, weighted = point_masses(args.weights, n_local, n_points, B)
    balanced = resolve_balanced(args.balanced, args.weights if weighted else None, n_points, n_local)
    scores = [B.adopt(S, args.device) for S in heads]
    stream = _streams(B, scores, args.kernel)
    every = B.checks_every(scores[0]) if args.check_every is None else args.check_every
    if args.acceleration is not None and args.check_every is None:
        every = 1  # Newton and Anderson decide at every sweep; their fewer sweeps outweigh the checks
    memory = _ANDERSON_MEMORY if args.acceleration is not None and every == 1 else 0
    r_host, targets = [], []
    for t, (p, S) in enumerate(zip(args.priors, scores)):
        r = check_prior(p, n_points, S.shape[1], f" (head {t})" if multi else "")
        r_host.append(r)
        targets.append(target_sizes(n_points, p, r))
    neginf = []
    for t, S in enumerate(scores):
        where = f"scores[{t}]" if multi else "scores"
        scan = B.scan(S)  # over every process's points
        _check_scan(scan, where, r_host[t])
        check_lam_scale(args.lam, scan.max_abs, where)
        neginf.append(scan.neginf)
        if n_local == n_points:  # one process holds every point: decide feasibility up front
            _check_support(S, where, r_host[t], targets[t], args.priors[t] is None, balanced,
                           c_host, scan.neginf)  # fmt: skip
    return Problem(
        args=args, scores=scores, n_points=n_points, point_masses=c_host, cluster_masses=r_host,
        targets=targets, flexible=[p is None for p in args.priors], balanced=balanced,
        stream=stream, check_every=every, memory=memory, newton=args.acceleration == "newton",
        neginf=neginf,
    )  # fmt: skip


def point_masses(weights: Any, n_local: int, n_points: int, B: Backend) -> tuple[np.ndarray, bool]:
    """The point masses ``c`` of this process's points, and whether they are weighted.

    Weights equal to within 1e-12 (relative) over every process, e.g. ``np.ones(N)``, are
    the default: uniform masses ``1/N`` exactly, reported as not weighted (so that balanced
    labels, which count points, stay the default).
    """
    c = check_weights(weights, n_local, allsum=B.allsum)
    if weights is None:
        return c, False
    uneven = not bool(np.all(np.abs(c * n_points - 1.0) <= 1e-12))
    if B.allsum(np.array([int(uneven)]))[0] > 0:
        return c, True
    return check_weights(None, n_local, allsum=B.allsum), False


def target_sizes(n_points: int, prior: Any, r: np.ndarray) -> np.ndarray:
    """The integer cluster sizes of one head (the one rule, for every path).

    No prior: the equipartition (``N // K``, one more for the first ``N % K``; balanced
    labels may move the extra points, see ``flexible``). Integer sizes: as given. A
    probability prior: largest-remainder rounding of ``r * N`` (``r`` the checked prior).
    """
    if prior is None:
        return integer_sizes(n_points, None, r.shape[0])
    host = to_host(prior)
    return integer_sizes(n_points, host if host.dtype.kind in "iu" else r, r.shape[0])


def _check_scan(scan: Any, where: str, r: np.ndarray) -> None:
    """Refuse what one read of a head's scores found (NaN, +inf, dead rows, needed dead columns)."""
    if scan.nan_at is not None:
        raise ValueError(f"`{where}` must not contain NaN; found one at {scan.nan_at}")
    if scan.posinf_at is not None:
        raise ValueError(f"`{where}` must not contain +inf; found one at {scan.posinf_at}")
    if scan.dead_row is not None:
        raise ValueError(
            f"`{where}` row {scan.dead_row} is -inf for every cluster: that point cannot be assigned"
        )
    needed = scan.dead_cols[r[scan.dead_cols] > 0]
    if needed.size:
        raise ValueError(
            f"`{where}` column {int(needed[0])} is -inf for every point: that cluster "
            f"cannot be reached ({needed.size} such cluster(s)); give it prior 0 or fix the scores"
        )


def _check_support(
    S: Any, where: str, r: np.ndarray, target: np.ndarray, flexible: bool, balanced: bool,
    c: np.ndarray, neginf: bool,
) -> None:  # fmt: skip
    """Refuse -inf patterns that admit no plan (and, for balanced labels, no labelling with
    the integer sizes) before any sweep: free without -inf, else the Hall condition checked
    by :func:`sinklabel._feasibility.check_feasible`. (Across processes no rank sees the
    whole pattern; there an infeasible pattern shows as a solve that does not converge.)"""
    if not neginf:
        return
    if not balanced:
        check_feasible(S, r, c, where=where, neginf=True)
        return
    n, k = S.shape
    lo = np.full(k, n // k) if flexible else target
    hi = lo + (n % k > 0) if flexible else target
    # every point of mass 1/N and r = sizes / N (K divides N, or integer sizes as the prior):
    # the masses' condition is the sizes' one divided by N, checked once (each check is a
    # read of the scores and its augmenting paths: ~2 s at 200,000 x 1,000)
    same = (
        np.array_equal(lo, hi)
        and np.allclose(c * n, 1.0, rtol=1e-12, atol=0.0)
        and np.allclose(r * n, lo, rtol=1e-12, atol=0.0)
    )
    if not same:
        check_feasible(S, r, c, where=where, neginf=True)
    check_feasible(S, lo, np.ones(n), hi=hi, where=where, what="balanced sizes", neginf=True)


def run(problem: Problem, backend: Backend) -> Result:
    """Solve a :class:`Problem` on ``backend`` (the one :func:`prepare` was given): the
    Sinkhorn iteration of each head, then its labels (balanced, or the plan's argmax)."""
    B, p, args = backend, problem, problem.args
    home = args.heads[0]  # results go back to this array's library and device
    lam, n_heads = args.lam, len(p.scores)
    c_host = p.point_masses
    c = B.from_numpy(c_host, like=p.scores[0])
    out_heads, balanced_info = [], []
    with B.host_work(p.scores[0]):  # e.g. numpy's BLAS on one thread (NumbaBackend.host_work)
        for t, S in enumerate(p.scores):
            r = B.from_numpy(p.cluster_masses[t], like=S)
            g0 = B.from_numpy(args.warm[t], like=S)
            # the host's K x K solve (K^3 / 3) may cost at most a few sweeps' multiply-adds
            k = S.shape[1]
            newton = p.newton and k <= NEWTON_MAX_CLUSTERS and k * k <= 16 * p.n_points
            newton = newton and B.newton_pays(S, p.stream)
            if wants_coarse_start(p.n_points, k, args.tol, p.memory, args.warm_given, p.stream):
                g_coarse, coarse = coarse_start(B, S, lam, c, r, g0, p.memory, p.stream, p.neginf[t])
                if coarse is not None:
                    log.info(
                        "head %d: coarse start from 1/%d of the points, %d evaluations, error %.2g%s",
                        t, coarse_fraction(p.stream), coarse.n_iter, coarse.error,
                        "" if g_coarse is not None else " (not used)",
                    )
                if g_coarse is not None:
                    g0 = g_coarse
            on_check = _checks(t, n_heads, args.tol, args.max_iter, args.callback)
            sol = iterate(
                B, S, lam, c, r, g0, args.tol, args.max_iter, p.check_every, p.memory, p.stream, on_check,
                newton=newton,
            )
            certified = gap = picked = None
            if not p.balanced:
                labels, picked = B.argmax(S, lam, sol.log_v)  # the labels' scores in the same pass
            elif B.exchange is None:
                bal = balance_head(B, args.heads[t], S, sol.log_v, lam, p.targets[t], flexible=p.flexible[t])
                labels, certified, gap = B.from_numpy(bal.labels, like=S), bal.certified, bal.gap
            else:  # the points are spread over processes: the gather / auction / certificate protocol
                from ._balanced_ranks import balance_head_over_ranks  # torch.distributed

                got = balance_head_over_ranks(
                    B.exchange, args.heads[t], sol.log_v, lam, p.targets[t], p.flexible[t], B.counts
                )
                labels, certified, gap = B.from_numpy(got["labels"], like=S), got["certified"], got["gap"]
                keys = ("rounds", "points_gathered", "scores_gathered", "status", "root_pairs_bytes")
                balanced_info.append({key: got.get(key) for key in keys})
            picked = B.to_numpy(B.gather(S, labels) if picked is None else picked)[c_host > 0]
            part = np.dot(c_host[c_host > 0], picked) if np.isfinite(picked).all() else -np.inf
            objective = -float(B.allsum(np.array([part]))[0])  # +inf where a label has S = -inf
            sizes = B.allsum(np.bincount(B.to_numpy(labels), minlength=S.shape[1]).astype(np.int64))
            out_heads.append(
                HeadResult(
                    labels=hand_back(labels, home),
                    log_u=hand_back(sol.log_u, home),
                    log_v=hand_back(sol.log_v, home),
                    n_iter=sol.n_iter,
                    converged=sol.converged,
                    error=float(sol.error),
                    errors=np.asarray(sol.errors, dtype=np.float64),
                    objective=objective,
                    sizes=sizes,
                    # flexible sizes: the optimiser's choice, i.e. the sizes the labels have
                    target_sizes=sizes if p.balanced and p.flexible[t] else p.targets[t],
                    balanced=p.balanced,
                    certified=certified,
                    gap=gap,
                )
            )
    uncertified = [t for t, h in enumerate(out_heads) if h.balanced and not h.certified]
    if uncertified:
        warnings.warn(uncertified_message(out_heads, uncertified), ConvergenceWarning, stacklevel=3)
    failed = [t for t, h in enumerate(out_heads) if not h.converged]
    if failed:
        worst = max(out_heads[t].error for t in failed)
        warnings.warn(
            f"sinklabel: {len(failed)} of {len(out_heads)} head(s) did not converge within "
            f"max_iter={args.max_iter} (marginal error {worst:.3g} > tol={args.tol:g}); increase "
            "max_iter, relax tol, lower lam, or warm-start with init=",
            ConvergenceWarning,
            stacklevel=3,
        )
    labels = stack([h.labels for h in out_heads]) if args.multi else out_heads[0].labels
    return Result(
        heads=tuple(out_heads),
        labels=labels,
        lam=lam,
        tol=args.tol,
        backend=B.name,
        wall_time=time.perf_counter() - args.started,
        multi_head=args.multi,
        extra={"balanced": balanced_info} if balanced_info else {},
    )


#: Anderson memory (past residual differences kept); 5-10 measure alike (benchmarks/RESULTS.md)
_ANDERSON_MEMORY = 6


def _streams(B: Backend, heads: list, kernel: str) -> bool:
    """Whether to stream the kernel (see ``solve``'s ``kernel``)."""
    if kernel == "stored" or (kernel == "auto" and not B.supports_stream):
        return False
    if kernel == "streamed":
        if not B.supports_stream:
            raise ValueError(
                f"`kernel='streamed'` is not supported by backend {B.name!r}; use "
                "backend='numba' or 'numpy', or kernel='stored'"
            )
        return True
    S = heads[0]
    need = S.shape[0] * S.shape[1] * max(4, np.dtype(B.compute_dtype(S)).itemsize)
    free = _available_memory()
    short = free is not None and need > free // 2
    # every process of a shared solve streams if one of them must (they sweep together)
    return bool(B.allsum(np.array([int(short)]))[0] > 0)


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``; None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def assign(scores: Any, lam: float = 25.0, **kwargs: Any) -> Any:
    """Hard labels of :func:`solve` (same arguments): shape (n_points,) or (n_heads, n_points)."""
    return solve(scores, lam, **kwargs).labels
