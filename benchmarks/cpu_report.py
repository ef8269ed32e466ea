"""CPU speed report: time to tolerance, distance to the memory floor, iterations, memory.

    python benchmarks/cpu_report.py [--sizes 20000x100,200000x1000] [--rounds 3]
                                    [--families] [--no-pot] [--write]
    python benchmarks/cpu_report.py --breakdown 200000x1000 [--before /tmp/before] [--pot-iters 1233]
    python benchmarks/cpu_report.py --exp-counts 20000x100 [--before /tmp/before] [--lams 1,10,25]

For each size, on one generated problem (float32 realistic scores, seed 0; lam = 25,
tol 1e-3, rows exact; see ``_methods.py``), every installed sinklabel CPU backend runs
beside POT ``ot.sinkhorn`` / ``ot.sinkhorn_log`` (float64) and the paper's loop, with:

- time to tolerance (median of ``--rounds`` after a warm-up; POT and the paper loop once);
- seconds per iteration divided by one parallel streaming read of the float32 matrix,
  measured in the same run (median of reads taken between the rounds);
- iterations; peak memory above the process's resident set before the call, divided by
  the float32 matrix's bytes (``/proc/self/status`` VmHWM after resetting it).

``--families`` adds the iteration counts of plain and Anderson-accelerated Sinkhorn on
the three generated families, lam 1 to 1000, float32 and float64. ``--write`` puts the
tables into ``benchmarks/RESULTS.md`` (its "CPU speed" section, replaced if present).

``--breakdown NxK`` times every backend primitive inside one default solve (calls, time,
reads of the scores per primitive, exp passes; :func:`breakdown`), for an older checkout
first with ``--before PATH`` (side by side, each in a fresh process) and POT after it with
``--pot-iters``. ``--exp-counts NxK``: iterations and exp passes per family and lam.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _floor import stream_read  # noqa: E402
from _machine import load, machine, proc_status, reset_peak  # noqa: E402, F401  (imagenet_cpu imports from here)
from _methods import LAM, TOL, calibrate_pot, paper_loop, pot_method, sinklabel_methods  # noqa: E402

import sinklabel  # noqa: E402
from sinklabel.problems import make_scores  # noqa: E402

BEGIN, END = "<!-- cpu_report:begin -->", "<!-- cpu_report:end -->"


# -- memory -------------------------------------------------------------------------------
def with_peak(fn, *args):
    """(result, seconds, bytes of resident memory above the level before the call)."""
    ok = reset_peak()
    before = proc_status("VmRSS")
    t = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - t
    peak = proc_status("VmHWM") - before if ok else float("nan")
    return out, seconds, peak


# -- machine ------------------------------------------------------------------------------
# -- one sweep against one read -------------------------------------------------------------
def sweep_ratios(S: np.ndarray, pairs: int = 21) -> dict[str, float]:
    """Median over interleaved pairs of (one primitive) / (one parallel read of S)."""
    from sinklabel.backends import get_backend

    B = get_backend("numba")
    n, k = S.shape
    c = np.full(n, 1.0 / n)
    a, col = B.log_sweep(S, LAM, np.zeros(k), np.log(c))
    b = np.log(np.full(k, 1.0 / k)) - col
    K = B.build_kernel(S, LAM, a, b)
    v = np.ones(k)
    prims = {
        "sweep (stored kernel)": lambda: B.sweep(K, v, c),
        "stream_sweep (kernel recomputed)": lambda: B.stream_sweep(S, LAM, a, b, c),
        "log_sweep (start, absorptions)": lambda: B.log_sweep(S, LAM, b, np.log(c)),
        "build_kernel": lambda: B.build_kernel(S, LAM, a, b, out=K),
        "rescale_kernel (absorption)": lambda: B.rescale_kernel(K, np.zeros(n), np.zeros(k)),
        "scan (validation)": lambda: B.scan(S),
        "argmax (labels)": lambda: B.argmax(S, LAM, b)[0],
    }
    ratios: dict[str, list[float]] = {name: [] for name in prims}
    for f in prims.values():
        f()
    for _ in range(pairs):
        for name, f in prims.items():
            t0 = time.perf_counter()
            stream_read(S)
            t1 = time.perf_counter()
            f()
            t2 = time.perf_counter()
            ratios[name].append((t2 - t1) / (t1 - t0))
    return {name: float(np.median(r)) for name, r in ratios.items()}


# -- where the time of one solve goes ---------------------------------------------------------
#: the backend primitives timed by :func:`breakdown`, and how many exp of every entry each costs
PRIMITIVES = {
    "log_sweep": 1,
    "log_sweep_build": 1,
    "build_kernel": 1,
    "build_rows": 1,
    "start_kernel": 1,
    "rescale_kernel": 0,
    "rescale_sweep": 0,
    "sweep_hessian": 0,
    "sweep": 0,
    "stream_sweep": 1,
    "scan": 0,
    "argmax": 0,
    "gather": 0,
}


def spy_primitives(B, n: int, k: int, record) -> list[str]:
    """Wrap the primitives of backend instance ``B`` that exist (older checkouts lack some):
    ``record(name, seconds, passes)`` after each outermost call, ``passes`` its exp passes
    over the ``n x k`` scores (fractions for a partial rebuild or a sample of the points;
    ``name`` gets " (sample)" for the coarse start's calls). Returns the wrapped names."""
    depth = [0]

    def timed(name, fn):
        def wrapper(*args, **kw):
            depth[0] += 1
            t = time.perf_counter()
            try:
                out = fn(*args, **kw)
            finally:
                depth[0] -= 1
            seconds = time.perf_counter() - t
            if depth[0] == 0:  # a default that calls other primitives counts once
                shape = args[0].shape
                rows = len(args[5]) if name == "build_rows" else shape[0]
                sample = name != "build_rows" and shape[0] != n
                passes = PRIMITIVES[name] * rows * shape[1] / (n * k)
                record(name + (" (sample)" if sample else ""), seconds, passes)
            return out

        return wrapper

    names = [name for name in PRIMITIVES if hasattr(B, name)]
    for name in names:
        setattr(B, name, timed(name, getattr(B, name)))
    return names


def breakdown(S: np.ndarray, backend: str = "numba", **solve_kw) -> tuple[dict, list[dict], float]:
    """One ``sinklabel.solve(S, **solve_kw)`` with every backend primitive timed.

    Returns (solve facts, one row per primitive called: calls, seconds, seconds over one
    parallel read of ``S``, reads per call, exp passes, the rest of the solve, one read's
    seconds). The backend instance's methods are wrapped for the one call and restored.
    """
    from sinklabel.backends import get_backend

    B = get_backend(backend)
    stats: dict[str, list[tuple[float, float]]] = {}
    n, k = S.shape
    names = spy_primitives(B, n, k, lambda name, t, p: stats.setdefault(name, []).append((t, p)))
    stream_read(S)
    reads = []
    for _ in range(5):
        t = time.perf_counter()
        stream_read(S)
        reads.append(time.perf_counter() - t)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
            t = time.perf_counter()
            res = sinklabel.solve(S, backend=backend, **solve_kw)
            total = time.perf_counter() - t
    finally:
        for name in names:
            B.__dict__.pop(name, None)
    for _ in range(5):
        t = time.perf_counter()
        stream_read(S)
        reads.append(time.perf_counter() - t)
    read = float(np.median(reads))
    rows = []
    for name, calls in stats.items():
        seconds = sum(t for t, _ in calls)
        passes = sum(p for _, p in calls)
        rows.append(dict(name=name, calls=len(calls), seconds=seconds, reads=seconds / read,
                         per_call=seconds / read / len(calls), exp_passes=passes))  # fmt: skip
    rest = total - sum(r["seconds"] for r in rows)
    facts = dict(
        seconds=total, reads=total / read, n_iter=res.n_iter, error=float(res.error),
        converged=bool(res.converged), exp_passes=sum(r["exp_passes"] for r in rows), rest=rest,
    )  # fmt: skip
    return facts, rows, read


def breakdown_table(facts: dict, rows: list[dict], read: float) -> list[str]:
    total = facts["seconds"]
    out = [
        f"Solve: {total:.2f} s = {facts['reads']:.0f} reads of the scores (one read "
        f"{read * 1e3:.1f} ms), {facts['n_iter']} evaluations, error {facts['error']:.2e}, "
        f"{facts['exp_passes']:.2f} exp passes over the scores (partial rebuilds and the coarse "
        "start's sample count as their share of the entries).",
        "",
        "| part | calls | time | reads | reads per call | share |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["seconds"]):
        out.append(
            f"| `{r['name']}` | {r['calls']} | {r['seconds']:.2f} s | {r['reads']:.1f} | "
            f"{r['per_call']:.2f} | {100 * r['seconds'] / total:.0f} % |"
        )
    out.append(
        f"| the rest (host work, balanced step) | | {facts['rest']:.2f} s | "
        f"{facts['rest'] / read:.1f} | | {100 * facts['rest'] / total:.0f} % |"
    )
    return out


def breakdown_side_by_side(n: int, k: int, before: str | None, pot_iters: int) -> list[str]:
    """:func:`breakdown` of the default solve of ``make_scores(n, k, seed=0)`` (lam 25, tol
    1e-3, balanced labels), each checkout in a fresh process: ``before`` (a checkout of an
    older commit, run with ``PYTHONPATH``), then this one; then POT ``ot.sinkhorn`` (float64)
    for ``pot_iters`` iterations (the paper loop's count to tol; 0: no POT)."""
    import os

    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from cpu_report import breakdown; "
        "from sinklabel.problems import make_scores; import sinklabel; "
        f"S = make_scores({n}, {k}, seed=0); breakdown(S, lam={LAM}, tol={TOL}); "
        f"f, rows, read = breakdown(S, lam={LAM}, tol={TOL}); "
        "print(json.dumps(dict(facts=f, rows=rows, read=read)))"
    )
    runs = {}
    for tag, path in ((f"before ({before})", before), ("this checkout", None)):
        if tag.startswith("before") and before is None:
            continue
        env = {**os.environ, "PYTHONPATH": path} if path else None
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                             env=env, cwd="/" if path else None)  # fmt: skip
        runs[tag] = json.loads(out.stdout.strip().splitlines()[-1])
        print(tag, runs[tag]["facts"], flush=True)
    pot = None
    if pot_iters:
        t = time.perf_counter()
        _, pot_err = pot_method("sinkhorn", pot_iters)(make_scores(n, k, seed=0))
        pot = time.perf_counter() - t
    lines = []
    for tag, d in runs.items():
        f = d["facts"]
        ratio = f", POT ÷ this {pot / f['seconds']:.1f}×" if pot else ""
        lines += [
            f"**{tag}**: {f['seconds']:.2f} s{ratio}",
            "",
            *breakdown_table(f, d["rows"], d["read"]),
            "",
        ]
    if pot:
        lines.append(
            f"POT `ot.sinkhorn` float64, {pot_iters:,} iterations: {pot:.1f} s, error {pot_err:.2e}."
        )
    return lines


