"""The cupy backend: cupy arrays in and out, on the scores' GPU, without torch.

Kernel ``Kmat`` in float32 (float64 for float64 scores; float16 scores are computed in
float32); vectors in float64 on the same device; exponents formed in float64, as in
the numpy reference; the kernel is built in one element-wise pass (read S, write Kmat),
and the exact log-domain sweep in four reductions over S (no N x K temporary).
The sweep is one CUDA kernel (:data:`_SWEEP_SOURCE`) that reads
``Kmat`` once: a group of ``TPR`` threads owns a row, holds it in registers (``R``
entries per thread), reduces ``sum_k Kmat_ik v_k`` with warp shuffles, forms
``u_i = c_i / sum`` in float64, and adds ``Kmat_ik u_i`` into per-thread column
accumulators; each row group finally writes its accumulator as one row of a small
buffer that cupy sums in float64 (deterministic, no atomics). Rows wider than
``TPR * R`` allows (K > 8192) use two cuBLAS mat-vecs instead.

Not yet run on hardware (see the README); ``benchmarks/gpu_check.py`` checks it
against the numpy reference.
"""

from __future__ import annotations

import math
from typing import Any

import cupy
import numpy as np

from ._base import Backend, Scan

try:
    _N_DEVICES = cupy.cuda.runtime.getDeviceCount()
except Exception as exc:  # no driver / no device: the backend is not available
    raise ImportError(f"cupy imports but finds no CUDA device ({exc})") from exc
if _N_DEVICES < 1:
    raise ImportError("cupy imports but finds no CUDA device")

__all__ = ["CupyBackend"]


def gpu_checks_every(shape: tuple, float64: bool) -> int:
    """Sweeps between checks: every sweep once a sweep reads >= 64 MiB (as the torch backend)."""
    return 1 if shape[-2] * shape[-1] * (8 if float64 else 4) >= 1 << 26 else 10


_BLOCK = 1 << 25  # elements per row block of float64 temporaries (256 MiB)
_THREADS = 256
_MAX_R = 32  # columns per thread held in registers: K <= 256 * 32 = 8192 fused

_SWEEP_SOURCE = r"""
// Kmat (N x Kc, row stride `stride`) of type T; v, c, u double; part (rows, Kc) of type T.
// Compiled with -DTPR=<threads per row, 32..256, a power of two> -DR=<columns per thread>.
extern "C" __global__ void sinklabel_sweep(
    const T* __restrict__ Kmat, const double* __restrict__ v, const double* __restrict__ c,
    double* __restrict__ u, T* __restrict__ part, long long N, int Kc, long long stride)
{
    const int RPB = 256 / TPR;            // rows in flight per block
    const int g = threadIdx.x / TPR;      // this thread's row group
    const int lane = threadIdx.x % TPR;   // its place in the row
    T vr[R];
    T acc[R];
#pragma unroll
    for (int j = 0; j < R; ++j) {
        const int k = lane + j * TPR;
        vr[j] = k < Kc ? (T)v[k] : (T)0;  // padding columns: v = 0
        acc[j] = (T)0;
    }
#if TPR > 32
    __shared__ T red[256 / 32];
#endif
    // the loop bound is the same for every thread of the block (needed by __syncthreads)
    for (long long base = (long long)blockIdx.x * RPB; base < N; base += (long long)gridDim.x * RPB) {
        const long long i = base + g;
        const bool live = i < N;
        const T* row = Kmat + (live ? i : 0) * stride;
        T x[R];
        T s = (T)0;
#pragma unroll
        for (int j = 0; j < R; ++j) {
            const int k = lane + j * TPR;
            x[j] = (live && k < Kc) ? row[k] : (T)0;
            s += x[j] * vr[j];
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
#if TPR > 32
        if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = s;
        __syncthreads();
        s = (T)0;
        for (int w = 0; w < TPR / 32; ++w) s += red[g * (TPR / 32) + w];
        __syncthreads();  // red is rewritten by the next row
#endif
        // rows of diag(u) Kmat diag(v) sum to c; padding rows add nothing
        const double ui = live ? c[i] / (double)s : 0.0;
        if (live && lane == 0) u[i] = ui;
        const T ut = (T)ui;
#pragma unroll
        for (int j = 0; j < R; ++j) acc[j] += x[j] * ut;
    }
    T* out = part + ((long long)blockIdx.x * RPB + g) * Kc;
#pragma unroll
    for (int j = 0; j < R; ++j) {
        const int k = lane + j * TPR;
        if (k < Kc) out[k] = acc[j];
    }
}
"""

_kernels: dict[tuple[str, int, int], Any] = {}

