"""The floor every sweep is measured against: one parallel streaming read of a matrix.

A parallel sum over all cores (numba, the same row chunks as the numba backend), the
fastest way to touch every byte of the N x K matrix once; a fused Sinkhorn sweep reads
its kernel exactly once, so its time divided by this one is its distance to the floor.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

# the same threading layer as the numba backend (it is chosen once per process, at the
# first parallel call: measuring the floor first must not pick another one)
from sinklabel.backends import _numba  # noqa: F401

_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(fastmath=_FAST, nogil=True, cache=True)
def _rows_sum(A, lo, hi):
    total = 0.0
    for i in range(lo, hi):
        row = A[i]
        s = row[0] * 0
        for j in range(A.shape[1]):
            s += row[j]
        total += s
    return total


@njit(parallel=True, fastmath=_FAST, cache=True)
def _stream_read(A, n_chunks):
    n = A.shape[0]
    out = np.zeros(n_chunks)
    for t in prange(n_chunks):
        out[t] = _rows_sum(A, t * n // n_chunks, (t + 1) * n // n_chunks)
    return out.sum()


def stream_read(A: np.ndarray) -> float:
    """Sum of ``A`` (2-D, C-contiguous) read once by all threads."""
    return float(_stream_read(A, max(1, min(A.shape[0], 4 * numba.get_num_threads()))))
