"""Which array library an array belongs to, found without importing torch or cupy.

Following array-api-compat, a library counts as present only if the user has
already imported it (it is in ``sys.modules``); ``import sinklabel`` therefore
never imports torch or cupy.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["array_library", "device_of", "is_array"]


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
