"""sinklabel: balanced ("equipartition") label assignment for self-labelling.

Notation, used throughout (Asano, Rupprecht & Vedaldi, "Self-labelling via simultaneous
clustering and representation learning", ICLR 2020):

- ``S`` (N x K): scores, ``log p(y = k | x_i)`` or logits, for N points and K clusters;
- ``lam``: inverse entropic regularisation (the paper's lambda);
- ``c`` (N): point masses, ``1/N`` by default; ``r`` (K): cluster masses, ``1/K`` by default;
- ``Q = diag(u) exp(lam S) diag(v)``: the transport plan, rows summing to ``c`` and columns
  to ``r``; ``log_u``, ``log_v`` are its log-potentials; hard labels are
  ``argmax_k (lam S_ik + log_v_k)``.

The top level offers :func:`solve` (everything) and :func:`assign` (labels only).
"""

from ._driver import assign, solve
from ._result import ConvergenceWarning, HeadResult, Result
from .backends import BackendNotAvailable, available_backends

__all__ = [
    "assign",
    "solve",
    "Result",
    "HeadResult",
    "ConvergenceWarning",
    "BackendNotAvailable",
    "available_backends",
]
__version__ = "0.1.0"
