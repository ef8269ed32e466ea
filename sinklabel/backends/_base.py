"""The backend contract: the primitives that touch the N x K score matrix.

Notation (see :mod:`sinklabel`): scores ``S`` (N x K), ``lam > 0``, point masses ``c``
(N), cluster masses ``r`` (K). The solver keeps *absorbed* log-potentials ``a`` (N) and
``b`` (K) and a stabilised kernel

    Kmat[i, k] = exp(lam * S[i, k] + a[i] + b[k])       (0 where that is below ``floor``)

together with scalings ``u`` (N) and ``v`` (K), so that the plan is
``Q = diag(u) Kmat diag(v)``. A backend knows nothing of tolerances or iteration
counts; it supplies:

``scan(S)``
    One read of S: the first NaN / +inf entry, the first all ``-inf`` row, the
    all ``-inf`` columns, ``max |S|`` over the finite entries (the ``lam`` limit) and
    whether any entry is ``-inf``. Used for validation before any heavy work.
``log_sweep(S, lam, g, log_c)``
    One exact log-domain Sinkhorn row update and the column log-masses, in one pass:
    ``a_i = -logsumexp_k(lam S_ik + g_k)`` and
    ``col_lse_k = logsumexp_i(lam S_ik + log_c_i + a_i + g_k)``. Never overflows;
    used to start, to warm-start, and to rescue the kernel iteration.
``build_kernel(S, lam, a, b, out)``
    Write ``Kmat`` (the only N x K array a solve allocates) into ``out`` if given.
``log_sweep_build(S, lam, g, log_c, out)``
    ``log_sweep`` that also writes the kernel in the frame ``(a, g)`` (the rows it just
    made exact) into ``out`` (allocated if None): ``(a, col_lse, Kmat)``. The default
    runs the two passes; a backend that fuses them saves an ``exp`` pass at the start
    and at every rescue.
``build_rows(S, lam, a, b, Kmat, rows)``
    Rebuild the rows ``rows`` (host int64 indices) of ``Kmat`` in the frame ``(a, b)``,
    the others untouched: the driver's partial rebuild when only a few rows' stored
    zeros could matter. The default gathers row blocks through ``build_kernel``.
``sweep(Kmat, v, c)``
    The fused iteration: ``u_i = c_i / sum_k Kmat_ik v_k`` (rows exact) and
    ``acc_k = sum_i Kmat_ik u_i``; the column masses of the plan are then ``v * acc``.
``sweep_hessian(Kmat, v, c, thr, rescale=None)``
    ``sweep`` (after an absorption ``rescale``, as ``rescale_sweep``) that also returns the
    curvature of the plan's rows, for Newton steps on the column potentials:
    ``(u, acc, W)`` with ``W`` a host float64 K x K array, ``W = sum_i c_i p_i p_i^T`` over
    this process's rows (the driver sums it over the processes), each row's entries
    ``p_ik > thr`` only (``p_i`` the row of the plan divided by its mass ``c_i``; a row
    with more than ``HESSIAN_CAP`` such entries keeps those above ``1 / HESSIAN_CAP``). The Hessian of the semi-dual at the swept point
    is ``diag(v * acc) - W`` up to the dropped entries. The default takes ``W`` in row
    blocks as a dense product (``N K^2`` multiply-adds: cheap on a GPU); a backend may
    gather the few entries per row instead. ``newton_pays(S)`` says whether it is cheap
    enough here for the driver to take Newton steps (default False).
``rescale_sweep(Kmat, row_log, col_log, v, c, keep)``
    ``rescale_kernel`` then ``sweep``: an absorption followed by the next sweep; the rows
    ``keep`` (host int64 indices, or None), rebuilt in the new frame already, are not
    rescaled. The default runs the two; a backend that fuses them reads the kernel once.
``stream_sweep_hessian(S, lam, a, g, c, thr)`` (only where ``newton_pays(S, stream=True)``)
    ``stream_sweep`` that also returns the rows' curvature ``W`` as ``sweep_hessian`` does,
    for Newton steps with ``kernel="streamed"``: ``(a_next, mass, W)``.
``argmax(S, lam, g)`` / ``gather(S, labels)``
    Hard labels ``argmax_k (lam S_ik + g_k)`` (the first on ties) with their scores
    ``S[i, labels_i]`` in float64, in one pass: ``(labels, picked)``; and ``S[i, labels_i]``
    for labels from elsewhere (the balanced step's).
``stream_sweep(S, lam, a, g, c)`` (only where ``supports_stream``)
    The sweep without a stored kernel, for ``solve(..., kernel="streamed")``: with
    ``E_ik = exp(lam S_ik + a_i + g_k)`` computed on the fly (``a`` the row potentials
    of the previous sweep, so rows of E sum to about 1), returns ``a_i - log sum_k E_ik``
    (rows exact at ``g``) and the column masses ``sum_i c_i E_ik / sum_k E_ik``. No
    N x K array; the driver rescues through ``log_sweep`` if a row overflows.
``rescale_kernel(Kmat, row_log, col_log, keep)``
    ``Kmat *= exp(row_log_i + col_log_k)`` in place (below the floor: 0) but for the rows
    ``keep`` (host int64 indices, or None): absorbs the scalings into the kernel's frame
    without reading the scores.
``adopt(S, device)``
    The scores as the backend computes on them (its library, on ``device``; ``None``:
    where they are, or the host for a numpy array); ``TypeError`` for arrays it cannot
    take. The driver hands results back in the caller's library and device.
``checks_every(S)``
    Sweeps between convergence checks for these scores (``check_every`` by default;
    more on a GPU, where a check synchronises with the host).
``max_float(x)`` / ``all_finite(x)`` / ``allsum(x)``
    The host values every decision of the driver is taken on. A distributed backend
    reduces them over its ranks so that every rank takes the same decision.

Vectors (length N or K) are float64 arrays of the backend's library on the scores'
device; ``xp`` is a numpy-like namespace for the few element-wise operations the driver
does on them.

Adding a backend: one file and one registry line.

1. ``sinklabel/backends/_<name>.py``: a subclass of :class:`Backend` that sets ``name``,
   ``library`` (the array library it computes with), ``xp`` (a numpy-like namespace for the
   driver's element-wise vector operations: ``where``, ``log``, ``exp``, ``abs``,
   ``isfinite``, ``maximum``), ``check_every`` and ``supports_stream``, and implements
   ``owns``, ``from_numpy``, ``to_numpy``, ``compute_dtype``, ``full`` and the primitives
   above (``stream_sweep`` only with ``supports_stream``). ``adopt`` (host backends: any
   array through :func:`sinklabel._arrays.to_host`), ``checks_every``, ``max_float``,
   ``all_finite``, ``allsum`` and ``exp_floor`` have working defaults here.
2. One line in :data:`sinklabel.backends.BACKENDS`: name -> (module, class, pip extra,
   the dependency it needs), imported lazily.

Everything else picks it up from there: ``backend="<name>"`` in :func:`sinklabel.solve`
and :func:`sinklabel.distributed.solve` (the driver does validation, warm starts, the
iteration, balanced labels, and hands results back in the caller's library through
:mod:`sinklabel._arrays`; the distributed wrapper delegates to any backend) and
``tests/test_conformance.py``, which runs every registered backend against the numpy
reference. Two things are not automatic: ``backend="auto"`` chooses among the known
ones (:func:`sinklabel.backends.pick_backend`), and an array library other than numpy,
torch and cupy must also be taught to :mod:`sinklabel._arrays`. A new *primitive* of this
contract (a method every backend gets) must be taught to
:class:`~sinklabel.backends._distributed.DistributedBackend`, which refuses to start
otherwise (how is it combined over ranks?).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._arrays import to_host

__all__ = ["Backend", "Scan", "HESSIAN_CAP"]

#: the most entries of one row that enter ``sweep_hessian``'s curvature (rows with more
#: keep their entries above 1 / HESSIAN_CAP): bounds its cost at N HESSIAN_CAP^2 / 2
HESSIAN_CAP = 32


@dataclass(frozen=True)
class Scan:
    """What one read of the scores found (indices are into the head's matrix)."""

    nan_at: tuple[int, int] | None
    posinf_at: tuple[int, int] | None
    dead_row: int | None
    dead_cols: np.ndarray  # int64 indices of all -inf columns
    max_abs: float  # max |S[i, k]| over the finite entries (0.0 if none)
    neginf: bool  # whether any entry is -inf


class Backend:
    """Base class; see the module docstring for the contract."""

    name: str = "base"
    library: str = "numpy"
    #: how many sweeps between two convergence checks (each check may synchronise a device)
    check_every: int = 1
    #: whether ``stream_sweep`` is implemented (``kernel="streamed"``)
    supports_stream: bool = False
    xp: Any = np
    #: a backend shared by the processes of a group (:mod:`sinklabel.distributed`): its
    #: ``Exchange`` and every process's number of points in rank order; None in one process
    exchange: Any = None
    counts: Any = None

    # -- conversions ------------------------------------------------------------------
    def owns(self, S: Any) -> bool:
        """Whether ``S`` already lives in this backend's library."""
        raise NotImplementedError

    def adopt(self, S: Any, device: Any = None) -> Any:
        """``S`` in this backend's library, on ``device`` (see the module docstring)."""
        if self.owns(S) and device is None:
            return S
        if self.library == "numpy":  # host backends copy torch / cupy arrays to the host
            if device is not None and str(device) != "cpu":
                raise ValueError(
                    f"backend {self.name!r} computes on the CPU; got device={device!r} "
                    "(use backend='torch' or 'cupy' for a GPU)"
                )
            return S if isinstance(S, np.ndarray) else to_host(S)  # torch halves widened
        raise TypeError(
            f"backend {self.name!r} takes {self.library} (or numpy) arrays; got "
            f"{type(S).__module__}.{type(S).__name__}; use backend='auto' or convert the scores"
        )

    def checks_every(self, S: Any) -> int:
        """Sweeps between two convergence checks for scores ``S``."""
        return self.check_every

    def from_numpy(self, x: np.ndarray, like: Any) -> Any:
        """A small host array moved next to ``like`` (same library and device)."""
        raise NotImplementedError

    def to_numpy(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    def compute_dtype(self, S: Any) -> Any:
        """The dtype of the kernel for scores ``S`` (float32 for half precisions)."""
        raise NotImplementedError

    def full(self, n: int, value: float, like: Any) -> Any:
        """A float64 vector of length ``n`` filled with ``value``, next to ``like``."""
        raise NotImplementedError

    # -- the primitives over the N x K matrix ----------------------------------------
    def scan(self, S: Any) -> Scan:
        raise NotImplementedError

    def log_sweep(self, S: Any, lam: float, g: Any, log_c: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def build_kernel(self, S: Any, lam: float, a: Any, b: Any, out: Any = None) -> Any:
        raise NotImplementedError

    def sweep(self, Kmat: Any, v: Any, c: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def log_sweep_build(
        self, S: Any, lam: float, g: Any, log_c: Any, out: Any = None
    ) -> tuple[Any, Any, Any]:
        """``log_sweep`` and the kernel in its frame ``(a, g)``; two passes by default."""
        a, col_lse = self.log_sweep(S, lam, g, log_c)
        return a, col_lse, self.build_kernel(S, lam, a, g, out=out)

    def build_rows(self, S: Any, lam: float, a: Any, b: Any, Kmat: Any, rows: np.ndarray) -> Any:
        """Rows ``rows`` of ``Kmat`` rebuilt in the frame ``(a, b)``, in blocks of rows
        (temporaries of at most ``2^22`` entries); the other rows are left as they are."""
        if rows.size == 0:
            return Kmat
        idx = self.from_numpy(np.ascontiguousarray(rows, dtype=np.int64), like=a)
        step = max(1, (1 << 22) // max(S.shape[1], 1))
        for start in range(0, rows.size, step):
            blk = idx[start : start + step]
            Kmat[blk] = self.build_kernel(S[blk], lam, a[blk], b)
        return Kmat

    def argmax(self, S: Any, lam: float, g: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def stream_sweep(self, S: Any, lam: float, a: Any, g: Any, c: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def stream_sweep_hessian(self, S: Any, lam: float, a: Any, g: Any, c: Any, thr: float) -> tuple[Any, Any, Any]:
        raise NotImplementedError

    def gather(self, S: Any, labels: Any) -> Any:
        raise NotImplementedError

    def rescale_kernel(self, Kmat: Any, row_log: Any, col_log: Any, keep: np.ndarray | None = None) -> Any:
        """``Kmat *= exp(row_log_i + col_log_k)`` in place: absorption without the scores;
        the rows ``keep`` (host int64 indices, or None: rebuilt in the new frame already) are
        left as they are.

        One read and one write of the kernel, where a rebuild is a pass of ``exp`` over
        the scores. Results below ``exp_floor`` become exactly 0 (entries already 0 stay
        0: the driver bounds how far the frame may move before it rebuilds), overflows
        inf (the driver then rescues through ``log_sweep``). This default works in row
        blocks of float64 with ``xp``; backends may fuse it.
        """
        xp = self.xp
        n, k = Kmat.shape
        idx = kept = None
        if keep is not None and keep.size:
            idx = self.from_numpy(np.ascontiguousarray(keep, dtype=np.int64), like=row_log)
            kept = Kmat[idx]  # a copy (advanced indexing): at most a fifth of the rows
        thr = float(np.exp(self.exp_floor(np.float32 if Kmat.dtype.itemsize <= 4 else np.float64)))
        col = xp.exp(col_log)
        step = max(1, (1 << 20) // max(k, 1))
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, n, step):
                blk = Kmat[start : start + step]
                x = blk * (xp.exp(row_log[start : start + step])[:, None] * col)  # float64
                x[~(x >= thr)] = 0.0
                blk[...] = x
        if idx is not None:
            Kmat[idx] = kept
        return Kmat

    def host_work(self, S: Any) -> contextlib.AbstractContextManager:
        """The context a solve runs its iteration and labels in. By default nothing
        changes; a backend whose passes are its own threads, not numpy's BLAS, keeps that
        BLAS to one thread there (:class:`NumbaBackend`), since the host's BLAS calls (the
        objective's N-vector dots, Newton's K x K factorisation) are small next to a pass."""
        return contextlib.nullcontext()

    def newton_pays(self, S: Any, stream: bool = False) -> bool:
        """Whether ``sweep_hessian`` costs only a few sweeps here, so that Newton's steps
        (a handful of them where Anderson takes tens of sweeps) pay: where it gathers the
        few kept entries per row while the row is in cache, or on a GPU, where the dense
        products of the default are cheap. False by default: the dense default costs
        ``N K^2`` multiply-adds, 40x a numpy sweep at 200,000 x 1,000 (measured). With
        ``stream``: whether ``stream_sweep_hessian`` is implemented and pays."""
        return False

    def sweep_hessian(
        self, Kmat: Any, v: Any, c: Any, thr: float, rescale: tuple | None = None
    ) -> tuple[Any, Any, np.ndarray]:
        """``sweep(Kmat, v, c)`` and ``W = sum_i c_i p_i p_i^T`` over the entries of each
        row's ``p_i = Kmat_i v / (Kmat_i . v)`` above ``thr`` (above ``1 / HESSIAN_CAP`` in
        rows with more than ``HESSIAN_CAP`` of them); ``W`` on the host, float64, symmetric.
        ``rescale``: ``(row_log, col_log, keep)``, an absorption to apply first, as
        ``rescale_sweep`` does. This default: ``rescale_kernel``, the sweep, then ``W`` in
        row blocks of float64 (one more read)."""
        if rescale is not None:
            self.rescale_kernel(Kmat, *rescale)
        u, acc = self.sweep(Kmat, v, c)
        n, k = Kmat.shape
        W: Any = None
        step = max(1, (1 << 20) // max(k, 1))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for start in range(0, n, step):
                P = Kmat[start : start + step] * v  # float64
                P /= P.sum(axis=1)[:, None]
                keep = P > thr
                wide = keep.sum(axis=1) > HESSIAN_CAP
                if bool(wide.any()):
                    keep[wide] = P[wide] > 1.0 / HESSIAN_CAP
                P[~keep] = 0.0
                part = P.T @ (P * c[start : start + step, None])
                W = part if W is None else W + part
        return u, acc, np.zeros((k, k)) if W is None else self.to_numpy(W)

    def rescale_sweep(
        self, Kmat: Any, row_log: Any, col_log: Any, v: Any, c: Any, keep: np.ndarray | None = None
    ) -> tuple[Any, Any]:
        """``rescale_kernel(Kmat, row_log, col_log, keep)``, then ``sweep(Kmat, v, c)``."""
        self.rescale_kernel(Kmat, row_log, col_log, keep)
        return self.sweep(Kmat, v, c)

    # -- small helpers the driver uses (host scalars) ---------------------------------
    def max_float(self, x: Any) -> float:
        return float(x.max())

    def all_finite(self, x: Any) -> bool:
        return bool(self.xp.isfinite(x).all())

    def allsum(self, x: Any) -> np.ndarray:
        """The small host array ``x`` summed over the processes that share this solve.

        In one process that is ``x`` itself; :mod:`sinklabel.distributed`'s backend, whose
        ranks each hold a shard of the points, sums it over the ranks (point counts,
        weight totals, objectives, cluster sizes).
        """
        return np.asarray(x)

    @staticmethod
    def exp_floor(dtype: Any) -> float:
        """Exponents below this give kernel entries of exactly 0 (no subnormals)."""
        return -86.0 if np.dtype(dtype).itemsize <= 4 else -700.0
