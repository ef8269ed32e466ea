"""Balanced labels over gloo ranks: each rank's memory and time (rank 0 holds only the
gathered candidate pairs, never an N x K array).

    python benchmarks/distributed_memory.py                    # 600,000 x 1,000 float32, 3 ranks
    python benchmarks/distributed_memory.py --n 1281167 --k 3000 --world 4 \\
        --kernel streamed --memmap /tmp/sinklabel_shards       # the ImageNet shape
    [--lam 25 --tol 1e-3 --generate-only --json out.json]

Each rank is a spawned process (gloo on 127.0.0.1, one numba/torch thread per rank when
the ranks outnumber the cores) that generates its own shard, ``make_scores(n_r, K,
seed=rank)`` (float32, realistic): in RAM, or into ``DIR/shard<rank>.npy`` opened as a
read-only memory map (``--memmap``; a file that already holds the right shard is reused,
and ``--generate-only`` just writes them). The problem solved is the shards concatenated
in rank order.

Then, as ``sinklabel.distributed.solve(balanced=True)`` runs it, in two timed phases: the
distributed Sinkhorn solve (``balanced=False``, ``kernel=--kernel``), then the balanced
step of the head (``_balanced_ranks.balance_head_over_ranks`` from the solve's column
potentials). Per rank and phase: the wall time, the peak resident set (``VmHWM``, reset
before the phase through ``/proc/self/clear_refs``; it counts the pages of a memory-mapped
shard that were read) and the peak anonymous memory (``RssAnon`` sampled every 20 ms:
the solver's vectors and rank 0's pair store, not the mapped shard). Reported: rank 0's
peak above the largest peak of the other ranks, against the bytes of a dense float32
N x K (what rank 0 gathered before issue 11).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _machine  # noqa: E402
from _machine import proc_status, reset_peak  # noqa: E402


class _Sampler:
    """Peak of ``RssAnon`` while the block runs, sampled in a thread every 20 ms."""

    def __enter__(self) -> _Sampler:
        self.peak = proc_status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, proc_status("RssAnon"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_status("RssAnon"))


def shard_sizes(n: int, world: int) -> list[int]:
    return [n // world + (r < n % world) for r in range(world)]


def make_shard(rank: int, rows: int, k: int, memmap: str | None) -> np.ndarray:
    from sinklabel.problems import make_scores

    if memmap is None:
        return make_scores(rows, k, seed=rank)
    path = Path(memmap) / f"shard{rank}.npy"
    if path.exists():
        S = np.load(path, mmap_mode="r")
        if S.shape == (rows, k) and S.dtype == np.float32:
            return S
    path.parent.mkdir(parents=True, exist_ok=True)
    S = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, k))
    make_scores(rows, k, seed=rank, out=S)
    S.flush()
    del S
    return np.load(path, mmap_mode="r")


def phase(fn):  # type: ignore[no-untyped-def]
    """(fn's result, seconds, peak VmHWM, peak RssAnon) of one phase."""
    import torch.distributed as dist

    dist.barrier()
    reset_peak()
    with _Sampler() as anon:
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
    return out, seconds, proc_status("VmHWM"), anon.peak


def worker(rank: int, args: argparse.Namespace, port: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(int(os.environ.get("NUMBA_NUM_THREADS", "1")))
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world,
        timeout=timedelta(minutes=30),
    )  # fmt: skip
    sizes = shard_sizes(args.n, args.world)
    t = time.perf_counter()
    S = make_shard(rank, sizes[rank], args.k, args.memmap)
    out: dict = {"rank": rank, "rows": sizes[rank], "generate_s": time.perf_counter() - t}
    if not args.generate_only:
        import sinklabel.distributed as sd
        from sinklabel._balanced_ranks import balance_head_over_ranks
        from sinklabel._sizes import integer_sizes
        from sinklabel.backends._distributed import Exchange

        solve = lambda: sd.solve(S, lam=args.lam, tol=args.tol, balanced=False, kernel=args.kernel)  # noqa: E731
        res, out["solve_s"], out["solve_hwm"], out["solve_anon"] = phase(solve)
        counts = np.array(sizes, dtype=np.int64)
        target = integer_sizes(args.n, None, args.k)
        ex = Exchange(None)
        step = lambda: balance_head_over_ranks(ex, S, res.heads[0].log_v, res.lam, target, True, counts)  # noqa: E731
        got, out["step_s"], out["step_hwm"], out["step_anon"] = phase(step)
        out["received_bytes"] = sum(ex.stats()["received_bytes"].values())
        out.update(
            n_iter=res.n_iter, converged=bool(res.converged), backend=res.backend,
            certified=got["certified"], gap=got["gap"], objective=got["objective"],
            rounds=got["rounds"], points_gathered=got["points_gathered"],
            scores_gathered=got["scores_gathered"], root_pairs_bytes=got["root_pairs_bytes"],
            sizes_min=int(got["sizes"].min()), sizes_max=int(got["sizes"].max()),
            sizes_sum=int(got["sizes"].sum()),
        )  # fmt: skip
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as fh:
        json.dump(out, fh)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(args: argparse.Namespace, outs: list[dict]) -> str:
    gib = 2**30
    dense = args.n * args.k * 4
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC, {args.machine}, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / gib:.0f} GiB, "
        f"load before {args.load_before}",
        f"N = {args.n:,}, K = {args.k:,}, float32 ({dense / gib:.2f} GiB as one N x K), "
        f"{args.world} gloo ranks, kernel={args.kernel!r}, lam {args.lam}, tol {args.tol}, "
        f"shards {'memory-mapped' if args.memmap else 'in RAM'}",
    ]
    if args.generate_only:
        lines.append(f"generated in {max(o['generate_s'] for o in outs):.0f} s")
        return "\n".join(lines)
    o0 = outs[0]
    lines.append(
        f"Sinkhorn [{o0['backend']}]: {o0['n_iter']} iterations, converged {o0['converged']}; "
        f"balanced step: certified {o0['certified']} (gap {o0['gap']:.2g} per point), "
        f"{o0['rounds']} round(s), {o0['points_gathered']:,} points and {o0['scores_gathered']:,} "
        f"scores gathered, rank 0 received {o0['received_bytes'] / 2**20:.1f} MiB of the other "
        f"ranks' scores, its pair store {o0['root_pairs_bytes'] / 2**20:.0f} MiB; sizes "
        f"{o0['sizes_min']}-{o0['sizes_max']}, sum {o0['sizes_sum']:,}"
    )
    lines += [
        "",
        "| rank | points | Sinkhorn | its peak RSS (anon) | balanced step | its peak RSS (anon) | peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outs:
        o["peak"] = max(o["solve_hwm"], o["step_hwm"])
        lines.append(
            f"| {o['rank']} | {o['rows']:,} | {o['solve_s']:.1f} s | {o['solve_hwm'] / gib:.2f} GiB "
            f"({o['solve_anon'] / gib:.2f}) | {o['step_s']:.1f} s | {o['step_hwm'] / gib:.2f} GiB "
            f"({o['step_anon'] / gib:.2f}) | {o['peak'] / gib:.2f} GiB |"
        )
    others = max(o["peak"] for o in outs[1:])
    others_step = max(o["step_hwm"] for o in outs[1:])
    lines += [
        "",
        f"rank 0's peak above the other ranks' largest: {(o0['peak'] - others) / 2**20:+.0f} MiB "
        f"= {100 * (o0['peak'] - others) / dense:+.1f} % of the dense N x K "
        f"(balanced step alone: {(o0['step_hwm'] - others_step) / 2**20:+.0f} MiB "
        f"= {100 * (o0['step_hwm'] - others_step) / dense:+.1f} %); "
        f"total time {max(o['solve_s'] for o in outs) + max(o['step_s'] for o in outs):.1f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=600_000)
    ap.add_argument("--k", type=int, default=1_000)
    ap.add_argument("--world", type=int, default=3)
    ap.add_argument("--kernel", default="auto", choices=["auto", "stored", "streamed"])
    ap.add_argument("--lam", type=float, default=25.0)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--memmap", default=None, help="folder for the ranks' shards as .npy memory maps")
    ap.add_argument("--generate-only", action="store_true", help="write the shards (--memmap) and stop")
    ap.add_argument("--json", default=None, help="also write every rank's figures here")
    args = ap.parse_args(argv)
    if args.generate_only and not args.memmap:
        ap.error("--generate-only needs --memmap")
    args.load_before, args.machine = _machine.load(), _machine.machine()  # before the thread caps
    threads = max(1, (os.cpu_count() or 1) // args.world)
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)  # inherited by the spawned ranks
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = _free_port()
    with tempfile.TemporaryDirectory() as out_dir:
        procs = [ctx.Process(target=worker, args=(r, args, port, out_dir)) for r in range(args.world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [r for r, p in enumerate(procs) if p.exitcode != 0]
        if failed:
            sys.exit(f"ranks {failed} failed (exit codes {[procs[r].exitcode for r in failed]})")
        outs = [json.loads(Path(out_dir, f"{r}.json").read_text()) for r in range(args.world)]
    print(report(args, outs), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "ranks": outs}, indent=1))


if __name__ == "__main__":
    main()
