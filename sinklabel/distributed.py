"""Solves and online codes over several processes, through ``torch.distributed``.

Notation as in :mod:`sinklabel`. Each rank ``r`` of a process group holds a shard of the
points: ``N_r x K`` scores (any array the single-process :func:`sinklabel.solve` takes;
on NCCL, CUDA torch tensors), ``N = sum_r N_r``. The problem solved is the one of the
concatenated scores, in rank order.

:func:`solve` / :func:`assign`
    The single-process driver (:func:`sinklabel._driver.arguments`, ``prepare``, ``run``)
    on every rank, with a backend that runs the rank's own backend on its shard and
    all-reduces the cluster quantities (see :mod:`sinklabel.backends._distributed`): one
    all-reduce of K floats per sweep, plus a few scalars at each convergence check. Every
    rank takes the same decisions at the same sweep and gets the labels (and ``log_u``)
    of its own points; ``log_v``, ``sizes``, ``objective``, ``n_iter`` and ``converged``
    are global and equal on every rank. Masses are global: default point masses are
    ``1/N``, ``weights`` are normalised by their sum over all ranks, equipartition and
    integer priors use the global N. Same keywords and defaults as :func:`sinklabel.solve`:
    labels are exactly balanced over all ranks by default (the balanced step's protocol is
    :mod:`sinklabel._balanced_ranks`). This module adds only the communication: the
    agreement of the arguments, the shard sizes, and the exchange itself.
:func:`batch_codes`
    SwAV's Sinkhorn-Knopp codes for a batch (Caron et al. 2020), equipartitioned over
    the global batch, computed in the log domain (no ``exp(scores / temperature)``).

Failures. Every rank must call with the same arguments (checked: ``lam``, ``tol``,
``prior``, ``init``, ``n_clusters``, dtypes... differ and every rank raises
``ValueError``). Bad input on one rank (NaN, a dead row, bad weights) makes every rank
raise, the same ``ValueError`` where the check is global, else the failing rank its own
error and the others :class:`DistributedError`. A rank whose computation raises or turns
NaN during the solve makes every rank raise at the next convergence check. A rank that
dies is noticed by the transport (gloo: at once; NCCL: through its watchdog); a rank
that hangs, or leaves the solve without an error, holds the others until the process
group's timeout, ``torch.distributed.init_process_group(..., timeout=timedelta(...))``
(torch's default is 30 minutes for gloo and 10 for NCCL), after which they raise
:class:`DistributedError`.

Without an initialised process group (or with one rank) these functions are the
single-process ones.
"""

from __future__ import annotations

import dataclasses
import warnings
import zlib
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import _driver
from ._arrays import array_library, device_of, to_host
from ._result import ConvergenceWarning, Result
from ._validate import check_max_iter, check_positive_float
from .backends._distributed import DistributedBackend, DistributedError, Exchange

__all__ = ["solve", "assign", "batch_codes", "DistributedError"]


