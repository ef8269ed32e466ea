"""Exactly balanced labels: their cost beside the Sinkhorn solve, POT's reach, ImageNet scale.

    python benchmarks/balanced_report.py             # N=200,000 K=1,000 beside Sinkhorn, each CPU backend
    python benchmarks/balanced_report.py --emd       # POT ot.emd on growing N x 100, beside the step
    python benchmarks/balanced_report.py --imagenet  # N=1,281,167 K=3,000, one head (~17 GB free)
    python benchmarks/balanced_report.py --imagenet --full  # warm start: the full problem, streamed

Every figure is a median over ``--rounds`` rounds, measured in this one process on the
same generated problem (float32 realistic scores, lam = 25); the Sinkhorn solve and the
balanced step alternate so that both see the same load on a shared machine. The balanced
step is timed as the driver runs it: ``sinklabel._balanced.balance`` on the scores, from
the solve's column potentials ``-log_v / lam``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

import sinklabel
from sinklabel._auction import kernels
from sinklabel._balanced import balance
from sinklabel._sizes import integer_sizes
from sinklabel.backends import available_backends
from sinklabel.exact import objective
from sinklabel.problems import make_scores

LAM = 25.0


def machine() -> str:
    return f"{time.strftime('%Y-%m-%d')}, {_machine.machine()}, load average {_machine.load()}"


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak`` in bytes."""

    def __init__(self, every: float = 0.02) -> None:
        import psutil

        self.proc = psutil.Process()
        self.every = every
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def warm_up() -> None:
    """Compile the kernels (serial and parallel) outside any timing."""
    S = make_scores(4096, 300, seed=99)
    balance(S, integer_sizes(4096, None, 300), np.zeros(300), flexible=True)
    kern = kernels()
    k1, v1, v2 = np.empty(4096, np.int64), np.empty(4096), np.empty(4096)
    kern.top2_pass(S, np.zeros(300), k1, v1, v2)
    kern.best_pass(S, np.zeros(300), k1.clip(0), v1, v2)


def one_pass_seconds(S: np.ndarray, rounds: int = 3) -> float:
    """The certificate's pass over the scores (max_k S - p, all rows, all cores)."""
    kern = kernels()
    n, k = S.shape
    best, own = np.empty(n), np.empty(n)
    labels = np.zeros(n, dtype=np.int64)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        kern.best_pass(S, np.zeros(k), labels, best, own)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def beside_sinkhorn(n: int, k: int, rounds: int, backends: list[str], engine: str | None) -> None:
    print(f"## balanced step beside the Sinkhorn solve: N = {n:,}, K = {k:,}, float32, lam = {LAM:g}")
    print(f"balanced step engine: {kernels(engine).engine}")
    print(f"machine: {machine()}")
    t = time.perf_counter()
    S = make_scores(n, k, seed=0)
    print(f"scores generated in {time.perf_counter() - t:.1f} s ({S.nbytes / 2**30:.2f} GiB)")
    warm_up()
    sizes = integer_sizes(n, None, k)
    floor = one_pass_seconds(S)
    print(f"one pass over the scores (the certificate's): {floor:.3f} s\n")
    print(
        "| backend | Sinkhorn solve | iterations | balanced step | step ÷ solve | step ÷ one pass "
        "| bids | sizes exact | certified | gap / point |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in backends:
        sinkhorn_small = make_scores(2000, 20, seed=1)
        sinklabel.solve(sinkhorn_small, LAM, backend=name, balanced=False)  # compile / warm the backend
        t_sink, t_bal, iters, outs = [], [], [], []
        res = None
        for _ in range(rounds):
            t = time.perf_counter()
            res = sinklabel.solve(S, LAM, backend=name, balanced=False)
            t_sink.append(time.perf_counter() - t)
            iters.append(res.n_iter)
            p0 = -np.asarray(res.log_v, dtype=np.float64) / LAM
            t = time.perf_counter()
            out = balance(S, sizes, p0, flexible=True, engine=engine)
            t_bal.append(time.perf_counter() - t)
            outs.append(out)
        exact_sizes = all(
            o.sizes.sum() == n and o.sizes.min() >= n // k and o.sizes.max() <= -(-n // k) for o in outs
        )
        ts, tb = float(np.median(t_sink)), float(np.median(t_bal))
        print(
            f"| {name} | {ts:.2f} s | {int(np.median(iters)):,} | {tb:.2f} s | {tb / ts:.3f} | "
            f"{tb / floor:.1f} | {outs[-1].bids:,} | {'yes' if exact_sizes else 'NO'} | "
            f"{'yes' if all(o.certified for o in outs) else 'NO'} | {max(o.gap for o in outs):.2g} |",
            flush=True,
        )
    # context: what the argmax labels of the same solve look like against the optimum
    argmax = np.asarray(res.labels)
    opt = outs[-1]
    dev = np.abs(np.bincount(argmax, minlength=k) / (n / k) - 1).max()
    obj_arg, obj_opt = objective(S, argmax), objective(S, opt.labels)
    print(
        f"\nargmax labels of the same solve: cluster sizes off by up to {dev:.1%}, objective "
        f"{obj_arg:.6f}; balanced labels: sizes {opt.sizes.min()}/{opt.sizes.max()}, objective "
        f"{obj_opt:.6f} (the LP optimum for exact sizes; certified gap {opt.gap:.2g} per point)"
    )
    t = time.perf_counter()
    e2e = sinklabel.solve(S, LAM)  # the default: balanced
    h = e2e.heads[0]
    print(
        f"end to end, solve() (balanced by default) [{e2e.backend}]: {time.perf_counter() - t:.2f} s, "
        f"certified {h.certified}, gap {h.gap:.2g}, sizes {h.sizes.min()}/{h.sizes.max()}"
    )
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}\n")


