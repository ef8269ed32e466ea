"""Command line: ``sinklabel assign`` and ``sinklabel demo``.

sinklabel assign scores.npy -o labels.npy --lam 25
sinklabel demo

Every failure a user can cause is one line on stderr and an exit status (see
:data:`EXIT_STATUSES`), found before any heavy work where it can be: the output path is
checked before the scores are read, the scores' headers before their data.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._arrays import to_host
from ._driver import solve
from ._result import ConvergenceWarning, Result

__all__ = ["main", "build_parser", "EXIT_STATUSES"]

#: exit status -> meaning (printed by ``--help`` and in the README)
EXIT_STATUSES = {
    0: "labels written; every head converged (and balanced labels are certified)",
    1: "internal error: a bug (the traceback is printed; please report it)",
    2: "bad input, an unusable file or not enough memory: nothing written",
    3: "labels written, but a head did not converge or its balanced labels are not certified",
    130: "interrupted (Ctrl-C): no output or temporary file is left",
    143: "terminated (SIGTERM): no output or temporary file is left",
}


class CLIError(Exception):
    """A user-facing error; printed as one line, exit status 2."""


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that temporary files are removed on the way out."""


# -- input ------------------------------------------------------------------------------


def _load_scores(path: Path, heads: str | None) -> tuple[Any, list[str] | None]:
    """Scores from .npy/.npz/.pt and the heads' names (None where arrays have no names),
    never unpickling arbitrary objects, reading only the arrays asked for."""
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if path.is_dir():
        raise CLIError(f"{path}: is a directory, not a scores file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if heads is not None:
            raise CLIError(
                f"--heads selects arrays of an .npz or .pt file; {path} is one .npy array "
                "(a 3-D .npy is solved as one head per first index)"
            )
        try:
            return np.load(path, allow_pickle=False, mmap_mode="r"), None
        except EOFError as exc:
            raise CLIError(f"{path}: empty or truncated .npy file") from exc
        except (ValueError, OverflowError) as exc:
            raise CLIError(f"{path}: not a plain numeric .npy array ({exc})") from exc
    if suffix == ".npz":
        return _load_npz(path, heads)
    if suffix in (".pt", ".pth"):
        return _load_pt(path, heads)
    raise CLIError(f"{path}: unknown file type {suffix!r} (use .npy, .npz or .pt)")


def _load_npz(path: Path, heads: str | None) -> tuple[Any, list[str]]:
    try:
        archive = np.load(path, allow_pickle=False)  # lazy: members are read on access
    except (zipfile.BadZipFile, EOFError, ValueError, OverflowError) as exc:
        raise CLIError(f"{path}: not a readable .npz archive ({exc})") from exc
    with archive:
        names = _pick_heads(path, list(archive.files), heads)
        arrays = []
        for name in names:
            _check_npz_member(path, archive, name)
            try:
                arrays.append(archive[name])
            except (ValueError, EOFError, OverflowError, zipfile.BadZipFile) as exc:
                raise CLIError(f"{path}: array {name!r} is not a plain numeric array ({exc})") from exc
    return (arrays if len(arrays) > 1 else arrays[0]), names


def _check_npz_member(path: Path, archive: Any, name: str) -> None:
    """Refuse a member whose header claims more data than the archive holds for it
    (before anything is allocated for it)."""
    member = name if name in archive.zip.namelist() else f"{name}.npy"
    info = archive.zip.getinfo(member)
    try:
        with archive.zip.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(fh)
            header = fh.tell()
    except (ValueError, EOFError, OverflowError, zipfile.BadZipFile) as exc:
        raise CLIError(f"{path}: array {name!r} is not a plain numeric array ({exc})") from exc
    if dtype.hasobject:
        raise CLIError(f"{path}: array {name!r} is not a plain numeric array (it holds objects)")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > info.file_size - header:
        raise CLIError(
            f"{path}: array {name!r} claims shape {shape} ({claimed:,} bytes) but the archive "
            f"holds {info.file_size - header:,} bytes for it: truncated or corrupt"
        )


def _load_pt(path: Path, heads: str | None) -> tuple[Any, list[str] | None]:
    try:
        import torch
    except ImportError as exc:
        raise CLIError("reading .pt files needs torch: pip install 'sinklabel[torch]'") from exc
    try:
        # memory-mapped: tensors a --heads choice leaves out are never read
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
        obj = _torch_load(torch, path)
    except Exception as exc:  # torch raises UnpicklingError for unsafe content
        raise CLIError(f"{path}: cannot be read safely as tensors ({exc})") from exc
    if isinstance(obj, torch.Tensor):
        if heads is not None:
            raise CLIError(f"--heads selects tensors of a dict; {path} holds one tensor")
        return obj, None
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        names = _pick_heads(path, [str(key) for key in obj], heads)
        arrays = {str(key): value for key, value in obj.items()}
        picked = [arrays[name] for name in names]
        return (picked if len(picked) > 1 else picked[0]), names
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(v, torch.Tensor) for v in obj):
        if heads is not None:
            raise CLIError(f"--heads selects tensors of a dict; {path} holds a list of tensors")
        return list(obj), None
    raise CLIError(f"{path}: expected a tensor, a dict of tensors or a list of tensors")


