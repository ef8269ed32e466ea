"""Command line: ``sinklabel assign`` and ``sinklabel demo``.

sinklabel assign scores.npy -o labels.npy --lam 25
sinklabel demo
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._driver import solve

__all__ = ["main"]


class CLIError(Exception):
    """A user-facing error; printed without a traceback."""


def _load_scores(path: Path, heads: str | None) -> Any:
    """Scores from .npy/.npz/.pt, never unpickling arbitrary objects."""
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False, mmap_mode="r")
        except ValueError as exc:
            raise CLIError(f"{path}: not a plain numeric .npy array ({exc})") from exc
    if suffix == ".npz":
        try:
            archive = np.load(path, allow_pickle=False)
            arrays = {name: archive[name] for name in archive.files}
        except ValueError as exc:
            raise CLIError(f"{path}: not a plain numeric .npz archive ({exc})") from exc
        return _pick_heads(path, arrays, heads)
    if suffix in (".pt", ".pth"):
        try:
            import torch
        except ImportError as exc:
            raise CLIError("reading .pt files needs torch: pip install 'sinklabel[torch]'") from exc
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError for unsafe content
            raise CLIError(f"{path}: cannot be read safely as tensors ({exc})") from exc
        if isinstance(obj, torch.Tensor):
            return obj
        if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return _pick_heads(path, dict(obj), heads)
        if isinstance(obj, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in obj):
            return list(obj)
        raise CLIError(f"{path}: expected a tensor, a dict of tensors or a list of tensors")
    raise CLIError(f"{path}: unknown file type {suffix!r} (use .npy, .npz or .pt)")


def _pick_heads(path: Path, arrays: dict, heads: str | None) -> Any:
    if not arrays:
        raise CLIError(f"{path}: holds no arrays")
    if heads is None:
        if len(arrays) == 1:
            return next(iter(arrays.values()))
        raise CLIError(
            f"{path} holds {len(arrays)} arrays {sorted(arrays)}: choose heads with "
            "--heads NAME[,NAME...] or --heads all"
        )
    names = list(arrays) if heads == "all" else [h.strip() for h in heads.split(",") if h.strip()]
    missing = [h for h in names if h not in arrays]
    if missing:
        raise CLIError(f"{path}: no array named {missing[0]!r}; it holds {sorted(arrays)}")
    return [arrays[h] for h in names] if len(names) > 1 else arrays[names[0]]


def _save_atomic(path: Path, result: Any) -> None:
    """Write labels (``.npy``) or labels and potentials (``.npz``) via a rename."""
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise CLIError(f"output {path}: use a .npy or .npz file name")
    labels = _host(result.labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            if suffix == ".npy":
                np.save(fh, labels)
            else:
                extra = {f"log_v_{t}": _host(h.log_v) for t, h in enumerate(result.heads)}
                np.savez(fh, labels=labels, **extra)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _host(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if hasattr(x, "get") and not isinstance(x, np.ndarray):
        return x.get()
    return np.asarray(x)


def _cmd_assign(args: argparse.Namespace) -> int:
    scores = _load_scores(Path(args.scores), args.heads)
    if isinstance(scores, np.ndarray) and scores.ndim == 3 and args.heads is None:
        logging.getLogger("sinklabel").info("3-D input: solving %d heads", scores.shape[0])
    res = solve(
        scores,
        args.lam,
        tol=args.tol,
        max_iter=args.max_iter,
        backend=args.backend,
        balanced=args.balanced,
    )
    _save_atomic(Path(args.output), res)
    if not args.quiet:
        print(res.report())
        print(f"labels written to {args.output}")
    # 3: written, but not converged (or balanced labels without a certificate)
    certified = all(h.certified is not False for h in res.heads)
    return 0 if res.converged and certified else 3


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import exact
    from .problems import make_scores

    n, k, lam = args.n, args.k, args.lam
    print(f"sinklabel {__version__} demo: N={n} points, K={k} clusters, lam={lam:g}, seed={args.seed}")
    print("scores: realistic log-probabilities (confident, hesitant and near-uniform points;")
    print("        clusters of very unequal popularity), float32\n")
    S = make_scores(n, k, seed=args.seed)
    # the first call in a fresh install compiles the numba kernels (cached on disk after);
    # time the second, so the comparison is of solves
    first = solve(S, lam, tol=args.tol)
    res = solve(S, lam, tol=args.tol)
    print(res.report())
    print(f"(first call, including any one-time kernel compilation: {first.wall_time:.3f} s)\n")
    rows = [("sinklabel", res.wall_time, res.heads[0].error, res.n_iter, res.objective, res.sizes)]
    try:
        import ot
    except ImportError:
        print("POT is not installed (pip install 'sinklabel[lp]'): skipping POT and the exact LP.")
        return 0 if res.converged else 3
    S64 = S.astype(np.float64)
    t0 = time.perf_counter()
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            P, log = ot.sinkhorn(
                np.full(n, 1 / n),
                np.full(k, 1 / k),
                -S64,
                1 / lam,
                numItermax=100_000,
                stopThr=args.tol / k,
                log=True,
            )
    t_pot = time.perf_counter() - t0
    pot_err = float(np.max(np.abs(P.sum(0) * k - 1)))
    pot_labels = P.argmax(1)
    rows.append(
        (
            "POT ot.sinkhorn f64",
            t_pot,
            pot_err,
            int(log.get("niter", -1)),
            exact.objective(S, pot_labels),
            np.bincount(pot_labels, minlength=k),
        )
    )
    print(
        f"{'method':22s} {'time (s)':>9s} {'col. error':>10s} {'iters':>6s} {'objective':>10s}  sizes min/max"
    )
    for name, t, err, it, obj, sizes in rows:
        print(f"{name:22s} {t:9.3f} {err:10.2e} {it:6d} {obj:10.5f}  {sizes.min()}/{sizes.max()}")
    print(f"speed-up over POT: {t_pot / res.wall_time:.1f}x\n")

    m = min(n, args.exact_n)
    sub = S[:m]
    t0 = time.perf_counter()
    ex = exact.solve_exact(sub)
    t_ex = time.perf_counter() - t0
    sub_res = solve(sub, lam, tol=args.tol, balanced=False)
    gap = (sub_res.objective - ex.objective) / abs(ex.objective)
    bal = solve(sub, lam, tol=args.tol, balanced=True)
    print(
        f"exact LP optimum on the first {m} points (ot.emd, {t_ex:.2f} s): objective {ex.objective:.5f}, "
        f"sizes {ex.sizes.min()}/{ex.sizes.max()} (exactly balanced)"
    )
    print(
        f"sinklabel balanced labels (the default): objective {bal.objective:.5f} "
        f"({(bal.objective - ex.objective) / abs(ex.objective):+.1e} vs the optimum, certified gap "
        f"{bal.heads[0].gap:.1e}), sizes {bal.sizes.min()}/{bal.sizes.max()}"
    )
    print(
        f"sinklabel argmax labels (balanced=False) on the same points: objective {sub_res.objective:.5f} "
        f"({gap:+.2%} vs the optimum), sizes {sub_res.sizes.min()}/{sub_res.sizes.max()}"
    )
    return 0 if res.converged else 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sinklabel", description="Balanced label assignment (SeLa).")
    p.add_argument("--version", action="version", version=f"sinklabel {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log solver details")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("assign", help="label a score matrix from a file")
    a.add_argument("scores", help="scores: .npy (N,K) or (T,N,K), .npz, or .pt (tensors only)")
    a.add_argument("-o", "--output", required=True, help="labels: .npy, or .npz with potentials")
    a.add_argument("--lam", type=float, default=25.0, help="inverse regularisation (default 25)")
    a.add_argument("--tol", type=float, default=1e-3, help="cluster-marginal tolerance (1e-3)")
    a.add_argument("--max-iter", type=int, default=5000, help="iteration cap per head (5000)")
    a.add_argument("--backend", default="auto", help="auto, numpy, numba, torch, cupy")
    a.add_argument(
        "--balanced",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exactly balanced labels, the certified LP optimum (the default), or with "
        "--no-balanced the argmax of the plan",
    )
    a.add_argument(
        "--heads",
        default=None,
        help="arrays of an .npz/.pt dict to solve as heads: NAME[,NAME...] or all",
    )
    a.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    a.set_defaults(func=_cmd_assign)

    d = sub.add_parser("demo", help="solve a realistic generated problem beside POT and the exact LP")
    d.add_argument("--n", type=int, default=20_000, help="points (20000)")
    d.add_argument("--k", type=int, default=100, help="clusters (100)")
    d.add_argument("--lam", type=float, default=25.0)
    d.add_argument("--tol", type=float, default=1e-3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--exact-n", type=int, default=2000, help="points for the exact LP (2000)")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"sinklabel: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, ImportError) as exc:
        print(f"sinklabel: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
