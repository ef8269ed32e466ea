"""Array libraries, and the one set of conversions between them.

Which library an array belongs to is found without importing torch or cupy: following
array-api-compat, a library counts as present only if the user has already imported it
(it is in ``sys.modules``); ``import sinklabel`` therefore never imports torch or cupy.

The conversions every module uses (the driver, the distributed path, the balanced step,
validation, the CLI, the backends' ``adopt``):

:func:`to_host`
    Any array (or array-like) as a numpy array on the host: torch detached and moved to
    the CPU, float16/bfloat16 tensors widened to float32 (bfloat16 has no numpy twin);
    cupy arrays copied with ``.get()``; numpy arrays (memory maps included) as they are.
:func:`hand_back`
    An array in the library and on the device of the caller's array ``home``: unchanged
    when it is already there, else through the host.
:func:`stack`
    Per-head arrays stacked along a new first axis, in their own library.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["array_library", "device_of", "is_array", "to_host", "hand_back", "stack"]


def array_library(x: Any) -> str | None:
    """Return ``"numpy"``, ``"torch"`` or ``"cupy"`` for an array of that library, else None."""
    if isinstance(x, np.ndarray):
        return "numpy"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return "cupy"
    return None


def is_array(x: Any) -> bool:
    return array_library(x) is not None


def device_of(x: Any) -> str:
    """A printable device name: ``"cpu"``, ``"cuda:0"``…"""
    lib = array_library(x)
    if lib == "torch":
        return str(x.device)
    if lib == "cupy":
        return f"cuda:{x.device.id}"
    return "cpu"


def to_host(x: Any) -> np.ndarray:
    """``x`` as a numpy array on the host (see the module docstring).

    No copy where none is needed: a numpy array is returned as a plain ndarray view, a
    CPU tensor of float32/float64 or an integer dtype shares its memory.
    """
    lib = array_library(x)
    if lib == "torch":
        x = x.detach()
        if x.dtype.is_floating_point and x.dtype.itemsize < 4:  # float16, bfloat16
            x = x.float()
        return x.cpu().numpy()
    if lib == "cupy":
        return x.get()
    return np.asarray(x)


def hand_back(x: Any, home: Any) -> Any:
    """``x`` (any library) in the library and on the device of the caller's array ``home``."""
    library = array_library(home)
    if array_library(x) == library and device_of(x) == device_of(home):
        return x
    host = to_host(x)
    if library == "torch":
        import torch

        return torch.from_numpy(host).to(home.device)
    if library == "cupy":
        import cupy

        with cupy.cuda.Device(home.device.id):
            return cupy.asarray(host)
    return host


def stack(arrays: list[Any], like: Any = None) -> Any:
    """``arrays`` (one per head, same library) stacked along a new first axis, in the
    library of ``like`` (default: of the first array)."""
    library = array_library(arrays[0] if like is None else like)
    if library == "torch":
        import torch

        return torch.stack(list(arrays))
    if library == "cupy":
        import cupy

        return cupy.stack(list(arrays))
    return np.stack(list(arrays))
