"""batch_codes with ``tol`` (issue 11 item 5): honest masses, and sweeps beside the plain loop.

The case: a batch of 256 points, 3,000 prototypes, temperature 0.0005 (``lam = 2000``),
float32 scores, ``n_iter=5000, tol=1e-3``. Scores are cosine similarities of unit
feature and prototype vectors (dimension 128, as SwAV's projection head; also 32) and
standard normal ones. For each, side by side in one process:

- ``float32 loop``: SwAV's iteration in the scores' float32 with its convergence check made
  in float32 (what ``batch_codes(..., tol=)`` did before): where it stopped, and the
  cluster-mass error of the codes it returned, recomputed in float64;
- ``plain loop``: the same iteration checked honestly (the float64 column sums of the
  float32 codes it would return), the iterations it needs to reach ``tol``;
- ``batch_codes``: the solver's iteration (Anderson, exponents in float64): its sweeps
  (``sinklabel.solve`` with the arguments batch_codes passes) and the error of its codes.

    python benchmarks/batch_codes_report.py
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

import sinklabel  # noqa: E402
import sinklabel.distributed as sd  # noqa: E402

N, K, TEMPERATURE, N_ITER, TOL = 256, 3000, 0.0005, 5000, 1e-3


def scores(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind.startswith("cosine"):
        d = int(kind.split("-")[1])
        f = rng.normal(size=(N, d))
        p = rng.normal(size=(K, d))
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        p /= np.linalg.norm(p, axis=1, keepdims=True)
        return (f @ p.T).astype(np.float32)
    return rng.normal(size=(N, K)).astype(np.float32)


def mass_error(codes: torch.Tensor) -> float:
    """max_k |column sum / (B / K) - 1| of the codes, in float64."""
    m = codes.to(torch.float64).sum(dim=0)
    return float((m / (codes.shape[0] / codes.shape[1]) - 1.0).abs().max())


def loop(S: np.ndarray, honest: bool) -> tuple[int, float]:
    """SwAV's iteration in float32 (log domain); stops at the first check within TOL, made in
    float32 on the iterate (``honest=False``) or on the float32 codes' float64 column sums."""
    L = torch.from_numpy(S) / TEMPERATURE
    f = L.amax(dim=1)
    L = L - f[:, None]
    g = torch.zeros(K)
    n = L.shape[0]
    for it in range(N_ITER):
        col = torch.logsumexp(L + f[:, None], dim=0)
        if it > 0:
            if honest:
                err = mass_error(torch.softmax(L + g, dim=1))
            else:
                err = float((torch.exp(col + g - np.log(n / K)) - 1.0).abs().max())
            if err <= TOL:
                return it, mass_error(torch.softmax(L + g, dim=1))
        g = -col
        f = -torch.logsumexp(L + g, dim=1)
    return N_ITER, mass_error(torch.softmax(L + g, dim=1))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(2)
    rows = []
    for kind in ("cosine-128", "cosine-32", "normal"):
        S = scores(kind)
        t = time.perf_counter()
        old_it, old_err = loop(S, honest=False)
        t_old = time.perf_counter() - t
        t = time.perf_counter()
        plain_it, plain_err = loop(S, honest=True)
        t_plain = time.perf_counter() - t
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = time.perf_counter()
            codes = sd.batch_codes(S, temperature=TEMPERATURE, n_iter=N_ITER, tol=TOL)
            t_new = time.perf_counter() - t
        warned = any(issubclass(w.category, sinklabel.ConvergenceWarning) for w in caught)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
            sweeps = sinklabel.solve(
                S, 1 / TEMPERATURE, tol=TOL, max_iter=N_ITER, prior=np.full(K, 1 / K), balanced=False
            ).n_iter
        new_err = mass_error(torch.from_numpy(codes))
        rows.append(
            (kind, old_it, old_err, t_old, plain_it, plain_err, t_plain, sweeps, new_err, warned, t_new)
        )
    head = (
        "| scores | float32 loop: stops at | its codes' error | plain loop, honest: iterations "
        "| its error | batch_codes: sweeps | its codes' error | warned "
        "| seconds (f32 loop / plain / batch_codes) |"
    )
    print(f"{datetime.date.today()}, {machine()}, torch {torch.__version__}, 2 threads")
    print(
        f"`python benchmarks/batch_codes_report.py` ({N} x {K}, temperature {TEMPERATURE}, float32, "
        f"n_iter={N_ITER}, tol={TOL:g})"
    )
    print()
    print(head)
    print("|" + "---|" * 10)
    for kind, oi, oe, to, pi, pe, tp, sw, ne, w, tn in rows:
        print(
            f"| {kind} | {oi} | {oe:.3g} | {pi} | {pe:.3g} | {sw} | {ne:.3g} | {'yes' if w else 'no'} "
            f"| {to:.2f} / {tp:.2f} / {tn:.2f} |"
        )


if __name__ == "__main__":
    main()
