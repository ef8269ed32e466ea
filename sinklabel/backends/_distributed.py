"""One solve over the ranks of a ``torch.distributed`` group: a wrapper around a backend.

Each rank holds a shard of the points (``N_r x K`` scores, ``N = sum_r N_r``) and runs the
ordinary driver with this backend, which calls the rank's own backend (``inner``) on the
shard and combines the *cluster* quantities (length K) over the group. Row quantities
(length ``N_r``: ``u``, ``a``, labels) never leave their rank.

- ``sweep`` (and ``stream_sweep``, ``kernel="streamed"``): ``acc`` (the column masses)
  summed over the ranks, with a count of non-finite ``u`` (``a``): the one exchange of a
  plain iteration, K + 3 floats;
- ``sweep_hessian``: the sweep's exchange; the curvature of the rank's rows (K x K) is
  summed by the driver with the objective in one ``allsum`` (K^2 + 1 floats per Newton step);
- ``log_sweep``: column log-masses combined by log-sum-exp (a MAX, then a SUM of shifted
  exponentials): exact, never overflows;
- ``scan``: the first bad entry (global row index) and the dead columns (one MIN);
- ``max_float`` / ``all_finite`` on row vectors: reduced over the ranks (3-4 floats). On
  cluster vectors no exchange is needed: they are computed from exchanged values by the
  same code on every rank (same inner backend, device type and dtype, checked by
  :mod:`sinklabel.distributed` before the solve), so they are identical there;
- ``allsum``: host sums (the point count N, weight totals, objective, cluster sizes).

So every rank takes every decision of the driver (convergence, absorption, rescue) on the
same numbers at the same sweep, and the communication is O(K) per sweep.

The balanced step of :mod:`sinklabel.distributed` (``balanced=True``, after the solve) also
moves row data: :meth:`Exchange.gather` / :meth:`Exchange.scatter`, point-to-point to and
from rank 0 of the group, at sizes every rank knows beforehand.

Failures. Every exchange carries two status slots: *failed* (a primitive raised on that
rank) and *nan* (its log-domain sweep produced NaN, which no valid input does). A rank
whose primitive raises keeps its error, sends "failed" and dummy values from then on, and
follows the others to the next decision (``max_float``, ``all_finite``, ``allsum``,
``scan``, ``checks_every``), where every rank reads the accumulated status and raises at
the same point: the failing rank its own error, the others :class:`DistributedError`.
An exchange that itself fails (a rank died: gloo notices at once; a rank that hangs or
left the solve: after the process group's ``timeout``) raises :class:`DistributedError`.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ._base import Backend, Scan

__all__ = ["DistributedBackend", "DistributedError", "Exchange"]

_NO_INDEX = float(2**62)  # "nothing found" in the MIN exchange of scan


class DistributedError(RuntimeError):
    """Raised on every rank when a distributed solve cannot go on: another rank failed,
    a rank produced NaN, or the exchange with the other ranks broke (a rank died or hung
    past the process group's timeout)."""


class Exchange:
    """All-reduces over one process group, with failure status and a byte count.

    Vectors travel as float64 torch tensors on the group's device (the tensor's own
    device, or the current CUDA device for numpy data on an NCCL group). ``sent_bytes``
    and ``calls`` count what this rank handed to ``all_reduce`` or sent point-to-point,
    by ``kind``; ``received_bytes`` what it received point-to-point (:meth:`gather`,
    :meth:`scatter`, used only by the balanced step).
    """

    _OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        pg = str(dist.get_backend(group)).lower()
        self.pg_name = pg
        self._device = torch.device("cuda", torch.cuda.current_device()) if pg == "nccl" else None
        self.failed = 0.0  # sticky: this rank's primitive raised
        self.error: BaseException | None = None
        self.status: dict = {}  # device -> (failed, nan) read back from the exchanges there
        self.sent_bytes: dict[str, int] = {}
        self.received_bytes: dict[str, int] = {}  # point-to-point only (see gather/scatter)
        self.calls: dict[str, int] = {}

    def wire(self, x: Any) -> torch.Tensor:
        """``x`` (numpy or torch) as a float64 tensor where the group can reduce it."""
        if isinstance(x, torch.Tensor):
            dev = self._device if self._device is not None and x.device.type == "cpu" else x.device
            return x.detach().to(device=dev, dtype=torch.float64)
        if isinstance(x, (np.ndarray, np.generic, float, int, bool)):
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
            return t if self._device is None else t.to(self._device)
        return torch.as_tensor(x, dtype=torch.float64)  # a CUDA array of another library

    def reduce(self, x: Any, op: str, kind: str, nan: Any = 0.0) -> torch.Tensor:
        """``x`` reduced with ``op`` over the group; the status slots ride along.

        ``nan`` (a float or a 0-d tensor) flags NaN found by this rank. The status is
        accumulated on the wire device and read by :meth:`check` (no host
        synchronisation here, so a GPU sweep does not wait for it).
        """
        t = self.wire(x).reshape(-1)
        flags = torch.stack(
            [
                torch.as_tensor(self.failed, dtype=torch.float64, device=t.device),
                torch.as_tensor(nan, dtype=torch.float64, device=t.device).reshape(()),
            ]
        )
        payload = torch.cat([t, -flags if op == "min" else flags])
        self.sent_bytes[kind] = self.sent_bytes.get(kind, 0) + payload.numel() * 8
        self.calls[kind] = self.calls.get(kind, 0) + 1
        try:
            dist.all_reduce(payload, op=getattr(dist.ReduceOp, self._OPS[op]), group=self.group)
        except Exception as exc:  # a rank died, hung past the timeout, or sent another size
            raise self._failed("the other ranks", exc) from exc
        got, dev = payload[-2:].abs(), payload.device
        self.status[dev] = torch.maximum(self.status[dev], got) if dev in self.status else got
        return payload[:-2]

    # -- point-to-point, to and from rank 0 of the group (the balanced step) --------------
    def _peer(self, r: int) -> int:
        """The global rank of the group's rank ``r`` (what send/recv address)."""
        return r if self.group is None else dist.get_global_rank(self.group, r)

    def _p2p(self, fn: Any, t: torch.Tensor, r: int, kind: str, sent: bool) -> None:
        book = self.sent_bytes if sent else self.received_bytes
        book[kind] = book.get(kind, 0) + t.numel() * 8
        self.calls[kind] = self.calls.get(kind, 0) + 1
        try:
            fn(t, self._peer(r), group=self.group)
        except Exception as exc:  # a rank died, hung past the timeout, or left the solve
            raise self._failed(f"rank {r}", exc) from exc

    def _failed(self, peer: str, exc: Exception) -> DistributedError:
        return DistributedError(
            f"sinklabel.distributed: the exchange with {peer} failed on rank "
            f"{self.rank} ({type(exc).__name__}: {str(exc)[:300]}); a rank died, hung past "
            "the process group's timeout, or left the solve"
        )

    def gather(self, x: np.ndarray, counts: Any, kind: str) -> list[np.ndarray] | None:
        """Every rank's float64 vector ``x`` on rank 0 (a list in rank order; ``None``
        elsewhere). ``counts[r]``, the length of rank ``r``'s vector, must be known to
        every rank; vectors travel point-to-point at their exact size (no padding).
        Counted as sent by the sender and received by rank 0."""
        if self.rank != 0:
            if counts[self.rank]:
                self._p2p(dist.send, self.wire(x).reshape(-1), 0, kind, sent=True)
            return None
        parts = [np.asarray(x, dtype=np.float64).reshape(-1)]
        for r in range(1, self.world):
            buf = self.wire(np.empty(int(counts[r])))
            if counts[r]:
                self._p2p(dist.recv, buf, r, kind, sent=False)
            parts.append(buf.cpu().numpy())
        return parts

    def scatter(self, parts: list[np.ndarray] | None, count: int, kind: str) -> np.ndarray:
        """Rank 0's ``parts[r]`` on rank ``r`` (float64; ``count`` floats, known there)."""
        if self.rank == 0:
            assert parts is not None
            for r in range(1, self.world):
                if parts[r].size:
                    self._p2p(dist.send, self.wire(parts[r]), r, kind, sent=True)
            return np.asarray(parts[0], dtype=np.float64)
        buf = self.wire(np.empty(int(count)))
        if count:
            self._p2p(dist.recv, buf, 0, kind, sent=False)
        return buf.cpu().numpy()

    def check(self) -> None:
        """Raise, on every rank at the same point, if any rank failed or produced NaN."""
        if not self.status:
            return
        failed, nan = torch.stack([s.cpu() for s in self.status.values()]).amax(dim=0).tolist()
        if failed == 0 and nan == 0:
            return
        self.status = {}
        if self.error is not None:
            err, self.error = self.error, None
            raise err
        if failed:
            raise DistributedError(
                "sinklabel.distributed: another rank failed during the solve (its own error "
                f"says why); rank {self.rank} stops at the same point"
            )
        raise DistributedError(
            "sinklabel.distributed: a rank's log-domain sweep produced NaN (its scores "
            "changed during the solve, or its device computed NaN); no result is returned"
        )

    def fail(self, exc: BaseException) -> None:
        """Remember this rank's error; it is announced at the next exchange."""
        if self.error is None:
            self.error = exc
        self.failed = 1.0

    def stats(self) -> dict:
        return {
            "world_size": self.world,
            "bytes": dict(self.sent_bytes),
            "received_bytes": dict(self.received_bytes),
            "calls": dict(self.calls),
            "total_bytes": sum(self.sent_bytes.values()),
        }


class DistributedBackend(Backend):
    """``inner`` on this rank's shard, cluster quantities combined over ``exchange.group``.

    ``counts`` is every rank's number of points in rank order (from the setup exchange of
    :mod:`sinklabel.distributed`); ``offset``, the global index of this rank's first point,
    is used in error messages. ``verify=True`` also reduces the decisions taken on cluster vectors and
    raises if the ranks disagree (a test of the invariant in the module docstring).
    """

    check_every = 1

    def __init__(self, inner: Backend, exchange: Exchange, counts: Any = None, verify: bool = False):
        unknown = [
            name
            for name, _ in inspect.getmembers(Backend, inspect.isfunction)
            if not name.startswith("_") and name not in type(self).__dict__ and name != "exp_floor"
        ]
        if unknown:  # a primitive added to the contract must be taught how to combine
            raise NotImplementedError(
                f"sinklabel.distributed does not know how to combine Backend.{unknown[0]} over ranks"
            )
        self.inner = inner
        self.exchange = exchange
        self.counts = None if counts is None else np.asarray(counts, dtype=np.int64)
        self.offset = 0 if counts is None else int(self.counts[: exchange.rank].sum())
        self.verify = verify
        self.name = f"{inner.name} over {exchange.pg_name} ({exchange.world} ranks)"
        self.library = inner.library
        self.xp = inner.xp
        self._k = -1  # clusters of the head in progress
        self._n = -1  # this rank's points
        self._u: Any = None  # u of the last sweep, and whether it was finite on every rank
        self._u_bad: Any = 0.0

    # -- delegated as they are ---------------------------------------------------------
    def owns(self, S: Any) -> bool:
        return self.inner.owns(S)

    def from_numpy(self, x: np.ndarray, like: Any) -> Any:
        return self.inner.from_numpy(x, like)

    def to_numpy(self, x: Any) -> np.ndarray:
        return self.inner.to_numpy(x)

    def compute_dtype(self, S: Any) -> Any:
        return self.inner.compute_dtype(S)

    def full(self, n: int, value: float, like: Any) -> Any:
        return self.inner.full(n, value, like)

    # -- local work, failures kept for the next exchange -------------------------------
    def _local(self, fn: Any, *args: Any, dummy: Any) -> Any:
        if not self.exchange.failed:
            try:
                return fn(*args)
            except Exception as exc:
                self.exchange.fail(exc)
        return dummy()

    def _seen(self, S: Any) -> None:
        self._n, self._k = S.shape

    def adopt(self, S: Any, device: Any = None) -> Any:
        return self._local(self.inner.adopt, S, device, dummy=lambda: S)

    def checks_every(self, S: Any) -> int:
        every = self._local(self.inner.checks_every, S, dummy=lambda: 1)
        out = self.exchange.reduce(np.array([every]), "max", "setup")
        self.exchange.check()
        return int(out[0])

    def build_kernel(self, S: Any, lam: float, a: Any, b: Any, out: Any = None) -> Any:
        self._seen(S)
        return self._local(self.inner.build_kernel, S, lam, a, b, out, dummy=lambda: S)

    def rescale_kernel(self, Kmat: Any, row_log: Any, col_log: Any, keep: np.ndarray | None = None) -> Any:
        # the kernel's rows are this rank's; no exchange
        return self._local(self.inner.rescale_kernel, Kmat, row_log, col_log, keep, dummy=lambda: Kmat)

    def build_rows(self, S: Any, lam: float, a: Any, b: Any, Kmat: Any, rows: np.ndarray) -> Any:
        # this rank's rows; no exchange
        return self._local(self.inner.build_rows, S, lam, a, b, Kmat, rows, dummy=lambda: Kmat)

    def argmax(self, S: Any, lam: float, g: Any) -> tuple[Any, Any]:
        self._seen(S)

        def dummy() -> tuple[Any, Any]:
            labels = self.inner.from_numpy(np.zeros(S.shape[0], np.int64), like=S)
            return labels, self.inner.full(S.shape[0], 0.0, like=S)

        return self._local(self.inner.argmax, S, lam, g, dummy=dummy)

    def gather(self, S: Any, labels: Any) -> Any:
        return self._local(
            self.inner.gather, S, labels, dummy=lambda: self.inner.full(S.shape[0], 0.0, like=S)
        )

    # -- primitives with an exchange ---------------------------------------------------
    def scan(self, S: Any) -> Scan:
        self._seen(S)
        n, k = S.shape
        local = self._local(
            self.inner.scan, S, dummy=lambda: Scan(None, None, None, np.arange(k), 0.0, False)
        )
        # global flat indices of the first NaN / +inf, the first dead row, and "dead" per
        # column; then -max|S| and -(any -inf) (a MIN of negatives is the MAX over ranks)
        msg = np.full(5 + k, _NO_INDEX)
        for j, at in enumerate((local.nan_at, local.posinf_at)):
            if at is not None:
                msg[j] = (self.offset + at[0]) * k + at[1]
        if local.dead_row is not None:
            msg[2] = self.offset + local.dead_row
        msg[3 : 3 + k] = 0.0
        msg[3 + local.dead_cols] = 1.0
        msg[3 + k] = -local.max_abs
        msg[4 + k] = -float(local.neginf)
        out = self.exchange.reduce(msg, "min", "scan").cpu().numpy()
        self.exchange.check()

        def at(v: float) -> tuple[int, int] | None:
            return None if v >= _NO_INDEX else (int(v) // k, int(v) % k)

        dead_row = None if out[2] >= _NO_INDEX else int(out[2])
        dead_cols = np.flatnonzero(out[3 : 3 + k] > 0).astype(np.int64)
        return Scan(at(out[0]), at(out[1]), dead_row, dead_cols, -float(out[3 + k]), bool(out[4 + k] < 0))

    def log_sweep(self, S: Any, lam: float, g: Any, log_c: Any) -> tuple[Any, Any]:
        self._seen(S)
        n, k = S.shape

        def dummy() -> tuple[Any, Any]:
            return self.inner.full(n, 0.0, like=S), self.inner.full(k, -np.inf, like=S)

        a, col = self._local(self.inner.log_sweep, S, lam, g, log_c, dummy=dummy)
        return a, self._column_lse(a, col, g)

    def log_sweep_build(
        self, S: Any, lam: float, g: Any, log_c: Any, out: Any = None
    ) -> tuple[Any, Any, Any]:
        # the kernel's rows are this rank's; the column log-masses are combined as in log_sweep
        self._seen(S)
        n, k = S.shape

        def dummy() -> tuple[Any, Any, Any]:
            return self.inner.full(n, 0.0, like=S), self.inner.full(k, -np.inf, like=S), S

        a, col, Kmat = self._local(self.inner.log_sweep_build, S, lam, g, log_c, out, dummy=dummy)
        return a, self._column_lse(a, col, g), Kmat

    def _column_lse(self, a: Any, col: Any, g: Any) -> Any:
        """This rank's column log-masses combined over the ranks (log-sum-exp)."""
        # no valid input gives NaN here (rows reach a cluster, scores were scanned)
        nan = self.exchange.wire(self.xp.isnan(col).any() | self.xp.isnan(a).any())
        top = self.exchange.reduce(col, "max", "log_sweep", nan=nan)
        shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        total = self.exchange.reduce(torch.exp(self.exchange.wire(col) - shift), "sum", "log_sweep")
        lse = torch.where(total > 0, torch.log(total) + shift, torch.full_like(total, -np.inf))
        return self._back(lse, like=g)

    def sweep(self, Kmat: Any, v: Any, c: Any) -> tuple[Any, Any]:
        return self._sweep(self.inner.sweep, Kmat, v, c)

    def host_work(self, S: Any) -> Any:
        return self.inner.host_work(S)

    def newton_pays(self, S: Any, stream: bool = False) -> bool:
        # every rank holds the same kind of shard on the same kind of device
        return self.inner.newton_pays(S, stream)

    def sweep_hessian(
        self, Kmat: Any, v: Any, c: Any, thr: float, rescale: tuple | None = None
    ) -> tuple[Any, Any, np.ndarray]:
        # the sweep's column sums are exchanged as in sweep; the curvature of this rank's
        # rows stays here (the driver sums it with the objective in one allsum; a failed
        # rank adds zeros)
        k = v.shape[0]
        out: list = [np.zeros((k, k))]

        def curvature(K: Any, v: Any, c: Any) -> tuple[Any, Any]:
            u, acc, out[0] = self.inner.sweep_hessian(K, v, c, thr, rescale)
            return u, acc

        u, acc = self._sweep(curvature, Kmat, v, c)
        return u, acc, out[0]

    def rescale_sweep(
        self, Kmat: Any, row_log: Any, col_log: Any, v: Any, c: Any, keep: np.ndarray | None = None
    ) -> tuple[Any, Any]:
        # the rescale is of this rank's rows; the sweep's column sums are exchanged as in sweep
        def fused(K: Any, v: Any, c: Any) -> tuple[Any, Any]:
            return self.inner.rescale_sweep(K, row_log, col_log, v, c, keep)

        return self._sweep(fused, Kmat, v, c)

    def _sweep(self, fn: Any, Kmat: Any, v: Any, c: Any) -> tuple[Any, Any]:
        n = c.shape[0]

        def dummy() -> tuple[Any, Any]:
            return self.inner.full(n, 0.0, like=c), self.inner.full(v.shape[0], 0.0, like=c)

        u, acc = self._local(fn, Kmat, v, c, dummy=dummy)
        # the count of non-finite u rides along: all_finite(u) then needs no exchange
        bad_u = self.exchange.wire(~self.xp.isfinite(u).all()).reshape(1)
        total = self.exchange.reduce(torch.cat([self.exchange.wire(acc), bad_u]), "sum", "sweep")
        self._u, self._u_bad = u, total[-1]
        return u, self._back(total[:-1], like=v)

    @property
    def supports_stream(self) -> bool:  # type: ignore[override]
        return self.inner.supports_stream

    def stream_sweep(self, S: Any, lam: float, a: Any, g: Any, c: Any) -> tuple[Any, Any]:
        return self._stream_sweep(self.inner.stream_sweep, S, lam, a, g, c)

    def stream_sweep_hessian(self, S: Any, lam: float, a: Any, g: Any, c: Any, thr: float) -> tuple[Any, Any, Any]:
        # as sweep_hessian: the masses exchanged, this rank's curvature left to the driver
        k = S.shape[1]
        out: list = [np.zeros((k, k))]

        def curvature(S: Any, lam: float, a: Any, g: Any, c: Any) -> tuple[Any, Any]:
            a_next, mass, out[0] = self.inner.stream_sweep_hessian(S, lam, a, g, c, thr)
            return a_next, mass

        a_next, mass = self._stream_sweep(curvature, S, lam, a, g, c)
        return a_next, mass, out[0]

    def _stream_sweep(self, fn: Any, S: Any, lam: float, a: Any, g: Any, c: Any) -> tuple[Any, Any]:
        self._seen(S)
        n, k = S.shape

        def dummy() -> tuple[Any, Any]:
            return self.inner.full(n, 0.0, like=c), self.inner.full(k, 0.0, like=c)

        a_next, mass = self._local(fn, S, lam, a, g, c, dummy=dummy)
        # as in sweep: the count of non-finite row potentials rides along with the masses
        bad = self.exchange.wire(~self.xp.isfinite(a_next).all()).reshape(1)
        total = self.exchange.reduce(torch.cat([self.exchange.wire(mass), bad]), "sum", "sweep")
        self._u, self._u_bad = a_next, total[-1]
        return a_next, self._back(total[:-1], like=g)

    # -- decisions -----------------------------------------------------------------------
    def _is_cluster_vector(self, x: Any) -> bool:
        return x.ndim == 1 and x.shape[0] == self._k and self._k != self._n

    def max_float(self, x: Any) -> float:
        if self._is_cluster_vector(x) and not self.verify:
            self.exchange.check()
            return self.inner.max_float(x)
        local = self._local(self.inner.max_float, x, dummy=lambda: -np.inf)
        is_nan = float(np.isnan(local))
        # MAX of (max, -min) for the verification; NaN anywhere makes the answer NaN
        out = self.exchange.reduce(np.array([-np.inf if is_nan else local, is_nan]), "max", "decision")
        self.exchange.check()
        best, any_nan = (float(v) for v in out.cpu())
        if self.verify and self._is_cluster_vector(x):
            self._agree(local)
        return np.nan if any_nan else best

    def all_finite(self, x: Any) -> bool:
        if x is self._u:  # the last sweep's u (a): its finiteness was exchanged with acc
            self.exchange.check()
            return float(self._u_bad) == 0.0
        if self._is_cluster_vector(x) and not self.verify:
            self.exchange.check()
            return self.inner.all_finite(x)
        local = self._local(self.inner.all_finite, x, dummy=lambda: True)
        out = self.exchange.reduce(np.array([0.0 if local else 1.0]), "max", "decision")
        self.exchange.check()
        if self.verify and self._is_cluster_vector(x):
            self._agree(float(local))
        return float(out[0]) == 0.0

    def _agree(self, value: float) -> None:
        v = np.nan_to_num(np.array([value, -value]), nan=1e300)
        out = self.exchange.reduce(v, "max", "verify").cpu().numpy()
        if out[0] != -out[1]:
            raise AssertionError(f"ranks took different values for one decision: {out[0]} / {-out[1]}")

    def allsum(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        out = self.exchange.reduce(x.astype(np.float64), "sum", "setup").cpu().numpy()
        self.exchange.check()
        out = out.reshape(x.shape)
        return np.rint(out).astype(x.dtype) if x.dtype.kind in "iu" else out

    # -- helpers -------------------------------------------------------------------------
    def _back(self, t: torch.Tensor, like: Any) -> Any:
        """A reduced tensor as a vector of the inner backend, next to ``like``."""
        if isinstance(like, torch.Tensor):
            return t.to(like.device)
        return self.inner.from_numpy(t.cpu().numpy(), like=like)
