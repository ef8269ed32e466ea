"""The fused Sinkhorn sweep as one Triton kernel (imported lazily by the torch backend).

One read of the N x K kernel per sweep: each program owns a strided set of row
blocks; for a block of rows it loads the whole row tile once, forms
``u_i = c_i / sum_k Kmat_ik v_k`` (float32 sums, float64 division, as the numpy
reference) and adds ``Kmat_ik u_i`` into a K-vector accumulator kept in registers.
At the end each program writes its accumulator as one row of a small (P, K) buffer,
which torch sums in float64: deterministic (no atomics), and the per-iteration cost
is the read of ``Kmat`` plus P x K.

A row tile holds the whole row, so this path serves ``K <= MAX_FUSED_K``; wider
problems use the torch mat-vecs. No ``tl.dot``: the products are plain float32 (or
float64) multiply-adds, so TF32 never enters. Runs on CPU tensors under
``TRITON_INTERPRET=1`` (set before Triton is first imported), which is how CI tests it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["MAX_FUSED_K", "fits", "sweep", "config", "CONFIG_OVERRIDE"]

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
        # about 8K elements per tile: whole rows in registers, a few tiles in flight per SM
        block_n = max(1, min(64, 8192 // block_k))
        warps = 8 if block_k >= 2048 else 4
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
