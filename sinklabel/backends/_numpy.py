"""The numpy reference backend: clear, chunked, and the oracle every backend is tested against.

Memory: the kernel is the only N x K array; every other N x K quantity is computed in
row blocks of about ``BLOCK_BYTES`` (float64 temporaries).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend, Scan

__all__ = ["NumpyBackend", "row_blocks"]

BLOCK_BYTES = 1 << 23  # 8 MiB of float64 temporaries per block


def row_blocks(n: int, k: int):
    """Row slices covering ``range(n)`` with about BLOCK_BYTES of float64 per block."""
    step = max(1, BLOCK_BYTES // (8 * max(k, 1)))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


class NumpyBackend(Backend):
    name = "numpy"
    library = "numpy"
    check_every = 1
    supports_stream = True
    xp = np

    def owns(self, S: Any) -> bool:
        return isinstance(S, np.ndarray)

    def from_numpy(self, x: np.ndarray, like: Any) -> np.ndarray:
        return np.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def compute_dtype(self, S: np.ndarray) -> np.dtype:
        return np.dtype(np.float64) if S.dtype == np.float64 else np.dtype(np.float32)

    def full(self, n: int, value: float, like: Any) -> np.ndarray:
        return np.full(n, value, dtype=np.float64)

    def scan(self, S: np.ndarray) -> Scan:
        n, k = S.shape
        nan_at = posinf_at = dead_row = None
        col_alive = np.zeros(k, dtype=bool)
        max_abs, neginf = 0.0, False
        for blk in row_blocks(n, k):
            X = S[blk]
            if X.size:
                A = np.abs(X)
                finite = A < np.inf  # False for NaN and +-inf
                max_abs = max(max_abs, float(A.max(initial=0.0, where=finite)))
                neginf = neginf or bool(np.isneginf(X).any())
            if nan_at is None:
                bad = np.isnan(X)
                if bad.any():
                    i, j = np.argwhere(bad)[0]
                    nan_at = (blk.start + int(i), int(j))
            if posinf_at is None:
                bad = np.isposinf(X)
                if bad.any():
                    i, j = np.argwhere(bad)[0]
                    posinf_at = (blk.start + int(i), int(j))
            alive = X > -np.inf  # False for -inf and NaN
            if dead_row is None:
                rows = ~alive.any(axis=1)
                if rows.any():
                    dead_row = blk.start + int(np.argmax(rows))
            col_alive |= alive.any(axis=0)
        return Scan(nan_at, posinf_at, dead_row, np.flatnonzero(~col_alive), max_abs, neginf)

    def log_sweep(self, S, lam, g, log_c):
        n, k = S.shape
        a = np.empty(n, dtype=np.float64)
        col_max = np.full(k, -np.inf)
        col_sum = np.zeros(k)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for blk in row_blocks(n, k):
                X = S[blk].astype(np.float64) * lam
                X += g
                m = X.max(axis=1)  # finite: every row reaches an active cluster
                a[blk] = -(m + np.log(np.exp(X - m[:, None]).sum(axis=1)))
                # X becomes log Q with rows summing to c exactly
                X += (log_c[blk] + a[blk])[:, None]
                new_max = np.maximum(col_max, X.max(axis=0))
                shift = np.where(np.isfinite(new_max), new_max, 0.0)
                col_sum = col_sum * np.exp(col_max - shift) + np.exp(X - shift).sum(axis=0)
                col_max = new_max
            col_lse = np.where(col_sum > 0, np.log(col_sum) + col_max, -np.inf)
        return a, col_lse

    def build_kernel(self, S, lam, a, b, out=None):
        n, k = S.shape
        dtype = self.compute_dtype(S)
        if out is None:
            out = np.empty((n, k), dtype=dtype)
        floor = self.exp_floor(dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            for blk in row_blocks(n, k):
                X = S[blk].astype(np.float64) * lam
                X += a[blk, None]
                X += b
                X[~(X >= floor)] = -np.inf  # below the floor (or -inf): exactly 0
                np.exp(X, out=X)
                out[blk] = X
        return out

    def sweep(self, Kmat, v, c):
        # a kernel that overflowed in a rescale holds inf: NaN and inf reach u and acc
        # silently, and the driver rescues through log_sweep
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            vk = v.astype(Kmat.dtype)
            s = Kmat @ vk
            u = c / s.astype(np.float64)
            acc = (u.astype(Kmat.dtype) @ Kmat).astype(np.float64)
        return u, acc

    def stream_sweep(self, S, lam, a, g, c):
        n, k = S.shape
        a_next = np.empty(n, dtype=np.float64)
        mass = np.zeros(k)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for blk in row_blocks(n, k):
                E = S[blk].astype(np.float64) * lam
                E += a[blk, None]
                E += g
                np.exp(E, out=E)
                s = E.sum(axis=1)
                a_next[blk] = a[blk] - np.log(s)  # rows of the plan sum to c exactly
                mass += (c[blk] / s) @ E
        return a_next, mass

    def argmax(self, S, lam, g):
        n, k = S.shape
        labels = np.empty(n, dtype=np.int64)
        picked = np.empty(n, dtype=np.float64)
        for blk in row_blocks(n, k):
            X = S[blk].astype(np.float64)
            Y = X * lam
            Y += g
            labels[blk] = Y.argmax(axis=1)
            picked[blk] = X[np.arange(X.shape[0]), labels[blk]]
        return labels, picked

    def gather(self, S, labels):
        return S[np.arange(S.shape[0]), labels].astype(np.float64)
