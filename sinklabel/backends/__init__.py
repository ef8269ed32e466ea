"""Backend registry.

A backend supplies the few primitives that touch the N x K score matrix (see
:class:`sinklabel.backends._base.Backend`); the loop, stopping rule, warm start,
multi-head handling, validation and the result live once in :mod:`sinklabel._driver`.
Backends are imported lazily: a missing optional dependency is reported with the
``pip install`` that fixes it. A new backend is one file and one line in :data:`BACKENDS`
(the contract, and what else picks it up, is in :mod:`sinklabel.backends._base`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._base import Backend

__all__ = ["BACKENDS", "BackendNotAvailable", "available_backends", "get_backend", "pick_backend"]

# name -> (module, class, pip extra, the library the backend needs)
BACKENDS: dict[str, tuple[str, str, str, str]] = {
    "numpy": ("sinklabel.backends._numpy", "NumpyBackend", "", "numpy"),
    "numba": ("sinklabel.backends._numba", "NumbaBackend", "numba", "numba"),
    "torch": ("sinklabel.backends._torch", "TorchBackend", "torch", "torch"),
    "cupy": ("sinklabel.backends._cupy", "CupyBackend", "cupy", "cupy"),
}


class BackendNotAvailable(ValueError):
    """The requested backend needs an optional dependency that is not installed."""


_cache: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend instance called ``name``; raises a clear error when unknown or missing."""
    if not isinstance(name, str):
        raise TypeError(f"`backend` must be a string; got {type(name).__name__}")
    if name in _cache:
        return _cache[name]
    if name not in BACKENDS:
        raise ValueError(f"`backend` must be one of {['auto', *BACKENDS]}; got {name!r}")
    module, cls, extra, needs = BACKENDS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise BackendNotAvailable(
            f"backend {name!r} needs {needs}, which is not importable ({exc}); "
            f"install it with: pip install 'sinklabel[{extra}]'"
        ) from exc
    backend = getattr(mod, cls)()
    _cache[name] = backend
    return backend


def available_backends() -> list[str]:
    """Names of the backends whose dependencies import on this machine."""
    names = []
    for name in BACKENDS:
        try:
            get_backend(name)
        except BackendNotAvailable:
            continue
        names.append(name)
    return names


def pick_backend(library: str, device: object = None) -> str:
    """The ``"auto"`` choice for scores held by ``library``, to compute on ``device``.

    torch tensors go to the torch backend, cupy arrays to cupy; numpy arrays stay on the
    CPU unless ``device`` names a GPU (then torch, else cupy).
    """
    if library == "numpy" and device is not None and str(device) != "cpu":
        for name in ("torch", "cupy"):
            try:
                get_backend(name)
            except BackendNotAvailable:
                continue
            return name
        raise BackendNotAvailable(
            f"device={str(device)!r} needs a GPU backend, and neither torch nor cupy imports; "
            "install one with: pip install 'sinklabel[torch]' (or 'sinklabel[cupy]')"
        )
    if library == "numpy":
        for name in ("numba", "numpy"):
            if name in BACKENDS:
                try:
                    get_backend(name)
                except BackendNotAvailable:
                    continue
                return name
        return "numpy"
    if library in BACKENDS:
        return library
    raise TypeError(
        f"`scores` held by {library} has no backend in this version of sinklabel; "
        f"pass a numpy array (known backends: {sorted(BACKENDS)})"
    )
