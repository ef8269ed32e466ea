"""The numba backend: the numpy reference's primitives, fused and parallel, at the memory floor.

Each primitive is one pass over the N x K matrix, rows split into contiguous chunks run in
parallel, one K-vector of float64 accumulators per chunk (no N x K temporaries):

- ``sweep``: per block of eight rows, ``s_i = Kmat_i . v`` and ``u_i = c_i / s_i``
  (rows exact), then ``acc += u_i Kmat_i`` while the rows are still in L1. For a
  float32 kernel the dots and updates run in float32 (8 lanes: LLVM prefers 256-bit
  vectors even on AVX-512 parts, and the sweep is memory-bound) and the partial sums
  are flushed into the float64 accumulators every ``_FLUSH`` rows: the relative
  rounding of the column masses stays below ~1e-6, far under any useful ``tol``. The
  float32 operands are scaled by powers of two to about 1 (``_scales``), so that no
  product is subnormal: an Intel core takes a microcode assist per subnormal result
  (the sweep cost 1.9 reads there, 1.1 with the scaling; AMD cores hardly notice).
- ``stream_sweep``: the same with the kernel recomputed from the scores (a float32
  ``exp`` per entry, vectorised): no N x K array, about 3.5 reads' time.
- ``log_sweep``: one float64 ``exp`` per entry (the row's values kept in L1 for the
  column sums); columns whose mass that cannot resolve (below e^-680) are summed again
  exactly over those columns alone. ``build_kernel`` (float32): the argument in float64,
  the polynomial in float32 (``_expf64``), about 1.5x faster than the float64 ``exp``.
  Both ``exp`` are branch-free and vectorise (Cody-Waite reduction and a polynomial);
  numba's ``math.exp`` is a scalar libm call.
- ``rescale_kernel``: one read and one write of the kernel, in float64 (absorption).
- ``scan``, ``argmax``: one read each, no temporaries.

Fast-math: explicit flag sets without ``nnan``/``ninf``, so NaN and inf still propagate
and the driver's finiteness checks (``all_finite``) still see them; ``reassoc`` only
where a reduction needs it, never in ``exp``'s argument reduction. Compiled functions
are cached on disk (``cache=True``): the JIT cost is paid once per machine.

float16 scores (numba has no float16 arithmetic) fall back to the numpy reference for
the passes over ``S``; their kernel is float32 and sweeps at full speed.
"""

from __future__ import annotations

import contextlib
import math
import os

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic, overload

from .._auction import _max_numba
from ._base import HESSIAN_CAP, Scan
from ._numpy import NumpyBackend

__all__ = ["NumbaBackend"]

#: reductions may be reordered and fused; NaN and inf keep their IEEE meaning
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
#: no reassociation: exp's argument reduction must stay in the written order
_EXACT = {"nsz", "contract"}
# numba's OpenMP layer shares libgomp with torch (it resets torch's thread count) and, on a
# loaded machine, measured ~36 ms per parallel region here against ~0.15 ms for numba's
# own pool: prefer tbb, then the pool, unless the user chose a layer.
if numba.config.THREADING_LAYER == "default" and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]

#: rows per flush of the float32 partial column sums into float64
_FLUSH = 32

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # Cody-Waite split of ln 2 (Cephes)
_LN2_LO = 1.42860682030941723212e-6