# max and sum-of-exp over one axis of the logits lam S + p + q (p, q broadcast); the
# identity -1e308 stands for -inf (the max of a row or column that is -inf throughout)
_max_logit = cupy.ReductionKernel(
    "T s, float64 lam, float64 p, float64 q",
    "float64 out",
    "lam * (double)s + p + q",
    "(a > b ? a : b)",
    "out = a",
    "-1e308",
    "sinklabel_max_logit",
)
_sum_exp_logit = cupy.ReductionKernel(
    "T s, float64 lam, float64 p, float64 q",
    "float64 out",
    "exp(lam * (double)s + p + q)",
    "a + b",
    "out = a",
    "0",
    "sinklabel_sum_exp_logit",
)

# Kmat = exp(lam S + a_i + b_k), exactly 0 below the floor (and for -inf scores)
_build = cupy.ElementwiseKernel(
    "T s, float64 a, float64 b, float64 lam, float64 floor",
    "U out",
    "const double x = lam * (double)s + a + b; out = x >= floor ? (U)exp(x) : (U)0;",
    "sinklabel_build_kernel",
)


def _sweep_shape(k: int) -> tuple[int, int] | None:
    """(TPR, R) for rows of ``k`` entries, or None when the row does not fit registers."""
    tpr = min(_THREADS, max(32, 1 << max(0, math.ceil(math.log2(math.ceil(k / 16))))))
    r = math.ceil(k / tpr)
    return (tpr, r) if r <= _MAX_R else None


def _sweep_kernel(dtype: np.dtype, tpr: int, r: int) -> Any:
    key = (dtype.name, tpr, r)
    if key not in _kernels:
        ctype = "double" if dtype == np.float64 else "float"
        _kernels[key] = cupy.RawKernel(
            f"typedef {ctype} T;\n" + _SWEEP_SOURCE,
            "sinklabel_sweep",
            options=(f"-DTPR={tpr}", f"-DR={r}"),
        )
    return _kernels[key]


_sm_counts: dict[int, int] = {}


def _n_sm(device_id: int) -> int:
    if device_id not in _sm_counts:
        _sm_counts[device_id] = cupy.cuda.Device(device_id).attributes["MultiProcessorCount"]
    return _sm_counts[device_id]


def _device_id(device: Any) -> int | None:
    """A CUDA device number from ``"cuda"``, ``"cuda:1"``, ``1`` or a torch.device."""
    if device is None:
        return None
    if isinstance(device, int):
        return device
    text = str(device)
    if text == "cuda":
        return cupy.cuda.runtime.getDevice()
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise ValueError(f"backend 'cupy' computes on a CUDA device; got device={text!r}")


