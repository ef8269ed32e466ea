"""The solvers the CPU benchmarks compare, all run to the same quality on the same problem.

Quality: cluster-marginal error ``max_k |mass_k / r_k - 1| <= TOL`` of a plan whose rows
(points) are exact, i.e. what ``sinklabel.solve(tol=TOL)`` guarantees. Every method
returns ``(iterations, error)`` with the error measured that way, from its own answer.

- ``sinklabel[<backend>]``: ``sinklabel.solve(S, LAM, tol=TOL, balanced=False)``, Anderson
  on (the default); ``, plain``: ``acceleration=None``; ``, streamed``:
  ``kernel="streamed"`` (no N x K array).
- ``paper loop``: the SeLa code's iteration (``cpu_sk``): float64 ``P ** lam``, two
  mat-vecs per iteration, stopped by the same test, checked every iteration.
- ``POT sinkhorn`` / ``POT sinkhorn_log``: ``ot.sinkhorn(a, b, -S, 1 / lam)`` in float64
  (``method="sinkhorn"`` / ``"sinkhorn_log"``). POT stops on an L2 test of its own, so
  it is run for a fixed number of iterations: the paper loop's count (the same
  iteration), raised by tens until its plan meets the tolerance (``calibrate``); the
  timed run is that many iterations with ``stopThr=0``. The pytest-benchmark suite times
  :func:`pot_to_tol` instead: the same start, continued (warm-started from POT's own
  scalings) by tens inside the timed run until the plan meets the tolerance, so POT runs
  once per size instead of twice.
- ``sinklabel[torch, cuda]`` / ``sinklabel[cupy]`` (:func:`device_methods`): the scores
  copied to the GPU before the timing, the solve synchronised at its end.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable

import numpy as np

import sinklabel
from sinklabel.backends import available_backends

LAM = 25.0
TOL = 1e-3

Method = Callable[[np.ndarray], tuple[int, float]]


def _sinklabel(backend: str, **kw) -> Method:
    def run(S: np.ndarray) -> tuple[int, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
            res = sinklabel.solve(S, LAM, tol=TOL, backend=backend, balanced=False, **kw)
        return res.n_iter, float(res.error)

    return run


def paper_loop(S: np.ndarray, max_iter: int = 100_000) -> tuple[int, float]:
    """SeLa's ``cpu_sk``: float64 ``P ** lam``, u then v by two mat-vecs, same stopping test."""
    n, k = S.shape
    P = np.exp(S.astype(np.float64))
    P **= LAM  # the paper's kernel: no stabilisation
    c = np.full(n, 1.0 / n)
    r = np.full(k, 1.0 / k)
    v = np.ones(k)
    err = np.inf
    for it in range(1, max_iter + 1):
        u = c / (P @ v)  # rows exact
        acc = u @ P
        err = float(np.max(np.abs(v * acc / r - 1.0)))
        if not err <= TOL:
            v = r / acc
        else:
            return it, err
    return max_iter, err


