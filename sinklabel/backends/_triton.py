"""Triton kernels of the torch backend: the fused sweep, the log sweep, the kernel build.

Imported lazily by :mod:`sinklabel.backends._torch`.

One read of the N x K kernel per sweep: each program owns a strided set of row
blocks; for a block of rows it loads the whole row tile once, forms
``u_i = c_i / sum_k Kmat_ik v_k`` (float32 sums, float64 division, as the numpy
reference) and adds ``Kmat_ik u_i`` into a K-vector accumulator kept in registers.
At the end each program writes its accumulator as one row of a small (P, K) buffer,
which torch sums in float64: deterministic (no atomics), and the per-iteration cost
is the read of ``Kmat`` plus P x K.

A row tile holds the whole row, so this path serves ``K <= MAX_FUSED_K``; wider
problems use the torch mat-vecs. No ``tl.dot``: the products are plain float32 (or
float64) multiply-adds, so TF32 never enters.

The exact log-domain sweep (the start and every absorption) is built the same way, in
float64 with an online column log-sum-exp per program, and reads S once; the torch-op
version streams a dozen passes of float64 temporaries. The kernel build is one
element-wise pass (read S, write Kmat). At ImageNet scale these passes are a few per
solve against a hundred or so sweeps, so their cost matters.

Everything runs on CPU tensors under ``TRITON_INTERPRET=1`` (set before Triton is first
imported), which is how CI tests it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import triton
import triton.language as tl

__all__ = [
    "MAX_FUSED_K",
    "CONFIG_OVERRIDE",
    "build_kernel",
    "config",
    "fits",
    "fits_rows",
    "log_sweep",
    "sweep",
]

MAX_FUSED_K = 8192
#: (BLOCK_N, num_warps, programs per SM) to use instead of :func:`config`'s choice
#: (for tuning runs on a GPU; None in normal use)
CONFIG_OVERRIDE: tuple[int, int, int] | None = None


@triton.jit
def _sweep_kernel(
    K_ptr,
    v_ptr,
    c_ptr,
    u_ptr,
    part_ptr,
    N,
    Kc,
    stride_n,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_K)
    col_ok = cols < Kc
    v = tl.load(v_ptr + cols, mask=col_ok, other=0.0).to(ACC)  # padding columns: v = 0
    acc = tl.zeros([BLOCK_K], dtype=ACC)
    for start in range(pid * BLOCK_N, N, nprog * BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        ptrs = K_ptr + rows.to(tl.int64)[:, None] * stride_n + cols[None, :]
        tile = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        s = tl.sum(tile * v[None, :], axis=1)
        c = tl.load(c_ptr + rows, mask=row_ok, other=0.0)
        s = tl.where(row_ok, s, 1.0)
        u = c / s.to(tl.float64)  # rows of diag(u) Kmat diag(v) sum to c
        u = tl.where(row_ok, u, 0.0)  # padding rows add nothing
        tl.store(u_ptr + rows, u, mask=row_ok)
        acc += tl.sum(tile * u.to(ACC)[:, None], axis=0)
    tl.store(part_ptr + pid * Kc + cols, acc, mask=col_ok)


def fits(Kmat: torch.Tensor) -> bool:
    """Whether the fused kernel serves this kernel matrix."""
    return (
        Kmat.ndim == 2
        and Kmat.shape[1] <= MAX_FUSED_K
        and Kmat.stride(1) == 1
        and Kmat.dtype in (torch.float32, torch.float64)
    )


def _n_sm(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def config(n: int, k: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, programs) for an n x k kernel on ``device``."""
    block_k = triton.next_power_of_2(k)
    if CONFIG_OVERRIDE is not None:
        block_n, warps, per_sm = CONFIG_OVERRIDE
    else:
        # 16 entries of the tile per thread: whole rows in registers without spilling
        # (sm_90 build: 94 registers at K = 3000), two or more programs resident per SM
        warps = 16 if block_k >= 8192 else 8 if block_k >= 1024 else 4
        block_n = max(1, min(64, 16 * 32 * warps // block_k))
        per_sm = 4
    if device.type == "cpu":  # the interpreter runs programs one after another
        programs = min(triton.cdiv(n, block_n), 4)
    else:
        programs = min(triton.cdiv(n, block_n), per_sm * _n_sm(device))
    return block_n, block_k, warps, programs


def sweep(Kmat: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> tuple[Any, Any]:
    """``u = c / (Kmat v)`` and ``acc = Kmat^T u`` (float64) in one read of ``Kmat``."""
    n, k = Kmat.shape
    block_n, block_k, warps, programs = config(n, k, Kmat.device)
    u = torch.empty(n, dtype=torch.float64, device=Kmat.device)
    part = torch.empty((programs, k), dtype=Kmat.dtype, device=Kmat.device)
    acc_type = tl.float64 if Kmat.dtype == torch.float64 else tl.float32
    with torch.cuda.device(Kmat.device) if Kmat.is_cuda else contextlib.nullcontext():
        _sweep_kernel[(programs,)](
            Kmat,
            v.contiguous(),
            c.contiguous(),
            u,
            part,
            n,
            k,
            Kmat.stride(0),
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            ACC=acc_type,
            num_warps=warps,
        )
    return u, part.sum(dim=0, dtype=torch.float64)


# -- the rare passes: the exact log-domain sweep and building the kernel ----------------------
@triton.jit
def _log_sweep_kernel(
    S_ptr,
    g_ptr,
    logc_ptr,
    a_ptr,
    pmax_ptr,
    psum_ptr,
    N,
    Kc,
    stride_n,
    lam_ptr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HALF: tl.constexpr,
):
    lam = tl.load(lam_ptr)  # float64 (a Python float argument would be typed float32)
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_K)
    col_ok = cols < Kc
    g = tl.load(g_ptr + cols, mask=col_ok, other=float("-inf"))
    cmax = tl.full([BLOCK_K], float("-inf"), tl.float64)
    csum = tl.zeros([BLOCK_K], dtype=tl.float64)
    for start in range(pid * BLOCK_N, N, nprog * BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        ptrs = S_ptr + rows.to(tl.int64)[:, None] * stride_n + cols[None, :]
        s = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=float("-inf"))
        if HALF:  # float16 / bfloat16 scores: widened through float32
            s = s.to(tl.float32)
        x = lam * s.to(tl.float64) + g[None, :]
        m = tl.where(row_ok, tl.max(x, axis=1), 0.0)  # finite: every row reaches an active cluster
        row_sum = tl.where(row_ok, tl.sum(tl.exp(x - m[:, None]), axis=1), 1.0)
        a = -(m + tl.log(row_sum))
        tl.store(a_ptr + rows, a, mask=row_ok)
        a = tl.where(row_ok, a, 0.0)
        log_c = tl.load(logc_ptr + rows, mask=row_ok, other=float("-inf"))
        # y = log Q: rows sum to c exactly; padding rows hold no mass
        y = x + (log_c + a)[:, None]
        new_max = tl.maximum(cmax, tl.max(y, axis=0))
        shift = tl.where(new_max > float("-inf"), new_max, 0.0)
        csum = csum * tl.exp(cmax - shift) + tl.sum(tl.exp(y - shift[None, :]), axis=0)
        cmax = new_max
    tl.store(pmax_ptr + pid * Kc + cols, cmax, mask=col_ok)
    tl.store(psum_ptr + pid * Kc + cols, csum, mask=col_ok)


@triton.jit
def _build_kernel(
    S_ptr,
    a_ptr,
    b_ptr,
    out_ptr,
    N,
    Kc,
    stride_s,
    stride_o,
    par_ptr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HALF: tl.constexpr,
):
    lam = tl.load(par_ptr)  # float64 (a Python float argument would be typed float32)
    floor = tl.load(par_ptr + 1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < N
    col_ok = cols < Kc
    ok = row_ok[:, None] & col_ok[None, :]
    r64 = rows.to(tl.int64)[:, None]
    s = tl.load(S_ptr + r64 * stride_s + cols[None, :], mask=ok, other=float("-inf"))
    a = tl.load(a_ptr + rows, mask=row_ok, other=0.0)
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0)
    if HALF:  # float16 / bfloat16 scores: widened through float32
        s = s.to(tl.float32)
    x = lam * s.to(tl.float64) + a[:, None] + b[None, :]
    # below the floor (or -inf): exactly 0, no subnormals
    kern = tl.where(x >= floor, tl.exp(tl.where(x >= floor, x, 0.0)), 0.0)
    tl.store(out_ptr + r64 * stride_o + cols[None, :], kern.to(out_ptr.dtype.element_ty), mask=ok)


def fits_rows(S: torch.Tensor) -> bool:
    """Whether the row-resident kernels (log sweep) serve these scores."""
    return S.ndim == 2 and S.shape[1] <= MAX_FUSED_K and S.stride(1) == 1


def _row_config(n: int, k: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, programs) for float64 row tiles."""
    block_k = triton.next_power_of_2(k)
    block_n = max(1, min(64, 4096 // block_k))
    warps = 16 if block_k >= 4096 else 8 if block_k >= 1024 else 4
    if device.type == "cpu":
        programs = min(triton.cdiv(n, block_n), 4)
    else:
        programs = min(triton.cdiv(n, block_n), 2 * _n_sm(device))
    return block_n, block_k, warps, programs


def log_sweep(S: torch.Tensor, lam: float, g: torch.Tensor, log_c: torch.Tensor):
    """``a_i = -logsumexp_k(lam S_ik + g_k)`` and the column log-masses, in one read of S."""
    n, k = S.shape
    block_n, block_k, warps, programs = _row_config(n, k, S.device)
    a = torch.empty(n, dtype=torch.float64, device=S.device)
    pmax = torch.empty((programs, k), dtype=torch.float64, device=S.device)
    psum = torch.empty((programs, k), dtype=torch.float64, device=S.device)
    with torch.cuda.device(S.device) if S.is_cuda else contextlib.nullcontext():
        _log_sweep_kernel[(programs,)](
            S,
            g.contiguous(),
            log_c.contiguous(),
            a,
            pmax,
            psum,
            n,
            k,
            S.stride(0),
            torch.tensor([lam], dtype=torch.float64, device=S.device),
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            HALF=S.element_size() < 4,
            num_warps=warps,
        )
    top = pmax.amax(dim=0)
    shift = torch.where(torch.isfinite(top), top, 0.0)
    total = (psum * torch.exp(pmax - shift)).sum(dim=0)
    col_lse = torch.where(total > 0, torch.log(total) + shift, -torch.inf)
    return a, col_lse


def build_kernel(S: torch.Tensor, lam: float, a: torch.Tensor, b: torch.Tensor, floor: float, out):
    """``out = exp(lam S + a_i + b_k)`` (0 below ``floor``), exponents in float64."""
    n, k = S.shape
    block_k = min(256, triton.next_power_of_2(k))
    block_n = max(1, 2048 // block_k)
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    with torch.cuda.device(S.device) if S.is_cuda else contextlib.nullcontext():
        _build_kernel[grid](
            S,
            a.contiguous(),
            b.contiguous(),
            out,
            n,
            k,
            S.stride(0),
            out.stride(0),
            torch.tensor([lam, floor], dtype=torch.float64, device=S.device),
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            HALF=S.element_size() < 4,
            num_warps=4,
        )
    return out