def _group_size(group: Any) -> int:
    """The number of ranks to share the work with (1 without an initialised group)."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("`group` was given but torch.distributed is not initialised")
        return 1
    if dist.get_rank(group) < 0:
        raise ValueError(f"this process (global rank {dist.get_rank()}) is not a member of `group`")
    return dist.get_world_size(group)


def _host_bytes(x: Any) -> bytes:
    if x is None:
        return b"none"
    if array_library(x) is not None or isinstance(x, (list, tuple)):
        try:
            arr = to_host(x)
        except (TypeError, ValueError):
            return repr(type(x)).encode()
        return str(arr.dtype).encode() + str(arr.shape).encode() + arr.tobytes()
    return repr(x).encode()


def _fingerprint(args: _driver.Arguments, weights_given: bool) -> int:
    """A checksum of the arguments every rank must agree on (all but the shard itself,
    its weights' values, and the callback)."""
    heads = args.heads
    where = str(args.device).split(":")[0] if args.device is not None else device_of(heads[0]).split(":")[0]
    same = repr(
        (args.multi, [h.shape[1] for h in heads], [str(h.dtype).replace("torch.", "") for h in heads],
         args.lam, args.tol, args.max_iter, args.check_every, weights_given, args.backend.name, where,
         args.balanced, args.kernel, args.acceleration)
    ).encode()  # fmt: skip
    fingerprint = 0
    for part in [same, *(_host_bytes(p) for p in args.priors), *(g.tobytes() for g in args.warm)]:
        fingerprint = zlib.crc32(part, fingerprint)
    return fingerprint


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
    callback: Any = None,
    group: Any = None,
) -> Result:
    """:func:`sinklabel.solve` for the points of all ranks of a process group.

    Call it on every rank of ``group`` with that rank's points and the same arguments.
    The keywords and their defaults are exactly :func:`sinklabel.solve`'s, plus ``group``;
    the problem solved is that of the concatenated shards, in rank order.

    Parameters
    ----------
    scores : array of shape (n_local_points, n_clusters), (n_heads, n_local_points, n_clusters), or list
        This rank's shard of the scores (at least one point per rank).
    weights : array of shape (n_local_points,), optional
        This rank's point masses; normalised by their sum over all ranks (equal weights on
        every rank are the default, as in :func:`sinklabel.solve`).
    balanced : bool or None, default None
        As in :func:`sinklabel.solve`: by default exactly balanced labels over all ranks,
        the LP optimum of the concatenated scores with exact global sizes, certified on
        every rank (the protocol of :mod:`sinklabel._balanced_ranks`: candidates gathered
        on rank 0 sparsely, never an N x K array); with point ``weights``, the argmax.
    callback : callable, optional
        As in :func:`sinklabel.solve`, called on every rank (the errors are global).
    lam, tol, max_iter, prior, init, backend, device, check_every, acceleration, kernel
        As in :func:`sinklabel.solve`, and equal on every rank. Integer priors sum to the
        global number of points.
    group : torch.distributed.ProcessGroup, optional
        Default: the default group; without an initialised one, :func:`sinklabel.solve`.

    Returns
    -------
    Result
        ``labels`` and ``log_u`` of this rank's points; everything else global and equal
        on every rank. ``extra["communication"]`` counts what this rank all-reduced or
        sent (``bytes``) and received point-to-point (``received_bytes``), and the calls,
        by kind: ``sweep``, ``decision``, ``log_sweep``, ``scan``, ``setup``, and for
        balanced labels ``balanced``, ``balanced_gather``, ``balanced_scatter``;
        ``extra["balanced"]`` per head the rounds and what was gathered on rank 0.

    Raises
    ------
    ValueError
        On every rank for bad input on any rank where the rule is global, or arguments
        that differ between ranks.
    DistributedError
        On the other ranks when a rank failed, on every rank when a rank produced NaN or
        the exchange broke (a rank died, or hung past the group's timeout).
    """
    options = dict(
        tol=tol, max_iter=max_iter, prior=prior, weights=weights, init=init, backend=backend,
        device=device, check_every=check_every, balanced=balanced, acceleration=acceleration,
        kernel=kernel, callback=callback,
    )  # fmt: skip
    if _group_size(group) == 1:
        return _driver.solve(scores, lam, **options)
    ex = Exchange(group)
    # every check one rank can make alone, before the first exchange: a failure is announced
    # to the other ranks there instead of leaving them waiting
    args, fingerprint, n_local = None, 0, 0
    try:
        args = _driver.arguments(scores, lam, **options)
        fingerprint, n_local = _fingerprint(args, weights is not None), args.n_local
    except Exception as exc:
        ex.fail(exc)
    # one exchange: failures, the arguments' fingerprint (max and -min), the shard sizes
    msg = np.zeros(2 + ex.world)
    msg[:2] = fingerprint, -fingerprint
    msg[2 + ex.rank] = n_local
    out = ex.reduce(msg, "max", "setup").cpu().numpy()
    ex.check()
    if out[0] != -out[1]:
        raise ValueError(
            "every rank must call sinklabel.distributed.solve with the same arguments "
            "(lam, tol, max_iter, check_every, prior, init, backend, device type, n_clusters, "
            "dtypes, balanced, kernel, acceleration, and weights given or not); they differ "
            "between ranks"
        )
    assert args is not None
    B = DistributedBackend(args.backend, ex, counts=out[2 : 2 + ex.world].astype(np.int64))
    res = _driver.run(_driver.prepare(args, B), B)
    return dataclasses.replace(res, extra={**res.extra, "communication": ex.stats()})