def emd_one(n: int, k: int) -> None:
    """Child process: time POT's ot.emd (through sinklabel.exact) and print JSON."""
    from sinklabel.exact import solve_exact

    S = make_scores(n, k, seed=3)
    t = time.perf_counter()
    ex = solve_exact(S)
    print(json.dumps({"seconds": time.perf_counter() - t, "objective": ex.objective}))


def emd_reach(sizes: list[tuple[int, int]], timeout: float) -> None:
    print(f"## POT ot.emd (dense network simplex, float64) beside the balanced step, lam = {LAM:g}")
    print(f"machine: {machine()}; ot.emd limited to {timeout:.0f} s per size\n")
    warm_up()
    print("| N × K | ot.emd | Sinkhorn solve | balanced step | same objective |")
    print("|---|---|---|---|---|")
    for n, k in sizes:
        S = make_scores(n, k, seed=3)
        t = time.perf_counter()
        res = sinklabel.solve(S, LAM, balanced=False)
        t_sink = time.perf_counter() - t
        t = time.perf_counter()
        out = balance(S, integer_sizes(n, None, k), -np.asarray(res.log_v) / LAM, flexible=True)
        t_bal = time.perf_counter() - t
        try:
            child = subprocess.run(
                [sys.executable, __file__, "--emd-one", str(n), str(k)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            )
            got = json.loads(child.stdout.strip().splitlines()[-1])
            same = abs(objective(S, out.labels) - got["objective"]) <= 1e-9 * abs(got["objective"])
            emd = f"{got['seconds']:.1f} s"
        except subprocess.TimeoutExpired:
            emd, same = f"> {timeout:.0f} s (stopped)", None
        except subprocess.CalledProcessError as exc:
            emd, same = f"failed: {exc.stderr.strip().splitlines()[-1][:60]}", None
        print(
            f"| {n:,} × {k:,} | {emd} | {t_sink:.2f} s | {t_bal:.2f} s (certified {out.certified}) | "
            f"{'-' if same is None else 'yes' if same else 'NO'} |",
            flush=True,
        )
        if same is None:
            break


def imagenet(n: int, k: int, subsample: int, full: bool) -> None:
    import psutil

    need = n * k * 4
    avail = psutil.virtual_memory().available
    print(f"## ImageNet scale: N = {n:,}, K = {k:,}, one head, float32 ({need / 2**30:.1f} GiB of scores)")
    print(f"machine: {machine()}; memory available {avail / 2**30:.1f} GiB")
    if avail < need * 1.08 + 2**30:
        sys.exit("not enough free memory for the scores and the solver's vectors; try later")
    warm_up()
    t = time.perf_counter()
    S = np.empty((n, k), dtype=np.float32)
    make_scores(n, k, seed=0, out=S)
    print(f"scores generated in {time.perf_counter() - t:.0f} s")
    # the warm start: a Sinkhorn solve on the first N / `subsample` points (independent
    # draws, a fair sample), or with --full on the full problem with the streamed kernel
    # (no second N x K array: it fits beside the scores in 24 GB)
    t = time.perf_counter()
    if full:
        res = sinklabel.solve(S, LAM, balanced=False, kernel="streamed")
        what = "the full problem, kernel='streamed'"
    else:
        res = sinklabel.solve(S[: n // subsample], LAM, balanced=False)
        what = f"the first {n // subsample:,} points"
    t_sink = time.perf_counter() - t
    print(
        f"Sinkhorn on {what} [{res.backend}]: {t_sink:.1f} s, {res.n_iter} iterations, "
        f"converged {res.converged}"
    )
    p0 = -np.asarray(res.log_v) / LAM
    del res
    floor = one_pass_seconds(S, rounds=1)
    rss0 = psutil.Process().memory_info().rss
    with PeakRSS() as mem:
        t = time.perf_counter()
        out = balance(S, integer_sizes(n, None, k), p0, flexible=True)
        t_bal = time.perf_counter() - t
    ok = out.sizes.sum() == n and out.sizes.min() >= n // k and out.sizes.max() <= -(-n // k)
    print(
        f"balanced step: {t_bal:.1f} s ({t_bal / floor:.1f} passes' time; one pass {floor:.1f} s), "
        f"{out.bids:,} bids, {out.phases} phases, {out.passes} full passes; sizes exact: {ok} "
        f"({out.sizes.min()}/{out.sizes.max()}); certified {out.certified}, gap {out.gap:.2g} per point "
        f"(objective {objective(S, out.labels):.6f}); step ÷ Sinkhorn solve {t_bal / t_sink:.3f}"
    )
    print(
        f"memory: process peak {mem.peak / 2**30:.2f} GiB = scores {S.nbytes / 2**30:.2f} GiB + "
        f"{(mem.peak - S.nbytes) / 2**20:.0f} MiB; the step itself added "
        f"{(mem.peak - rss0) / 2**20:.0f} MiB"
    )
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--k", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backends", default=None, help="comma-separated (default: every CPU backend)")
    ap.add_argument("--engine", default=None, help="balanced step: numba (default if installed) or numpy")
    ap.add_argument("--emd", action="store_true", help="POT ot.emd's reach instead")
    ap.add_argument("--emd-sizes", default="20000x100,50000x100,100000x100,200000x100")
    ap.add_argument("--emd-timeout", type=float, default=900.0)
    ap.add_argument("--emd-one", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--imagenet", action="store_true", help="N=1,281,167 K=3,000 instead")
    ap.add_argument("--subsample", type=int, default=10, help="warm start from the first N / this (10)")
    ap.add_argument(
        "--full", action="store_true", help="warm start: solve the full problem (kernel='streamed')"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.emd_one:
        emd_one(*args.emd_one)
    elif args.emd:
        sizes = [tuple(int(x) for x in s.split("x")) for s in args.emd_sizes.split(",")]
        emd_reach(sizes, args.emd_timeout)
    elif args.imagenet:
        imagenet(1_281_167, 3_000, args.subsample, args.full)
    else:
        cpu = [b for b in available_backends() if b in ("numba", "numpy", "torch")]
        backends = args.backends.split(",") if args.backends else cpu
        beside_sinkhorn(args.n, args.k, args.rounds, backends, args.engine)


if __name__ == "__main__":
    main()
