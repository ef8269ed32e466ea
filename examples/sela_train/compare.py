"""The comparison of RESULTS.md: SeLa against its ablations and baselines under one budget.

    python -m examples.sela_train.compare --out runs/compare --study main heads imbalance --jobs 2

Every trained row is a separate ``python -m examples.sela_train`` run (same config except the
row's changes), so rows can run in parallel (``--jobs``) and a finished row is never re-run
(its ``metrics.json`` is reused). The random-init row evaluates the untrained network; the
raw-pixel row evaluates the pixels themselves. Writes ``results.md``, ``results.json`` and
``comparison.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROWS = {
    # study -> [(row name, extra CLI flags)]
    "main": [
        ("SeLa", []),
        ("SeLa #opts=0", ["--label-steps", "0"]),
        ("k-means in the loop", ["--mode", "kmeans"]),
        ("random-init network", ["--epochs", "0", "--label-steps", "0"]),
        ("raw pixels", None),
        ("supervised", ["--mode", "supervised"]),
    ],
    "heads": [
        ("SeLa T=1", ["--num-clusters", "10"]),
        ("SeLa T=5, all K=10", ["--num-clusters", "10", "10", "10", "10", "10"]),
    ],
    "balanced": [
        ("SeLa, balanced labels", ["--balanced"]),
    ],
    "imbalance": [
        (f"{m} {imb}", flags + ["--imbalance", imb])
        for imb in ("light", "heavy")
        for m, flags in (
            ("SeLa", []),
            ("k-means", ["--mode", "kmeans"]),
            ("supervised", ["--mode", "supervised"]),
        )
    ],
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def run_row(name, flags, out: Path, common: list[str]) -> dict:
    d = out / _slug(name)
    if (d / "metrics.json").exists():
        return json.loads((d / "metrics.json").read_text())
    if flags is None:
        res = raw_pixels(common)
        d.mkdir(parents=True, exist_ok=True)
    else:
        cmd = [
            sys.executable,
            "-m",
            "examples.sela_train",
            "--out-dir",
            str(d),
            "--no-progress",
            "--extra",
            json.dumps({"name": name}),
            *common,
            *flags,
        ]
        t0 = time.perf_counter()
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "stdout.log", "w") as f:
            subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
        res = json.loads((d / "metrics.json").read_text())
        res["seconds_wall"] = time.perf_counter() - t0
    res["name"] = name
    res["cli"] = " ".join(flags or ["(pixels)"])
    (d / "metrics.json").write_text(json.dumps(res, indent=1))
    return res


def raw_pixels(common: list[str]) -> dict:
    """The pixels as features: kNN and linear probe on flattened normalised images, k-means
    (K = classes) for the clustering metrics."""
    from sklearn.cluster import KMeans

    from .cli import parse
    from .data import load_data
    from .evaluate import clustering_metrics, evaluate_features

    t0 = time.perf_counter()
    cfg = parse(common)
    data = load_data(cfg)
    mean = np.asarray(data.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(data.std, np.float32).reshape(1, 3, 1, 1)
    f = {
        s: ((getattr(data, s).images.numpy() / 255.0 - mean) / std).reshape(len(getattr(data, s)), -1)
        for s in ("train", "val", "test")
    }
    res = evaluate_features({s: (x, x) for s, x in f.items()}, data, cfg)
    km = KMeans(data.num_classes, n_init=3, random_state=cfg.seed).fit(f["train"])
    res["test_heads"] = [clustering_metrics(data.test.targets, km.predict(f["test"]))]
    res.update({k: res["test_heads"][0][k] for k in ("nmi", "anmi", "ari", "acc")})
    res["seconds_total"] = res["seconds_wall"] = time.perf_counter() - t0
    return res


COLS = [
    ("kNN", "knn_test"),
    ("linear probe", "probe_test"),
    ("NMI", "nmi"),
    ("aNMI", "anmi"),
    ("ARI", "ari"),
    ("acc", "acc"),
]


def table(rows: list[dict]) -> str:
    head = "| row | " + " | ".join(c for c, _ in COLS) + " | train-label NMI | time (s) |"
    lines = [head, "|" + "---|" * (len(COLS) + 3)]
    for r in rows:
        tl = r.get("train_labels")
        if tl and r.get("history"):
            tl = f"{np.mean([tl[t]['nmi'] for t in r.get('metric_heads', range(len(tl)))]):.3f}"
        else:
            tl = "–"
        vals = " | ".join(
            f"{100 * r[k]:.1f}" if k.startswith(("knn", "probe", "acc")) else f"{r[k]:.3f}" for _, k in COLS
        )
        lines.append(
            f"| {r['name']} | {vals} | {tl} | {r.get('seconds_wall', r.get('seconds_total', 0)):.0f} |"
        )
    return "\n".join(lines)


def aggregate(dirs: list[Path]) -> str:
    """Mean ± standard deviation of each row over several invocations (e.g. seeds), from their
    ``results.json``; rows missing from an invocation are averaged over the others."""
    runs = [{r["name"]: r for r in json.loads((d / "results.json").read_text())} for d in dirs]
    names = list(dict.fromkeys(n for r in runs for n in r))
    head = "| row | runs | " + " | ".join(c for c, _ in COLS) + " |"
    lines = [head, "|" + "---|" * (len(COLS) + 2)]
    for n in names:
        cells = []
        for _, k in COLS:
            v = np.array([r[n][k] for r in runs if n in r], dtype=float)
            scale, fmt = (100, ".1f") if k.startswith(("knn", "probe", "acc")) else (1, ".3f")
            sd = f" ± {v.std(ddof=1) * scale:{fmt}}" if len(v) > 1 else ""
            cells.append(f"{v.mean() * scale:{fmt}}{sd}")
        lines.append(f"| {n} | {sum(n in r for r in runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 3.6))
    x = np.arange(len(rows))
    for j, (label, key) in enumerate(COLS[:2] + COLS[2:3] + COLS[5:6]):
        scale = 100 if key != "nmi" else 100
        ax.bar(
            x + (j - 1.5) * 0.2,
            [scale * r[key] for r in rows],
            0.2,
            label=label + (" (x100)" if key == "nmi" else " %"),
        )
    ax.set_xticks(x, [r["name"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=4)
    ax.set_title("test split")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--study", nargs="+", default=["main"], choices=sorted(ROWS))
    p.add_argument("--jobs", type=int, default=1, help="rows trained in parallel (each with --threads)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true", help="tabulate finished rows, train nothing")
    p.add_argument(
        "--aggregate",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="print mean ± sd of each row over these finished invocations (e.g. one per seed); train nothing",
    )
    p.add_argument("common", nargs=argparse.REMAINDER, help="flags passed to every row, after --")
    a = p.parse_args(argv)
    if a.aggregate:
        print(aggregate(a.aggregate))
        return 0
    common = [c for c in a.common if c != "--"] + ["--threads", str(a.threads)]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    todo = [(n, f) for s in a.study for n, f in ROWS[s]]
    if a.report_only:
        todo = [(n, f) for n, f in todo if (out / _slug(n) / "metrics.json").exists()]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.jobs) as ex:
        list(ex.map(lambda nf: run_row(nf[0], nf[1], out, common), todo))
    wall = time.perf_counter() - t0
    # the folder's tables cover every finished row, not only this invocation's: a later
    # invocation with another --study adds its rows instead of replacing the earlier ones
    # (run_row leaves every row's metrics.json in its folder, in the studies' order here)
    by = {}
    for study in ROWS.values():
        for n, _ in study:
            f = out / _slug(n) / "metrics.json"
            if f.exists():
                by[n] = json.loads(f.read_text())
    md = [f"Wall time of the last invocation: {wall:.0f} s with --jobs {a.jobs} --threads {a.threads}.\n"]
    for s, study in ROWS.items():
        if any(n in by for n, _ in study):
            md.append(f"### {s}\n\n" + table([by[n] for n, _ in study if n in by]) + "\n")
    (out / "results.md").write_text("\n".join(md))
    (out / "results.json").write_text(json.dumps(list(by.values()), indent=1))
    main_rows = [by[n] for n, _ in ROWS["main"] if n in by]
    plot(main_rows or list(by.values()), out / "comparison.png")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