def assign(scores: Any, lam: float = 25.0, **kwargs: Any) -> Any:
    """Hard labels of this rank's points, from :func:`solve` (same arguments)."""
    return solve(scores, lam, **kwargs).labels


def batch_codes(
    scores: Any,
    *,
    temperature: float = 0.05,
    n_iter: int = 3,
    tol: float | None = None,
    hard: bool = False,
    group: Any = None,
) -> Any:
    """SwAV's equipartitioned codes for a batch, balanced over the global batch.

    The codes are ``B`` times the plan ``Q = exp(scores / temperature + f_i + g_k)`` whose
    rows sum to ``1/B`` (``B`` points in the global batch) and whose columns sum to about
    ``1/K``; each row of the codes sums to 1.

    Without ``tol``: exactly ``n_iter`` Sinkhorn-Knopp iterations from ``f = g = 0``, each
    making the cluster masses equal over the whole batch of every rank, then every row
    sum to 1 (SwAV's ``distributed_sinkhorn``, Caron et al. 2020). Computed in the log
    domain with max-shifted log-sum-exps: no overflow or NaN in float32 for any finite
    ``scores / temperature`` (the common copies overflow past about 88). One all-reduce of
    a max and one of a sum (K floats each) per iteration.

    With ``tol``: the solver of :func:`solve` (``lam = 1 / temperature``, point masses
    ``1/B``, cluster masses ``1/K``; its acceleration (Newton / Anderson), exponents formed in
    float64) until the cluster masses are within ``tol``, at most ``n_iter`` sweeps. The
    check is then made again on the codes returned, in their dtype, their column sums
    recomputed in float64 over the global batch: a
    :class:`~sinklabel.ConvergenceWarning` says when those are not within ``tol``.

    Parameters
    ----------
    scores : array of shape (batch, n_clusters)
        This rank's scores (e.g. features times prototypes), torch or numpy; ``-inf``
        marks an excluded pair. Every rank passes the same ``n_clusters`` and options.
    temperature : float, default 0.05
        SwAV's epsilon.
    n_iter : int, default 3
        Iterations (SwAV: 3); with ``tol``, the most sweeps.
    tol : float, optional
        Stop once ``max_k |mass_k / (B / K) - 1| <= tol`` over the global batch.
    hard : bool, default False
        One-hot codes of each row's argmax instead of the soft ones (same shape and type).
    group : torch.distributed.ProcessGroup, optional
        Default: the default group when one is initialised, else this batch alone.

    Returns
    -------
    codes : array of shape (batch, n_clusters)
        Rows sum to 1; the scores' library, device and floating dtype; no gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from sinklabel.distributed import batch_codes
    >>> s = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    >>> q = batch_codes(s, temperature=0.5, n_iter=100, tol=1e-4)  # alone: no process group
    >>> bool(np.allclose(q.sum(axis=1), 1, atol=1e-5)), bool(np.allclose(q.sum(axis=0), 16, rtol=1e-4))
    (True, True)
    """
    library = array_library(scores)
    if library not in ("numpy", "torch"):
        raise TypeError(f"`scores` must be a torch tensor or numpy array; got {type(scores).__name__}")
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(
            f"`scores` must be 2-D of shape (batch, n_clusters); got shape {tuple(scores.shape)}"
        )
    dtype_name = str(scores.dtype).replace("torch.", "")
    if dtype_name not in ("float16", "bfloat16", "float32", "float64"):
        raise TypeError(f"`scores` must hold floating-point scores; got dtype {dtype_name}")
    temperature = check_positive_float(temperature, "temperature")
    n_iter = check_max_iter(n_iter, "n_iter")
    if tol is not None:
        tol = check_positive_float(tol, "tol")
    if not isinstance(hard, (bool, np.bool_)):
        raise TypeError(f"`hard` must be a bool; got {type(hard).__name__}")
    ex = Exchange(group) if _group_size(group) > 1 else None
    X = scores.detach() if library == "torch" else torch.from_numpy(np.ascontiguousarray(scores))
    out_dtype = X.dtype
    with torch.no_grad():
        if tol is None:
            Z = _swav_iterations(X, temperature, n_iter, ex)
        else:
            Z = _solved_logits(scores, X, temperature, n_iter, tol, group)
        if tol is not None:  # the soft codes, as returned (or under the one-hot ones)
            _warn_unless_within(torch.softmax(Z, dim=1).to(out_dtype), tol, n_iter, ex)
        if hard:
            codes = torch.zeros(Z.shape, dtype=out_dtype, device=Z.device)
            codes[torch.arange(Z.shape[0], device=Z.device), Z.argmax(dim=1)] = 1.0
        else:  # exp(Z - logsumexp(Z)): rows sum to 1 to float precision
            codes = torch.softmax(Z, dim=1).to(out_dtype)
    return codes.numpy() if library == "numpy" else codes


