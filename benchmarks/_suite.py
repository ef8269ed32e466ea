"""The pytest-benchmark suite's plan and its summary: pure functions, no solver imported.

``pytest benchmarks --benchmark-only`` (``make bench``) runs the *quick* mode: one
moderate size, every installed backend beside POT ``ot.sinkhorn`` (float64) and the
paper's loop. ``--bench-full`` runs the comparison of ``benchmarks/RESULTS.md``
(20,000 x 100 and 200,000 x 1,000; POT ``sinkhorn_log`` where it is affordable);
``--bench-sizes 100000x1000,...`` replaces either mode's sizes. At the end the suite
prints :func:`summary_lines`: per size, each method's time to tolerance, iterations,
its speed-up over POT ``ot.sinkhorn`` and its reads of the matrix per sweep.

This module is imported by ``benchmarks/conftest.py`` and by ``tests/test_bench_suite.py``
(CI tests the parsing and the formatting; it does not run the benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass

QUICK_SIZES = "50000x300"
FULL_SIZES = "20000x100,200000x1000"

#: POT ``sinkhorn_log`` costs 50-300 kernel sweeps per iteration: only up to this many entries
LOG_DOMAIN_MAX_ENTRIES = 2_000_000

# (id used in test names, name shown in the tables, kind); kinds: "cpu", "gpu", "paper", "pot"
METHODS: list[tuple[str, str, str]] = [
    ("numba", "sinklabel[numba]", "cpu"),
    ("numpy", "sinklabel[numpy]", "cpu"),
    ("torch", "sinklabel[torch]", "cpu"),
    ("numba-plain", "sinklabel[numba, plain]", "cpu"),
    ("numba-streamed", "sinklabel[numba, streamed]", "cpu"),
    ("torch-cuda", "sinklabel[torch, cuda]", "gpu"),
    ("cupy", "sinklabel[cupy]", "gpu"),
    ("paper-loop", "paper loop (float64)", "paper"),
    ("pot-sinkhorn", "POT sinkhorn (float64)", "pot"),
    ("pot-sinkhorn_log", "POT sinkhorn_log (float64)", "pot"),
]
NAMES = {mid: name for mid, name, _ in METHODS}
KINDS = {mid: kind for mid, _, kind in METHODS}
POT_REFERENCE = "pot-sinkhorn"


def parse_sizes(spec: str) -> list[tuple[int, int]]:
    """``"20000x100,200000x1000"`` -> ``[(20000, 100), (200000, 1000)]``."""
    sizes = []
    for item in spec.replace(" ", "").split(","):
        if not item:
            continue
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(
                f"benchmark sizes must be N x K pairs of positive integers such as "
                f"'50000x300,200000x1000'; got {item!r} in {spec!r}"
            )
        sizes.append((int(parts[0]), int(parts[1])))
    if not sizes:
        raise ValueError(f"benchmark sizes must name at least one N x K pair; got {spec!r}")
    return sizes


def plan(full: bool, sizes: str | None = None) -> list[tuple[tuple[int, int], str]]:
    """The (size, method id) cases in run order: size by size, the cheap methods first.

    Quick mode leaves POT ``sinkhorn_log`` out; the full mode runs it up to
    :data:`LOG_DOMAIN_MAX_ENTRIES` entries. GPU methods are always listed (they skip
    themselves without a GPU).
    """
    cases = []
    for n, k in parse_sizes(sizes if sizes else FULL_SIZES if full else QUICK_SIZES):
        for mid, _, _ in METHODS:
            if mid == "pot-sinkhorn_log" and (not full or n * k > LOG_DOMAIN_MAX_ENTRIES):
                continue
            cases.append(((n, k), mid))
    return cases


def case_id(size: tuple[int, int], mid: str) -> str:
    return f"{size[0]}x{size[1]}-{mid}"


def rounds_for(warm_seconds: float, full: bool) -> int:
    """Timed rounds of a fast method after its warm-up: 3 in the full mode (median of 3,
    as in RESULTS.md); in the quick mode about 3 seconds' worth, between 1 and 5."""
    if full:
        return 3
    return max(1, min(5, int(3.0 / max(warm_seconds, 1e-9))))


@dataclass
class Row:
    """One method's measurement at one size (what the summary prints)."""

    size: tuple[int, int]
    method: str  # the id, a key of NAMES
    seconds: float  # median time to tolerance
    rounds: int
    iterations: int
    error: float
    read_seconds: float  # one streaming read of the scores on the method's device

    @property
    def reads_per_sweep(self) -> float:
        return self.seconds / max(self.iterations, 1) / self.read_seconds


def _fmt_seconds(s: float) -> str:
    return f"{s:.3f} s" if s < 10 else f"{s:.1f} s"


def _fmt_ratio(x: float) -> str:
    return f"{x:.1f}x" if x >= 0.1 else f"{x:.2g}x"  # POT sinkhorn_log: 0.016x, not 0.0x


def summary_lines(
    rows: list[Row], lam: float, tol: float, header: str = "", skipped: list[tuple[str, str]] = ()
) -> list[str]:
    """Per size, one table: methods fastest first, with the speed-up over POT sinkhorn.

    ``skipped`` lists (case id, reason) of the cases that did not run.
    """
    out = ["sinklabel benchmark summary" + (f": {header}" if header else "")]
    sizes = sorted({r.size for r in rows}, key=lambda s: s[0] * s[1])
    if not sizes:
        out.append("(no timings: no benchmark ran, or benchmarks were disabled)")
    for size in sizes:
        group = sorted((r for r in rows if r.size == size), key=lambda r: r.seconds)
        pot = next((r for r in group if r.method == POT_REFERENCE), None)
        n, k = size
        out += [
            "",
            f"{n:,} x {k:,} float32 ({n * k * 4 / 2**20:,.0f} MiB), lam {lam:g}, tol {tol:g}:",
        ]
        head = ("method", "time to tol", "vs POT", "iterations", "reads/sweep", "error", "rounds")
        table = [head]
        for r in group:
            speedup = _fmt_ratio(pot.seconds / r.seconds) if pot else "-"
            gpu = " (GPU read)" if KINDS.get(r.method) == "gpu" else ""
            table.append(
                (
                    NAMES.get(r.method, r.method),
                    _fmt_seconds(r.seconds),
                    speedup,
                    f"{r.iterations:,}",
                    f"{r.reads_per_sweep:.2f}{gpu}",
                    f"{r.error:.2e}",
                    str(r.rounds),
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        for j, row in enumerate(table):
            cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
            out.append("  " + "  ".join(cells))
            if j == 0:
                out.append("  " + "  ".join("-" * w for w in widths))
        if pot is None:
            out.append("(POT sinkhorn did not run at this size: no speed-up column)")
    if skipped:
        out += ["", "skipped:"] + [f"  {cid}: {reason}" for cid, reason in skipped]
    out += [
        "",
        f"time to tol: median of `rounds` runs to cluster-marginal error <= {tol:g} with rows exact; "
        "vs POT: POT sinkhorn's time / this; reads/sweep: (time / iterations) / one streaming "
        "read of the float32 scores on the same device.",
    ]
    return out
