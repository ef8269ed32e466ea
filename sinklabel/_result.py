"""The one result type of :func:`sinklabel.solve`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["HeadResult", "Result", "ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """A head stopped at ``max_iter`` with its marginal error above ``tol``."""


def _shape(x: Any) -> tuple:
    return tuple(getattr(x, "shape", ()))


def _span(sizes: np.ndarray) -> str:
    return f"{int(np.min(sizes))}..{int(np.max(sizes))}" if np.size(sizes) else "-"


@dataclass(frozen=True, eq=False, repr=False)
class HeadResult:
    """The solution for one head.

    Compared by identity (``==`` is ``is``) and hashed by ``id``: two solves are separate
    results even when their fields agree; compare fields, e.g.
    ``np.array_equal(a.labels, b.labels)``, to compare answers.

    The transport plan is ``Q[i, k] = exp(lam * S[i, k] + log_u[i] + log_v[k])``; its rows
    sum to the point masses exactly and its columns to the cluster masses within ``error``.

    Attributes
    ----------
    labels : array of shape (n_points,), int64
        Hard labels, in the caller's array library and on its device.
    log_u : array of shape (n_points,), float64
        Row log-potentials (caller's library and device).
    log_v : array of shape (n_clusters,), float64
        Column log-potentials (caller's library and device). Pass the result as ``init``
        to warm-start the next solve.
    n_iter : int
        Sweeps over the score matrix (every sweep counts, log-domain ones included).
    converged : bool
        Whether the cluster-marginal error reached ``tol``.
    error : float
        Final ``max_k |mass_k / r_k - 1|`` of the plan, point marginals exact.
    errors : ndarray of float64
        The error at every check, in order (one check per ``check_every`` sweeps).
    objective : float
        ``-sum_i w_i S[i, labels_i] / sum_i w_i``: the paper's cross-entropy of the hard
        labels when S holds log-probabilities.
    sizes : ndarray of int64, shape (n_clusters,)
        Number of points per cluster under ``labels``.
    target_sizes : ndarray of int64, shape (n_clusters,)
        Integer sizes of the prior (equipartition by default); ``sizes`` equals it when
        the labels are exactly balanced.
    balanced : bool
        Whether ``labels`` were made exactly balanced (otherwise: argmax of the plan).
    certified : bool or None
        For balanced labels, whether dual prices ``p`` proved them optimal for the
        linear program: ``gap <= 1e-9`` times the mean magnitude of the scores and
        prices involved. ``None`` for argmax labels.
    gap : float or None
        For balanced labels, the duality gap per point (objective units, >= 0): how far
        ``objective`` can at most be above the best exactly balanced labelling's,
        ``(sum_i max_k (S[i, k] - p_k) + sum_k n_k p_k - sum_i S[i, labels_i]) / N``,
        checked on every pair. ``inf`` if a forbidden (-inf) pair had to be used.
    """

    labels: Any
    log_u: Any
    log_v: Any
    n_iter: int
    converged: bool
    error: float
    errors: np.ndarray
    objective: float
    sizes: np.ndarray
    target_sizes: np.ndarray
    balanced: bool = False
    certified: bool | None = None
    gap: float | None = None

    def __repr__(self) -> str:
        extra = ""
        if self.balanced:
            extra = f", balanced=True, certified={self.certified}, gap={self.gap:.3g}"
        return (
            f"HeadResult(n_points={_shape(self.labels)[0] if _shape(self.labels) else '?'}, "
            f"n_clusters={_shape(self.log_v)[0] if _shape(self.log_v) else '?'}, "
            f"n_iter={self.n_iter}, converged={self.converged}, error={self.error:.3g}, "
            f"objective={self.objective:.6g}, sizes={_span(self.sizes)} "
            f"(target {_span(self.target_sizes)}){extra})"
        )


@dataclass(frozen=True, eq=False, repr=False)
class Result:
    """Everything :func:`sinklabel.solve` computed, for one head or several.

    ``repr`` is a summary (shapes, iterations, convergence, size ranges); ``report()`` a
    longer text. Results compare by identity (``==`` is ``is``; the hash is the ``id``),
    like :class:`HeadResult`: fields hold arrays of any library and a wall time, so
    field-wise equality would be neither cheap nor meaningful between two solves.

    Per-head details live in ``heads``; the attributes below summarise them. For a
    single head, ``log_u``, ``log_v``, ``errors``, ``objective``, ``sizes`` are that
    head's; for several heads they are tuples with one entry per head.

    Attributes
    ----------
    heads : tuple of HeadResult
    labels : array of shape (n_points,) for one head, (n_heads, n_points) for several
    converged : bool
        True when every head converged.
    n_iter : int
        The largest iteration count over heads.
    lam, tol : float
        The regularisation and tolerance used.
    backend : str
        The backend that ran, e.g. ``"numpy"``.
    wall_time : float
        Seconds for the whole call, validation included.
    multi_head : bool
        Whether the input was several heads.
    """

    heads: tuple[HeadResult, ...]
    labels: Any
    lam: float
    tol: float
    backend: str
    wall_time: float
    multi_head: bool = False
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def converged(self) -> bool:
        return all(h.converged for h in self.heads)

    @property
    def n_iter(self) -> int:
        return max(h.n_iter for h in self.heads)

    def _per_head(self, name: str) -> Any:
        if self.multi_head:
            return tuple(getattr(h, name) for h in self.heads)
        return getattr(self.heads[0], name)

    @property
    def log_u(self) -> Any:
        return self._per_head("log_u")

    @property
    def log_v(self) -> Any:
        return self._per_head("log_v")

    @property
    def error(self) -> Any:
        return self._per_head("error")

    @property
    def errors(self) -> Any:
        return self._per_head("errors")

    @property
    def objective(self) -> Any:
        return self._per_head("objective")

    @property
    def sizes(self) -> Any:
        return self._per_head("sizes")

    def __repr__(self) -> str:
        ks = tuple(_shape(h.log_v)[0] if _shape(h.log_v) else "?" for h in self.heads)
        sizes = ", ".join(_span(h.sizes) for h in self.heads)
        return (
            f"Result(heads={len(self.heads)}, labels shape={_shape(self.labels)}, "
            f"n_clusters={ks if self.multi_head else ks[0]}, lam={self.lam:g}, tol={self.tol:g}, "
            f"backend={self.backend!r}, n_iter={self.n_iter}, converged={self.converged}, "
            f"sizes={sizes}, wall_time={self.wall_time:.3f}s)"
        )

    def report(self, names: list[str] | None = None) -> str:
        """A short human-readable summary (what the CLI prints); ``names`` label the heads
        (default: their index)."""
        lines = [
            f"backend {self.backend}, lam {self.lam:g}, tol {self.tol:g}, "
            f"{len(self.heads)} head(s), {self.wall_time:.3f} s"
        ]
        for t, h in enumerate(self.heads):
            name = repr(names[t]) if names is not None else str(t)
            dev = np.abs(h.sizes / np.maximum(h.target_sizes, 1) - 1.0)
            state = "converged" if h.converged else "NOT converged"
            line = (
                f"head {name}: {state} in {h.n_iter} iterations, marginal error {h.error:.2e}, "
                f"objective {h.objective:.6g}, sizes min/max {h.sizes.min()}/{h.sizes.max()} "
                f"(target {h.target_sizes.min()}/{h.target_sizes.max()}, "
                f"max deviation {dev.max():.1%})"
            )
            if h.balanced:
                cert = "certified optimal" if h.certified else "NOT certified"
                line += f", balanced ({cert}, gap {h.gap:.3g})"
            lines.append(line)
        return "\n".join(lines)