def _torch_load(torch: Any, path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CLIError(f"{path}: cannot be read safely as tensors ({exc})") from exc


def _pick_heads(path: Path, available: list[str], heads: str | None) -> list[str]:
    """The names of the arrays to solve, in order."""
    if not available:
        raise CLIError(f"{path}: holds no arrays")
    if heads is None:
        if len(available) == 1:
            return available
        raise CLIError(
            f"{path} holds {len(available)} arrays {sorted(available)}: choose heads with "
            "--heads NAME[,NAME...] or --heads all"
        )
    names = available if heads == "all" else [h.strip() for h in heads.split(",") if h.strip()]
    if not names:
        raise CLIError(f"--heads is empty; name arrays of {path}: {sorted(available)}")
    missing = [h for h in names if h not in available]
    if missing:
        raise CLIError(f"{path}: no array named {missing[0]!r}; it holds {sorted(available)}")
    return names


# -- output -----------------------------------------------------------------------------


def _check_output(out: Path, scores: Path) -> None:
    """Everything that can be known about the output path before the solve."""
    if out.is_dir():
        raise CLIError(f"output {out} is a directory; name a file in it, e.g. {out / 'labels.npy'}")
    if out.suffix.lower() not in (".npy", ".npz"):
        raise CLIError(f"output {out}: use a .npy or .npz file name")
    folder = out.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CLIError(f"output {out}: {existing} is a file, not a folder")
    if existing != folder:
        raise CLIError(f"output folder {folder} does not exist; create it first")
    if out.exists() and scores.exists() and os.path.samefile(out, scores):
        raise CLIError(f"output {out} is the scores file itself; choose another name")
    try:  # the one sure test of writability (permissions, read-only mounts, ACLs)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as exc:
        raise CLIError(f"output folder {folder} is not writable ({exc.strerror})") from exc
    os.close(fd)
    os.unlink(probe)


def _file_mode(path: Path) -> int:
    """The permission bits a plain ``open(path, "w")`` would leave: the existing file's,
    else 0o666 less the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _save_atomic(path: Path, result: Result, names: list[str] | None) -> None:
    """Write labels (``.npy``) or labels, head names and potentials (``.npz``) to a
    temporary file in the same folder and rename it; the temporary file is removed on any
    failure, Ctrl-C or SIGTERM."""
    suffix = path.suffix.lower()
    labels = to_host(result.labels)
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if suffix == ".npy":
                np.save(fh, labels)
            else:
                keys = names if names is not None else [str(t) for t in range(len(result.heads))]
                extra = {f"log_v_{key}": to_host(h.log_v) for key, h in zip(keys, result.heads)}
                np.savez(fh, labels=labels, heads=np.array(keys), **extra)
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- commands ---------------------------------------------------------------------------


def _head_names(names: list[str] | None, which: list[int]) -> str:
    return ", ".join(repr(names[t]) if names is not None else str(t) for t in which)


def _warn(message: str, args: argparse.Namespace) -> None:
    if not args.quiet:
        print(f"sinklabel: warning: {message}", file=sys.stderr)


class _Progress:
    """A progress bar per head on stderr, for a terminal: how far the marginal error has come
    from its first value down to ``tol``, on a log scale (the error falls geometrically), with
    the iteration and the error beside it. tqdm draws it where installed, else one line."""

    def __init__(self) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self._tqdm = tqdm
        self._bar: Any = None
        self._head = -1
        self._first = 1.0

    def __call__(self, info: Any) -> None:
        if info.head != self._head:
            self.close()
            self._head, self._first = info.head, max(float(info.error), info.tol * 10)
        done = math.log(self._first / max(info.error, 1e-300)) / math.log(self._first / info.tol)
        percent = int(100 * min(max(done, 0.0), 1.0))
        text = f"iteration {info.n_iter}, error {info.error:.2e} (tol {info.tol:g})"
        if self._bar is None:
            desc = f"head {info.head + 1}/{info.n_heads}"
            if self._tqdm is None:
                self._bar = desc
            else:
                cols, rows = _terminal_size()
                self._bar = self._tqdm(
                    total=100,
                    initial=percent,
                    desc=desc,
                    postfix=text,
                    file=sys.stderr,
                    leave=False,
                    mininterval=0.2,
                    ncols=cols,
                    nrows=rows,
                    bar_format="{desc} {percentage:3.0f}%|{bar:20}| {elapsed}{postfix}",
                )
                return
        if self._tqdm is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(percent - self._bar.n)
        else:
            sys.stderr.write(f"\r{self._bar} {percent:3d}% {text}   ")
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is None:
            return
        if self._tqdm is not None:
            self._bar.close()
        else:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        self._bar = None


def _terminal_size() -> tuple[int, int]:
    """stderr's columns and lines; 100 x 24 where the terminal reports none (a fresh pty says
    0 x 0, with which tqdm would draw nothing)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return 100, 24
    return size.columns or 100, size.lines or 24