class CupyBackend(Backend):
    name = "cupy"
    library = "cupy"
    check_every = 10  # a check synchronises with the device; see gpu_checks_every
    xp = cupy

    # -- conversions ------------------------------------------------------------------
    def owns(self, S: Any) -> bool:
        return isinstance(S, cupy.ndarray)

    def adopt(self, S: Any, device: Any = None) -> Any:
        dev = _device_id(device)
        if isinstance(S, cupy.ndarray):
            if dev is None or dev == S.device.id:
                return S
            S = cupy.asnumpy(S)  # to another GPU: through the host (rare)
        if hasattr(S, "__dlpack__") and type(S).__module__.startswith("torch"):
            S = S.detach()
            if S.device.type != "cuda":
                S = S.numpy() if S.dtype.itemsize >= 4 else S.float().numpy()
            else:
                S = cupy.from_dlpack(S if S.dtype.itemsize >= 4 else S.float())
        if isinstance(S, (np.ndarray, cupy.ndarray)):
            with cupy.cuda.Device(dev if dev is not None else cupy.cuda.runtime.getDevice()):
                return cupy.asarray(S)
        return super().adopt(S, device)

    def checks_every(self, S: Any) -> int:
        return gpu_checks_every(S.shape, S.dtype == np.float64)

    def from_numpy(self, x: np.ndarray, like: Any) -> Any:
        with like.device:
            return cupy.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return cupy.asnumpy(x)

    def compute_dtype(self, S: Any) -> np.dtype:
        return np.dtype(np.float64) if S.dtype == np.float64 else np.dtype(np.float32)

    def full(self, n: Any, value: float, like: Any) -> Any:
        with like.device:
            return cupy.full(n, value, dtype=np.float64)

    def max_float(self, x: Any) -> float:
        return float(x.max())

    def all_finite(self, x: Any) -> bool:
        return bool(cupy.isfinite(x).all())

    # -- helpers ----------------------------------------------------------------------
    @staticmethod
    def _blocks(S: Any):
        n, k = S.shape
        step = max(1, _BLOCK // max(k, 1))
        for start in range(0, n, step):
            yield slice(start, min(n, start + step))

    # -- the primitives ---------------------------------------------------------------
    def scan(self, S: Any) -> Scan:
        with S.device:
            n, k = S.shape
            col_alive = cupy.zeros(k, dtype=bool)
            blocks = list(self._blocks(S))
            flags = cupy.zeros((len(blocks), 4), dtype=bool)
            extent = cupy.zeros(max(len(blocks), 1), dtype=cupy.float64)  # max |S|, finite entries
            for b, blk in enumerate(blocks):
                X = S[blk]
                alive = X > -np.inf  # False for -inf and NaN
                flags[b, 0] = cupy.isnan(X).any()
                flags[b, 1] = (X == np.inf).any()
                flags[b, 2] = (~alive.any(axis=1)).any()
                flags[b, 3] = (X == -np.inf).any()
                col_alive |= alive.any(axis=0)
                if X.size:
                    A = cupy.abs(X)
                    extent[b] = cupy.where(A < np.inf, A, 0).max()
            found = cupy.asnumpy(flags)  # one synchronisation
            max_abs = float(extent.max())

            def first(b: int, mask: Any) -> tuple[int, int]:
                i, j = (int(t) for t in cupy.asnumpy(cupy.argwhere(mask)[0]))
                return blocks[b].start + i, j

            nan_at = posinf_at = dead_row = None
            if found[:, 0].any():
                b = int(np.argmax(found[:, 0]))
                nan_at = first(b, cupy.isnan(S[blocks[b]]))
            if found[:, 1].any():
                b = int(np.argmax(found[:, 1]))
                posinf_at = first(b, S[blocks[b]] == np.inf)
            if found[:, 2].any():
                b = int(np.argmax(found[:, 2]))
                rows = ~(S[blocks[b]] > -np.inf).any(axis=1)
                dead_row = blocks[b].start + int(cupy.argmax(rows))
            dead_cols = np.flatnonzero(~cupy.asnumpy(col_alive)).astype(np.int64)
        return Scan(nan_at, posinf_at, dead_row, dead_cols, max_abs, bool(found[:, 3].any()))

    def log_sweep(self, S, lam, g, log_c):
        # four reductions over S, none with an N x K temporary (logits in float64)
        with S.device:
            gk = g[None, :]
            m = _max_logit(S, float(lam), gk, 0.0, axis=1)  # finite: every row reaches a cluster
            a = -(m + cupy.log(_sum_exp_logit(S, float(lam), gk, -m[:, None], axis=1)))
            h = (log_c + a)[:, None]  # log Q = lam S + g + h: rows sum to c exactly
            top = _max_logit(S, float(lam), gk, h, axis=0)  # -1e308 for a column of -inf only
            total = _sum_exp_logit(S, float(lam), (g - top)[None, :], h, axis=0)
            col_lse = cupy.where(total > 0, cupy.log(total) + top, -np.inf)
        return a, col_lse

    def build_kernel(self, S, lam, a, b, out=None):
        with S.device:
            n, k = S.shape
            dtype = self.compute_dtype(S)
            if out is None:
                out = cupy.empty((n, k), dtype=dtype)
            # one element-wise pass: read S, write Kmat (exponent in float64)
            _build(S, a[:, None], b[None, :], float(lam), float(self.exp_floor(dtype)), out)
        return out

    def newton_pays(self, S, stream=False):
        return not stream  # the default's dense float64 products: cheap on a GPU

    def sweep(self, Kmat, v, c):
        n, k = Kmat.shape
        shape = _sweep_shape(k)
        with Kmat.device:
            if shape is None or Kmat.strides[1] != Kmat.itemsize:
                s = Kmat @ v.astype(Kmat.dtype)
                u = c / s.astype(np.float64)
                return u, (u.astype(Kmat.dtype) @ Kmat).astype(np.float64)
            tpr, r = shape
            rows_per_block = _THREADS // tpr
            blocks = min(-(-n // rows_per_block), 4 * _n_sm(Kmat.device.id))
            u = cupy.empty(n, dtype=np.float64)
            part = cupy.empty((blocks * rows_per_block, k), dtype=Kmat.dtype)
            _sweep_kernel(Kmat.dtype, tpr, r)(
                (blocks,),
                (_THREADS,),
                (
                    Kmat,
                    cupy.ascontiguousarray(v),
                    cupy.ascontiguousarray(c),
                    u,
                    part,
                    np.int64(n),
                    np.int32(k),
                    np.int64(Kmat.strides[0] // Kmat.itemsize),
                ),
            )
            return u, part.sum(axis=0, dtype=np.float64)

    def argmax(self, S, lam, g):
        with S.device:
            n, k = S.shape
            labels = cupy.empty(n, dtype=np.int64)
            picked = cupy.empty(n, dtype=np.float64)
            for blk in self._blocks(S):
                X = S[blk].astype(np.float64)
                Y = X * lam
                Y += g
                labels[blk] = Y.argmax(axis=1)
                picked[blk] = X[cupy.arange(X.shape[0]), labels[blk]]
        return labels, picked

    def gather(self, S, labels):
        with S.device:
            return S[cupy.arange(S.shape[0]), labels].astype(np.float64)
