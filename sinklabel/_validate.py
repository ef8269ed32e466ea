"""Validation at the boundary: every bad input is refused, by name, before heavy work."""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np

from ._arrays import array_library, device_of, to_host

__all__ = [
    "check_lam",
    "check_positive_float",
    "check_max_iter",
    "split_heads",
    "check_score_dtype",
    "check_prior",
    "check_weights",
    "check_lam_scale",
    "LAM_SCALE_LIMIT",
    "looks_like_probabilities",
]

#: the largest ``lam * max|S|`` accepted: float64 potentials of that size still resolve the
#: exponent of the plan to 1/4 (their spacing is 2^-2 at 2^50). Measured: numpy, numba and
#: torch solve finitely at 0.99 * 2^52 on realistic, collapsed and -inf scores, float32 and
#: float64; at 4 * 2^52 numpy's float32 path warns of invalid values, at 2^58 numba's
#: potentials turn to NaN.
LAM_SCALE_LIMIT = 2.0**50


def check_lam(lam: Any) -> float:
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"`lam` must be a real number > 0; got {type(lam).__name__} {lam!r}")
    lam = float(lam)
    if not (np.isfinite(lam) and lam > 0):
        raise ValueError(f"`lam` must be finite and > 0; got {lam!r}")
    return lam


def check_lam_scale(lam: float, max_abs: float, where: str = "scores") -> None:
    """Refuse a ``lam`` whose ``lam * max|S|`` (finite entries) exceeds :data:`LAM_SCALE_LIMIT`.

    ``max_abs`` is ``max |S[i, k]|`` over the finite scores of a head, found by the
    backend's ``scan`` (the one validation read). The message gives the largest usable
    ``lam``.
    """
    if max_abs > 0 and lam * max_abs > LAM_SCALE_LIMIT:
        raise ValueError(
            f"`lam` = {lam:g} is too large for `{where}`: lam * max|S| = {lam * max_abs:.3g} exceeds "
            f"2^50 = {LAM_SCALE_LIMIT:.3g}, beyond which float64 potentials cannot resolve the "
            f"plan; the largest usable lam for these scores is {LAM_SCALE_LIMIT / max_abs:.6g} "
            "(or rescale the scores)"
        )


def check_positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number > 0; got {type(value).__name__}")
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be finite and > 0; got {value!r}")
    return value


def check_max_iter(max_iter: Any, name: str = "max_iter") -> int:
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer >= 1; got {type(max_iter).__name__}")
    if max_iter < 1:
        raise ValueError(f"`{name}` must be >= 1; got {max_iter}")
    return int(max_iter)


def _native(x: Any) -> Any:
    """A numpy array of non-native byte order (e.g. big-endian ``>f4`` read from a file) in
    native order: one copy, the dtype otherwise unchanged. Anything else as it is."""
    if isinstance(x, np.ndarray) and not x.dtype.isnative:
        return x.astype(x.dtype.newbyteorder("="))
    return x


def split_heads(scores: Any) -> tuple[list[Any], bool, str]:
    """Turn ``scores`` into a list of 2-D head matrices; return (heads, multi_head, library).

    numpy arrays of non-native byte order are converted (one copy). Scores that look like
    probabilities rather than log-probabilities get one :class:`UserWarning` per call
    (:func:`looks_like_probabilities`).
    """
    heads, multi, library = _split_heads(scores)
    suspects = [t for t, h in enumerate(heads) if looks_like_probabilities(h)]
    if suspects:
        which = "`scores`" if not multi else f"`scores` heads {suspects}"
        warnings.warn(
            f"{which} look like probabilities, not log-probabilities: every entry of the first "
            f"{min(heads[suspects[0]].shape[0], _PROBE_ROWS)} rows is in [0, 1] and each row sums "
            "to 1. sinklabel reads scores as log-probabilities or logits; pass np.log(p) "
            "(zeros become -inf, which is allowed)",
            UserWarning,
            stacklevel=3,
        )
    return heads, multi, library


#: rows read by :func:`looks_like_probabilities`
_PROBE_ROWS = 1024


def looks_like_probabilities(S: Any) -> bool:
    """Whether the first rows of floating 2-D scores ``S`` are probability vectors: every
    entry in [0, 1] and each row summing to 1 (to 1e-3; 1e-2 for half precisions). Reads
    at most 1,024 rows; a log-probability row (entries <= 0, log-sum-exp 0) never passes
    unless it has a single cluster."""
    kind = str(S.dtype).replace("torch.", "")
    if kind not in ("float16", "bfloat16", "float32", "float64") or S.ndim != 2 or 0 in S.shape:
        return False
    head = np.asarray(to_host(S[:_PROBE_ROWS]), dtype=np.float64)
    if S.shape[1] == 1 or not (head.min() >= 0.0 and head.max() <= 1.0):
        return False
    tol = 1e-3 if kind in ("float32", "float64") else 1e-2
    return bool(np.all(np.abs(head.sum(axis=1) - 1.0) <= tol))