def _progress(args: argparse.Namespace) -> _Progress | None:
    """A progress display when stderr is a terminal and -q is not given (never in pipes)."""
    if args.quiet or not sys.stderr.isatty():
        return None
    return _Progress()


def _cmd_assign(args: argparse.Namespace) -> int:
    scores_path, out = Path(args.scores), Path(args.output)
    if not scores_path.exists():
        raise CLIError(f"{scores_path}: no such file")
    _check_output(out, scores_path)
    scores, names = _load_scores(scores_path, args.heads)
    if isinstance(scores, np.ndarray) and scores.ndim == 3:
        logging.getLogger("sinklabel").info("3-D input: solving %d heads", scores.shape[0])
    progress = _progress(args)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = solve(
                scores,
                args.lam,
                tol=args.tol,
                max_iter=args.max_iter,
                backend=args.backend,
                balanced=args.balanced,
                callback=progress,
            )
    finally:
        if progress is not None:
            progress.close()
    _save_atomic(out, res, names)
    # the library's warnings, said once each in the command line's terms
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            _warn(str(w.message).splitlines()[0], args)
    failed = [t for t, h in enumerate(res.heads) if not h.converged]
    if failed:
        worst = max(res.heads[t].error for t in failed)
        _warn(
            f"head(s) {_head_names(names, failed)} did not converge within --max-iter "
            f"{args.max_iter} (marginal error {worst:.3g} > --tol {args.tol:g}); labels written; "
            "raise --max-iter, relax --tol or lower --lam",
            args,
        )
    uncertified = [t for t, h in enumerate(res.heads) if h.balanced and not h.certified]
    if uncertified:
        gap = max(res.heads[t].gap for t in uncertified)
        _warn(
            f"balanced labels of head(s) {_head_names(names, uncertified)} are exactly "
            f"balanced but not certified optimal (duality gap per point {gap:.3g}); labels written",
            args,
        )
    if not args.quiet:
        print(res.report(names))
        print(f"labels written to {out}")
    return 0 if not failed and not uncertified else 3


