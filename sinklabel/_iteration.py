"""The Sinkhorn iteration of one head (see :mod:`sinklabel._driver` for the method).

Names, one per quantity (all column vectors have length K, row vectors length N):

``g``, ``x``
    Column log-potentials. ``x`` is the point the next sweep evaluates; a log step
    evaluates ``g``.
``a``
    Row log-potentials that make the rows exact (``a_i = -logsumexp_k(lam S_ik + g_k)``).
``b``, ``v``
    The stored kernel's column frame and scaling: ``x = b + log v``.
``u``, ``acc``
    A stored-kernel sweep's row scalings and column accumulator; the column masses of the
    plan are ``v * acc``.
``mass``
    The column masses of the plan just evaluated (its rows exact).
``err``
    ``max_k |mass_k / r_k - 1|`` over the active clusters.

Two strategies sweep: :class:`_StoredKernel` (``Kmat = exp(lam S + a + b)`` built once,
rescaled in place at each absorption and rebuilt only when the entries it stores as 0
could matter; the plan ``diag(u) Kmat diag(v)``) and :class:`_StreamedKernel`
(no N x K array: each sweep recomputes ``exp(lam S + a + x)`` from the scores, the row
potentials of the previous sweep keeping it in range). :func:`iterate` runs either with the
same loop: sweep, check, propose the next ``x`` (plain or Anderson), and absorb through exact
log-domain steps when anything non-finite appears or a proposal jumps beyond the frame.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._accel import Anderson, Newton
from .backends._base import Backend

log = logging.getLogger("sinklabel")


def _tau(dtype: Any) -> float:
    """Largest |log scaling| tolerated before absorbing (see the module docstring)."""
    return 30.0 if np.dtype(dtype).itemsize <= 4 else 200.0


@dataclass
class _HeadSolution:
    log_u: Any
    log_v: Any
    n_iter: int
    converged: bool
    error: float
    errors: list
    restarts: int = 0  # Anderson proposals dropped by the safeguard


@dataclass
class _LogPoint:
    """An evaluated plan in log form: ``Q = exp(lam S + log c + a + g)`` (rows exact)."""

    a: Any
    g: Any

    def potentials(self, log_c: Any, xp: Any) -> tuple[Any, Any]:
        with np.errstate(divide="ignore"):
            return log_c + self.a, self.g


@dataclass
class _KernelPoint:
    """An evaluated plan of the stored kernel: ``Q = diag(u) exp(lam S + a + b) diag(v)``."""

    a: Any
    u: Any
    b: Any
    v: Any

    def potentials(self, log_c: Any, xp: Any) -> tuple[Any, Any]:
        with np.errstate(divide="ignore"):
            return self.a + xp.log(self.u), self.b + xp.log(self.v)


class _Columns:
    """The cluster side of one head: masses ``r``, the active clusters, and the error."""

    def __init__(self, B: Backend, r: Any) -> None:
        xp = B.xp
        self.B, self.xp, self.r = B, xp, r
        with np.errstate(divide="ignore"):
            self.log_r = xp.log(r)
        self.active = r > 0
        k = r.shape[0]
        self.neg_inf = B.full(k, -np.inf, like=r)
        self.ones = B.full(k, 1.0, like=r)
        self.zeros = B.full(k, 0.0, like=r)

    def error(self, mass: Any) -> float:
        """``err`` of column masses ``mass``; inactive clusters hold no mass."""
        xp = self.xp
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.B.max_float(xp.where(self.active, xp.abs(mass / self.r - 1.0), 0.0))

    def log_error(self, log_mass: Any) -> float:
        """``err`` of column log-masses ``log_mass``."""
        xp = self.xp
        with np.errstate(invalid="ignore", over="ignore"):
            rel = xp.where(
                self.active,
                xp.abs(xp.exp(log_mass - xp.where(self.active, self.log_r, 0.0)) - 1.0),
                0.0,
            )
        return self.B.max_float(rel)

    def log_ratio(self, mass: Any) -> Any:
        """``log(r / mass)`` on the active clusters (0 elsewhere): the plain step of ``x``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.xp.where(self.active, self.xp.log(self.r / mass), self.zeros)


