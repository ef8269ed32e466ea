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
    # the two label rules of the label step, each named explicitly (whatever the default)
    "labels": [
        ("SeLa, balanced labels", ["--balanced"]),
        ("SeLa, argmax labels", ["--no-balanced"]),
    ],
    # the budget curve: epochs and label steps scaled alike (30 epochs / 16 steps is the default);
    # the 30-epoch SeLa point is the labels study's row with the default label rule
    "budget_30": [
        ("k-means in the loop", ["--mode", "kmeans"]),
        ("raw pixels", None),
    ],
    "budget_60": [
        ("SeLa, 60 epochs", ["--epochs", "60", "--label-steps", "32"]),
        ("k-means, 60 epochs", ["--mode", "kmeans", "--epochs", "60", "--label-steps", "32"]),
    ],
    "budget_120": [
        ("SeLa, 120 epochs", ["--epochs", "120", "--label-steps", "64"]),
        ("k-means, 120 epochs", ["--mode", "kmeans", "--epochs", "120", "--label-steps", "64"]),
    ],
    # stronger invariance to the nuisances the labels track (position, scale): wider crops
    "invariance": [
        ("SeLa, crops 0.2-1", ["--crop-scale", "0.2", "1.0"]),
        ("SeLa, crops 0.08-1", ["--crop-scale", "0.08", "1.0"]),
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
        # a row killed part-way (e.g. by a time limit) resumes from its checkpoint; its time is
        # then the run's own sum over its segments (Trainer.seconds), not this invocation's wall
        resumed = (d / "checkpoint.pt").exists()
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
        res["seconds_wall"] = res["seconds_total"] if resumed else time.perf_counter() - t0
        res["resumed"] = resumed
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


def train_label_nmi(r: dict) -> float | None:
    """NMI of the final self-labels of the training split (metric heads), for rows that made
    labels (SeLa, k-means); None for the others."""
    tl = r.get("train_labels")
    if not (tl and r.get("history")):
        return None
    return float(np.mean([tl[t]["nmi"] for t in r.get("metric_heads", range(len(tl)))]))


def table(rows: list[dict]) -> str:
    head = "| row | " + " | ".join(c for c, _ in COLS) + " | train-label NMI | time (s) |"
    lines = [head, "|" + "---|" * (len(COLS) + 3)]
    for r in rows:
        tl = train_label_nmi(r)
        tl = "–" if tl is None else f"{tl:.3f}"
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
    head = "| row | runs | " + " | ".join(c for c, _ in COLS) + " | train-label NMI |"
    lines = [head, "|" + "---|" * (len(COLS) + 3)]

    def cell(v: list, scale: float, fmt: str) -> str:
        if not v:
            return "–"
        v = np.asarray(v, dtype=float)
        sd = f" ± {v.std(ddof=1) * scale:{fmt}}" if len(v) > 1 else ""
        return f"{v.mean() * scale:{fmt}}{sd}"

    for n in names:
        cells = []
        for _, k in COLS:
            scale, fmt = (100, ".1f") if k.startswith(("knn", "probe", "acc")) else (1, ".3f")
            cells.append(cell([r[n][k] for r in runs if n in r], scale, fmt))
        tl = [train_label_nmi(r[n]) for r in runs if n in r]
        cells.append(cell([v for v in tl if v is not None], 1, ".3f"))
        lines.append(f"| {n} | {sum(n in r for r in runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sizes_table(r: dict) -> str:
    """Cluster sizes of each head's labels at every label step of a row (smallest…largest)."""
    ks = r["num_clusters"]
    head = "| step | epoch | " + " | ".join(f"head {t} (K={k})" for t, k in enumerate(ks)) + " |"
    lines = [head, "|" + "---|" * (len(ks) + 2)]
    for h in r.get("history", []):
        sizes = " | ".join(f"{lo}…{hi}" for lo, hi in zip(h["size_min"], h["size_max"]))
        lines.append(f"| {h['step']} | {h['epoch']:.2f} | {sizes} |")
    return "\n".join(lines)


def sizes_summary(named: list[tuple[str, dict]]) -> str:
    """One line per labelled row: the smallest…largest cluster over the heads of each K, at the
    first label step (on the untrained network), at the last and over all label steps, and how
    many steps left a cluster empty in some head."""
    ks = sorted({k for _, r in named for k in r["num_clusters"]})

    def rng(h: dict, k: int, ns: list[int]) -> tuple[int, int]:
        t = [i for i, kk in enumerate(ns) if kk == k]
        return min(h["size_min"][i] for i in t), max(h["size_max"][i] for i in t)

    cols = [f"{when}, K={k}" for when in ("step 0", "last step", "all steps") for k in ks]
    lines = [
        "| run | " + " | ".join(cols) + " | steps with an empty cluster |",
        "|" + "---|" * (len(cols) + 2),
    ]
    for name, r in named:
        hist, ns = r["history"], r["num_clusters"]
        first = [rng(hist[0], k, ns) if k in ns else None for k in ks]
        last = [rng(hist[-1], k, ns) if k in ns else None for k in ks]
        every = [
            (min(rng(h, k, ns)[0] for h in hist), max(rng(h, k, ns)[1] for h in hist)) if k in ns else None
            for k in ks
        ]
        cells = ["–" if c is None else f"{c[0]}…{c[1]}" for c in first + last + every]
        empty = sum(min(h["size_min"]) == 0 for h in hist)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {empty} of {len(hist)} |")
    return "\n".join(lines)


def sizes_report(dirs: list[Path]) -> str:
    """The cluster sizes of every labelled row of these finished invocations: the summary, then
    every label step of every row."""
    named = [
        (f"{d.name}: {r['name']}", r)
        for d in dirs
        for r in json.loads((d / "results.json").read_text())
        if r.get("history")
    ]
    parts = [sizes_summary(named)]
    parts += [f"#### {n}\n\n" + sizes_table(r) for n, r in named]
    return "\n\n".join(parts) + "\n"


def budget_points(out: Path, by: dict) -> list[tuple[str, int, dict]]:
    """The budget curve's rows of a folder: (method, epochs, row) for every SeLa / k-means row
    whose config is the default except its epochs and label steps, scaled alike (16 steps per
    30 epochs) - SeLa's rows with the default label rule only."""
    from .config import Config

    free = {"epochs", "label_steps", "mode", "seed", "dataset"}
    ref = {k: v for k, v in Config().training_fingerprint().items() if k not in free}
    pts = []
    for n, r in by.items():
        f = out / _slug(n) / "config.json"
        if not f.exists():
            continue
        c = Config.from_dict(json.loads(f.read_text()))
        fp = {k: v for k, v in c.training_fingerprint().items() if k not in free}
        if c.mode == "kmeans":  # the label rule of the Sinkhorn step does not apply to k-means
            fp["balanced"] = ref["balanced"]
        if c.mode in ("sela", "kmeans") and fp == ref and c.label_steps * 30 == 16 * c.epochs:
            pts.append(("SeLa" if c.mode == "sela" else "k-means in the loop", c.epochs, r))
    return sorted(pts, key=lambda p: (p[0], p[1]))


def budget_table(pts: list[tuple[str, int, dict]], raw: dict | None) -> str:
    lines = [
        "| method | epochs | label steps | kNN | linear probe | NMI | train-label NMI | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, ep, r in pts:
        tl = train_label_nmi(r)
        lines.append(
            f"| {m} | {ep} | {16 * ep // 30} | {100 * r['knn_test']:.1f} | {100 * r['probe_test']:.1f} "
            f"| {r['nmi']:.3f} | {'–' if tl is None else f'{tl:.3f}'} | {r.get('seconds_wall', 0):.0f} |"
        )
    if raw:
        lines.append(
            f"| raw pixels | – | – | {100 * raw['knn_test']:.1f} | {100 * raw['probe_test']:.1f} "
            f"| {raw['nmi']:.3f} | – | {raw.get('seconds_wall', 0):.0f} |"
        )
    return "\n".join(lines)


def plot_budget(pts: list[tuple[str, int, dict]], raw: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for j, (label, key) in enumerate(COLS[:2]):
        for m, colour in (("SeLa", "C0"), ("k-means in the loop", "C1")):
            mine = [(ep, r) for mm, ep, r in pts if mm == m]
            if not mine:
                continue
            ax[j].plot([e for e, _ in mine], [100 * r[key] for _, r in mine], "o-", color=colour, label=m)
            for e, r in mine:
                ax[j].annotate(
                    f"{r.get('seconds_wall', 0) / 60:.0f} min",
                    (e, 100 * r[key]),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                    color=colour,
                )
        if raw:
            ax[j].axhline(100 * raw[key], color="grey", ls="--", label="raw pixels")
        ax[j].set_xscale("log", base=2)
        ax[j].set_xticks(sorted({e for _, e, _ in pts}), [str(e) for e in sorted({e for _, e, _ in pts})])
        ax[j].set(xlabel="epochs (label steps scaled alike)", ylabel=f"{label} (test, %)", ylim=(0, 100))
        ax[j].legend(fontsize=7)
    fig.suptitle("budget curve (labels: wall time per run)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    p.add_argument(
        "--sizes",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="print the cluster sizes at every label step of the rows of these finished invocations",
    )
    p.add_argument("common", nargs=argparse.REMAINDER, help="flags passed to every row, after --")
    a = p.parse_args(argv)
    if a.aggregate:
        print(aggregate(a.aggregate))
        return 0
    if a.sizes:
        print(sizes_report(a.sizes))
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
    pts = budget_points(out, by)
    if len({ep for _, ep, _ in pts}) > 1:
        md.append("### budget curve\n\n" + budget_table(pts, by.get("raw pixels")) + "\n")
        plot_budget(pts, by.get("raw pixels"), out / "budget.png")
    for n, r in by.items():
        if r.get("history"):
            md.append(f"#### cluster sizes at every label step: {n}\n\n" + sizes_table(r) + "\n")
    (out / "results.md").write_text("\n".join(md))
    (out / "results.json").write_text(json.dumps(list(by.values()), indent=1))
    main_rows = [by[n] for n, _ in ROWS["main"] if n in by]
    plot(main_rows or list(by.values()), out / "comparison.png")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