def _relative(value: float, reference: float) -> str:
    """``value`` against ``reference`` as a relative difference (absolute where it is 0)."""
    if reference == 0:
        return f"{value - reference:+.1e} absolute"
    return f"{(value - reference) / abs(reference):+.1e}"


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import exact
    from .problems import make_scores

    n, k, lam = args.n, args.k, args.lam
    if n < 1 or k < 1:
        raise CLIError(f"--n and --k must be >= 1; got --n {n}, --k {k}")
    if k > n:
        raise CLIError(f"--k must be <= --n (every cluster needs a point); got --k {k}, --n {n}")
    if args.exact_n < 1:
        raise CLIError(f"--exact-n must be >= 1; got {args.exact_n}")
    print(f"sinklabel {__version__} demo: N={n} points, K={k} clusters, lam={lam:g}, seed={args.seed}")
    print("scores: realistic log-probabilities (confident, hesitant and near-uniform points;")
    print("        clusters of very unequal popularity), float32\n")
    S = make_scores(n, k, seed=args.seed)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        # the first call in a fresh install compiles the numba kernels (cached on disk after);
        # time the second, so the comparison is of solves
        first = solve(S, lam, tol=args.tol)
        res = solve(S, lam, tol=args.tol)
        arg = solve(S, lam, tol=args.tol, balanced=False)
    print(res.report())
    print(f"(first call, including any one-time kernel compilation: {first.wall_time:.3f} s)\n")
    target = res.heads[0].target_sizes
    rows = [
        ("sinklabel (default)", res.wall_time, res.heads[0].error, res.n_iter, res.objective, res.sizes),
        ("sinklabel argmax", arg.wall_time, arg.heads[0].error, arg.n_iter, arg.objective, arg.sizes),
    ]
    try:
        import ot
    except ImportError:
        _print_table(rows, target)
        print("POT is not installed (pip install 'sinklabel[lp]'): skipping POT and the exact LP.")
        return 0 if res.converged else 3
    t0 = time.perf_counter()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P, log = ot.sinkhorn(
            np.full(n, 1 / n),
            np.full(k, 1 / k),
            -S.astype(np.float64),
            1 / lam,
            numItermax=100_000,
            stopThr=args.tol / k,
            log=True,
        )
    t_pot = time.perf_counter() - t0
    pot_labels = P.argmax(1)
    rows.append(
        (
            "POT ot.sinkhorn f64",
            t_pot,
            float(np.max(np.abs(P.sum(0) * k - 1))),
            int(log.get("niter", -1)),
            exact.objective(S, pot_labels),
            np.bincount(pot_labels, minlength=k),
        )
    )
    _print_table(rows, target)
    print(f"speed-up of sinklabel (default) over POT: {t_pot / res.wall_time:.1f}x\n")

    m = min(n, args.exact_n)
    sub = S[:m]
    t0 = time.perf_counter()
    ex = exact.solve_exact(sub)
    t_ex = time.perf_counter() - t0
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        sub_res = solve(sub, lam, tol=args.tol, balanced=False)
        bal = solve(sub, lam, tol=args.tol, balanced=True)
    print(
        f"exact LP optimum on the first {m} points (ot.emd, {t_ex:.2f} s): objective {ex.objective:.5f}, "
        f"sizes {ex.sizes.min()}-{ex.sizes.max()} (exactly balanced)"
    )
    print(
        f"sinklabel balanced labels (the default): objective {bal.objective:.5f} "
        f"({_relative(bal.objective, ex.objective)} vs the optimum, certified gap "
        f"{bal.heads[0].gap:.1e}), sizes {bal.sizes.min()}-{bal.sizes.max()}"
    )
    print(
        f"sinklabel argmax labels (balanced=False) on the same points: objective {sub_res.objective:.5f} "
        f"({_relative(sub_res.objective, ex.objective)} vs the optimum), sizes "
        f"{sub_res.sizes.min()}-{sub_res.sizes.max()}"
    )
    return 0 if res.converged else 3