def _pot_error(G: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Cluster-marginal error of POT's plan ``G`` with its rows made exact."""
    rows = G.sum(axis=1)
    mass = (G / (rows / a)[:, None]).sum(axis=0)
    return float(np.max(np.abs(mass / b - 1.0)))


def _pot(method: str, n_iter: int) -> Method:
    def run(S: np.ndarray) -> tuple[int, float]:
        import ot

        n, k = S.shape
        a = np.full(n, 1.0 / n)
        b = np.full(k, 1.0 / k)
        M = -S.astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            G = ot.sinkhorn(a, b, M, 1.0 / LAM, method=method, numItermax=n_iter, stopThr=0.0)
        return n_iter, _pot_error(G, a, b)

    return run


def pot_to_tol(method: str, start: int, step: int = 10, limit: int = 20_000) -> Method:
    """POT ``method`` for ``start`` iterations, then ``step`` more at a time until its plan
    meets TOL (or ``limit`` iterations): each continuation is warm-started from the scalings
    POT returned, so it continues the same iteration (POT rebuilds its kernel, an exp pass,
    at each call). The paper loop's count as ``start`` usually suffices (one call)."""

    def run(S: np.ndarray) -> tuple[int, float]:
        import ot

        n, k = S.shape
        a = np.full(n, 1.0 / n)
        b = np.full(k, 1.0 / k)
        M = -S.astype(np.float64)
        done, chunk, warm = 0, max(1, start), None
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                G, log = ot.sinkhorn(
                    a, b, M, 1.0 / LAM, method=method, numItermax=chunk, stopThr=0.0, log=True, warmstart=warm
                )
            done += chunk
            err = _pot_error(G, a, b)
            if err <= TOL or done >= limit:
                return done, err
            warm = (log["log_u"], log["log_v"]) if "log_u" in log else (np.log(log["u"]), np.log(log["v"]))
            chunk = step

    return run


def calibrate_pot(method: str, S: np.ndarray, start: int, limit: int = 20_000) -> int:
    """POT iterations needed for TOL on ``S``: from ``start``, up by tens (untimed runs)."""
    n_iter = max(1, start)
    while n_iter <= limit:
        _, err = _pot(method, n_iter)(S)
        if err <= TOL:
            return n_iter
        n_iter += 10
    return limit


def sinklabel_methods(include_plain: bool = True, include_stream: bool = True) -> dict[str, Method]:
    """Every installed CPU backend of sinklabel (numpy input), and the variants."""
    out: dict[str, Method] = {}
    backends = [b for b in available_backends() if b in ("numba", "numpy", "torch")]
    for name in backends:
        out[f"sinklabel[{name}]"] = _sinklabel(name)
    if "numba" in backends:
        if include_plain:
            out["sinklabel[numba, plain]"] = _sinklabel("numba", acceleration=None)
        if include_stream:
            out["sinklabel[numba, streamed]"] = _sinklabel("numba", kernel="streamed")
    return out


def pot_method(method: str, n_iter: int) -> Method:
    return _pot(method, n_iter)


class DeviceMethod:
    """A sinklabel GPU backend timed on scores already on the device.

    ``reason`` is why it cannot run here (``None`` when it can); ``to_device(S)`` copies
    the scores once per size; calling it on those solves and synchronises;
    ``read_seconds`` times one streaming read (a sum) of them on the device.
    """

    def __init__(self, backend: str):
        self.backend = backend
        self.reason = self._probe()

    def _probe(self) -> str | None:
        if self.backend not in available_backends():
            lib = "torch" if self.backend == "torch" else "cupy"
            return f"{lib} is not installed (pip install 'sinklabel[{self.backend}]')"
        if self.backend == "torch":
            import torch

            if not torch.cuda.is_available():
                return "no CUDA device (torch.cuda.is_available() is False)"
        else:
            import cupy

            try:
                if cupy.cuda.runtime.getDeviceCount() == 0:
                    return "no CUDA device visible to cupy"
            except Exception as exc:  # cupy raises its CUDA runtime's error class
                return f"no CUDA device visible to cupy ({exc})"
        return None

    def to_device(self, S: np.ndarray):
        if self.backend == "torch":
            import torch

            return torch.from_numpy(S).to("cuda")
        import cupy

        return cupy.asarray(S)

    def sync(self) -> None:
        if self.backend == "torch":
            import torch

            torch.cuda.synchronize()
        else:
            import cupy

            cupy.cuda.Device().synchronize()

    def __call__(self, S_dev) -> tuple[int, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
            res = sinklabel.solve(S_dev, LAM, tol=TOL, backend=self.backend, balanced=False)
        self.sync()
        return int(res.n_iter), float(res.error)

    def read_seconds(self, S_dev, rounds: int = 9) -> float:
        S_dev.sum()
        self.sync()
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            S_dev.sum()
            self.sync()
            times.append(time.perf_counter() - t)
        return float(np.median(times))


def device_methods() -> dict[str, DeviceMethod]:
    """The GPU backends, each with the reason it cannot run here (or ``None``)."""
    return {"sinklabel[torch, cuda]": DeviceMethod("torch"), "sinklabel[cupy]": DeviceMethod("cupy")}