def exp_counts(n: int, k: int, lams=(1, 10, 25, 100, 1000), seeds=(1,)) -> dict:
    """Iterations to tol and exp passes over the scores (log sweeps, kernel builds, partial
    rebuilds and the coarse start's sample, as shares of the entries) per family, seed and
    lam, stored kernel, ``balanced=False``, ``make_scores(n, k, kind, seed)``; and the
    solve's seconds."""
    from sinklabel.backends import get_backend

    B = get_backend("numba")
    passes = [0.0]
    names = spy_primitives(B, n, k, lambda name, t, p: passes.__setitem__(0, passes[0] + p))
    cells = {}
    try:
        for kind in ("realistic", "collapsed", "neginf"):
            for seed in seeds:
                S = make_scores(n, k, kind=kind, seed=seed)
                for lam in lams:
                    passes[0] = 0.0
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
                        res = sinklabel.solve(
                            S, lam, backend="numba", kernel="stored", balanced=False, max_iter=5000
                        )
                    key = f"{kind} {seed} {lam:g}"
                    cells[key] = (res.n_iter, bool(res.converged), passes[0], res.wall_time)
                    print(key, cells[key], flush=True)
    finally:
        for name in names:
            B.__dict__.pop(name, None)
    return cells


def exp_counts_side_by_side(
    n: int, k: int, before: str | None, lams=(1, 10, 25, 100, 1000), seeds=(1,)
) -> list:
    """:func:`exp_counts` for ``before`` (an older checkout) and this one, each in a fresh
    process; one table, ``before → now`` per cell (with several seeds: one row per family
    and seed, and the totals)."""
    import os

    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from cpu_report import exp_counts; "
        f"print(json.dumps(exp_counts({n}, {k}, {tuple(lams)!r}, {tuple(seeds)!r})))"
    )
    runs = []
    for path in (before, None) if before else (None,):
        env = {**os.environ, "PYTHONPATH": path} if path else None
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                             env=env, cwd="/" if path else None)  # fmt: skip
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))

    def cell(c):
        it, conv, passes, seconds = c
        timed = f", {seconds:.1f} s" if len(seeds) > 1 else ""
        return f"{it}{'' if conv else ' (not converged)'} it, {passes:.2f} exp{timed}"

    out = ["| family | " + " | ".join(f"lam {lam:g}" for lam in lams) + " |", "|---|" + "---|" * len(lams)]
    for kind in ("realistic", "collapsed", "neginf"):
        for seed in seeds:
            keys = [f"{kind} {seed} {lam:g}" for lam in lams]
            name = kind if len(seeds) == 1 else f"{kind}, seed {seed}"
            row = " | ".join(" → ".join(cell(r[key]) for r in runs) for key in keys)
            out.append(f"| {name} | {row} |")
    if len(seeds) > 1:
        sums = []
        for lam in lams:
            keys = [key for key in runs[0] if key.endswith(f" {lam:g}")]
            sums.append(" → ".join(
                f"{sum(r[key][0] for key in keys)} it, {sum(r[key][2] for key in keys):.1f} exp, "
                f"{sum(r[key][3] for key in keys):.0f} s" for r in runs))  # fmt: skip
        out.append("| **all** | " + " | ".join(sums) + " |")
    return out