def _split_heads(scores: Any) -> tuple[list[Any], bool, str]:
    if isinstance(scores, (list, tuple)):
        if len(scores) == 0:
            raise ValueError("`scores` is an empty list; pass at least one (N, K) array")
        heads = [_native(h) for h in scores]
        libs = [array_library(h) for h in heads]
        for t, (h, lib) in enumerate(zip(heads, libs)):
            if lib is None:
                raise TypeError(f"`scores[{t}]` must be a numpy, torch or cupy array; got {type(h).__name__}")
            if h.ndim != 2:
                raise ValueError(
                    f"`scores[{t}]` must be 2-D of shape (n_points, n_clusters); got shape {tuple(h.shape)}"
                )
        if len(set(libs)) > 1:
            raise TypeError(
                f"`scores` mixes array libraries ({', '.join(sorted(set(libs)))}); "
                "pass every head in one library"
            )
        devices = {device_of(h) for h in heads}
        if len(devices) > 1:
            raise ValueError(f"`scores` heads live on different devices: {sorted(devices)}")
        n = {h.shape[0] for h in heads}
        if len(n) > 1:
            raise ValueError(
                f"every head must score the same points; got n_points {[h.shape[0] for h in heads]}"
            )
        return heads, True, libs[0]
    lib = array_library(scores)
    scores = _native(scores)
    if lib is None:
        raise TypeError(
            f"`scores` must be a numpy, torch or cupy array (or a list of them); got {type(scores).__name__}"
        )
    if scores.ndim == 2:
        return [scores], False, lib
    if scores.ndim == 3:
        return [scores[t] for t in range(scores.shape[0])], True, lib
    raise ValueError(
        "`scores` must be 2-D of shape (n_points, n_clusters) or 3-D of shape "
        f"(n_heads, n_points, n_clusters); got shape {tuple(scores.shape)}"
    )


def check_score_dtype(S: Any, name: str) -> None:
    """Floating dtypes only (half precisions are computed in float32)."""
    dtype_name = str(S.dtype).replace("torch.", "")
    ok = dtype_name in ("float16", "bfloat16", "float32", "float64")
    if not ok:
        raise TypeError(
            f"`{name}` must hold floating-point scores (float16/bfloat16/float32/float64); "
            f"got dtype {dtype_name}"
        )
    if 0 in tuple(S.shape):
        raise ValueError(f"`{name}` is empty; got shape {tuple(S.shape)}")


def _as_host_vector(x: Any, name: str, length: int) -> np.ndarray:
    lib = array_library(x)
    if lib == "torch":
        x = x.detach().cpu().numpy()
    elif lib == "cupy":
        x = x.get()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"`{name}` must be real numbers; got dtype {arr.dtype}")
    if arr.dtype.kind == "b":
        raise TypeError(f"`{name}` must be real numbers; got dtype bool")
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"`{name}` must have shape ({length},); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite; got {arr[~np.isfinite(arr)][:3]}")
    if np.any(arr < 0):
        raise ValueError(f"`{name}` must be nonnegative; got {arr[arr < 0][:3]}")
    return arr


def check_prior(prior: Any, n_points: int, n_clusters: int, head: str) -> np.ndarray:
    """Return the cluster masses ``r`` (float64, sums to 1) for one head.

    ``prior`` is a probability vector (sums to 1) or integer sizes (sum to ``n_points``);
    ``None`` is the equipartition, which needs ``n_clusters <= n_points``.
    """
    if prior is None:
        if n_clusters > n_points:
            raise ValueError(
                f"equipartition needs n_clusters <= n_points; got {n_clusters} clusters "
                f"for {n_points} points{head} (pass a `prior` to allow empty clusters)"
            )
        return np.full(n_clusters, 1.0 / n_clusters)
    arr = _as_host_vector(prior, "prior", n_clusters)
    total = float(arr.sum())
    if arr.dtype.kind in "iu":
        if int(arr.sum()) != n_points:
            raise ValueError(
                f"integer `prior` (cluster sizes) must sum to n_points={n_points}{head}; "
                f"got sum {int(arr.sum())}"
            )
    elif abs(total - 1.0) > 1e-6 * max(1, n_clusters) ** 0.5 + 1e-9:
        raise ValueError(
            f"`prior` must sum to 1 (or be integer sizes summing to n_points); got sum {total!r}"
        )
    if total <= 0:
        raise ValueError(f"`prior` must have a positive entry{head}; got all zeros")
    return arr.astype(np.float64) / total


def check_weights(weights: Any, n_points: int, allsum: Any = np.asarray) -> np.ndarray:
    """Return the point masses ``c`` (float64, sums to 1).

    ``allsum`` sums a host array over the processes sharing a distributed solve (each
    holding ``n_points`` of the points); the masses then sum to 1 over all of them.
    """
    if weights is None:
        return np.full(n_points, 1.0 / float(allsum(np.array([n_points]))[0]))
    arr = _as_host_vector(weights, "weights", n_points).astype(np.float64)
    total = float(allsum(np.array([arr.sum()]))[0])
    if not total > 0:
        raise ValueError("`weights` must have a positive entry; got all zeros")
    return arr / total
