"""Is there a plan at all? Feasibility of the ``-inf`` pattern, decided before any sweep.

A ``-inf`` score forbids a (point, cluster) pair. A plan with point masses ``c`` and cluster
masses ``r`` that uses only the allowed pairs exists if and only if (Gale, Hall) every set
``A`` of clusters can be reached by enough points::

    c(N(A)) >= r(A)        N(A) = points with a finite score in some cluster of A

The all ``-inf`` column (``A`` one cluster, nobody reaches it) and the all ``-inf`` row are
special cases. Exactly balanced labels need the same with integer sizes and unit point
masses; when ``n_clusters`` does not divide ``n_points`` and no prior is given, the sizes
range over ``[lo, hi] = [N // K, N // K + 1]`` (the optimiser picks which clusters get the
extra point), and then both ``|N(A)| >= lo(A)`` and ``|points confined to A| <= hi(A)`` must
hold for every ``A``.

Without this check an infeasible pattern is found only by running to ``max_iter`` (5,000
sweeps at 20,000 x 100: 31-35 s, against 0.13 s for the feasible solve) and returning an
uncertified, infinite-objective answer.

How: one read of the scores finds whether any ``-inf`` is present (a min-reduction per row
block); without one the check ends there. With some, the same pass keeps the pattern as
packed bits (N x K / 8 bytes: 25 MB at 200,000 x 1,000), the mass that can reach each
cluster, and a first assignment of every point to an allowed cluster (its share of the
interval layout of the masses, moved to the next allowed cluster where forbidden). The
per-cluster and per-point conditions are checked on these; then excess mass is moved along
augmenting paths (Ford-Fulkerson on the cluster graph, one breadth-first search over
K x K per path, each path realised point by point). When no path is left, the clusters
that could still feed a short cluster form a violating set ``A``, which the error names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import array_library, to_host

__all__ = ["check_feasible", "has_neginf"]

#: row-block size of the pass over the scores (elements per block)
_BLOCK_ELEMENTS = 1 << 20
#: at most this many clusters are listed by name in an error
_SHOW = 10


def _row_blocks(n: int, k: int):
    step = max(1, _BLOCK_ELEMENTS // max(k, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _block_min(X: Any) -> float:
    if array_library(X) == "torch" and X.dtype.itemsize < 4:
        X = X.float()
    return float(X.min())


def has_neginf(S: Any) -> bool:
    """Whether the 2-D scores hold any ``-inf`` (one read: a min per row block, on the
    array's own device)."""
    n, k = S.shape
    return any(_block_min(S[blk]) == -np.inf for blk in _row_blocks(n, k))


def check_feasible(
    S: Any,
    lo: Any,
    c: Any,
    *,
    hi: Any = None,
    where: str = "scores",
    what: str = "cluster masses",
    neginf: bool | None = None,
) -> None:
    """Raise ``ValueError`` unless some plan on the finite entries of ``S`` has the masses.

    Parameters
    ----------
    S : array of shape (n_points, n_clusters)
        Scores (numpy, torch or cupy), already checked for NaN and +inf. Only read.
    lo : array of shape (n_clusters,)
        Cluster masses (for balanced labels: the integer sizes).
    c : array of shape (n_points,)
        Point masses (for balanced labels: ones). ``c.sum()`` must equal ``lo.sum()``.
    hi : array of shape (n_clusters,), optional
        Upper cluster masses when sizes may range over ``[lo, hi]``; default ``lo``.
    where : str
        The argument's name for messages (``"scores"``, ``"scores[1]"``).
    what : str
        What the masses are, for messages (``"cluster masses"``, ``"balanced sizes"``).
    neginf : bool, optional
        Whether ``S`` holds any ``-inf``, if the caller already knows (then ``False`` costs
        nothing); by default found by one read.

    Cost: one read of ``S`` when it holds no ``-inf``. Otherwise two reads, packed bits of
    the pattern (N K / 8 bytes) and the augmenting paths (each a K x K search).
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = lo if hi is None else np.asarray(hi, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    if neginf is None:
        neginf = has_neginf(S)
    if not neginf:
        return
    problem = _Problem(S, lo, hi, c, where, what)
    problem.check()


def _pattern_rows(S, w, open_, all_open, target, bits, reach, assign, ok, chunks):
    """The pass of :meth:`_Problem._read` compiled (numba): per row, the finite entries'
    bits (``np.packbits`` order), its weight ``w_i`` added to the reach of each of them,
    and its first allowed cluster from its target on, cyclically (0 and ``ok_i`` False if
    none); rows in ``chunks`` contiguous chunks, one row of ``reach`` per chunk."""
    n, k = S.shape
    full = k // 8
    for t in prange(chunks):
        acc = reach[t]
        for i in range(t * n // chunks, (t + 1) * n // chunks):
            row = S[i]
            out = bits[i]
            for b in range(full):
                byte = 0
                for q in range(8):
                    byte |= np.uint8(row[8 * b + q] > -np.inf) << np.uint8(7 - q)
                out[b] = byte
            if full * 8 < k:
                byte = 0
                for j in range(full * 8, k):
                    byte |= np.uint8(row[j] > -np.inf) << np.uint8(7 - (j - full * 8))
                out[full] = byte
            wi = w[i]
            for j in range(k):
                acc[j] += wi if row[j] > -np.inf else 0.0
            pick = -1
            j = target[i]
            for _ in range(k):
                if row[j] > -np.inf and (all_open or open_[j]):
                    pick = j
                    break
                j = j + 1 if j + 1 < k else 0
            assign[i] = pick if pick >= 0 else 0
            ok[i] = pick >= 0


prange = range  # numba.prange in the compiled binding
_compiled: dict[str, Any] = {}


def _compiled_pattern(S: Any) -> Any:
    """The compiled pass for a numpy float32 / float64 ``S`` when numba is installed, else
    None (the numpy blocks below: torch, cupy, float16, no numba)."""
    if not (isinstance(S, np.ndarray) and S.dtype in (np.float32, np.float64)):
        return None
    if "pattern" not in _compiled:
        try:
            import numba
        except ImportError:
            _compiled["pattern"] = None
        else:
            from ._auction import _rebind

            env = dict(globals(), prange=numba.prange)
            _compiled["pattern"] = numba.njit(cache=True, parallel=True)(_rebind(_pattern_rows, env))
    return _compiled["pattern"]


def _threads() -> int:
    import numba

    return numba.get_num_threads()


class _Problem:
    """The pattern, the masses and a current assignment of the point masses."""

    def __init__(self, S: Any, lo: np.ndarray, hi: np.ndarray, c: np.ndarray, where: str, what: str):
        self.n, self.k = S.shape
        self.lo, self.hi, self.c = lo, hi, c
        self.where, self.what = where, what
        # below 1e-9 of a mean point's mass, plus 1e-11 of the total: the moves below add
        # and subtract masses thousands of times, and their rounding (measured: 3e-14 of the
        # total at 200,000 x 100) must not read as a missing point (it refused feasible
        # patterns); a deficit that small is far below any tolerance the solve can reach
        total = max(float(c.sum()), 1e-300)
        self.tol = total * (1e-9 / max(self.n, 1) + 1e-11)
        self.unit = float(c[0]) if c.size and np.all(c == c[0]) and c[0] > 0 else None
        self._read(S)

    # -- the one pass over the scores ------------------------------------------------
    def _read(self, S: Any) -> None:
        n, k = self.n, self.k
        open_ = self.hi > 0
        # interval layout: each point's mass and each cluster's upper mass laid along [0, 1];
        # a point's target is the cluster under the middle of its interval
        mid = (np.cumsum(self.c) - self.c / 2) / self.c.sum()
        edges = np.cumsum(self.hi) / self.hi.sum()
        target = np.minimum(np.searchsorted(edges, mid, side="right"), k - 1)
        self.bits = np.empty((n, (k + 7) // 8), dtype=np.uint8)
        self.reach = np.zeros(k)  # mass of the points that can reach each cluster
        self.assign = np.empty(n, dtype=np.int64)
        all_open = bool(open_.all())
        compiled = _compiled_pattern(S)
        if compiled is not None:  # one parallel pass, no N x K temporaries
            chunks = max(1, min(n, 4 * _threads())) if n * k >= 1 << 21 else 1
            reach = np.zeros((chunks, k))
            ok = np.empty(n, dtype=np.bool_)
            weights = np.ones(n) if self.unit is not None else self.c
            compiled(S, weights, open_, all_open, target, self.bits, reach, self.assign, ok, chunks)
            self.reach = reach.sum(axis=0)
            if self.unit is not None:
                self.reach *= self.unit
            ok |= self.c == 0  # a massless point needs no cluster
            self.stranded = np.flatnonzero(~ok)[:_SHOW].tolist()
            return
        cols = np.arange(k)
        stranded = []
        for blk in _row_blocks(n, k):
            X = to_host(S[blk] > -np.inf) if array_library(S) != "numpy" else S[blk] > -np.inf
            X = np.asarray(X, dtype=bool)
            self.bits[blk] = np.packbits(X, axis=1)
            if self.unit is not None:
                self.reach += self.unit * np.count_nonzero(X, axis=0)
            else:
                self.reach += self.c[blk] @ X.astype(np.float32)
            allowed = X if all_open else X & open_
            ok = allowed.any(axis=1) | (self.c[blk] == 0)  # a massless point needs no cluster
            if not ok.all():
                stranded.extend((blk.start + np.flatnonzero(~ok)).tolist()[:_SHOW])
            # the point's target cluster if allowed, else the first allowed one after it,
            # cyclically (the full search only for the rows whose target is forbidden)
            t = target[blk]
            rows = np.arange(t.size)
            pick = t.copy()
            moved = np.flatnonzero(~allowed[rows, t])
            if moved.size:
                key = np.where(allowed[moved], (cols[None, :] - t[moved, None]) % k, k)
                pick[moved] = key.argmin(axis=1)
            self.assign[blk] = pick
        self.stranded = stranded

    def _row(self, i: np.ndarray) -> np.ndarray:
        """The allowed clusters of points ``i`` as a bool array (len(i), K)."""
        return np.unpackbits(self.bits[i], axis=1, count=self.k).astype(bool)

    # -- the checks -------------------------------------------------------------------
    def check(self) -> None:
        if self.stranded:
            i = self.stranded[0]
            raise ValueError(
                f"`{self.where}`: point {i} has finite scores only for clusters whose "
                f"{self.what} are 0: it cannot be assigned ({len(self.stranded)} such point(s) "
                "or more); allow it a cluster or fix the prior"
            )
        short = np.flatnonzero(self.reach < self.lo - self.tol)
        if short.size:
            counts = [int(((self.bits[:, j >> 3] >> (7 - (j & 7))) & 1).sum()) for j in short[:_SHOW]]
            detail = ", ".join(
                f"cluster {int(j)} needs {self._amount(self.lo[j])} but only {m} point(s) can reach it"
                for j, m in zip(short[:_SHOW], counts)
            )
            raise ValueError(
                f"`{self.where}`: the -inf entries admit no plan with the {self.what}: {detail}"
                f"{' (and more)' if short.size > _SHOW else ''}; give such clusters less mass "
                "or allow more points in them"
            )
        self._augment()

    def _amount(self, mass: float) -> str:
        if self.unit is None:
            return f"mass {mass:.6g}"
        count = mass / self.unit
        return f"{count:.0f} point(s)" if abs(count - round(count)) < 1e-6 else f"{count:.6g} points' worth"

    # -- moving excess along augmenting paths ------------------------------------------
    def _augment(self) -> None:
        k, tol = self.k, self.tol
        load = np.bincount(self.assign, weights=self.c, minlength=k)
        if np.all(load <= self.hi + tol) and np.all(load >= self.lo - tol):
            return  # the first assignment already fits
        order = np.argsort(self.assign, kind="stable")
        bounds = np.searchsorted(self.assign[order], np.arange(k + 1))
        self.members = [order[bounds[j] : bounds[j + 1]] for j in range(k)]
        self.flows = [self.c[m].copy() for m in self.members]
        # T[a, b]: mass of the points now in cluster a that may move to cluster b
        self.T = np.zeros((k, k))
        for j in range(k):
            if self.members[j].size:
                self.T[j] = self.flows[j] @ self._row(self.members[j])
        np.fill_diagonal(self.T, 0.0)
        #: T > tol, the search's edges: kept up to date row by row in _move (a search
        #: comparing all of T again took ~1 ms at K = 1,000, over a thousand paths per check)
        self.edge = self.T > self.tol
        self.load = load
        # phase 1: no cluster above its upper mass; phase 2: none below its lower one
        self._phase(self.hi, upper=True)
        self._phase(self.lo, upper=False)

    def _phase(self, bound: np.ndarray, upper: bool) -> None:
        """Move mass from clusters above ``bound`` to clusters below it, one path at a time,
        until none is above (``upper``) or none below; a cap on the paths keeps a pathological
        rounding loop from running on (the solve then decides, as without this check)."""
        tol = self.tol
        for _ in range(50 * self.k + 1000):
            src = self.load > bound + tol
            snk = self.load < bound - tol
            if not (src if upper else snk).any():
                return
            parent = self._search(src)
            goal = snk & (parent != -2)
            if not goal.any():
                self._fail(parent, snk, upper)
            t = int(np.flatnonzero(goal)[0])
            path = [t]
            while parent[path[-1]] >= 0:
                path.append(int(parent[path[-1]]))
            path.reverse()  # a source ... t
            s = path[0]
            delta = min(
                self.load[s] - bound[s],
                bound[t] - self.load[t],
                min(self.T[a, b] for a, b in zip(path, path[1:])),
            )
            # from the sink back, so each edge moves points that were in its cluster before
            for a, b in reversed(list(zip(path, path[1:]))):
                self._move(a, b, delta)

    def _search(self, start: np.ndarray) -> np.ndarray:
        """Breadth-first search on T > tol: parent index, -1 for a start, -2 unreached."""
        parent = np.full(self.k, -2, dtype=np.int64)
        parent[start] = -1
        frontier = np.flatnonzero(start)
        edge = self.edge
        while frontier.size:
            nxt = edge[frontier] & (parent == -2)[None, :]
            hit = nxt.any(axis=0)
            if not hit.any():
                break
            new = np.flatnonzero(hit)
            parent[new] = frontier[nxt[:, new].argmax(axis=0)]
            frontier = new
        return parent

    def _move(self, a: int, b: int, delta: float) -> None:
        """Move ``delta`` mass of points in ``a`` that allow ``b`` into ``b`` (T, loads kept)."""
        idx, fl = self.members[a], self.flows[a]
        can = ((self.bits[idx, b >> 3] >> (7 - (b & 7))) & 1).astype(bool)
        pick = np.flatnonzero(can & (fl > 0))
        cum = np.cumsum(fl[pick])
        pick = pick[: min(int(np.searchsorted(cum, delta)) + 1, pick.size)]  # they cover delta
        moved = fl[pick].copy()
        over = float(moved.sum()) - delta
        if over > 0:
            moved[-1] -= over  # the last point is split: part of it stays in a
        rows = self._row(idx[pick])
        gain = moved @ rows
        self.T[a] -= gain
        self.T[b] += gain
        self.T[a, a] = self.T[b, b] = 0.0
        np.maximum(self.T[a], 0.0, out=self.T[a])
        np.greater(self.T[a], self.tol, out=self.edge[a])
        np.greater(self.T[b], self.tol, out=self.edge[b])
        fl[pick] -= moved
        keep = fl > self.tol
        self.members[a], self.flows[a] = idx[keep], fl[keep]
        self.members[b] = np.concatenate([self.members[b], idx[pick]])
        self.flows[b] = np.concatenate([self.flows[b], moved])
        total = float(moved.sum())
        self.load[a] -= total
        self.load[b] += total

    def _fail(self, parent: np.ndarray, snk: np.ndarray, upper: bool) -> None:
        """No path left from a source to a sink: name a violating set of clusters."""
        k, tol = self.k, self.tol
        if not upper or np.array_equal(self.lo, self.hi):
            # a short cluster j; A = the clusters that can still feed it. No source is in A
            # (else j was reached), every point that can reach A already sits in A (else its
            # cluster feeds A), and A holds less than it needs: c(N(A)) <= load(A) < lo(A)
            j = int(np.flatnonzero(snk & (parent == -2))[0])
            A = self._reaching(j)
            points = np.unique(np.concatenate([self.members[a] for a in A]))
            raise ValueError(
                f"`{self.where}`: the -inf entries admit no plan with the {self.what}: "
                f"cluster(s) {self._names(A)} need {self._amount(float(self.lo[A].sum()))} but only "
                f"{points.size} point(s) can reach them (every other point has -inf scores "
                "for all of them); give those clusters less mass or allow more points in them"
            )
        # an over-full cluster s; R = the clusters reachable from it: every point in R has
        # all its finite scores in R (else R grows), no cluster of R has room (else a path),
        # so the points confined to R exceed hi(R)
        s = int(np.flatnonzero(self.load > self.hi + tol)[0])
        R = np.flatnonzero(self._search(np.arange(k) == s) >= -1)
        points = np.unique(np.concatenate([self.members[a] for a in R]))
        raise ValueError(
            f"`{self.where}`: the -inf entries admit no plan with the {self.what}: the "
            f"{points.size} point(s) whose finite scores all lie in cluster(s) {self._names(R)} "
            f"exceed the {self._amount(float(self.hi[R].sum()))} those clusters can take"
        )

    def _reaching(self, j: int) -> np.ndarray:
        """Clusters from which ``j`` is reachable on T > tol (``j`` included)."""
        edge = self.edge
        seen = np.zeros(self.k, dtype=bool)
        seen[j] = True
        frontier = np.array([j])
        while frontier.size:
            new = edge[:, frontier].any(axis=1) & ~seen
            seen |= new
            frontier = np.flatnonzero(new)
        return np.flatnonzero(seen)

    @staticmethod
    def _names(A: np.ndarray) -> str:
        shown = ", ".join(str(int(a)) for a in A[:_SHOW])
        return f"[{shown}{', ...' if A.size > _SHOW else ''}] ({A.size} cluster(s))" if A.size > 1 else shown
