"""The torch backend: torch tensors in and out, on the scores' device (CPU or CUDA).

Kernel ``Kmat`` in float32 (float64 for float64 scores; float16/bfloat16 scores are
computed in float32); vectors ``u, v, a, b, c, r`` in float64 on the same device.
Exponents (``lam * S + a + b``) are formed in float64 before ``exp``, as in the numpy
reference, so the kernel agrees with it to the last float32 bit or so.

The sweep: on CUDA (or under ``TRITON_INTERPRET=1``) one fused Triton kernel reads
``Kmat`` once (:mod:`sinklabel.backends._triton`); otherwise two mat-vecs, with TF32
switched off around them so that ``torch.backends.cuda.matmul.allow_tf32`` never
changes a result. Nothing here synchronises with the host except ``scan``,
``max_float``, ``all_finite`` and ``to_numpy``, which the driver calls only at its
periodic checks.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import numpy as np
import torch

from ._base import Backend, Scan

__all__ = ["TorchBackend", "USE_TRITON"]

#: ``"auto"``: Triton on CUDA tensors (and on CPU tensors under ``TRITON_INTERPRET=1``)
#: when it imports; ``"0"``: never (plain torch ops); ``"1"``: whenever it imports.
USE_TRITON = os.environ.get("SINKLABEL_TRITON", "auto")

_CPU_BLOCK = 1 << 20  # elements per row block of float64 temporaries on the CPU (8 MiB)
_GPU_BLOCK = 1 << 25  # ... and on a GPU (256 MiB), where launches cost more than memory


class _TorchNamespace:
    """The numpy-like calls the driver makes on vectors, mapped to torch.

    ``where`` accepts Python scalars on either side; anything else is looked up in
    torch, whose element-wise names (``log``, ``exp``, ``abs``, ``isfinite``,
    ``maximum``, ``sqrt``...) match numpy's.
    """

    def where(self, cond: Any, x: Any, y: Any) -> torch.Tensor:
        return torch.where(cond, x, y)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def gpu_checks_every(shape: tuple, float64: bool) -> int:
    """Sweeps between checks on a GPU, where a check costs a few host round trips.

    A check (and with it an Anderson step, which cuts the sweeps to tolerance about 4x
    compared with checking every 10th) costs ~0.1-0.2 ms of synchronisation: worth it at
    every sweep once a sweep reads 64 MiB or more (about 25 us on a current GPU); below
    that, every 10th sweep.
    """
    n_bytes = shape[-2] * shape[-1] * (8 if float64 else 4)
    return 1 if n_bytes >= 1 << 26 else 10


def _torch_dtype(np_dtype: Any) -> torch.dtype:
    return torch.float64 if np.dtype(np_dtype) == np.float64 else torch.float32


@contextlib.contextmanager
def _no_tf32():
    """Full float32 matmuls on CUDA for the duration (the user's setting restored after).

    torch >= 2.9 has ``fp32_precision``; reading the legacy ``allow_tf32`` there raises
    once a program has used the new API, while the new API reads and restores safely
    whichever one the user set.
    """
    m = torch.backends.cuda.matmul
    new_api = hasattr(m, "fp32_precision")
    saved = m.fp32_precision if new_api else m.allow_tf32
    if new_api:
        m.fp32_precision = "ieee"
    else:
        m.allow_tf32 = False
    try:
        yield
    finally:
        if new_api:
            m.fp32_precision = saved
        else:
            m.allow_tf32 = saved


def _triton():
    """The Triton kernels module, or None when Triton does not import."""
    try:
        from . import _triton as kernels
    except ImportError:
        return None
    return kernels


class TorchBackend(Backend):
    name = "torch"
    library = "torch"
    check_every = 1
    xp = _TorchNamespace()

    # -- conversions ------------------------------------------------------------------
    def owns(self, S: Any) -> bool:
        return isinstance(S, torch.Tensor)

    def adopt(self, S: Any, device: Any = None) -> torch.Tensor:
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(f"`device` must name a torch device; got {device!r} ({exc})") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"`device`={str(device)!r} but torch finds no CUDA device")
        if isinstance(S, np.ndarray):
            with warnings.catch_warnings():  # read-only arrays: the scores are never written
                warnings.simplefilter("ignore", UserWarning)
                S = torch.from_numpy(np.ascontiguousarray(S))
            return S.to(device or "cpu")
        if type(S).__module__.startswith("cupy"):
            S = torch.from_dlpack(S)  # zero-copy, same GPU
        if isinstance(S, torch.Tensor):
            S = S.detach()
            return S if device is None else S.to(device)
        return super().adopt(S, device)

    def checks_every(self, S: Any) -> int:
        return 1 if S.device.type == "cpu" else gpu_checks_every(S.shape, S.dtype == torch.float64)

    def from_numpy(self, x: np.ndarray, like: Any) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(like.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.cpu().numpy()

    def compute_dtype(self, S: torch.Tensor) -> np.dtype:
        return np.dtype(np.float64) if S.dtype == torch.float64 else np.dtype(np.float32)

    def full(self, n: Any, value: float, like: Any) -> torch.Tensor:
        shape = (n,) if isinstance(n, int) else tuple(n)
        return torch.full(shape, value, dtype=torch.float64, device=like.device)

    def max_float(self, x: Any) -> float:
        return float(x.max())

    def all_finite(self, x: Any) -> bool:
        return bool(torch.isfinite(x).all())

    # -- helpers ----------------------------------------------------------------------
    @staticmethod
    def _blocks(S: torch.Tensor):
        n, k = S.shape
        budget = _CPU_BLOCK if S.device.type == "cpu" else _GPU_BLOCK
        step = max(1, budget // max(k, 1))
        for start in range(0, n, step):
            yield slice(start, min(n, start + step))

    @staticmethod
    def _use_triton(x: torch.Tensor) -> Any:
        if USE_TRITON == "0":
            return None
        if USE_TRITON != "1" and x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return None
        return _triton()

    # -- the primitives ---------------------------------------------------------------
    def scan(self, S: torch.Tensor) -> Scan:
        n, k = S.shape
        col_alive = torch.zeros(k, dtype=torch.bool, device=S.device)
        flags = []  # per block: any NaN, any +inf, any dead row, any -inf (kept on the device)
        extent = torch.zeros((), dtype=torch.float64, device=S.device)  # max |S|, finite entries
        blocks = list(self._blocks(S))
        for blk in blocks:
            X = S[blk]
            alive = X > -torch.inf  # False for -inf and NaN
            dead = ~alive.any(dim=1)
            nan, pinf, ninf = torch.isnan(X).any(), torch.isposinf(X).any(), torch.isneginf(X).any()
            flags.append(torch.stack([nan, pinf, dead.any(), ninf]))
            col_alive |= alive.any(dim=0)
            if X.numel():
                A = X.abs()
                extent = torch.maximum(extent, torch.where(A < torch.inf, A, 0).amax().to(torch.float64))
        found = torch.stack(flags).cpu().numpy() if flags else np.zeros((0, 4), dtype=bool)  # one sync

        def first(b: int, mask: torch.Tensor) -> tuple[int, int]:
            i, j = (int(t) for t in torch.nonzero(mask)[0])
            return blocks[b].start + i, j

        nan_at = posinf_at = dead_row = None
        if found[:, 0].any():
            b = int(np.argmax(found[:, 0]))
            nan_at = first(b, torch.isnan(S[blocks[b]]))
        if found[:, 1].any():
            b = int(np.argmax(found[:, 1]))
            posinf_at = first(b, torch.isposinf(S[blocks[b]]))
        if found[:, 2].any():
            b = int(np.argmax(found[:, 2]))
            rows = ~(S[blocks[b]] > -torch.inf).any(dim=1)
            dead_row = blocks[b].start + int(torch.nonzero(rows)[0, 0])
        dead_cols = np.flatnonzero(~col_alive.cpu().numpy()).astype(np.int64)
        return Scan(nan_at, posinf_at, dead_row, dead_cols, float(extent), bool(found[:, 3].any()))

    def log_sweep(self, S, lam, g, log_c):
        kernels = self._use_triton(S)
        if kernels is not None and kernels.fits_rows(S):
            return kernels.log_sweep(S, lam, g, log_c)
        n, k = S.shape
        a = torch.empty(n, dtype=torch.float64, device=S.device)
        col_max = torch.full((k,), -torch.inf, dtype=torch.float64, device=S.device)
        col_sum = torch.zeros(k, dtype=torch.float64, device=S.device)
        for blk in self._blocks(S):
            X = S[blk].to(torch.float64) * lam
            X += g
            m = X.amax(dim=1)  # finite: every row reaches an active cluster
            a[blk] = -(m + torch.log(torch.exp(X - m[:, None]).sum(dim=1)))
            # X becomes log Q with rows summing to c exactly
            X += (log_c[blk] + a[blk])[:, None]
            new_max = torch.maximum(col_max, X.amax(dim=0))
            shift = torch.where(torch.isfinite(new_max), new_max, 0.0)
            col_sum = col_sum * torch.exp(col_max - shift) + torch.exp(X - shift).sum(dim=0)
            col_max = new_max
        col_lse = torch.where(col_sum > 0, torch.log(col_sum) + col_max, -torch.inf)
        return a, col_lse

    def build_kernel(self, S, lam, a, b, out=None):
        n, k = S.shape
        dtype = self.compute_dtype(S)
        if out is None:
            out = torch.empty((n, k), dtype=_torch_dtype(dtype), device=S.device)
        floor = self.exp_floor(dtype)
        kernels = self._use_triton(S)
        if kernels is not None:
            return kernels.build_kernel(S, lam, a, b, floor, out)
        for blk in self._blocks(S):
            X = S[blk].to(torch.float64) * lam
            X += a[blk, None]
            X += b
            X.masked_fill_(~(X >= floor), -torch.inf)  # below the floor (or -inf): exactly 0
            out[blk] = torch.exp_(X)
        return out

    def sweep(self, Kmat, v, c):
        kernels = self._use_triton(Kmat)
        if kernels is not None and kernels.fits(Kmat):
            return kernels.sweep(Kmat, v, c)
        vk = v.to(Kmat.dtype)
        with _no_tf32() if Kmat.is_cuda else contextlib.nullcontext():
            s = torch.mv(Kmat, vk)
            u = c / s.to(torch.float64)
            acc = torch.mv(Kmat.t(), u.to(Kmat.dtype)).to(torch.float64)
        return u, acc

    def newton_pays(self, S, stream=False):
        return bool(S.is_cuda) and not stream  # the default's dense products: cheap on a GPU only

    def argmax(self, S, lam, g):
        n, k = S.shape
        labels = torch.empty(n, dtype=torch.int64, device=S.device)
        picked = torch.empty(n, dtype=torch.float64, device=S.device)
        for blk in self._blocks(S):
            X = S[blk].to(torch.float64)
            Y = X * lam
            Y += g
            labels[blk] = Y.argmax(dim=1)
            picked[blk] = X.gather(1, labels[blk][:, None])[:, 0]
        return labels, picked

    def gather(self, S, labels):
        return S[torch.arange(S.shape[0], device=S.device), labels].to(torch.float64)
