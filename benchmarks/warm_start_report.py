"""Warm start between two label steps: iterations cold vs warm on a perturbed problem.

    python benchmarks/warm_start_report.py [--backend numpy]
"""

import argparse

import numpy as np

import sinklabel
from sinklabel.problems import make_scores


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="numpy")
    args = ap.parse_args()
    print("| N × K | σ | cold iterations | warm iterations | factor | labels equal (warm vs cold) |")
    print("|---|---|---|---|---|---|")
    for n, k in [(20_000, 100), (50_000, 1_000)]:
        S = make_scores(n, k, seed=1)
        first = sinklabel.solve(S, 25.0, backend=args.backend)
        for sigma in [0.02, 0.05, 0.1, 0.3]:
            rng = np.random.default_rng(2)
            S2 = S + rng.normal(0, sigma, S.shape).astype(np.float32)
            S2 -= np.log(np.exp(S2.astype(np.float64)).sum(1, keepdims=True)).astype(np.float32)
            cold = sinklabel.solve(S2, 25.0, backend=args.backend)
            warm = sinklabel.solve(S2, 25.0, init=first, backend=args.backend)
            agree = np.mean(cold.labels == warm.labels)
            print(
                f"| {n:,} × {k:,} | {sigma:g} | {cold.n_iter:,} | {warm.n_iter:,} | "
                f"{cold.n_iter / warm.n_iter:.1f}× | {agree:.2%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
