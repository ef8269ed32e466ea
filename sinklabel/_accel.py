"""Safeguarded Anderson acceleration of the Sinkhorn fixed point, on the host.

With the rows made exact inside every sweep, Sinkhorn is a fixed-point map on the column
log-potentials alone, ``F(g) = g + log r - log(column masses at g)``, whose residual
``f = F(g) - g = -log(mass / r)`` is the (log) cluster-marginal error itself. Its
Jacobian is a product of two stochastic matrices, similar to a symmetric positive
semi-definite one, so plain Sinkhorn converges like gradient descent and slows down as
``1 - eps`` when ``lam`` grows; Anderson acceleration (type II, Walker & Ni 2011), the
nonlinear counterpart of GMRES, behaves like ``1 - sqrt(eps)`` on such maps. Measured on
the generated families (see ``benchmarks/RESULTS.md``) it cuts the sweeps to tolerance
by 5-15x at ``lam`` 10-100; the safeguard below keeps it from ever being much worse than
the plain iteration.

Everything here works on K-vectors held in numpy float64, whatever the backend: the
driver moves the column potentials and residuals to the host at each check (K numbers).
Every proposal is evaluated by the next sweep, which makes the rows exact again, so the
error the driver reports is always that of a plan with exact rows.

Safeguards. (1) Restart: the residual norm ``||f||_2`` at the point an Anderson step
proposed is compared with the best one seen; when it is more than ``reject`` (1.2) times
worse, the history is dropped and the iteration restarts from the plain successor of the
best point (already known: no extra sweep). After ``max_restarts`` restarts without a new
best, the accelerator switches itself off: plain Sinkhorn from the best point.
(2) Trust region: an extrapolation is at most ``trust`` times the plain step's length
(10, doubled after every improving step, quartered at every restart). Without it, at
``lam`` = 1000 (near-integral plans, plateaus where the plain step is ~1e-2) the
extrapolations overshoot and restart forever; with it every generated family converges
at ``lam`` = 1000 within a few hundred sweeps, where plain Sinkhorn needs tens of
thousands.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Anderson", "Newton"]


class Anderson:
    """Type-II Anderson mixing of ``x -> G(x)`` on the active coordinates.

    Parameters
    ----------
    active : bool array of shape (n_clusters,)
        Coordinates that move (clusters with positive mass); others are left untouched.
    memory : int
        Number of past residual differences kept (``m``).
    reject : float
        A proposal whose residual norm exceeds ``reject`` times the best one seen is
        rejected (restart).
    start : float
        Mixing starts once the marginal error is below ``start`` (far from the fixed
        point the map is too nonlinear for a secant model).
    max_restarts : int
        Restarts without a new best after which the accelerator switches off.
    reg : float
        Tikhonov regularisation of the least-squares problem, relative to its trace.
    trust, trust_max : float
        An extrapolation moves at most ``trust`` times the plain step's length; the
        bound doubles (up to ``trust_max``) after each step that improves the best
        residual and is quartered at each restart (on plateaus at large ``lam`` the
        plain step is tiny and the unbounded extrapolation overshoots).
    tail, tail_memory : float, int
        Once the marginal error is at most ``tail`` the memory grows to ``tail_memory``
        (the pairs kept so far stay). Far from the fixed point the map is too nonlinear
        for old secant pairs, near it the slowest modes need a longer history: measured
        at 200,000 x 1,000, lam 25, 12 problems (3 families x 4 seeds), 61-80 sweeps with
        12 pairs in the tail against 71-134 with 6 pairs throughout. 20 pairs cut 6 of those
        problems' 411 sweeps to 388 but made 2 of the quality sweep's lam = 1000 solves
        circle at a constant error until max_iter: not kept (benchmarks/RESULTS.md).
    """

    def __init__(
        self,
        active: np.ndarray,
        memory: int = 6,
        reject: float = 1.2,
        start: float = np.inf,
        max_restarts: int = 8,
        reg: float = 1e-10,
        trust: float = 10.0,
        trust_max: float = 1000.0,
        tail: float = 1e-2,
        tail_memory: int = 12,
    ) -> None:
        self.active = np.asarray(active, dtype=bool)
        self.memory = int(memory)
        self.reject = float(reject)
        self.start = float(start)
        self.max_restarts = int(max_restarts)
        self.reg = float(reg)
        self.trust = float(trust)
        self.trust_max = float(trust_max)
        self.tail = float(tail)
        self.tail_memory = int(tail_memory)
        self.enabled = self.memory > 0
        self.restarts = 0  # total, for the log
        self._fails = 0  # restarts since the last new best
        self._dx: list[np.ndarray] = []
        self._df: list[np.ndarray] = []
        self._prev: tuple[np.ndarray, np.ndarray] | None = None
        self._best = np.inf
        self._best_next: np.ndarray | None = None
        self._last_was_mixed = False
        self.restarted = False

    def reset(self) -> None:
        """Forget the history (e.g. after a non-finite evaluation)."""
        self._dx.clear()
        self._df.clear()
        self._prev = None
        self._last_was_mixed = False

    def step(
        self, x: np.ndarray, gx: np.ndarray, err: float, mix: bool = True, record: bool = True
    ) -> np.ndarray:
        """The next point to evaluate, given the map's value ``gx = G(x)`` and the error.

        ``err`` is the marginal error measured at (or after) ``x``. With ``mix=False``
        the plain successor ``gx`` is returned (the driver does so after a log-domain
        step) unless the safeguard restarts; with ``record=False`` the pair is judged
        but kept out of the history (it is not a pair of the map being mixed).
        Coordinates outside ``active`` (``-inf`` potentials) are passed through.
        ``restarted`` tells whether the answer is a restart point.
        """
        if 0 < self.memory < self.tail_memory and err <= self.tail:
            self.memory = self.tail_memory  # near the fixed point: a longer history
        act = self.active
        xa = np.where(act, x, 0.0)
        f = np.where(act, gx - xa, 0.0)
        merit = float(np.sqrt(f @ f))
        self.restarted = False
        if merit < self._best:
            if self._last_was_mixed:
                self.trust = min(2.0 * self.trust, self.trust_max)
            self._best = merit
            self._best_next = gx.copy()
            self._fails = 0
        elif self._last_was_mixed and merit > self.reject * self._best:
            # the extrapolation went astray: drop it, restart from the best point's successor
            self.restarts += 1
            self._fails += 1
            self.trust *= 0.25
            if self._fails >= self.max_restarts:
                self.enabled = False
            self.reset()
            assert self._best_next is not None
            self.restarted = True
            return self._best_next.copy()
        self._last_was_mixed = False
        if not self.enabled:
            return gx
        if not record:
            self.reset()
            return gx
        if self._prev is not None:
            px, pf = self._prev
            self._dx.append(xa - px)
            self._df.append(f - pf)
            if len(self._dx) > self.memory:
                self._dx.pop(0)
                self._df.pop(0)
        self._prev = (xa, f)
        if not self._dx or not mix or err > self.start:
            return gx
        dF = np.stack(self._df, axis=1)
        gram = dF.T @ dF
        gram[np.diag_indices_from(gram)] += self.reg * np.trace(gram) + 1e-300
        try:
            gamma = np.linalg.solve(gram, dF.T @ f)
        except np.linalg.LinAlgError:
            self.reset()
            return gx
        step = (np.stack(self._dx, axis=1) + dF) @ gamma
        size = float(np.sqrt(step @ step))
        if size > self.trust * merit:
            step *= self.trust * merit / size
        proposal = gx - step
        if not np.all(np.isfinite(proposal[act])):
            self.reset()
            return gx
        self._last_was_mixed = True
        return np.where(act, proposal, gx)


def spd_solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``A^-1 b`` for a symmetric positive definite ``A``, which it may overwrite: a
    Cholesky factorisation through scipy when it is installed (half an LU's work: 13 vs
    21 ms at K = 1,000, 0.26 vs 0.47 s at K = 3,000 on a 2-core AMD EPYC), else numpy's LU
    (numpy has no triangular solve). Raises ``np.linalg.LinAlgError`` where the
    factorisation fails (with scipy: ``A`` not numerically positive definite)."""
    try:
        from scipy.linalg import cho_factor, cho_solve
    except ImportError:
        return np.linalg.solve(A, b)
    factor = cho_factor(A, lower=True, overwrite_a=True, check_finite=False)
    return cho_solve(factor, b, check_finite=False)