@intrinsic
def _f64_from_bits(typingctx, bits):
    """Reinterpret an int64 as a float64 (inlined LLVM bitcast: vectorises)."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 64):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(bits), codegen


@intrinsic
def _bits_of_f64(typingctx, x):
    """Reinterpret a float64 as an int64 (inlined LLVM bitcast: vectorises)."""
    if not (isinstance(x, types.Float) and x.bitwidth == 64):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


#: 1.5 * 2^52 + 1023: an integral float64 n in [-1022, 1024] plus this holds n + 1023 (the
#: biased exponent of 2^n) in its low mantissa bits, with no float -> int conversion
#: (AVX2 has none for float64 vectors: a loop with one is not vectorised)
_EXP_SHIFTER = 6755399441055744.0 + 1023.0


@njit(fastmath=_EXACT, cache=True, error_model="numpy")
def _exp(x):
    """exp(x) for float64 x, branch-free: 0 below -708, inf above 709.78, NaN for NaN."""
    xc = min(max(x, -708.0), 709.0)
    n = np.floor(xc * _LOG2E + 0.5)  # a float64 (math.floor gives an int64: a conversion)
    r = xc - n * _LN2_HI
    r = r - n * _LN2_LO
    # Taylor to degree 12 on |r| <= ln(2)/2: truncation below 2e-16 relative
    p = 2.08767569878680989792e-09
    p = p * r + 2.50521083854417187751e-08
    p = p * r + 2.75573192239858906526e-07
    p = p * r + 2.75573192239858906526e-06
    p = p * r + 2.48015873015873015873e-05
    p = p * r + 1.98412698412698412698e-04
    p = p * r + 1.38888888888888888889e-03
    p = p * r + 8.33333333333333333333e-03
    p = p * r + 4.16666666666666666667e-02
    p = p * r + 1.66666666666666666667e-01
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    y = p * _f64_from_bits((_bits_of_f64(n + _EXP_SHIFTER) & 2047) << 52)
    y = 0.0 if x < -708.0 else y
    y = math.inf if x > 709.78 else y
    return x if x != x else y


#: ``max`` for two NaN-free floats as ``llvm.maximum`` (see ``sinklabel._auction``): a
#: reduction the loop vectoriser takes, where numba's ``max`` (a compare and a branch) is not
_fmax = _max_numba()

#: matrices up to this many entries are swept by the calling thread alone: a parallel
#: region costs a wake-up of every thread, and on a loaded machine a wait for a time slice
_SERIAL_MAX = 1 << 21


def _chunks(S: np.ndarray) -> int:
    """Row chunks per pass (1: serial), a few per thread, each with its own accumulators."""
    n, k = S.shape
    if n * k <= _SERIAL_MAX:
        return 1
    return max(1, min(n, 4 * numba.get_num_threads()))


@njit(nogil=True, cache=True)
def _chunk_sum(accs):
    """The column sums of the per-chunk accumulators, in chunk order (deterministic)."""
    acc = np.zeros(accs.shape[1])
    for t in range(accs.shape[0]):
        for j in range(accs.shape[1]):
            acc[j] += accs[t, j]
    return acc


# -- sweep ---------------------------------------------------------------------------------


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _flush(acc, part):
    """Add float32 partial column sums into the float64 ``acc`` and clear them (every
    ``_FLUSH`` rows: the float32 sums then stay within ~1e-6 of the exact ones)."""
    for j in range(part.shape[0]):
        acc[j] += part[j]
        part[j] = 0.0


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _sweep_rows32(K, vk, c, u, acc, lo, hi, su, thr, L):
    """Rows lo..hi, float32: u_i = c_i / (K_i . v) (rows exact), acc += su u_i K_i; with
    ``thr >= 0`` also each row's curvature into ``L`` while it is in L1 (``_Curvature``).

    ``su`` scales the float32 row factors to about 1 (the caller divides ``acc`` by it):
    with ``u_i`` ~ 1/N the products ``u_i K_ik`` of small kernel entries were subnormal,
    and a subnormal result costs an Intel core a microcode assist (measured: the sweep
    took 1.9 reads' time instead of 1.14 on a 2-core Xeon; AMD cores hardly notice).

    Eight rows at a time: one loop takes their eight dot products (eight memory
    streams), a second adds all eight into the column sums while they are in L1, so the
    partial sums are loaded and stored once per eight rows (measured: 1.07-1.29 reads of
    the kernel as the shared VM's state varies, always within a few per cent of a numba
    pass that only reads it; benchmarks/RESULTS.md). Dots and updates run in
    float32; the partial sums are flushed into the float64 ``acc`` every ``_FLUSH`` rows.
    """
    k = K.shape[1]
    part = np.zeros(k, dtype=np.float32)
    flags, idx, val = _curvature_buffers(k, thr)
    count = 0
    i = lo
    while i + 8 <= hi:
        r0, r1, r2, r3 = K[i], K[i + 1], K[i + 2], K[i + 3]
        r4, r5, r6, r7 = K[i + 4], K[i + 5], K[i + 6], K[i + 7]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
        for j in range(k):
            vj = vk[j]
            s0 += r0[j] * vj
            s1 += r1[j] * vj
            s2 += r2[j] * vj
            s3 += r3[j] * vj
            s4 += r4[j] * vj
            s5 += r5[j] * vj
            s6 += r6[j] * vj
            s7 += r7[j] * vj
        u0, u1 = c[i] / np.float64(s0), c[i + 1] / np.float64(s1)
        u2, u3 = c[i + 2] / np.float64(s2), c[i + 3] / np.float64(s3)
        u4, u5 = c[i + 4] / np.float64(s4), c[i + 5] / np.float64(s5)
        u6, u7 = c[i + 6] / np.float64(s6), c[i + 7] / np.float64(s7)
        u[i], u[i + 1], u[i + 2], u[i + 3] = u0, u1, u2, u3
        u[i + 4], u[i + 5], u[i + 6], u[i + 7] = u4, u5, u6, u7
        a0, a1, a2, a3 = np.float32(u0 * su), np.float32(u1 * su), np.float32(u2 * su), np.float32(u3 * su)
        a4, a5, a6, a7 = np.float32(u4 * su), np.float32(u5 * su), np.float32(u6 * su), np.float32(u7 * su)
        for j in range(k):
            part[j] += (r0[j] * a0 + r1[j] * a1 + r2[j] * a2 + r3[j] * a3) + (
                r4[j] * a4 + r5[j] * a5 + r6[j] * a6 + r7[j] * a7
            )
        if thr >= 0.0:
            for r in range(i, i + 8):
                _curvature_row(K[r], vk, c[r], u[r], thr, flags, idx, val, L)
        i += 8
        count += 8
        if count >= _FLUSH:
            _flush(acc, part)
            count = 0
    while i < hi:
        u[i] = _sweep_row32(K[i], vk, c[i], su, part)
        if thr >= 0.0:
            _curvature_row(K[i], vk, c[i], u[i], thr, flags, idx, val, L)
        i += 1
    _flush(acc, part)


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _sweep_row32(row, vk, ci, su, part):
    """One float32 row of a sweep: ``u_i = c_i / (row . v)``, ``part += su u_i row``; u_i."""
    s = np.float32(0.0)
    for j in range(row.shape[0]):
        s += row[j] * vk[j]
    ui = ci / np.float64(s)
    uk = np.float32(ui * su)
    for j in range(row.shape[0]):
        part[j] += row[j] * uk
    return ui


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _sweep_rows64(K, vk, c, u, acc, lo, hi, thr, L):
    """Rows lo..hi in float64 (float64 kernels), four at a time (as ``_sweep_rows32``)."""
    k = K.shape[1]
    flags, idx, val = _curvature_buffers(k, thr)
    i = lo
    while i + 4 <= hi:
        r0, r1, r2, r3 = K[i], K[i + 1], K[i + 2], K[i + 3]
        s0 = s1 = s2 = s3 = 0.0
        for j in range(k):
            vj = vk[j]
            s0 += r0[j] * vj
            s1 += r1[j] * vj
            s2 += r2[j] * vj
            s3 += r3[j] * vj
        u0, u1, u2, u3 = c[i] / s0, c[i + 1] / s1, c[i + 2] / s2, c[i + 3] / s3
        u[i], u[i + 1], u[i + 2], u[i + 3] = u0, u1, u2, u3
        for j in range(k):
            acc[j] += r0[j] * u0 + r1[j] * u1 + r2[j] * u2 + r3[j] * u3
        if thr >= 0.0:
            for r in range(i, i + 4):
                _curvature_row(K[r], vk, c[r], u[r], thr, flags, idx, val, L)
        i += 4
    while i < hi:
        row = K[i]
        s = 0.0
        for j in range(k):
            s += row[j] * vk[j]
        ui = c[i] / s
        u[i] = ui
        for j in range(k):
            acc[j] += row[j] * ui
        if thr >= 0.0:
            _curvature_row(row, vk, c[i], ui, thr, flags, idx, val, L)
        i += 1


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _rescale_sweep_rows(K, ra, cb, thr, vk, c, u, acc, lo, hi, su, cthr, L):
    """Rows lo..hi of ``_rescale_rows`` and then the sweep of a float32 kernel, in one read:
    each row is rescaled in float64 and written back (below ``thr``: 0; not if its factor
    ``ra[i]`` is -1: a row rebuilt in the new frame already), then, while in L1, its dot
    with ``vk`` and its share of the column sums are taken in float32 (as ``_sweep_rows32``:
    ``su``, flushes into float64 every ``_FLUSH`` rows), and with ``cthr >= 0`` its
    curvature into ``L`` (``_curvature_row``)."""
    k = K.shape[1]
    part = np.zeros(k, dtype=np.float32)
    flags, idx, val = _curvature_buffers(k, cthr)
    count = 0
    for i in range(lo, hi):
        row = K[i]
        f = ra[i]
        if f >= 0.0:  # -1: a row to keep as it is
            for j in range(k):
                y = np.float64(row[j]) * (f * cb[j])
                row[j] = y if y >= thr else 0.0
        u[i] = _sweep_row32(row, vk, c[i], su, part)
        if cthr >= 0.0:
            _curvature_row(row, vk, c[i], u[i], cthr, flags, idx, val, L)
        count += 1
        if count >= _FLUSH:
            _flush(acc, part)
            count = 0
    _flush(acc, part)


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _rescale_sweep(K, ra, cb, thr, vk, c, u, n_chunks, su, cthr, Ls):
    """``_rescale_sweep_rows`` in ``n_chunks`` row chunks (curvature as in ``_sweep``)."""
    n, k = K.shape
    accs = np.zeros((n_chunks, k))
    for t in prange(n_chunks):
        L = Ls[t] if cthr >= 0.0 else Ls[0]
        lo, hi = t * n // n_chunks, (t + 1) * n // n_chunks
        _rescale_sweep_rows(K, ra, cb, thr, vk, c, u, accs[t], lo, hi, su, cthr, L)
    return _chunk_sum(accs)


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _sweep(K, vk, c, u, n_chunks, single, su, thr, Ls):
    """The sweep in ``n_chunks`` row chunks; with ``thr >= 0`` chunk ``t`` adds its rows'
    curvature into ``Ls[t]`` (then ``Ls`` holds ``n_chunks`` K x K arrays)."""
    n, k = K.shape
    accs = np.zeros((n_chunks, k))
    for t in prange(n_chunks):
        lo = t * n // n_chunks
        hi = (t + 1) * n // n_chunks
        L = Ls[t] if thr >= 0.0 else Ls[0]
        if single:
            _sweep_rows32(K, vk, c, u, accs[t], lo, hi, su, thr, L)
        else:
            _sweep_rows64(K, vk, c, u, accs[t], lo, hi, thr, L)
    return _chunk_sum(accs)


# -- the curvature of the rows (Newton steps) ----------------------------------------------
#
# A row's curvature ``c_i p_i p_i^T`` is gathered from its few entries ``p_ik > thr``
# (``HESSIAN_CAP`` at most) right after the sweep made the row exact, while the row is in
# L1: a vectorised compare writes one flag byte per entry, the flags are scanned eight at
# a time as 64-bit words (a row keeps ~10 of 1,000), and the kept entries' products go into
# the lower triangle of a K x K float64 accumulator. ``thr < 0``: no curvature.


@njit(nogil=True, cache=True)
def _curvature_buffers(k, thr):
    """Flags (K rounded up to whole 64-bit words, the padding 0), indices, values."""
    m = ((k + 7) // 8) * 8 if thr >= 0.0 else 8
    return np.zeros(m, dtype=np.uint8), np.empty(m + 1, dtype=np.int64), np.empty(HESSIAN_CAP)


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _kept(flags, idx):
    """The indices of the set flags, in order, into ``idx``; their count."""
    words = flags.view(np.uint64)
    m = 0
    for w in range(words.shape[0]):
        if words[w] != 0:
            for j in range(8 * w, 8 * w + 8):
                idx[m] = j
                m += flags[j]
    return m


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _add_curvature(row, vk, ci, f, idx, m, val, L):
    """``L += c_i p p^T`` (lower triangle) over the ``m`` entries ``idx`` of the row's
    ``p = row * vk * f``."""
    for a in range(m):
        val[a] = np.float64(row[idx[a]]) * vk[idx[a]] * f
    for a in range(m):
        wa = ci * val[a]
        la = L[idx[a]]
        for b in range(a + 1):
            la[idx[b]] += wa * val[b]


def _in_dtype_of(row, x):
    """``x`` as a scalar of ``row``'s dtype (compiled per dtype: float32 compares stay float32)."""
    return x


@overload(_in_dtype_of)
def _in_dtype_of_impl(row, x):
    if row.dtype == types.float32:
        return lambda row, x: np.float32(x)
    return lambda row, x: np.float64(x)


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _curvature_row(row, vk, ci, ui, thr, flags, idx, val, L):
    """The curvature of one row of the plan just swept (``u_i`` its factor in the sweep's
    scaled units: ``p_ik = row_k vk_k u_i / c_i`` whatever the scaling), compared in the
    row's own dtype."""
    if not (ci > 0.0 and ui > 0.0 and ui < np.inf):
        return
    f = ui / ci
    t = _in_dtype_of(row, thr / f)
    for j in range(row.shape[0]):
        flags[j] = row[j] * vk[j] > t
    m = _kept(flags, idx)
    if m > HESSIAN_CAP:  # a wide row: its entries above 1 / cap (fewer than cap)
        t = _in_dtype_of(row, 1.0 / (HESSIAN_CAP * f))
        for j in range(row.shape[0]):
            flags[j] = row[j] * vk[j] > t
        m = min(_kept(flags, idx), HESSIAN_CAP)
    _add_curvature(row, vk, ci, f, idx, m, val, L)


@njit(nogil=True, cache=True)
def _mirror(W):
    """The lower triangle of the square ``W`` copied onto its upper one, in place."""
    for i in range(W.shape[0]):
        for j in range(i):
            W[j, i] = W[i, j]


#: the per-chunk curvature accumulators (K x K float64 each) of ``sweep_hessian`` take at
#: most this many bytes together (fewer chunks than threads for large K)
_CURVATURE_BYTES = 1 << 28


# -- scan ----------------------------------------------------------------------------------


@njit(nogil=True, cache=True, error_model="numpy")
def _scan_rows(B, lo, hi, col_alive, found, extent, mask, pinf, ninf):
    """Rows lo..hi of the scan, on the scores' bits ``B`` (int32 for float32, int64 for
    float64): integer tests and an integer max vectorise where float ones with NaN do
    not. ``mask`` clears the sign bit, ``pinf`` / ``ninf`` are the bits of +inf / -inf;
    as bits, ``|x|`` of a finite x is monotone in ``|x|``, and NaN and inf are at or above
    ``pinf``. A row's first pass is that max alone (one read): below ``pinf`` the row is
    finite, alive in every column. Rows with -inf (or NaN, +inf) take a second pass from
    cache. found[0..3]: first row with a NaN, a +inf, no entry above -inf (-1: none), and
    whether any entry is -inf (1); extent[0]: the largest bits of ``|x|`` over the finite
    entries; found[4]: whether some row is finite throughout (then every column is alive).
    """
    k = B.shape[1]
    zero = mask - mask
    top = extent[0]
    for i in range(lo, hi):
        row = B[i]
        m = zero
        for j in range(k):
            m = max(m, row[j] & mask)
        if m < pinf:
            found[4] = 1
            top = max(top, m)
            continue
        m = zero
        n_fin = 0
        n_ninf = 0
        for j in range(k):
            x = row[j]
            ax = x & mask
            fin = ax < pinf
            n_fin += fin
            n_ninf += x == ninf
            col_alive[j] |= fin
            m = max(m, ax if fin else zero)
        top = max(top, m)
        if n_ninf:
            found[3] = 1
        n_nan = 0
        n_pinf = 0
        if n_fin + n_ninf < k:  # a NaN or a +inf (refused by the driver)
            for j in range(k):
                x = row[j]
                n_nan += (x & mask) > pinf
                n_pinf += x == pinf
                col_alive[j] |= x == pinf  # above -inf
        if n_nan and found[0] < 0:
            found[0] = i
        if n_pinf and found[1] < 0:
            found[1] = i
        if n_fin + n_pinf == 0 and found[2] < 0:
            found[2] = i
    extent[0] = top


@njit(parallel=True, cache=True, error_model="numpy")
def _scan(B, n_chunks, mask, pinf, ninf):
    n, k = B.shape
    alive = np.zeros((n_chunks, k), dtype=np.bool_)
    found = np.full((n_chunks, 5), -1, dtype=np.int64)
    extent = np.zeros((n_chunks, 1), dtype=B.dtype)
    for t in prange(n_chunks):
        lo, hi = t * n // n_chunks, (t + 1) * n // n_chunks
        _scan_rows(B, lo, hi, alive[t], found[t], extent[t], mask, pinf, ninf)
    return alive, found, extent


#: the scan's bit patterns per score dtype: (integer view, sign mask, +inf, -inf)
_BITS = {
    np.dtype(np.float32): (np.int32, np.int32(0x7FFFFFFF), np.int32(0x7F800000), np.int32(-0x800000)),
    np.dtype(np.float64): (
        np.int64, np.int64(0x7FFFFFFFFFFFFFFF), np.int64(0x7FF0000000000000), np.int64(-0x10000000000000)
    ),
}


# -- log-domain sweep ----------------------------------------------------------------------


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _log_sweep_rows1(S, lam, g, log_c, a, mass, lo, hi, out, thr):
    """Rows lo..hi of the log-domain step with one ``exp`` per entry (float64, exact).

    ``e_ik = exp(lam S_ik + g_k - m_i)`` (``m_i`` the row's maximum) gives the row's
    log-sum-exp and, times ``c_i / sum_k e_ik``, the plan's entries, summed per column
    into ``mass``. Entries below e^-708 of their row's largest are dropped (at most
    ``e^-708 sum(c)`` per column): a column whose mass is not far above that is summed
    again exactly (``_col_lse_rows``). With a non-empty ``out`` the kernel's rows in the
    frame ``(a, g)`` are written too, ``out_ik = e_ik / sum_k e_ik`` (0 below ``thr``):
    the start and every rescue build their kernel without a second ``exp`` pass.
    """
    k = S.shape[1]
    buf = np.empty(k)
    write = out.shape[0] > 0
    for i in range(lo, hi):
        row = S[i]
        m = -np.inf
        for j in range(k):
            m = _fmax(m, np.float64(row[j]) * lam + g[j])  # vectorises (numba's max does not)
        z = 0.0
        for j in range(k):
            e = _exp(np.float64(row[j]) * lam + g[j] - m)
            buf[j] = e
            z += e
        lz = math.log(z)
        a[i] = -(m + lz)
        w = _exp(log_c[i] - lz)  # c_i / z (0 for a point of mass 0)
        if w > 0:
            for j in range(k):
                mass[j] += w * buf[j]
        if write:
            dst = out[i]
            inv = 1.0 / z
            for j in range(k):
                y = buf[j] * inv
                dst[j] = y if y >= thr else 0.0


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _col_lse_rows(S, lam, g, log_c, a, cols, col_ref, col_sum, lo, hi):
    """Rows lo..hi of the exact column log-sum-exp of the columns ``cols`` only, kept as
    sum exp(y - col_ref): ``col_ref`` starts at -1e300 (finite, so that -inf entries give
    exp(-inf) = 0) and only increases; an entry more than 60 above it rescales the
    column's running sum first, so the sums never overflow."""
    for i in range(lo, hi):
        row = S[i]
        shift = log_c[i] + a[i]
        if shift == -np.inf:
            continue
        for t in range(cols.shape[0]):
            j = cols[t]
            y = np.float64(row[j]) * lam + g[j] + shift
            if y > col_ref[t] + 60.0:
                col_sum[t] *= _exp(col_ref[t] - y)
                col_ref[t] = y
            col_sum[t] += _exp(y - col_ref[t])


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _log_sweep1(S, lam, g, log_c, a, masses, out, thr):
    n = S.shape[0]
    n_chunks = masses.shape[0]
    for t in prange(n_chunks):
        lo, hi = t * n // n_chunks, (t + 1) * n // n_chunks
        _log_sweep_rows1(S, lam, g, log_c, a, masses[t], lo, hi, out, thr)


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _col_lse(S, lam, g, log_c, a, cols, refs, sums):
    n = S.shape[0]
    n_chunks = refs.shape[0]
    for t in prange(n_chunks):
        _col_lse_rows(S, lam, g, log_c, a, cols, refs[t], sums[t], t * n // n_chunks, (t + 1) * n // n_chunks)


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _sum_exp(x):
    """sum(exp(x)) without a temporary."""
    total = 0.0
    for i in range(x.shape[0]):
        total += _exp(x[i])
    return total


@njit(fastmath=_FAST, cache=True, error_model="numpy")
def _merge_lse(refs, sums):
    """Column log-sum-exp from per-chunk (reference, sum of exp(y - reference)) pairs."""
    n_chunks, k = refs.shape
    col_lse = np.empty(k)
    for j in range(k):
        top = -np.inf
        for t in range(n_chunks):
            top = max(top, refs[t, j])
        total = 0.0
        for t in range(n_chunks):
            total += sums[t, j] * _exp(refs[t, j] - top)
        col_lse[j] = top + math.log(total) if total > 0 else -np.inf
    return col_lse


# -- kernel --------------------------------------------------------------------------------


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _build_rows(S, lam, a, b, floor, out, lo, hi):
    """Rows lo..hi of a float64 kernel."""
    k = S.shape[1]
    for i in range(lo, hi):
        row = S[i]
        dst = out[i]
        ai = a[i]
        for j in range(k):
            x = np.float64(row[j]) * lam + ai + b[j]
            dst[j] = _exp(x) if x >= floor else 0.0  # below the floor (or -inf): exactly 0


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _build_rows32(S, lam, a, b, floor, out, lo, hi):
    """Rows lo..hi of a float32 kernel (the argument in float64, ``_expf64``)."""
    k = S.shape[1]
    for i in range(lo, hi):
        row = S[i]
        dst = out[i]
        ai = a[i]
        for j in range(k):
            x = np.float64(row[j]) * lam + ai + b[j]
            dst[j] = _expf64(x) if x >= floor else np.float32(0.0)


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _build_at(S, lam, a, b, floor, out, rows, n_chunks, single):
    """The rows ``rows`` only (a partial rebuild), in place: no temporaries."""
    m = rows.shape[0]
    for t in prange(n_chunks):
        for q in range(t * m // n_chunks, (t + 1) * m // n_chunks):
            i = rows[q]
            if single:
                _build_rows32(S, lam, a, b, floor, out, i, i + 1)
            else:
                _build_rows(S, lam, a, b, floor, out, i, i + 1)


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _build(S, lam, a, b, floor, out, n_chunks, single):
    n = S.shape[0]
    for t in prange(n_chunks):
        lo, hi = t * n // n_chunks, (t + 1) * n // n_chunks
        if single:
            _build_rows32(S, lam, a, b, floor, out, lo, hi)
        else:
            _build_rows(S, lam, a, b, floor, out, lo, hi)


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _rescale_rows(K, ra, cb, thr, lo, hi):
    """Rows lo..hi of ``K *= ra cb^T`` in place, in float64 (no subnormal on the way);
    results below ``thr`` (the floor) become exactly 0, overflows inf; rows whose factor
    ``ra[i]`` is -1 are left as they are."""
    k = K.shape[1]
    for i in range(lo, hi):
        row = K[i]
        f = ra[i]
        if f < 0.0:  # -1: a row to keep as it is
            continue
        for j in range(k):
            y = np.float64(row[j]) * (f * cb[j])
            row[j] = y if y >= thr else 0.0


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _rescale(K, ra, cb, thr, n_chunks):
    n = K.shape[0]
    for t in prange(n_chunks):
        _rescale_rows(K, ra, cb, thr, t * n // n_chunks, (t + 1) * n // n_chunks)


# -- streamed sweep (no stored kernel) ------------------------------------------------------


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (inlined LLVM bitcast)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@njit(fastmath=_EXACT, cache=True, error_model="numpy")
def _expf(x):
    """float32 exp (Cephes expf: ~1 ulp), branch-free; 0 below -87 (no subnormals)."""
    xc = min(max(x, np.float32(-87.3)), np.float32(88.5))
    # np.floor keeps float32 (math.floor gives an int64, and float32 * int64 is float64)
    n = np.floor(xc * np.float32(_LOG2E) + np.float32(0.5))
    r = xc - n * np.float32(0.693359375)
    r = r - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    y = p * _f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
    y = np.float32(0.0) if x < np.float32(-87.0) else y
    y = np.float32(np.inf) if x > np.float32(88.7) else y
    return x if x != x else y


@njit(fastmath=_EXACT, cache=True, error_model="numpy")
def _expf64(x):
    """exp of a float64 argument as a float32, to float32 accuracy (~1 ulp), branch-free.

    The argument reduction ``x = n ln 2 + r`` is done in float64 (exact for the large
    arguments of ``lam S + a + b``), the polynomial (Cephes expf) in float32: about 1.5x
    faster than the float64 ``_exp`` in the exp-heavy passes. 0 below -87 (the result is
    never subnormal: a subnormal costs an Intel core a microcode assist), inf above 88.7,
    NaN for NaN.
    """
    xc = min(max(x, -87.0), 88.5)
    n = np.floor(xc * _LOG2E + 0.5)
    r = np.float32(xc - n * 0.6931471805599453)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    y = p * _f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
    y = np.float32(0.0) if x < -87.0 else y
    y = np.float32(np.inf) if x > 88.7 else y
    return np.float32(x) if x != x else y


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _stream_rows32(S, lam, a, g, c, a_next, acc, lo, hi, su, thr, L):
    """Rows lo..hi of the streamed sweep, float32: E = exp(lam S + a_i + g) on the fly.

    ``acc`` receives ``su`` times the column masses (``su`` as in ``_sweep_rows32``);
    with ``thr >= 0`` each row's curvature goes into ``L`` (``_curvature_row``, the row
    of ``E`` in L1, ``p_i = E_i / sum E_i``).
    """
    k = S.shape[1]
    buf = np.empty(k, dtype=np.float32)
    part = np.zeros(k, dtype=np.float32)
    flags, idx, val = _curvature_buffers(k, thr)
    ones = np.ones(k if thr >= 0.0 else 1, dtype=np.float32)
    lam32 = np.float32(lam)
    count = 0
    for i in range(lo, hi):
        row = S[i]
        ai = np.float32(a[i])
        s = np.float32(0.0)
        for j in range(k):
            e = _expf(row[j] * lam32 + (ai + g[j]))
            buf[j] = e
            s += e
        s64 = np.float64(s)
        a_next[i] = a[i] - math.log(s64)  # rows of the plan sum to c_i exactly
        uk = np.float32(c[i] / s64 * su)
        for j in range(k):
            part[j] += buf[j] * uk
        if thr >= 0.0:
            _curvature_row(buf, ones, c[i], c[i] / s64, thr, flags, idx, val, L)
        count += 1
        if count == _FLUSH:
            _flush(acc, part)
            count = 0
    _flush(acc, part)


@njit(fastmath=_FAST, nogil=True, cache=True, error_model="numpy")
def _stream_rows64(S, lam, a, g, c, a_next, acc, lo, hi, thr, L):
    """Rows lo..hi of the streamed sweep in float64 (float64 scores)."""
    k = S.shape[1]
    buf = np.empty(k)
    flags, idx, val = _curvature_buffers(k, thr)
    ones = np.ones(k if thr >= 0.0 else 1)
    for i in range(lo, hi):
        row = S[i]
        ai = a[i]
        s = 0.0
        for j in range(k):
            e = _exp(np.float64(row[j]) * lam + (ai + g[j]))
            buf[j] = e
            s += e
        a_next[i] = ai - math.log(s)
        ui = c[i] / s
        for j in range(k):
            acc[j] += buf[j] * ui
        if thr >= 0.0:
            _curvature_row(buf, ones, c[i], ui, thr, flags, idx, val, L)


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _stream(S, lam, a, g, c, a_next, n_chunks, single, su, thr, Ls):
    """The streamed sweep in ``n_chunks`` row chunks (curvature as in ``_sweep``)."""
    n, k = S.shape
    accs = np.zeros((n_chunks, k))
    g32 = g.astype(np.float32)
    for t in prange(n_chunks):
        lo = t * n // n_chunks
        hi = (t + 1) * n // n_chunks
        L = Ls[t] if thr >= 0.0 else Ls[0]
        if single:
            _stream_rows32(S, lam, a, g32, c, a_next, accs[t], lo, hi, su, thr, L)
        else:
            _stream_rows64(S, lam, a, g, c, a_next, accs[t], lo, hi, thr, L)
    return _chunk_sum(accs)


# -- labels --------------------------------------------------------------------------------


#: the argmax's maxima: reassociated (a maximum is exact in any order), no ``contract``:
#: each value is numpy's product then sum, so the ties are numpy's
_MAX_ONLY = {"reassoc"}
_BLOCK = 128


@njit(fastmath=_MAX_ONLY, nogil=True, cache=True, error_model="numpy")
def _argmax_rows(S, lam, g, labels, picked, lo, hi):
    """Per row: the first index of the maximum of ``lam S_i + g`` and its score. The row's
    blocks of ``_BLOCK`` entries are reduced on vector registers (scores were scanned: no
    NaN, and ``lam S + g`` is never ``inf - inf``); the first block holding the maximum,
    in cache, gives its first index."""
    k = S.shape[1]
    for i in range(lo, hi):
        row = S[i]
        best = -np.inf
        at = 0
        for b0 in range(0, k, _BLOCK):
            m = -np.inf
            for j in range(b0, min(b0 + _BLOCK, k)):
                m = _fmax(m, np.float64(row[j]) * lam + g[j])
            at = b0 if m > best else at
            best = _fmax(best, m)
        arg = at
        while arg < k - 1 and np.float64(row[arg]) * lam + g[arg] < best:
            arg += 1
        labels[i] = arg
        picked[i] = row[arg]


@njit(parallel=True, cache=True, error_model="numpy")
def _argmax(S, lam, g, labels, picked, n_chunks):
    n = S.shape[0]
    for t in prange(n_chunks):
        _argmax_rows(S, lam, g, labels, picked, t * n // n_chunks, (t + 1) * n // n_chunks)


def _scales(v: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """Scales that keep the float32 operands of a sweep near 1 (products never subnormal).

    ``sv`` centres ``v`` geometrically (its positive entries then span e^±tau around 1
    at most); ``su`` brings the row factors ``u_i = c_i / (K_i . sv v)``, about
    ``c_i / sv``, to about 1 for the heaviest rows. Both are powers of two, so the scaled
    arithmetic rounds exactly as the unscaled one would.
    """
    pos = v[v > 0]
    sv = 1.0
    if pos.size:
        lo, hi = float(pos.min()), float(pos.max())
        if 0.0 < lo and hi < np.inf:
            sv = 2.0 ** -round(0.5 * (math.log2(lo) + math.log2(hi)))
    cmax = float(c.max()) if c.size else 1.0
    su = 2.0 ** -round(math.log2(cmax / sv)) if 0.0 < cmax < np.inf else 1.0
    return sv, su


class NumbaBackend(NumpyBackend):
    """Parallel fused primitives for numpy arrays (``pip install 'sinklabel[numba]'``).

    Matrices of at most ``_SERIAL_MAX`` entries run on the calling thread alone (the
    row functions directly); larger ones in parallel row chunks.
    """

    name = "numba"
    library = "numpy"
    check_every = 1
    supports_stream = True

    @staticmethod
    def _native(S: np.ndarray) -> bool:
        return S.dtype in (np.float32, np.float64)

    def scan(self, S: np.ndarray) -> Scan:
        if not self._native(S):
            return super().scan(S)
        n, k = S.shape
        chunks = _chunks(S)
        view, mask, pinf, ninf = _BITS[S.dtype]
        bits = S.view(view)
        if chunks == 1:
            alive = np.zeros((1, k), dtype=np.bool_)
            found = np.full((1, 5), -1, dtype=np.int64)
            extent = np.zeros((1, 1), dtype=view)
            _scan_rows(bits, 0, n, alive[0], found[0], extent[0], mask, pinf, ninf)
        else:
            alive, found, extent = _scan(bits, chunks, mask, pinf, ninf)
        where = []
        for col, test in ((0, np.isnan), (1, np.isposinf)):
            rows = found[:, col]
            rows = rows[rows >= 0]
            if rows.size:
                i = int(rows.min())
                where.append((i, int(np.argmax(test(S[i])))))
            else:
                where.append(None)
        dead = found[:, 2]
        dead = dead[dead >= 0]
        dead_row = int(dead.min()) if dead.size else None
        some_finite_row = bool((found[:, 4] > 0).any())  # then every column is alive
        dead_cols = np.zeros(0, np.int64) if some_finite_row else np.flatnonzero(~alive.any(axis=0))
        max_abs = float(extent.max().view(S.dtype))  # the largest |x|'s bits, back to a float
        return Scan(where[0], where[1], dead_row, dead_cols, max_abs, bool((found[:, 3] > 0).any()))

    def log_sweep(self, S, lam, g, log_c):
        if not self._native(S):
            return super().log_sweep(S, lam, g, log_c)
        return self._log_sweep(S, lam, g, log_c, None)[:2]

    def log_sweep_build(self, S, lam, g, log_c, out=None):
        if not self._native(S):
            return super().log_sweep_build(S, lam, g, log_c, out=out)
        n, k = S.shape
        if out is None:
            out = np.empty((n, k), dtype=self.compute_dtype(S))
        return self._log_sweep(S, lam, g, log_c, out)

    def _log_sweep(self, S, lam, g, log_c, out):
        """``log_sweep``, and the kernel in the frame ``(a, g)`` into ``out`` if given."""
        n, k = S.shape
        a = np.empty(n, dtype=np.float64)
        g = np.ascontiguousarray(g, dtype=np.float64)
        log_c = np.ascontiguousarray(log_c, dtype=np.float64)
        if out is None:
            out, thr = np.empty((0, 0), dtype=self.compute_dtype(S)), 0.0
        else:
            thr = math.exp(self.exp_floor(out.dtype))
        chunks = _chunks(S)
        masses = np.zeros((chunks, k))
        if chunks == 1:
            _log_sweep_rows1(S, float(lam), g, log_c, a, masses[0], 0, n, out, thr)
        else:
            _log_sweep1(S, float(lam), g, log_c, a, masses, out, thr)
        mass = _chunk_sum(masses)
        with np.errstate(divide="ignore"):
            col_lse = np.log(mass)
            # dropped: below e^-708 of its row's top entry, at most e^-708 sum(c) per column
            trusted = col_lse >= math.log(_sum_exp(log_c)) - 708.0 + 20.0
        cols = np.flatnonzero(~trusted & (g > -np.inf))
        if cols.size:
            refs = np.full((chunks, cols.size), -1e300)
            sums = np.zeros((chunks, cols.size))
            if chunks == 1:
                _col_lse_rows(S, float(lam), g, log_c, a, cols, refs[0], sums[0], 0, n)
            else:
                _col_lse(S, float(lam), g, log_c, a, cols, refs, sums)
            col_lse[cols] = _merge_lse(refs, sums)
        return a, col_lse, out

    def build_kernel(self, S, lam, a, b, out=None):
        if not self._native(S):
            return super().build_kernel(S, lam, a, b, out=out)
        n, k = S.shape
        dtype = self.compute_dtype(S)
        if out is None:
            out = np.empty((n, k), dtype=dtype)
        b = np.ascontiguousarray(b, dtype=np.float64)
        chunks = _chunks(S)
        single = out.dtype == np.float32
        if chunks > 1:
            _build(S, float(lam), a, b, self.exp_floor(dtype), out, chunks, single)
        else:
            (_build_rows32 if single else _build_rows)(S, float(lam), a, b, self.exp_floor(dtype), out, 0, n)
        return out

    def build_rows(self, S, lam, a, b, Kmat, rows):
        if not self._native(S) or Kmat.dtype not in (np.float32, np.float64):
            return super().build_rows(S, lam, a, b, Kmat, rows)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.size:
            b = np.ascontiguousarray(b, dtype=np.float64)
            small = rows.size * S.shape[1] <= _SERIAL_MAX
            chunks = 1 if small else max(1, min(rows.size, 4 * numba.get_num_threads()))
            single = Kmat.dtype == np.float32
            _build_at(S, float(lam), a, b, self.exp_floor(Kmat.dtype), Kmat, rows, chunks, single)
        return Kmat

    def rescale_kernel(self, Kmat, row_log, col_log, keep=None):
        if Kmat.dtype not in (np.float32, np.float64):
            return super().rescale_kernel(Kmat, row_log, col_log, keep)
        ra, cb, thr = self._factors(Kmat, row_log, col_log, keep)
        chunks = _chunks(Kmat)
        if chunks > 1:
            _rescale(Kmat, ra, cb, thr, chunks)
        else:
            _rescale_rows(Kmat, ra, cb, thr, 0, Kmat.shape[0])
        return Kmat

    def rescale_sweep(self, Kmat, row_log, col_log, v, c, keep=None):
        # fused for float32 kernels (the large ones); a float64 kernel runs the two passes,
        # whose rounding the quality sweep's lam = 1000 solves were measured with (one of
        # its 40 float64 K-does-not-divide-N problems then circles at error 3.5e-3)
        if Kmat.dtype != np.float32:
            return super().rescale_sweep(Kmat, row_log, col_log, v, c, keep)
        return self._rescale_sweep(Kmat, (row_log, col_log, keep), v, c, -1.0)[:2]

    def _rescale_sweep(self, Kmat, rescale, v, c, thr):
        """The fused rescale and sweep of a float32 kernel, with ``thr >= 0`` the curvature."""
        n, k = Kmat.shape
        ra, cb, floor = self._factors(Kmat, *rescale)
        u, _, sv, su, vk, _ = self._operands(Kmat, v, c)
        chunks, Ls = self._curvature_chunks(Kmat, thr)
        if chunks > 1:
            acc = _rescale_sweep(Kmat, ra, cb, floor, vk, c, u, chunks, su, thr, Ls)
        else:
            acc = np.zeros(k)
            _rescale_sweep_rows(Kmat, ra, cb, floor, vk, c, u, acc, 0, n, su, thr, Ls[0])
        u *= sv  # back from the scaled float32 operands, as in sweep
        acc *= sv / su
        return u, acc, self._curvature(Ls, thr)

    def _factors(self, Kmat, row_log, col_log, keep=None):
        """A rescale's row and column factors (float64; -1 for the rows ``keep``, which are
        not rescaled: a factor is never negative) and the kernel's floor."""
        with np.errstate(over="ignore"):
            ra = np.exp(np.ascontiguousarray(row_log, dtype=np.float64))
            cb = np.exp(np.ascontiguousarray(col_log, dtype=np.float64))
        if keep is not None:
            ra[keep] = -1.0
        return ra, cb, math.exp(self.exp_floor(Kmat.dtype))

    @staticmethod
    def _operands(Kmat, v, c):
        """A sweep's operands: ``u`` to fill, whether the kernel is float32, the scales of
        its float32 operands (``_scales``; 1 for float64), ``v`` scaled in the kernel's dtype,
        the row chunks."""
        single = Kmat.dtype == np.float32
        sv, su = _scales(v, c) if single else (1.0, 1.0)
        vk = np.ascontiguousarray(v * sv if sv != 1.0 else v, dtype=Kmat.dtype)
        return np.empty(Kmat.shape[0], dtype=np.float64), single, sv, su, vk, _chunks(Kmat)

    def sweep(self, Kmat, v, c):
        return self._sweep(Kmat, v, c, -1.0)[:2]

    def host_work(self, S):
        if not self._native(S):  # float16: numpy's passes over S, some of them BLAS
            return contextlib.nullcontext()
        # OpenBLAS's workers spin for up to ~0.1 s after each multi-threaded call, and on
        # a machine with few cores the next parallel pass loses one of them for that long
        # (measured on 2 cores: a 200,000 x 1,000 sweep took 71 ms right after a 200,000-
        # element dot, 47 ms alone; a sweep_hessian 209 vs 174 ms after Newton's K x K
        # solve). The host's BLAS calls are small: one thread for them (threadpoolctl,
        # installed with the numba extra; without it, nothing changes).
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return contextlib.nullcontext()
        return threadpool_limits(limits=1, user_api="blas")

    def newton_pays(self, S, stream=False):
        # the curvature in the sweep's own read: ~3 sweeps' time (RESULTS.md); streamed,
        # numba's own pass over float32 / float64 scores
        return self._native(S) if stream else True

    def sweep_hessian(self, Kmat, v, c, thr, rescale=None):
        if rescale is None:
            return self._sweep(Kmat, v, c, max(float(thr), 0.0))
        if Kmat.dtype != np.float32:  # as rescale_sweep: the two passes
            self.rescale_kernel(Kmat, *rescale)
            return self._sweep(Kmat, v, c, max(float(thr), 0.0))
        return self._rescale_sweep(Kmat, rescale, v, c, max(float(thr), 0.0))

    def _sweep(self, Kmat, v, c, thr):
        """The sweep, and with ``thr >= 0`` the rows' curvature ``W`` (None without)."""
        n, k = Kmat.shape
        u, single, sv, su, vk, _ = self._operands(Kmat, v, c)
        chunks, Ls = self._curvature_chunks(Kmat, thr)
        if chunks > 1:
            acc = _sweep(Kmat, vk, c, u, chunks, single, su, thr, Ls)
        else:
            acc = np.zeros(k)
            if single:
                _sweep_rows32(Kmat, vk, c, u, acc, 0, n, su, thr, Ls[0])
            else:
                _sweep_rows64(Kmat, vk, c, u, acc, 0, n, thr, Ls[0])
        if single:  # back from the scaled float32 operands: u = sv u', acc = sv acc' / su
            u *= sv
            acc *= sv / su
        return u, acc, self._curvature(Ls, thr)

    def stream_sweep(self, S, lam, a, g, c):
        if not self._native(S):
            return super().stream_sweep(S, lam, a, g, c)
        return self._stream_sweep(S, lam, a, g, c, -1.0)[:2]

    def stream_sweep_hessian(self, S, lam, a, g, c, thr):
        return self._stream_sweep(S, lam, a, g, c, max(float(thr), 0.0))

    def _stream_sweep(self, S, lam, a, g, c, thr):
        """The streamed sweep, and with ``thr >= 0`` the rows' curvature (None without)."""
        n, k = S.shape
        a_next = np.empty(n, dtype=np.float64)
        g = np.ascontiguousarray(g, dtype=np.float64)
        single = S.dtype == np.float32
        su = _scales(np.ones(1), c)[1] if single else 1.0
        chunks, Ls = self._curvature_chunks(S, thr)
        if chunks > 1:
            mass = _stream(S, float(lam), a, g, c, a_next, chunks, single, su, thr, Ls)
        else:
            mass = np.zeros(k)
            if single:
                _stream_rows32(S, float(lam), a, g.astype(np.float32), c, a_next, mass, 0, n, su, thr, Ls[0])
            else:
                _stream_rows64(S, float(lam), a, g, c, a_next, mass, 0, n, thr, Ls[0])
        if single:
            mass /= su
        return a_next, mass, self._curvature(Ls, thr)

    @staticmethod
    def _curvature_chunks(M, thr):
        """Row chunks of a pass over ``M`` and its curvature accumulators: with ``thr >= 0``
        one K x K array (``M``'s float dtype) per chunk, a chunk per thread at most."""
        n, k = M.shape
        chunks = _chunks(M)
        if thr < 0.0:
            return chunks, np.zeros((1, 1, 1), dtype=M.dtype)
        if chunks > 1:
            chunks = max(1, min(numba.get_num_threads(), n, _CURVATURE_BYTES // (M.dtype.itemsize * k * k)))
        return chunks, np.zeros((chunks, k, k), dtype=M.dtype)

    @staticmethod
    def _curvature(Ls, thr):
        """``W`` (float64, symmetric) from the chunks' lower triangles; None without. One
        K x K float64 array: the triangle is mirrored in place (``_mirror``)."""
        if thr < 0.0:
            return None
        W = Ls.sum(axis=0, dtype=np.float64) if Ls.shape[0] > 1 else Ls[0].astype(np.float64)
        _mirror(W)
        return W

    def argmax(self, S, lam, g):
        if not self._native(S):
            return super().argmax(S, lam, g)
        n = S.shape[0]
        labels = np.empty(n, dtype=np.int64)
        picked = np.empty(n, dtype=np.float64)
        g = np.ascontiguousarray(g, dtype=np.float64)
        chunks = _chunks(S)
        if chunks == 1:
            _argmax_rows(S, float(lam), g, labels, picked, 0, n)
        else:
            _argmax(S, float(lam), g, labels, picked, chunks)
        return labels, picked