def _objective(B: Backend, rows: float, W: np.ndarray | None, x: Any, cols: _Columns) -> tuple[float, np.ndarray | None]:
    """``rows - r . x`` and ``W`` (or None), ``rows`` (this process's row terms) and ``W``
    summed over the processes in one ``allsum``: the semi-dual objective at ``x`` and the
    curvature."""
    if W is None or B.exchange is None:  # one process: nothing to sum, no copy of W
        total, out = float(B.allsum(np.array([rows]))[0]), W
    else:
        k = W.shape[0]
        both = B.allsum(np.append(W.ravel(), rows))
        total, out = float(both[-1]), both[:-1].reshape(k, k)
    xh, r = B.to_numpy(x), B.to_numpy(cols.r)
    act = r > 0
    return total - float(r[act] @ xh[act]), out


class _StoredKernel:
    """Sweeps of the stored kernel ``Kmat = exp(lam S + a + b)`` at ``x = b + log v``.

    When the scalings leave ``[e^-tau, e^tau]`` they are absorbed into the frame ``(a, b)``
    by rescaling the kernel in place, no ``exp``, while the entries stored as 0 stay
    negligible (:meth:`_lost`): the next sweep does it as it reads the kernel
    (:meth:`Backend.rescale_sweep`: the sweep's read plus a write), but for the rows rebuilt
    from the scores at once when only a few rows' zeros matter; otherwise the kernel is
    rebuilt from the scores in the new frame (one ``exp`` pass, still no log-domain step).
    """

    def __init__(self, B: Backend, S: Any, lam: float, c: Any, cols: _Columns, tol: float) -> None:
        self.B, self.S, self.lam, self.c, self.cols = B, S, lam, c, cols
        #: log of the largest share of a cluster's mass the stored zeros may hide: e^-5 of
        #: the tolerance (the error measured on the kernel's plan is then within 0.7 % of
        #: tol of the full plan's)
        self.LOST = float(np.log(tol)) - 5.0
        #: a partial rebuild brings the bound this far under LOST: the moves that follow
        #: fit in the room without another absorption
        self.ROOM = 8.0
        dtype = B.compute_dtype(S)
        self.tau = _tau(dtype)
        self.floor = B.exp_floor(dtype)
        self.Kmat: Any = None
        #: an absorption's (row_log, col_log) not yet applied to the kernel: the next sweep
        #: applies it in its own read (``Backend.rescale_sweep``)
        self.pending: Any = None
        self.a = self.b = self.x = self.v = self.u = self.acc = None
        self.W: Any = None  # the curvature of the last sweep that gathered it
        self.c_log_c: float | None = None  # sum_i c_i log c_i (the objective's constant)
        # how far the frame rose since the build: a - min a (rows), b - min b (clusters)
        self.up: Any = None  # e^(a - min a) per row (None: ones), as exp: one product per check
        self.a_up_max = 0.0
        self.b_up: Any = 0.0
        with np.errstate(divide="ignore"):  # log of the total point mass (all ranks)
            self.log_mass = float(np.log(B.allsum(np.array([float(c.sum())]))[0]))
        massless = ~(c > 0)
        self.massless = massless if bool(massless.any()) else None  # points of mass 0

    def _frame(self, a: Any, b: Any) -> None:
        """The kernel now holds ``exp(lam S + a + b)``, freshly computed from the scores."""
        self.a, self.b, self.up, self.a_up_max, self.b_up = a, b, None, 0.0, self.cols.zeros
        self.pending = None

    def _build(self, a: Any, b: Any) -> None:
        self._frame(a, b)
        self.Kmat = self.B.build_kernel(self.S, self.lam, a, b, out=self.Kmat)

    def log_sweep(self, g: Any, log_c: Any) -> tuple[Any, Any]:
        """The exact log step at ``g``; the kernel is written in its frame ``(a, g)`` in the
        same pass (:meth:`Backend.log_sweep_build`)."""
        a, col_lse, self.Kmat = self.B.log_sweep_build(self.S, self.lam, g, log_c, out=self.Kmat)
        self._frame(a, g)
        return a, col_lse

    def anchor(self, a: Any, g: Any, g_plain: Any, x: Any = None) -> None:
        """Continue from the log step at ``g`` (rows ``a``, plain successor ``g_plain``):
        the next sweep evaluates ``x`` (default ``g_plain``) on the kernel that step wrote,
        in the frame ``(a, g)``, if ``x`` is within ``tau`` of it; otherwise the kernel is
        rebuilt at ``(a, g_plain)`` and evaluates ``x`` if within ``tau`` of that, else
        ``g_plain``."""
        for target in (g_plain,) if x is None else (x, g_plain):
            log_v = self._offset(target, g)
            if log_v is not None:
                self.x, self.v = target, self.B.xp.exp(log_v)
                return
        self._build(a, g_plain)
        log_v = None if x is None else self._offset(x, g_plain)
        self.x, self.v = (g_plain, self.cols.ones) if log_v is None else (x, self.B.xp.exp(log_v))

    def _offset(self, x: Any, b: Any) -> Any:
        """``log v`` that evaluates ``x`` in the column frame ``b``; None beyond ``tau``."""
        cols = self.cols
        with np.errstate(invalid="ignore"):
            log_v = self.B.xp.where(cols.active, x - b, cols.zeros)
        return log_v if self.B.max_float(self.B.xp.abs(log_v)) <= self.tau else None

    def sweep(self, curvature: float | None = None) -> None:
        """Evaluate ``x``; with ``curvature`` (a threshold) also gather the rows' curvature
        ``W`` for a Newton step (:meth:`Backend.sweep_hessian`)."""
        rescale, self.pending = self.pending, None
        self.W = None
        if curvature is not None:
            self.u, self.acc, self.W = self.B.sweep_hessian(self.Kmat, self.v, self.c, curvature, rescale)
        elif rescale is not None:
            self.u, self.acc = self.B.rescale_sweep(self.Kmat, *rescale[:2], self.v, self.c, rescale[2])
        else:
            self.u, self.acc = self.B.sweep(self.Kmat, self.v, self.c)

    def curvature(self, log_c: Any) -> tuple[float, np.ndarray | None]:
        """After a sweep: the semi-dual objective there,
        ``sum_i c_i logsumexp_k(lam S_ik + x_k) - r . x`` (``logsumexp_k = log c_i -
        log u_i - a_i`` in the frame), and ``W`` if the sweep gathered it (else None),
        both summed over the processes in one ``allsum``."""
        xp = self.B.xp
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.c_log_c is None:  # sum_i c_i log c_i, once
                self.c_log_c = float(xp.where(self.c > 0, self.c * log_c, 0.0).sum())
            log_u = xp.log(self.u)  # the one N-vector: the sums are dot products
            if self.massless is not None:
                log_u[self.massless] = 0.0  # u_i = 0 where c_i = 0
            rows = self.c_log_c - float(self.c @ log_u) - float(self.c @ self.a)
        return _objective(self.B, rows, self.W, self.x, self.cols)

    def plain_move(self) -> None:
        """The plain Sinkhorn step after an unchecked sweep."""
        cols = self.cols
        with np.errstate(divide="ignore", invalid="ignore"):
            self.v = self.B.xp.where(cols.active, cols.r / self.acc, cols.ones)

    def evaluate(self) -> Any:
        """The column masses of the swept plan, or None where it is not finite."""
        finite = self.B.all_finite(self.u)
        mass_ok = self.B.all_finite(self.acc)
        if not (finite and mass_ok):
            return None
        with np.errstate(invalid="ignore", over="ignore"):
            return self.B.xp.where(self.cols.active, self.v * self.acc, 0.0)

    def point(self) -> _KernelPoint:
        return _KernelPoint(self.a, self.u, self.b, self.v)

    def _lost(self, log_weight: Callable[[], float] | None, top: float, b_up: Any, log_v: Any) -> float:
        """Log of the largest share of a cluster's mass the stored zeros may hide.

        An entry stored as 0 was below ``e^floor`` in the frame of the build or of a
        rescale; in the plan it is now below ``c_i e^(floor + A_i + B_k)``, with ``A_i``
        (at most ``top``) bounding ``a_i - min a_i + log(u_i / c_i)`` and
        ``B_k = b_up_k + log v_k`` (minimums over the frames since the build), so cluster
        k loses below ``e^(floor + B_k) sum_i c_i e^A_i`` of its mass. ``log_weight()``
        gives ``log sum_i c_i e^A_i`` over all ranks (None: the bound with ``top`` alone).
        """
        Bk = self._column_rise(b_up, log_v)
        lost = self.floor + self.log_mass + top + Bk
        if lost > self.LOST and log_weight is not None:  # too loose with max_i A_i: sum
            lost = self.floor + log_weight() + Bk
        return float(lost)

    def _column_rise(self, b_up: Any, log_v: Any) -> float:
        """``max_k (B_k - log r_k)`` over the active clusters, ``B_k = b_up_k + log v_k``."""
        B, xp, cols = self.B, self.B.xp, self.cols
        with np.errstate(invalid="ignore"):
            return B.max_float(xp.where(cols.active, b_up + log_v - cols.log_r, -np.inf))

    def _log_sum(self, w: Any) -> float:
        """``log`` of the sum of ``w`` over all ranks (``w``: an N-vector, >= 0)."""
        with np.errstate(divide="ignore"):
            return float(np.log(self.B.allsum(np.array([float(w.sum())]))[0]))

    def _rows_to_rebuild(self, A: Any, b_up: Any) -> np.ndarray | None:
        """Host indices of the rows to rebuild from the scores after an absorption so that
        :meth:`_lost`'s bound falls to ``LOST - ROOM`` (the others are rescaled); None when that
        takes more than a fifth of the rows on some rank (a full rebuild is then as cheap).

        ``A`` bounds each row's rise as in :meth:`_lost`; a rebuilt row's stored zeros are
        below ``e^floor`` in the new frame (its rise becomes 0). The rows of each rank
        keep that rank's share of the bound (its share of the point mass), so the bound
        holds over all ranks without exchanging rows.
        """
        B = self.B
        Bk = self._column_rise(b_up, 0.0)
        c = B.to_numpy(self.c)
        w = B.to_numpy(A).astype(np.float64, copy=False)  # A is ours: worked on in place
        del A
        n = c.shape[0]
        mass = float(c.sum())
        total_mass = float(B.allsum(np.array([mass]))[0])
        top = float(w.max()) if n else 0.0
        with np.errstate(divide="ignore", over="ignore", under="ignore"):
            # sum_i c_i e^(A_i) may be at most e^budget (with room for the next few moves);
            # in units of e^top, this rank's share
            budget = self.LOST - self.ROOM - self.floor - Bk - top
            share = np.exp(budget) * (mass / total_mass) if total_mass > 0 else 0.0
            w -= top
            np.exp(w, out=w)
            w *= c  # c_i e^(A_i - top)
            total = float(w.sum())
            order = np.argsort(w)[::-1]  # heaviest first
            left = w[order]
            del w
            # rebuilding the first m rows of `order` leaves the rest, and the rebuilt rows
            # at rise 0: total - sum over the first m of (c_i e^(A_i - top) - c_i e^-top)
            rebuilt = c[order]
            rebuilt *= np.exp(-top)
            left -= rebuilt
            del rebuilt
            np.cumsum(left, out=left)
            np.subtract(total, left, out=left)
        if n == 0 or total <= share:
            m = 0
        else:
            fits = left <= share
            m = int(np.argmax(fits)) + 1 if fits.any() else n + 1
        too_many = float(m > n // 5)
        if B.allsum(np.array([too_many]))[0] > 0:
            return None
        return np.sort(order[:m]).astype(np.int64)

    def move(self, x: Any) -> bool:
        """Evaluate ``x`` next; False when the scalings cannot be absorbed (rescue).

        Within ``tau`` of the frame: ``v`` moves. Beyond it: the scalings are absorbed into
        the frame, by a rescale of the kernel in place while the stored zeros stay
        negligible (:meth:`_lost`), else by a rebuild from the scores; a proposal more
        than ``tau`` from the point just evaluated goes through the exact log step. One decision over
        the N points per check (``max |log(u / c)|``), as many as before.
        """
        B, xp, cols = self.B, self.B.xp, self.cols
        with np.errstate(divide="ignore", invalid="ignore"):
            log_v = xp.where(cols.active, x - self.b, cols.zeros)
            ratio = self.u / self.c  # u_i / c_i; 1 for points of mass 0
            if self.massless is not None:
                ratio[self.massless] = 1.0
            # max_i |log(u_i / c_i)| as the log of max(max ratio, 1 / min ratio): one decision
            # over the ranks, no N logarithms nor temporaries; NaN stays NaN, 0 gives inf
            extremes = xp.stack([ratio.max(), 1.0 / ratio.min()]) if ratio.shape[0] else ratio
            row_max = math.log(B.max_float(extremes))
            log_dv = xp.where(cols.active, log_v - xp.log(self.v), 0.0)
        if not (B.all_finite(log_v) and np.isfinite(row_max)):
            return False
        # u_i = c_i / sum_k Kmat_ik v_k: the next sweep's u / c moves from this one's by at
        # most the largest change of log v, and grows by at most its largest fall
        step = B.max_float(xp.abs(log_dv))
        grow = max(B.max_float(-log_dv), 0.0)
        spread = max(B.max_float(xp.abs(log_v)), row_max + step)
        if spread <= self.tau:
            top = self.a_up_max + row_max + grow  # >= a_up_i + log(u_i / c_i) next sweep
            if self._lost(None, top, self.b_up, log_v) > self.LOST:  # then sharper
                top = self.a_up_max + math.log(B.max_float(ratio)) + grow

            def log_weight() -> float:  # sum_i c_i e^(a_up_i) (u_i / c_i) e^grow, one pass
                return grow + self._log_sum(self.u if self.up is None else self.up * self.u)

            if self._lost(log_weight, top, self.b_up, log_v) <= self.LOST:
                self.v, self.x = xp.exp(log_v), x
                return True
        if step > self.tau:  # a jump beyond the frame: the exact log step at x (rescue)
            return False
        # absorbed: a += log(u / c), b = x; how far each rose above its lowest frame
        with np.errstate(divide="ignore"):
            row_log = xp.log(ratio, out=ratio)
        if self.up is None:
            a_up = row_log + 0.0  # a copy: row_log rescales the kernel below
        else:
            a_up = xp.log(self.up)
            a_up += row_log
        a_up[~(a_up > 0.0)] = 0.0
        a_up_max = B.max_float(a_up)
        b = xp.where(cols.active, x, self.b)
        with np.errstate(invalid="ignore"):
            b_up = self.b_up + log_v
            b_up = xp.where(cols.active & (b_up > 0.0), b_up, 0.0)

        def log_weight_absorbed() -> float:  # sum_i c_i e^(a_up_i + grow)
            with np.errstate(over="ignore"):
                return grow + self._log_sum(xp.exp(a_up) * self.c)

        lost = self._lost(log_weight_absorbed, a_up_max + grow, b_up, cols.zeros)
        rows = None if lost <= self.LOST else self._rows_to_rebuild(a_up + grow, b_up)
        if lost <= self.LOST or rows is not None:
            a = self.a + row_log
            # the next sweep rescales the kernel as it reads it, but for the few rows
            # whose stored zeros could matter: rebuilt from the scores in the new frame now
            self.pending = (row_log, log_v, rows)
            if rows is not None:
                self.Kmat = B.build_rows(self.S, self.lam, a, b, self.Kmat, rows)
                a_up[B.from_numpy(rows, like=a_up)] = 0.0
                a_up_max = B.max_float(a_up)
            self.a, self.b, self.b_up = a, b, b_up
            with np.errstate(over="ignore"):  # inf: the bound asks for a rebuild
                self.up, self.a_up_max = xp.exp(a_up, out=a_up), a_up_max
        else:
            del a_up
            self._build(self.a + row_log, b)
        self.v, self.x = cols.ones, x
        return True


class _StreamedKernel:
    """Sweeps without a stored kernel: ``exp(lam S + a + x)`` recomputed from the scores,
    ``a`` the row potentials of the previous sweep (rows of it sum to about 1)."""

    def __init__(self, B: Backend, S: Any, lam: float, c: Any, cols: _Columns, tol: float) -> None:
        self.B, self.S, self.lam, self.c, self.cols = B, S, lam, c, cols
        self.a = self.x = self.a_next = self.mass = None
        self.W: Any = None  # the curvature of the last sweep that gathered it

    def log_sweep(self, g: Any, log_c: Any) -> tuple[Any, Any]:
        return self.B.log_sweep(self.S, self.lam, g, log_c)

    def anchor(self, a: Any, g: Any, g_plain: Any, x: Any = None) -> None:
        """Continue from a log step's rows ``a``, evaluating ``x`` (default ``g_plain``) next."""
        self.a, self.x = a, g_plain if x is None else x

    def sweep(self, curvature: float | None = None) -> None:
        """Evaluate ``x``; with ``curvature`` also gather ``W`` (``stream_sweep_hessian``)."""
        if curvature is None:
            self.a_next, self.mass = self.B.stream_sweep(self.S, self.lam, self.a, self.x, self.c)
            self.W = None
        else:
            self.a_next, self.mass, self.W = self.B.stream_sweep_hessian(
                self.S, self.lam, self.a, self.x, self.c, curvature
            )

    def curvature(self, log_c: Any) -> tuple[float, np.ndarray | None]:
        """As :meth:`_StoredKernel.curvature`; here ``logsumexp_k = -a_next_i``."""
        # a_next is finite here (the evaluation was): rows of mass 0 add 0
        return _objective(self.B, -float(self.c @ self.a_next), self.W, self.x, self.cols)

    def plain_move(self) -> None:
        cols = self.cols
        with np.errstate(divide="ignore", invalid="ignore"):
            x = self.B.xp.where(cols.active, self.x + self.B.xp.log(cols.r / self.mass), cols.neg_inf)
        self.a, self.x = self.a_next, x

    def evaluate(self) -> Any:
        finite = self.B.all_finite(self.a_next)
        mass_ok = self.B.all_finite(self.B.xp.where(self.cols.active, self.mass, 0.0))
        return self.mass if finite and mass_ok else None

    def point(self) -> _LogPoint:
        return _LogPoint(self.a_next, self.x)

    def move(self, x: Any) -> bool:
        self.a, self.x = self.a_next, x
        return True


class _Progress:
    """Sweeps done, the error history, the best evaluated point, and the check hook."""

    def __init__(self, tol: float, on_check: Callable[[int, float], Any] | None) -> None:
        self.tol, self.on_check = tol, on_check
        self.n_iter = 0
        self.errors: list[float] = []
        self.best_err = np.inf
        self.best: Any = None

    def checked(self, err: float, point: Any) -> bool:
        """Record the error of an evaluated point; True when it is within ``tol``."""
        self.errors.append(err)
        if self.best is None or err < self.best_err:
            self.best_err, self.best = err, point
        if self.on_check is not None:
            self.on_check(self.n_iter, err)
        return err <= self.tol


def iterate(
    B: Backend,
    S: Any,
    lam: float,
    c: Any,
    r: Any,
    g0: Any,
    tol: float,
    max_iter: int,
    check_every: int,
    memory: int = 0,
    stream: bool = False,
    on_check: Callable[[int, float], Any] | None = None,
    newton: bool = False,
) -> _HeadSolution:
    """Run Sinkhorn on one head until the cluster-marginal error is <= tol (or max_iter).

    Every evaluation (a kernel sweep, or a log-domain step at the start and at each
    absorption) makes the rows exact at the current column potentials and measures the
    column error there; the next ``x`` is the plain Sinkhorn successor, or with
    ``memory > 0`` the safeguarded Anderson extrapolation of
    :class:`sinklabel._accel.Anderson`. The state returned is always an evaluated one:
    rows exact, ``error`` its column error (the smallest seen if not converged).

    ``stream``: no stored kernel (:class:`_StreamedKernel`); absorption then costs nothing
    and no N x K array is allocated. ``on_check(n_iter, err)`` is called at every
    convergence check. ``newton`` (with ``memory > 0`` and a check at every sweep): the
    proposals are :class:`sinklabel._accel.Newton`'s steps, each sweep
    gathering the curvature they need, with Anderson as the fallback.
    """
    xp = B.xp
    with np.errstate(divide="ignore"):
        log_c = xp.log(c)
    cols = _Columns(B, r)
    mode = (_StreamedKernel if stream else _StoredKernel)(B, S, lam, c, cols, tol)
    progress = _Progress(tol, on_check)
    active = B.to_numpy(cols.active).astype(bool)
    mixer: Anderson | Newton | None = None
    if memory > 0 and newton and check_every == 1:
        mixer = Newton(active, B.to_numpy(r), memory)
    elif memory > 0:
        mixer = Anderson(active, memory)

    def curvature() -> float | None:
        """The threshold of the curvature the next sweep gathers (None: a plain sweep)."""
        return mixer.thr if isinstance(mixer, Newton) and mixer.wants_curvature else None

    def log_step(g: Any) -> tuple[Any, Any, float]:
        """One exact log-domain evaluation at ``g``: rows ``a``, plain successor, ``err``."""
        a, col_lse = mode.log_sweep(g, log_c)
        progress.n_iter += 1
        with np.errstate(invalid="ignore"):
            g_plain = xp.where(cols.active, g + cols.log_r - col_lse, cols.neg_inf)
        return a, g_plain, cols.log_error(col_lse)

    def propose(x: Any, gx: Any, err: float, mix: bool = True, record: bool = True) -> Any:
        """The next column potentials after evaluating ``G(x) = gx`` (plain: ``gx``)."""
        if mixer is None:
            return gx
        nxt = mixer.step(B.to_numpy(x), B.to_numpy(gx), err, mix=mix, record=record)
        return B.from_numpy(nxt, like=gx)

    def forget(x: Any) -> Any:
        """Drop the mixer's history (the iteration restarts from ``x``)."""
        if mixer is not None:
            mixer.reset()
        return x

    def finish(converged: bool, point: Any, err: float) -> _HeadSolution:
        log_u, log_v = point.potentials(log_c, xp)
        restarts = 0 if mixer is None else mixer.restarts
        return _HeadSolution(log_u, log_v, progress.n_iter, converged, err, progress.errors, restarts)

    g = xp.where(cols.active, g0, cols.neg_inf)
    a, g_plain, err = log_step(g)
    if progress.checked(err, _LogPoint(a, g)) or progress.n_iter >= max_iter:
        return finish(err <= tol, progress.best, err)
    if check_every == 1:  # history only: the next evaluation is at g_plain
        propose(g, g_plain, err, mix=False)
    mode.anchor(a, g, g_plain)
    while progress.n_iter < max_iter:
        thr = curvature()
        observing = isinstance(mixer, Newton) and mixer.observing
        mode.sweep(thr)
        progress.n_iter += 1
        if progress.n_iter % check_every and progress.n_iter < max_iter:  # unchecked sweeps
            mode.plain_move()
            continue
        mass = mode.evaluate()
        if mass is None:  # something non-finite: absorb from x (the log step cannot overflow)
            rescue_from = forget(mode.x)
        else:
            err = cols.error(mass)
            point = mode.point()
            if progress.checked(err, point):
                return finish(True, point, err)
            log_ratio = cols.log_ratio(mass)
            if not B.all_finite(log_ratio):  # a column underflowed: absorb from x
                rescue_from = forget(mode.x)
            else:
                if observing:
                    objective, W = mode.curvature(log_c)
                    mixer.observe(objective, W, B.to_numpy(mass))  # type: ignore[union-attr]
                x_next = propose(mode.x, mode.x + log_ratio, err)
                if mode.move(x_next):
                    continue
                rescue_from = x_next  # the scalings would leave range: absorb there
        log.debug("absorbing scalings into log-potentials at iteration %d", progress.n_iter)
        # exact log steps from rescue_from until the safeguard accepts a proposal
        while rescue_from is not None and progress.n_iter < max_iter:
            g = rescue_from
            a, g_plain, err = log_step(g)
            if progress.checked(err, _LogPoint(a, g)):
                return finish(True, _LogPoint(a, g), err)
            # judged by the safeguard; a one-sweep pair enters the history (and may be
            # mixed) only when the mixed map is one sweep (check_every == 1)
            nxt = propose(g, g_plain, err, mix=check_every == 1, record=check_every == 1)
            rescue_from = nxt if mixer is not None and mixer.restarted else None
        if rescue_from is not None or progress.n_iter >= max_iter:
            break
        # the kernel moves to the log step's plain successor (entries bounded by N/K);
        # the next evaluation is the proposal, if it is within tau of that frame
        mode.anchor(a, g, g_plain, nxt)
    # not converged: report the evaluated state with the smallest error (rows exact)
    return finish(False, progress.best, progress.best_err)


#: Newton steps only up to this many clusters: its curvature is a K x K float64 array (per
#: thread on the CPU: 134 MB at 4096) and its factorisation K^3 / 3 multiply-adds per step
NEWTON_MAX_CLUSTERS = 4096

#: the coarse start (:func:`coarse_start`): one point in COARSE_FRACTION, solved to COARSE_TOL.
#: 10, not 20 since Newton: its full solve starts closer (fewer moves of the trust radius's
#: length, fewer absorptions and rebuilds; measured at 200,000 x 1,000, RESULTS.md)
COARSE_FRACTION = 10
#: with ``kernel="streamed"`` (the mode that allocates no N x K array) a twentieth: the
#: sample's copy is N / 20 x K (measured at ImageNet scale: a tenth's copy raised the
#: streamed solve's peak from 1.06x to 1.11x of the scores)
COARSE_FRACTION_STREAMED = 20


def coarse_fraction(stream: bool) -> int:
    """The coarse start samples one point in this many."""
    return COARSE_FRACTION_STREAMED if stream else COARSE_FRACTION
COARSE_TOL = 0.3
#: at most this many evaluations of the sample (it is then not used)
COARSE_MAX_ITER = 60
#: only for problems of at least this many entries and COARSE_POINTS points per cluster
#: in the sample (below, the start is cheap next to the rest of the solve)
COARSE_MIN_ENTRIES = 1 << 24
COARSE_POINTS = 8


def wants_coarse_start(
    n_points: int, n_clusters: int, tol: float, memory: int, warm: bool, stream: bool = False
) -> bool:
    """Whether :func:`run <sinklabel._driver.run>` starts a head from :func:`coarse_start`:
    a cold (not warm-started) accelerated solve of a large problem to a tolerance below
    ``COARSE_TOL``. Depends only on numbers every process of a solve shares."""
    return (
        not warm
        and memory > 0
        and tol < COARSE_TOL
        and n_points * n_clusters >= COARSE_MIN_ENTRIES
        and n_points >= coarse_fraction(stream) * COARSE_POINTS * n_clusters
    )


def coarse_start(
    B: Backend, S: Any, lam: float, c: Any, r: Any, g0: Any, memory: int, stream: bool, neginf: bool
) -> tuple[Any, _HeadSolution] | tuple[None, _HeadSolution | None]:
    """Column potentials to start a cold solve from: a random ``1 / coarse_fraction(stream)`` of
    the points (the same on every call: seed 0), their masses scaled to sum to 1, solved
    to ``COARSE_TOL``; ``(None, ...)`` when the sample does not get there (e.g. a
    cluster only points outside it can reach).

    Why: from cold potentials the first evaluations move the column potentials by
    hundreds (clusters few points like take ``lam`` times their handicap), far beyond
    the float32 kernel's frame, and each move costs an ``exp`` pass over the scores; the
    sample makes those moves at a tenth of the price, so that the full solve starts
    within the frame of its first log step (measured: one ``exp`` pass over the scores
    instead of four to six at 200,000 x 1,000, and fewer evaluations; RESULTS.md).
    Memory: the sampled rows are copied (N / 10 x K; N / 20 x K with ``stream``), and their
    kernel unless ``stream``.
    With ``-inf`` scores (``neginf``) the sample is scanned first: a cluster none of its
    points can reach is not tried (one read of the sample).
    """
    n_local = S.shape[0]
    m = n_local // coarse_fraction(stream)
    if B.allsum(np.array([float(m == 0)]))[0] > 0:  # some process would sample nothing
        return None, None
    idx = np.sort(np.random.default_rng(0).choice(n_local, m, replace=False)).astype(np.int64)
    take = B.from_numpy(idx, like=c)
    c_sub = c[take]
    total = float(B.allsum(np.array([float(B.to_numpy(c_sub).sum())]))[0])
    if not total > 0:
        return None, None
    sub = S[take]
    neginf = B.allsum(np.array([float(neginf)]))[0] > 0  # any process's scores
    if neginf and B.to_numpy(r)[B.scan(sub).dead_cols].any():
        return None, None
    # Anderson: Newton's K x K step is not worth it on a sample (measured at N / 20)
    sol = iterate(B, sub, lam, c_sub / total, r, g0, COARSE_TOL, COARSE_MAX_ITER, 1, memory, stream)
    return (sol.log_v if sol.converged else None), sol