class Newton:
    """Newton steps on the column potentials, with :class:`Anderson` as the fallback.

    With the rows exact, the solve minimises the semi-dual
    ``F(x) = sum_i c_i logsumexp_k(lam S_ik + x_k) - r . x``, whose gradient is
    ``mass - r`` (the column masses of the plan at ``x``) and whose Hessian is
    ``H = sum_i c_i (diag p_i - p_i p_i^T)`` (``p_i`` the plan's row ``i`` over its mass).
    At the ``lam`` of self-labelling a row keeps only a few clusters of any weight, so
    the sweep at ``x`` gathers ``H`` from those entries too (``Backend.sweep_hessian``)
    and the K x K system is solved on the host: measured at 200,000 x 1,000, lam 25, 9
    evaluations to tol 1e-3 where Anderson takes 71, and the quality sweep's medians 2-3x
    lower at lam 10-100 (benchmarks/RESULTS.md, QUALITY.md).

    Newton starts once the error is below ``start`` (Anderson before). Safeguards: a
    Levenberg-Marquardt term ``mu diag(H)`` (``mu`` divided by 10 after each accepted step,
    multiplied by 10 after each rejected one); a trust radius on the step's largest
    coordinate (at most ``max_step``, inside the float32 kernel's frame; a quarter of the
    rejected step after a rejection, doubled after an accepted step that reached it); a
    step is accepted when ``F`` falls (Armijo), or when the marginal error halves and ``F``
    rises by no more than its rounding. A rejected step is retried from the last accepted
    point (one sweep each); after ``max_fails`` rejections in a row, or ``max_rejects`` in
    all, Newton hands over to Anderson from the best point for the rest of the solve (at
    ``lam`` = 1000 the plans are nearly integral and the quadratic model holds only near
    the solution: measured on the quality sweep, handing over early converges in fewer
    sweeps than insisting).
    """

    def __init__(
        self,
        active: np.ndarray,
        r: np.ndarray,
        memory: int,
        thr: float = 1e-3,
        max_step: float = 29.0,
        mu: float = 1e-6,
        mu_min: float = 1e-9,
        max_fails: int = 3,
        max_rejects: int = 8,
        start: float = 1.0,
    ) -> None:
        self.active = np.asarray(active, dtype=bool)
        self.r = np.asarray(r, dtype=np.float64)
        self.fallback = Anderson(active, memory)
        #: entries of a row's ``p_i`` below this stay out of ``H`` (``sweep_hessian``)
        self.thr = float(thr)
        self.max_step = float(max_step)
        #: the trust radius: a step is at most this long in every coordinate; a quarter of
        #: the rejected step after a rejection, doubled after an accepted step that hit it
        self.radius = float(max_step)
        self.mu = float(mu)
        self.mu_min = float(mu_min)
        self.max_fails = int(max_fails)
        self.max_rejects = int(max_rejects)
        self.enabled = True  # False: Anderson from then on
        #: Newton takes over from Anderson once the error is below ``start`` (from cold
        #: potentials the first moves are of hundreds, far outside the quadratic model)
        self.start = float(start)
        self._engaged = False
        #: the next sweep gathers no curvature when the step just proposed, from a fresh
        #: Hessian, is short (below ``reuse_step``: the Hessian changes little over it) or
        #: starts from an error below ``reuse_err`` (in Newton's quadratic regime: the next
        #: sweep likely converges); a step after it takes that Hessian again (once). Such a
        #: sweep costs ~2 reads less
        self.reuse_step = 0.5
        self.reuse_err = 1e-2
        self._reuse = False
        self.steps = 0  # Newton steps accepted
        self.rejects = 0
        self._fails = 0
        self._curvature: tuple[float, np.ndarray, np.ndarray] | None = None
        #: the last accepted point: x, F, err, its plain successor, (H, grad) on the active
        #: coordinates, and the step proposed from it with grad . step
        self._at: dict | None = None

    @property
    def observing(self) -> bool:
        """Whether the next step needs :meth:`observe` (``F`` and the masses) after the sweep."""
        return self.enabled and self._engaged

    @property
    def wants_curvature(self) -> bool:
        """Whether the next sweep should gather ``H`` (``Backend.sweep_hessian``)."""
        return self.observing and not self._reuse

    @property
    def restarts(self) -> int:
        return self.rejects + self.fallback.restarts

    @property
    def restarted(self) -> bool:
        return not self.enabled and self.fallback.restarted

    def observe(self, objective: float, W: np.ndarray | None, mass: np.ndarray) -> None:
        """The sweep about to be judged: ``F`` there, its ``W`` (None: not gathered, the
        last Hessian is used again; taken over: it becomes the Hessian in place) and column
        masses."""
        self._curvature = (float(objective), W, np.asarray(mass, dtype=np.float64))

    def reset(self) -> None:
        self._at = None
        self._curvature = None
        self._reuse = False
        self.fallback.reset()

    def _step(self, H: np.ndarray, grad: np.ndarray) -> np.ndarray | None:
        """The damped Newton step on the active coordinates (None: no factorisation)."""
        diag = np.diag(H).copy()
        scale = float(diag.mean()) if diag.size else 0.0
        if not (scale > 0.0 and np.isfinite(scale)):
            return None
        A = H + scale / diag.size  # the constant direction (H 1 = 0; grad . 1 = 0)
        A[np.diag_indices_from(A)] += self.mu * diag + 1e-12 * scale
        try:  # positive definite by construction (else: more damping, see _propose)
            d = -spd_solve(A, grad)
        except np.linalg.LinAlgError:
            return None
        size = float(np.abs(d).max()) if d.size else 0.0
        if not np.isfinite(size):
            return None
        if size > self.radius:
            d *= self.radius / size
        return d

    def _propose(self, gx: np.ndarray) -> np.ndarray | None:
        """A step from the last accepted point, retried with ``mu`` 10x up until it factorises."""
        at = self._at
        assert at is not None
        for _ in range(6):
            d = self._step(at["H"], at["grad"])
            if d is not None:
                at["gd"] = float(at["grad"] @ d)
                at["d"] = d
                out = at["gx"].copy()
                out[self.active] = at["x"][self.active] + d
                return out
            self.mu *= 10.0
        return None

    def _give_up(self, x: np.ndarray, gx: np.ndarray, err: float) -> np.ndarray:
        """Anderson from here on, from the best point (the last accepted one)."""
        self.enabled = False
        self.fallback.reset()
        if self._at is not None and self._at["err"] <= err:
            x, gx, err = self._at["x"], self._at["gx"], self._at["err"]
        self._at = None
        return self.fallback.step(x, gx, err, mix=False)

    def step(
        self, x: np.ndarray, gx: np.ndarray, err: float, mix: bool = True, record: bool = True
    ) -> np.ndarray:
        """The next point to evaluate (the same contract as :meth:`Anderson.step`); the
        sweep at ``x`` must have been :meth:`observe`\\ d for a Newton step."""
        if not (self.enabled and self._engaged):
            self._engaged = err <= self.start  # the next sweep gathers the curvature
            return self.fallback.step(x, gx, err, mix=mix, record=record)
        curvature, self._curvature = self._curvature, None
        if curvature is None:  # a log step: no curvature there; the next sweep has it
            self._at = None
            self._reuse = False
            return gx
        F, W, mass = curvature
        at = self._at
        if at is not None and "gd" in at:  # x is the step proposed from `at`: judge it
            # Armijo on F; near the solution F's float32 rounding (~1e-7 of the row terms)
            # hides the decrease, and a step that halves the error within it is taken
            better = F <= at["F"] + 1e-4 * at["gd"] or (
                err <= 0.5 * at["err"] and F <= at["F"] + 1e-6 * (1.0 + abs(at["F"]))
            )
            if not (better and np.isfinite(F)):
                self._reuse = False
                self.rejects += 1
                self._fails += 1
                self.mu = max(self.mu * 10.0, 1e-4)
                self.radius = 0.25 * float(np.abs(at["d"]).max())
                if self._fails >= self.max_fails or self.rejects >= self.max_rejects:
                    return self._give_up(x, gx, err)
                retry = self._propose(gx)
                return self._give_up(x, gx, err) if retry is None else retry
            self.steps += 1
            self._fails = 0
            self.mu = max(self.mu * 0.1, self.mu_min)
            if float(np.abs(at["d"]).max()) >= 0.99 * self.radius:
                self.radius = min(2.0 * self.radius, self.max_step)
        act = self.active
        if W is None:  # a sweep without curvature: the last Hessian again
            assert at is not None
            H = at["H"]
        else:  # W is ours: negated in place when every cluster is active (no K x K copy)
            H = np.negative(W, out=W) if act.all() else -W[np.ix_(act, act)]
            H[np.diag_indices_from(H)] += mass[act]
        self._at = {"x": np.array(x, dtype=np.float64), "F": F, "err": err, "gx": np.array(gx),
                    "H": H, "grad": mass[act] - self.r[act]}  # fmt: skip
        nxt = self._propose(gx)
        if nxt is None:
            return self._give_up(x, gx, err)
        short = float(np.abs(self._at["d"]).max()) < self.reuse_step
        self._reuse = W is not None and (short or err < self.reuse_err)
        return nxt
