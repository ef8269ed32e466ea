"""sinklabel: balanced ("equipartition") label assignment for self-labelling.

Notation, used throughout (Asano, Rupprecht & Vedaldi, "Self-labelling via simultaneous
clustering and representation learning", ICLR 2020):

- ``S`` (N x K): scores, ``log p(y = k | x_i)`` or logits, for N points and K clusters;
- ``lam``: inverse entropic regularisation (the paper's lambda);
- ``c`` (N): point masses, ``1/N`` by default; ``r`` (K): cluster masses, ``1/K`` by default;
- ``Q = diag(u) exp(lam S) diag(v)``: the transport plan, rows summing to ``c`` and columns
  to ``r``; ``log_u``, ``log_v`` are its log-potentials; hard labels are
  ``argmax_k (lam S_ik + log_v_k)``.

The top level offers :func:`solve` (everything) and :func:`assign` (labels only). The
submodules :mod:`sinklabel.exact` (the LP reference, through POT), :mod:`sinklabel.problems`
(generated score matrices) and :mod:`sinklabel.distributed` (torch.distributed) are reachable
as attributes after ``import sinklabel``; each is imported on first use, so ``import
sinklabel`` imports neither POT nor torch.

Logging goes to the ``"sinklabel"`` logger, which has a ``NullHandler``: nothing is printed
unless the application configures logging.
"""

import importlib as _importlib
import logging as _logging

from ._driver import SolveProgress, assign, solve
from ._result import ConvergenceWarning, HeadResult, Result
from .backends import BackendNotAvailable, available_backends

__all__ = [
    "assign",
    "solve",
    "Result",
    "HeadResult",
    "SolveProgress",
    "ConvergenceWarning",
    "BackendNotAvailable",
    "available_backends",
]
__version__ = "0.1.0"

_logging.getLogger("sinklabel").addHandler(_logging.NullHandler())

_SUBMODULES = ("exact", "problems", "distributed")


def __getattr__(name: str):
    # PEP 562: submodules on first access (sinklabel.exact.solve_exact(...) after import sinklabel)
    if name in _SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sinklabel' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_SUBMODULES))
