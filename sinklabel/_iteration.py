"""The Sinkhorn iteration of one head (see :mod:`sinklabel._driver` for the method)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._accel import Anderson
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
) -> _HeadSolution:
    """Run Sinkhorn on one head until the cluster-marginal error is <= tol (or max_iter).

    Every evaluation (a kernel sweep, or a log-domain step at the start and at each
    absorption) makes the rows exact at the current column potentials ``g`` and measures
    the column error there; the next ``g`` is the plain Sinkhorn successor, or with
    ``memory > 0`` the safeguarded Anderson extrapolation of
    :class:`sinklabel._accel.Anderson`. The state returned is always an evaluated one:
    rows exact, ``error`` its column error (the smallest seen if not converged).

    ``stream``: no stored kernel; each sweep recomputes ``exp(lam S + a + g)`` from the
    scores (:meth:`Backend.stream_sweep`), the row potentials ``a`` of the previous sweep
    keeping it in range, so absorption costs nothing and no N x K array is allocated.
    """
    xp = B.xp
    with np.errstate(divide="ignore"):
        log_c = xp.log(c)
        log_r = xp.log(r)
    active = r > 0
    neg_inf = B.full(r.shape[0], -np.inf, like=r)
    ones = B.full(r.shape[0], 1.0, like=r)
    zeros = B.full(r.shape[0], 0.0, like=r)
    tau = _tau(B.compute_dtype(S))
    errors: list[float] = []
    n_iter = 0
    mixer = Anderson(B.to_numpy(active).astype(bool), memory) if memory > 0 else None

    def column_error(log_mass: Any) -> float:
        # max over active clusters of |mass_k / r_k - 1|; inactive ones hold no mass
        with np.errstate(invalid="ignore", over="ignore"):
            rel = xp.where(
                active, xp.abs(xp.exp(log_mass - xp.where(active, log_r, 0.0)) - 1.0), 0.0
            )
        return B.max_float(rel)

    def log_step(g: Any) -> tuple[Any, Any, float]:
        """One exact log-domain evaluation at column potentials g, and its plain successor."""
        a, col_lse = B.log_sweep(S, lam, g, log_c)
        err = column_error(col_lse)
        with np.errstate(invalid="ignore"):
            g_next = xp.where(active, g + log_r - col_lse, neg_inf)
        return a, g_next, err

    def propose(x: Any, gx: Any, err: float, mix: bool = True, record: bool = True) -> Any:
        """The next column potentials after evaluating ``G(x) = gx`` (plain: ``gx``)."""
        if mixer is None:
            return gx
        nxt = mixer.step(B.to_numpy(x), B.to_numpy(gx), err, mix=mix, record=record)
        return B.from_numpy(nxt, like=gx)

    def finish(converged: bool, state: tuple, err: float) -> _HeadSolution:
        with np.errstate(divide="ignore"):
            if state[0] == "log":  # rows exact: log_u = log c + a
                _, a_s, g_s = state
                log_u, log_v = log_c + a_s, g_s
            else:  # a kernel state: Q = diag(u) exp(lam S + a + b) diag(v)
                _, a_s, u_s, b_s, v_s = state
                log_u, log_v = a_s + xp.log(u_s), b_s + xp.log(v_s)
        restarts = 0 if mixer is None else mixer.restarts
        return _HeadSolution(log_u, log_v, n_iter, converged, err, errors, restarts)

    g = xp.where(active, g0, neg_inf)
    a, g_plain, err = log_step(g)
    n_iter += 1
    errors.append(err)
    best = (err, ("log", a, g))  # the evaluated state with the smallest error
    if err <= tol or n_iter >= max_iter:
        return finish(err <= tol, best[1], err)
    if check_every == 1:  # history only: the next evaluation is at g_plain
        propose(g, g_plain, err, mix=False)
    # stored: Q = diag(u) Kmat diag(v), Kmat = exp(lam S + a + b); streamed: a, x alone
    x = b = g_plain  # x: the column potentials being evaluated (b + log v)
    Kmat = None if stream else B.build_kernel(S, lam, a, b)
    v = ones
    while n_iter < max_iter:
        if stream:
            a_next, mass = B.stream_sweep(S, lam, a, x, c)
        else:
            u, acc = B.sweep(Kmat, v, c)
        n_iter += 1
        if n_iter % check_every and n_iter < max_iter:  # plain, unchecked sweeps
            with np.errstate(divide="ignore", invalid="ignore"):
                if stream:
                    a, x = a_next, xp.where(active, x + xp.log(r / mass), neg_inf)
                else:
                    v = xp.where(active, r / acc, ones)
            continue
        rescue_from = None
        finite = B.all_finite(a_next) if stream else B.all_finite(u)
        if stream:
            mass_ok = B.all_finite(xp.where(active, mass, 0.0))
        else:
            mass_ok = B.all_finite(acc)
            with np.errstate(invalid="ignore", over="ignore"):
                mass = xp.where(active, v * acc, 0.0)
        if not (finite and mass_ok):
            rescue_from = x  # the exact log step cannot overflow
            if mixer is not None:
                mixer.reset()
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                err = B.max_float(xp.where(active, xp.abs(mass / r - 1.0), 0.0))
            errors.append(err)
            state = ("log", a_next, x) if stream else ("kernel", a, u, b, v)
            if err < best[0]:
                best = (err, state)
            if err <= tol:
                return finish(True, state, err)
            with np.errstate(divide="ignore", invalid="ignore"):
                log_ratio = xp.where(active, xp.log(r / mass), zeros)
            if not B.all_finite(log_ratio):  # a column underflowed: absorb from here
                rescue_from = x
                if mixer is not None:
                    mixer.reset()
            else:
                g_next = propose(x, x + log_ratio, err)
                if stream:
                    a, x = a_next, g_next
                    continue
                with np.errstate(divide="ignore", invalid="ignore"):
                    log_v_next = xp.where(active, g_next - b, zeros)
                    row_scale = xp.where(c > 0, u / c, ones[:1])
                    log_spread = max(
                        B.max_float(xp.abs(log_v_next)),
                        B.max_float(xp.abs(xp.log(row_scale))),
                    )
                if not log_spread <= tau:
                    rescue_from = g_next
                else:
                    v = xp.exp(log_v_next)
                    x = g_next
                    continue
        log.debug("absorbing scalings into log-potentials at iteration %d", n_iter)
        while rescue_from is not None and n_iter < max_iter:
            g = rescue_from
            a, g_plain, err = log_step(g)
            n_iter += 1
            errors.append(err)
            if err < best[0]:
                best = (err, ("log", a, g))
            if err <= tol:
                return finish(True, ("log", a, g), err)
            # judged by the safeguard; a one-sweep pair enters the history (and may be
            # mixed) only when the mixed map is one sweep (check_every == 1)
            nxt = propose(g, g_plain, err, mix=check_every == 1, record=check_every == 1)
            rescue_from = nxt if mixer is not None and mixer.restarted else None
        if rescue_from is not None or n_iter >= max_iter:
            break
        # the kernel moves to the log step's plain successor (entries bounded by N/K);
        # the next evaluation is the proposal, if it is within tau of that frame
        b = g_plain
        if not stream:
            Kmat = B.build_kernel(S, lam, a, b, out=Kmat)
        with np.errstate(invalid="ignore"):
            log_v_next = xp.where(active, nxt - b, zeros)
        if stream or B.max_float(xp.abs(log_v_next)) <= tau:
            x, v = nxt, xp.exp(log_v_next)
        else:
            x, v = b, ones
    # not converged: report the evaluated state with the smallest error (rows exact)
    return finish(False, best[1], best[0])
