"""Why the solver iterates in kernel mode: the cost of each primitive of the numpy backend.

    python benchmarks/stabilisation_report.py [N K]
"""

import sys
import time

import numpy as np

from sinklabel.backends import get_backend
from sinklabel.problems import make_scores


def median_time(f, rounds):
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    n, k = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (50_000, 1_000)
    B = get_backend("numpy")
    S = make_scores(n, k, seed=0)
    g, log_c = np.zeros(k), np.full(n, -np.log(n))
    c, v = np.exp(log_c), np.ones(k)
    a, _ = B.log_sweep(S, 25.0, g, log_c)
    K = B.build_kernel(S, 25.0, a, g)
    rows = {
        "log-domain sweep": median_time(lambda: B.log_sweep(S, 25.0, g, log_c), 3),
        "kernel build": median_time(lambda: B.build_kernel(S, 25.0, a, g, out=K), 3),
        "kernel sweep": median_time(lambda: B.sweep(K, v, c), 7),
        "one read (S.sum)": median_time(lambda: S.sum(), 7),
    }
    print(f"N={n} K={k} float32, numpy backend")
    for name, t in rows.items():
        print(f"{name:20s} {t * 1e3:9.0f} ms  {t / rows['kernel sweep']:6.1f}x the kernel sweep")


if __name__ == "__main__":
    main()