def _print_table(rows: list, target: np.ndarray) -> None:
    want = f"{target.min()}" if target.min() == target.max() else f"{target.min()}-{target.max()}"
    print(
        f"{'method':22s} {'time (s)':>9s} {'col. error':>10s} {'iters':>6s} "
        f"{'objective':>10s}  sizes min-max (target {want})"
    )
    for name, t, err, it, obj, sizes in rows:
        print(f"{name:22s} {t:9.3f} {err:10.2e} {it:6d} {obj:10.5f}  {sizes.min()}-{sizes.max()}")
    print(
        "objective: -mean_i S[i, label_i], the paper's cross-entropy; lower is better, but only\n"
        "  between labelings with the same sizes: argmax labels buy a lower objective with\n"
        "  clusters above and below their target size.\n"
        "sinklabel (default): exactly balanced labels, the certified optimum of the paper's LP\n"
        "  (eq. 6) at the target sizes.\n"
        "sinklabel argmax: the same solve with balanced=False, each point's argmax of the plan\n"
        "  (what the paper's code returns).\n"
        "POT ot.sinkhorn f64: POT's Sinkhorn in float64 to the same tolerance, argmax labels."
    )


def _common_options(quiet_help: str) -> argparse.ArgumentParser:
    """-v/-q, accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log solver details"
    )
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet_help)
    return common


def _epilog() -> str:
    lines = ["exit status:"]
    lines += [f"  {code:<4d} {text}" for code, text in EXIT_STATUSES.items()]
    return "\n".join(lines)


_QUIET_HELP = "print only errors: no report, warnings or progress"


def build_parser() -> argparse.ArgumentParser:
    # each parser gets its own -v/-q actions (shared ones would share their defaults), all
    # defaulting to "absent", so that a flag given before the subcommand survives it
    p = argparse.ArgumentParser(
        prog="sinklabel",
        description="Balanced label assignment (SeLa).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common_options(_QUIET_HELP)],
    )
    p.add_argument("--version", action="version", version=f"sinklabel {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser(
        "assign",
        help="label a score matrix from a file",
        parents=[_common_options(_QUIET_HELP)],
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("scores", help="scores: .npy (N,K) or (T,N,K), .npz, or .pt (tensors only)")
    a.add_argument(
        "-o",
        "--output",
        required=True,
        help="labels: .npy, or .npz with head names and potentials (its folder must exist)",
    )
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
    a.set_defaults(func=_cmd_assign)

    d = sub.add_parser(
        "demo",
        help="solve a realistic generated problem beside POT and the exact LP",
        parents=[_common_options(_QUIET_HELP)],
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--n", type=int, default=20_000, help="points (20000)")
    d.add_argument("--k", type=int, default=100, help="clusters (100)")
    d.add_argument("--lam", type=float, default=25.0)
    d.add_argument("--tol", type=float, default=1e-3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--exact-n", type=int, default=2000, help="points for the exact LP (2000)")
    d.set_defaults(func=_cmd_demo)
    return p


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    args.quiet = getattr(args, "quiet", False)
    logger = logging.getLogger("sinklabel")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except (CLIError, ValueError, TypeError, ImportError, EOFError, MemoryError, OSError):
        if args.verbose:  # -v: the traceback too, for a bug report; then the one line below
            traceback.print_exc()
        return _handled(sys.exc_info()[1])
    except KeyboardInterrupt:
        print("sinklabel: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("sinklabel: terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, old_term)
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _handled(exc: BaseException) -> int:
    """The one line for an error caught by kind at the boundary (exit status 2)."""
    if isinstance(exc, MemoryError):
        return _error(f"not enough memory ({exc or 'allocation failed'})")
    if isinstance(exc, OSError):  # unreadable input, full disk, vanished folder...
        where = f": {exc.filename}" if exc.filename else ""
        return _error(f"{exc.strerror or exc}{where}")
    # CLIError, and the API's input checks (ValueError, TypeError...): their first line
    text = str(exc)
    return _error(text.splitlines()[0] if text else type(exc).__name__)


def _error(message: str) -> int:
    print(f"sinklabel: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