# -- the comparison -----------------------------------------------------------------------
def sweep_ratios_fresh(n: int, k: int) -> dict[str, float]:
    """:func:`sweep_ratios` of ``make_scores(n, k, seed=0)`` in a fresh process, so that
    nothing this report allocated before (POT's and numpy's large temporaries) shares its
    memory history. On this shared 2-core VM the sweep / read ratio at 200,000 x 1,000 still
    varies between runs (1.07-1.29 on one day), while the sweep stays within a few per cent
    of the numba validation scan, itself a pure read.
    """
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from cpu_report import sweep_ratios; "
        "from sinklabel.problems import make_scores; "
        f"print(json.dumps(sweep_ratios(make_scores({n}, {k}, seed=0))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_size(n: int, k: int, rounds: int, pot: bool) -> tuple[list[dict], dict[str, float]]:
    prim = sweep_ratios_fresh(n, k)
    print("  " + ", ".join(f"{name}: {r:.2f}" for name, r in prim.items()), flush=True)
    S = make_scores(n, k, seed=0)
    floors: list[float] = []

    def floor_sample(count: int = 3) -> None:
        for _ in range(count):
            t = time.perf_counter()
            stream_read(S)
            floors.append(time.perf_counter() - t)

    stream_read(S)
    floor_sample(5)
    rows = []
    methods = dict(sinklabel_methods())
    slow = {"paper loop (float64)": paper_loop}
    if pot:
        start, _ = paper_loop(S)
        print(f"  paper loop: {start} iterations; calibrating POT ...", flush=True)
        slow["POT sinkhorn (float64)"] = pot_method("sinkhorn", calibrate_pot("sinkhorn", S, start))
        if n * k <= 2_000_000:
            slow["POT sinkhorn_log (float64)"] = pot_method(
                "sinkhorn_log", calibrate_pot("sinkhorn_log", S, start)
            )
    for name, fn in {**methods, **slow}.items():
        fast = name in methods
        if fast:
            fn(S)  # warm-up: JIT (cached on disk), thread pools
        times, peaks = [], []
        for _ in range(rounds if fast else 1):
            floor_sample(1)
            (n_iter, err), seconds, peak = with_peak(fn, S)
            times.append(seconds)
            peaks.append(peak)
        floor_sample(1)
        rows.append(
            dict(
                name=name,
                seconds=float(np.median(times)),
                n_iter=int(n_iter),
                error=err,
                peak=float(np.max(peaks)),
                rounds=len(times),
            )  # fmt: skip
        )
        print(f"  {name:34s} {rows[-1]['seconds']:9.3f} s  {n_iter:5d} it  err {err:.2e}", flush=True)
    floor = float(np.median(floors))
    for row in rows:
        row["floor"] = floor
        row["per_iter_over_floor"] = row["seconds"] / max(row["n_iter"], 1) / floor
        row["peak_over_input"] = row["peak"] / S.nbytes
    return rows, prim