def _swav_iterations(X: torch.Tensor, temperature: float, n_iter: int, ex: Exchange | None) -> torch.Tensor:
    """SwAV's ``n_iter`` iterations in the log domain; the codes are ``softmax`` of the
    returned logits ``scores / temperature + g`` over each row."""
    dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
    L = X.to(dtype) / temperature
    row_top = L.amax(dim=1) if L.shape[0] else L[:, 0]
    bad = torch.isnan(X).any() | torch.isposinf(X).any() | ~torch.isfinite(row_top).all()
    # centred rows keep the exponents small; f starts at the row maxima, i.e. at the plan
    # exp(scores / temperature) itself, as SwAV does
    f = torch.where(torch.isfinite(row_top), row_top, torch.zeros_like(row_top))
    L = L - f[:, None]
    g = torch.zeros(L.shape[1], dtype=dtype, device=L.device)
    Z = L  # L + g of the last row step
    for _ in range(n_iter):
        col = torch.logsumexp(L + f[:, None], dim=0)  # log of this rank's column masses
        if ex is not None:  # ... over the global batch, by a max then a sum of shifted exps
            top = ex.reduce(col, "max", "codes", nan=bad).to(L.device, dtype)
            shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
            mass = ex.reduce(torch.exp(col - shift).to(torch.float64), "sum", "codes").to(L.device, dtype)
            col = torch.where(mass > 0, torch.log(mass) + shift, torch.full_like(mass, -np.inf))
        g = torch.where(torch.isfinite(col), -col, torch.zeros_like(col))  # columns equal
        Z = L + g
        f = -torch.logsumexp(Z, dim=1)  # rows sum to 1
    if ex is not None and any(float(st[1]) for st in ex.status.values()):
        raise ValueError(
            "`scores` of the batch must be finite or -inf, with a finite entry in every row; "
            "NaN, +inf or an all -inf row found on some rank"
        )
    if ex is None and bool(bad):
        raise ValueError(
            "`scores` must be finite or -inf, with a finite entry in every row; "
            "found NaN, +inf or an all -inf row"
        )
    return Z


def _solved_logits(
    scores: Any, X: torch.Tensor, temperature: float, n_iter: int, tol: float, group: Any
) -> torch.Tensor:
    """``scores / temperature + log_v`` (float64) with ``log_v`` from :func:`solve` to ``tol``."""
    k = X.shape[1]
    with warnings.catch_warnings():  # the check that counts is made on the codes returned
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = solve(
            scores, 1.0 / temperature, tol=tol, max_iter=n_iter, prior=np.full(k, 1.0 / k),
            balanced=False, group=group,
        )  # fmt: skip
    log_v = torch.as_tensor(to_host(res.log_v), dtype=torch.float64, device=X.device)
    return X.to(torch.float64) / temperature + log_v


def _warn_unless_within(codes: torch.Tensor, tol: float, n_iter: int, ex: Exchange | None) -> None:
    """A ConvergenceWarning unless the column sums of the soft ``codes`` (in float64, over
    the global batch) are within ``tol`` of ``B / K``."""
    size = torch.tensor([float(codes.shape[0])], dtype=torch.float64, device=codes.device)
    part = torch.cat([codes.to(torch.float64).sum(dim=0), size])
    total = part if ex is None else ex.reduce(part, "sum", "codes").cpu()
    if ex is not None:
        ex.check()
    mass, n_total = total[:-1].cpu().numpy(), float(total[-1])
    err = float(np.max(np.abs(mass / (n_total / mass.shape[0]) - 1.0)))
    if not err <= tol:
        warnings.warn(
            f"sinklabel.distributed.batch_codes: cluster masses of the codes are {err:.3g} off "
            f"(tol={tol:g}) after at most n_iter={n_iter} sweeps; raise n_iter or tol",
            ConvergenceWarning,
            stacklevel=3,
        )
