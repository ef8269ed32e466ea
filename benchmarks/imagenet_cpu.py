"""ImageNet scale on one CPU machine: N = 1,281,167 points, K = 3,000 clusters, one head.

    python benchmarks/imagenet_cpu.py --kernel streamed            # scores in RAM
    python benchmarks/imagenet_cpu.py --kernel stored --memmap /tmp/S.npy
    [--n N --k K --lam 25 --tol 1e-3 --write]

The float32 scores (15.4 GB at full size; ``make_scores(N, K, seed=0)``, realistic) are
generated in RAM, or into a ``.npy`` file opened as a memory map (``--memmap``, reused when
it already holds the right problem): with ``kernel="stored"`` the 15.4 GB kernel and the
scores do not both fit in 24 GB of RAM, but the solve reads the scores only in its rare
exp passes (start, absorptions, labels), so the page cache serves them from disk.

Reported: the solve's wall time, iterations, error, and the process's peak resident set
during the solve (``VmHWM`` after resetting it once the scores exist; it counts the
scores' resident pages too) divided by the scores' bytes. ``--write`` records the run in
``benchmarks/RESULTS.md`` (the "ImageNet scale" table, one row per kernel mode).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _floor import stream_read  # noqa: E402
from cpu_report import load, machine, proc_status, reset_peak  # noqa: E402

import sinklabel  # noqa: E402
from sinklabel.problems import make_scores  # noqa: E402

BEGIN, END = "<!-- imagenet_cpu:begin -->", "<!-- imagenet_cpu:end -->"


def scores(n: int, k: int, memmap: str | None) -> np.ndarray:
    if memmap is None:
        return make_scores(n, k, seed=0)
    path = Path(memmap)
    if path.exists():
        S = np.load(path, mmap_mode="r")
        if S.shape == (n, k) and S.dtype == np.float32:
            print(f"reusing {path}", flush=True)
            return S
    S = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, k))
    make_scores(n, k, seed=0, out=S)
    S.flush()
    del S
    return np.load(path, mmap_mode="r")


def write(row_key: str, row: str, header: list[str]) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Measured results\n"
    m = re.search(re.escape(BEGIN) + "(.*?)" + re.escape(END), text, flags=re.S)
    rows = {}
    if m:
        for line in m.group(1).splitlines():
            if line.startswith("| `kernel="):
                rows[line.split("|")[1].strip()] = line
    rows[row_key] = row
    block = "\n".join([BEGIN, *header, *rows.values(), END])
    if m:
        text = text[: m.start()] + block + text[m.end() :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--k", type=int, default=3_000)
    ap.add_argument("--lam", type=float, default=25.0)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--kernel", default="auto", choices=["auto", "stored", "streamed"])
    ap.add_argument("--memmap", default=None, help="a .npy path for the scores (memory map)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    t = time.perf_counter()
    S = scores(args.n, args.k, args.memmap)
    print(f"scores ready in {time.perf_counter() - t:.0f} s: {S.nbytes / 1e9:.1f} GB", flush=True)
    floor = None
    if args.memmap is None:  # the floor of a matrix held in RAM
        stream_read(S)
        floor = float(np.median([_timed(stream_read, S) for _ in range(5)]))
    reset_peak()
    rss_before = proc_status("VmRSS")
    load_before = load()
    res = sinklabel.solve(
        S, args.lam, tol=args.tol, kernel=args.kernel, backend="numba", balanced=False
    )
    peak = proc_status("VmHWM")
    h = res.heads[0]
    print(res.report())
    per_iter = res.wall_time / res.n_iter
    line = (
        f"| `kernel={args.kernel!r}`{', scores memory-mapped' if args.memmap else ', scores in RAM'} "
        f"| {res.wall_time:.0f} s | {res.n_iter} | {per_iter:.2f} s"
        + (f" ({per_iter / floor:.1f}× one read)" if floor else "")
        + f" | {h.error:.2e} | {'yes' if res.converged else 'NO'} "
        f"| {peak / 1e9:.1f} GB = {peak / S.nbytes:.2f}× | {rss_before / S.nbytes:.2f}× "
        f"| {load_before} → {load()} |"
    )
    print(line)
    if args.write:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
        header = [
            f"## ImageNet scale on this machine ({datetime.date.today()})",
            "",
            f"Machine: {machine()}, {ram:.0f} GiB "
            f"of RAM, no swap, no GPU, shared with other jobs. N = {args.n:,}, K = {args.k:,}, one head, "
            f"float32 realistic scores ({S.nbytes / 1e9:.1f} GB, `make_scores(N, K, seed=0)`), "
            f"lam = {args.lam:g}, tol {args.tol:g}, numba backend, Anderson acceleration. Command: "
            "`python benchmarks/imagenet_cpu.py --kernel <mode> [--memmap /tmp/S.npy] --write`.",
            "",
            "| mode | solve | iterations | per iteration | error | converged "
            "| peak RSS during the solve (÷ scores' bytes) | RSS before the solve | load average |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        write(line.split("|")[1].strip(), line, header)


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