def table(n: int, k: int, rows: list[dict], prim: dict[str, float]) -> list[str]:
    floor = rows[0]["floor"]
    pot = next((r for r in rows if r["name"].startswith("POT sinkhorn (")), None)
    plain = next((r for r in rows if r["name"] == "paper loop (float64)"), None)
    out = [
        f"**{n:,} x {k:,}** float32 ({n * k * 4 / 2**30:.2f} GiB); one parallel streaming read "
        f"of it: {floor * 1e3:.1f} ms ({n * k * 4 / floor / 1e9:.1f} GB/s).",
        "",
        "One primitive ÷ one read of the float32 matrix (numba backend, median of 21 "
        "interleaved pairs, in a fresh process): "
        + "; ".join(f"{name} {r:.2f}" for name, r in prim.items())
        + ".",
        "",
        "| method | time to tol | POT sinkhorn ÷ this | (time to tol ÷ iterations) ÷ one read "
        "| iterations | paper loop its ÷ these | peak memory ÷ input | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = f"{pot['seconds'] / r['seconds']:.1f}×" if pot else "–"
        its = f"{plain['n_iter'] / r['n_iter']:.1f}×" if plain else "–"
        rounds = f" (median of {r['rounds']})" if r["rounds"] > 1 else ""
        out.append(
            f"| {r['name']} | {r['seconds']:.3f} s{rounds} | {speedup} | "
            f"{r['per_iter_over_floor']:.2f} | {r['n_iter']:,} | {its} | "
            f"{r['peak_over_input']:.2f} | {r['error']:.2e} |"
        )
    return out


# -- acceleration across families ------------------------------------------------------------
def families(sizes=((3000, 30), (20000, 100)), lams=(1, 10, 25, 100, 1000)) -> list[str]:
    out = [
        "| N x K | family | dtype | " + " | ".join(f"lam {lam:g}" for lam in lams) + " |",
        "|---|---|---|" + "---|" * len(lams),
    ]
    worst = 0.0
    kinds = ("realistic", "collapsed", "neginf")
    dtypes = (np.float32, np.float64)
    for (n, k), kind, dtype in ((s, f, d) for s in sizes for f in kinds for d in dtypes):
        S = make_scores(n, k, kind=kind, seed=1, dtype=dtype)
        cells = []
        for lam in lams:
            its = []
            for acc in (None, "anderson"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
                    res = sinklabel.solve(S, lam, acceleration=acc, max_iter=5000, balanced=False)
                its.append(res.n_iter if res.converged else None)
            plain, accel = its
            if plain is not None:
                worst = max(worst, (accel or 5000) / plain)
            cells.append(f"{plain if plain else '>5000'} → {accel if accel else '>5000'}")
        out.append(f"| {n:,} x {k} | {kind} | {np.dtype(dtype).name} | " + " | ".join(cells) + " |")
        print(out[-1], flush=True)
    out += ["", f"Worst ratio accelerated ÷ plain where plain converges: {worst:.2f}."]
    return out


def write_results(lines: list[str]) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Measured results\n"
    block = "\n".join([BEGIN, *lines, END])
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda m: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="20000x100,200000x1000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--families", action="store_true")
    ap.add_argument("--no-pot", action="store_true")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--breakdown", metavar="NxK", help="only the per-primitive breakdown of one solve")
    ap.add_argument("--before", metavar="PATH",
                    help="with --breakdown or --exp-counts: an older checkout, run first")
    ap.add_argument("--pot-iters", type=int, default=0, help="with --breakdown: POT for this many iterations")
    ap.add_argument("--exp-counts", metavar="NxK", help="only iterations and exp passes per family and lam")
    ap.add_argument("--lams", default="1,10,25,100,1000", help="with --exp-counts: the lam values")
    ap.add_argument("--seeds", default="1", help="with --exp-counts: the problems' seeds")
    args = ap.parse_args()
    if args.breakdown or args.exp_counts:
        n, k = (int(x) for x in (args.breakdown or args.exp_counts).split("x"))
        head = [f"Machine: {machine()}; load {load()}."]
        if args.breakdown:
            body = breakdown_side_by_side(n, k, args.before, args.pot_iters)
        else:
            lams = tuple(float(x) for x in args.lams.split(","))
            seeds = tuple(int(x) for x in args.seeds.split(","))
            body = exp_counts_side_by_side(n, k, args.before, lams, seeds)
        print("\n".join(head + [""] + body + [f"(load after: {load()})"]))
        return
    command = "python benchmarks/cpu_report.py " + " ".join(sys.argv[1:])
    load_before = load()
    lines = [
        f"## CPU speed: numba backend, Anderson acceleration ({datetime.date.today()})",
        "",
        f"Machine: {machine()}, no GPU; shared with other jobs (load average "
        f"{load_before} before the run, {{after}} after). lam = {LAM:g}, tol {TOL:g} "
        "(cluster-marginal error, rows exact), float32 realistic scores "
        "(`make_scores(N, K, seed=0)`); POT and the paper loop in float64. Command: "
        f"`{command}`.",
        "",
    ]
    for spec in args.sizes.split(","):
        n, k = (int(x) for x in spec.split("x"))
        print(f"{n} x {k}", flush=True)
        rows, prim = run_size(n, k, args.rounds, not args.no_pot)
        lines += table(n, k, rows, prim) + [""]
    if args.families:
        lines += [
            "Iterations to tol 1e-3, plain Sinkhorn → Anderson (the default), "
            "`make_scores(N, K, kind, seed=1)`, numba backend:",
            "",
            *families(),
            "",
        ]
    lines[2] = lines[2].replace("{after}", load())
    print("\n".join(lines))
    if args.write:
        write_results(lines)


if __name__ == "__main__":
    main()
