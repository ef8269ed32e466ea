"""The command line: formats, heads, atomic output, safe loading, errors, the demo."""

import os
import subprocess
import sys

import numpy as np
import pytest

from sinklabel.cli import main
from sinklabel.problems import make_scores


@pytest.fixture
def scores_file(tmp_path):
    S = make_scores(500, 5, seed=0)
    path = tmp_path / "scores.npy"
    np.save(path, S)
    return path, S


def test_assign_npy(scores_file, tmp_path, capsys):
    path, S = scores_file
    out = tmp_path / "labels.npy"
    assert main(["assign", str(path), "-o", str(out), "--lam", "10"]) == 0
    labels = np.load(out)
    assert labels.shape == (500,) and labels.dtype == np.int64
    text = capsys.readouterr().out
    for word in ("iterations", "marginal error", "objective", "sizes", "s\n"):
        assert word in text
    import sinklabel

    np.testing.assert_array_equal(labels, sinklabel.assign(S, 10.0))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_assign_npz_heads_and_potentials(tmp_path):
    a, b = make_scores(300, 4, seed=1), make_scores(300, 6, seed=2)
    path = tmp_path / "s.npz"
    np.savez(path, a=a, b=b)
    out = tmp_path / "l.npz"
    assert main(["assign", str(path), "-o", str(out)]) == 2  # two arrays: heads must be named
    assert main(["assign", str(path), "-o", str(out), "--heads", "all", "-q"]) == 0
    got = np.load(out)
    assert got["labels"].shape == (2, 300)
    assert list(got["heads"]) == ["a", "b"]
    assert got["log_v_a"].shape == (4,) and got["log_v_b"].shape == (6,)
    assert main(["assign", str(path), "-o", str(out), "--heads", "b", "-q"]) == 0
    assert np.load(out)["labels"].shape == (300,)


def test_assign_three_d_npy(tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, np.stack([make_scores(200, 4, seed=s) for s in range(3)]))
    out = tmp_path / "l.npy"
    assert main(["assign", str(path), "-o", str(out), "-q"]) == 0
    assert np.load(out).shape == (3, 200)


def test_pt_files_load_tensors_only(tmp_path):
    torch = pytest.importorskip("torch")
    S = torch.from_numpy(make_scores(200, 4, seed=3))
    path = tmp_path / "s.pt"
    torch.save({"head": S}, path)
    out = tmp_path / "l.npy"
    assert main(["assign", str(path), "-o", str(out), "-q"]) == 0
    assert np.load(out).shape == (200,)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    assert main(["assign", str(bad), "-o", str(out)]) == 2


def test_pickled_npy_is_refused(tmp_path, capsys):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["assign", str(path), "-o", str(tmp_path / "l.npy")]) == 2
    assert "not a plain numeric" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["assign", "missing.npy", "-o", "x.npy"], "no such file"),
        (["assign", "{scores}", "-o", "x.txt"], "use a .npy or .npz"),
        (["assign", "{scores}", "-o", "x.npy", "--lam", "-1"], "`lam` must be finite and > 0"),
        (["assign", "{scores}", "-o", "x.npy", "--backend", "nope"], "`backend` must be one of"),
    ],
)
def test_errors_are_one_line(argv, message, scores_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, _ = scores_file
    argv = [a.replace("{scores}", str(path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sinklabel: error:") and message in err
    assert not (tmp_path / "x.npy").exists()


def test_not_converged_exit_code(scores_file, tmp_path):
    path, _ = scores_file
    assert main(["assign", str(path), "-o", str(tmp_path / "l.npy"), "--max-iter", "2", "-q"]) == 3
    assert np.load(tmp_path / "l.npy").shape == (500,)  # written all the same


def test_demo_runs_end_to_end():
    pytest.importorskip("ot")
    proc = subprocess.run(
        [sys.executable, "-m", "sinklabel", "demo", "--n", "3000", "--k", "30"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for word in ("POT ot.sinkhorn", "exact LP optimum", "vs the optimum", "speed-up"):
        assert word in proc.stdout
    # the objective table says which way is better and shows each method's size spread
    out = proc.stdout
    assert "lower is better" in out and "sizes min-max (target 100)" in out
    names = ("sinklabel (default)", "sinklabel argmax", "POT ot.sinkhorn f64")
    rows = {n: line for n in names for line in out.splitlines() if line.startswith(n + " ")}
    assert set(rows) == set(names), out
    assert rows["sinklabel (default)"].rstrip().endswith("100-100")  # exactly balanced
    for name in rows:
        assert f"{name}:" in out  # each row is explained


# -- issue 13: every failure one line and an exit status, found before heavy work ------------


def run_cli(*args, cwd=None, timeout=300, umask=None, **kw):
    """``python -m sinklabel ARGS`` in a fresh process: (returncode, stdout, stderr)."""
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    proc = subprocess.run(
        [sys.executable, "-m", "sinklabel", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        preexec_fn=preexec,
        **kw,
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(rc, err, message, status=2):
    assert rc == status, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sinklabel: error:") and message in lines[0], err


def _npy_bytes(shape_text):
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 2), dtype=np.float32))
    return buf.getvalue().replace(b"(2, 2), ", shape_text.encode())


def test_unreadable_inputs_are_one_line_errors(tmp_path, scores_file):
    import zipfile

    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "neg.npy").write_bytes(_npy_bytes("(-2, 2), "))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x.npy", _npy_bytes("(1000000000, 1000000)"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    for name, message in [
        ("empty.npy", "empty or truncated .npy file"),
        ("neg.npy", "not a plain numeric .npy array"),
        ("huge.npz", "array 'x' claims shape (1000000000, 1000000)"),
        ("bad.npz", "not a readable .npz archive"),
    ]:
        rc, _, err = run_cli("assign", tmp_path / name, "-o", tmp_path / "l.npy")
        assert_one_line_error(rc, err, message)
    assert not (tmp_path / "l.npy").exists()


def test_output_path_errors_are_one_line(tmp_path, scores_file):
    path, _ = scores_file
    (tmp_path / "adir").mkdir()
    cases = [
        (tmp_path / "adir", "is a directory"),
        (tmp_path / "adir.npy", "is a directory"),
        (path / "x.npy", "is a file, not a folder"),
        (tmp_path / "missing" / "deeper" / "l.npy", "does not exist; create it first"),
        (tmp_path / "l.txt", "use a .npy or .npz file name"),
        (path, "is the scores file itself"),
    ]
    (tmp_path / "adir.npy").mkdir()
    before = path.read_bytes()
    for out, message in cases:
        rc, _, err = run_cli("assign", path, "-o", out)
        assert_one_line_error(rc, err, message)
    assert path.read_bytes() == before  # the scores were not overwritten with labels
    assert not (tmp_path / "missing").exists()  # no folder created silently


def test_unwritable_output_folder(scores_file):
    path, _ = scores_file
    folder = "/sys"  # not writable even for root
    if not os.path.isdir(folder) or os.access(folder, os.W_OK) and _writable(folder):
        pytest.skip("no unwritable folder on this machine")
    rc, _, err = run_cli("assign", path, "-o", f"{folder}/labels.npy")
    assert_one_line_error(rc, err, f"output folder {folder} is not writable")


def _writable(folder):
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def test_output_checked_before_the_scores_are_read(tmp_path, scores_file, monkeypatch, capsys):
    import sinklabel.cli as cli

    def never(*a, **k):
        raise AssertionError("the scores were read before the output path was checked")

    monkeypatch.setattr(cli, "_load_scores", never)
    monkeypatch.setattr(cli, "solve", never)
    path, _ = scores_file
    assert main(["assign", str(path), "-o", str(tmp_path / "nope" / "l.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_edge_sizes():
    rc, out, err = run_cli("demo", "--n", "50", "--k", "1", "--exact-n", "50")
    assert rc == 0 and "Traceback" not in err, err
    assert "absolute vs the optimum" in out  # the optimum is 0: no relative difference
    rc, _, err = run_cli("demo", "--n", "5", "--k", "0")
    assert_one_line_error(rc, err, "--n and --k must be >= 1")
    rc, _, err = run_cli("demo", "--n", "5", "--k", "6")
    assert_one_line_error(rc, err, "--k must be <= --n")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_file_mode_follows_the_umask(tmp_path, scores_file, umask):
    path, _ = scores_file
    out = tmp_path / "l.npy"
    rc, _, err = run_cli("assign", path, "-o", out, "-q", umask=umask)
    assert rc == 0, err
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    out.chmod(0o604)  # an existing file keeps its mode, as with a plain open
    rc, _, err = run_cli("assign", path, "-o", out, "-q", umask=umask)
    assert rc == 0 and out.stat().st_mode & 0o777 == 0o604, err


# SIGINT is ignored in a process started in the background by a non-interactive shell (as CI
# may run the suite), and Python then installs no KeyboardInterrupt handler: restore the
# interactive default so that the test means the same everywhere
_INTERRUPT_DURING_WRITE = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import numpy as np
import sinklabel.cli as cli
real_save = np.save
def save(fh, arr, *a, **k):
    real_save(fh, arr, *a, **k)  # half-way: the temporary file exists and holds data
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
np.save = save
sys.exit(cli.main(["assign", sys.argv[2], "-o", sys.argv[3]]))
"""


@pytest.mark.parametrize(
    "sig, status, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")]
)
def test_signal_during_write_leaves_nothing(tmp_path, scores_file, sig, status, word):
    path, _ = scores_file
    out = tmp_path / "out" / "l.npy"
    out.parent.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_DURING_WRITE, sig, str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.strip() == f"sinklabel: {word}", proc.stderr
    assert list(out.parent.iterdir()) == []  # neither the output nor a temporary file


_SLOW_SOLVE = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import sinklabel.cli as cli
def solve(*a, **k):
    print("solving", flush=True)
    time.sleep(60)
cli.solve = solve
sys.exit(cli.main(["assign", sys.argv[1], "-o", sys.argv[2]]))
"""


@pytest.mark.parametrize(
    "sig, status, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")]
)
def test_signal_during_solve_is_one_line(tmp_path, scores_file, sig, status, word):
    import signal

    path, _ = scores_file
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SOLVE, str(path), str(tmp_path / "l.npy")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "solving"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err.strip() == f"sinklabel: {word}", err
    assert [p.name for p in tmp_path.iterdir() if p.name != "scores.npy"] == []


def test_npz_reads_only_the_selected_heads(tmp_path, monkeypatch, capsys):
    from numpy.lib.npyio import NpzFile

    a, b, big = make_scores(300, 4, seed=1), make_scores(300, 6, seed=2), make_scores(300, 3, seed=3)
    path = tmp_path / "s.npz"
    np.savez(path, a=a, b=b, unselected=big)
    read = []
    real = NpzFile.__getitem__

    def getitem(self, key):
        read.append(key)
        return real(self, key)

    monkeypatch.setattr(NpzFile, "__getitem__", getitem)
    out = tmp_path / "l.npz"
    assert main(["assign", str(path), "-o", str(out), "--heads", "b,a"]) == 0
    assert read == ["b", "a"]
    text = capsys.readouterr().out
    assert "head 'b':" in text and "head 'a':" in text  # heads reported by name
    got = np.load(out)
    assert list(got["heads"]) == ["b", "a"] and got["log_v_b"].shape == (6,)


def test_heads_for_npy_is_an_error(scores_file, tmp_path):
    path, _ = scores_file
    rc, _, err = run_cli("assign", path, "-o", tmp_path / "l.npy", "--heads", "a")
    assert_one_line_error(rc, err, "--heads selects arrays of an .npz or .pt file")


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_big_endian_npy(tmp_path, scores_file, dtype):
    path, S = scores_file
    big = tmp_path / "big.npy"
    np.save(big, S.astype(dtype))
    rc, _, err = run_cli("assign", big, "-o", tmp_path / "l.npy", "-q")
    assert rc == 0, err
    import sinklabel

    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), sinklabel.assign(S.astype(dtype[1:]), 25.0))


def test_verbosity_after_the_subcommand_and_help(scores_file, tmp_path):
    path, _ = scores_file
    rc, out, err = run_cli("assign", path, "-o", tmp_path / "l.npy", "-q")
    assert rc == 0 and out == "" and err == "", err
    rc, out, err = run_cli("assign", path, "-o", tmp_path / "l.npy", "-v")
    assert rc == 0 and "labels written" in out, err
    rc, out, _ = run_cli("-q", "assign", path, "-o", tmp_path / "l.npy")
    assert rc == 0 and out == ""
    from sinklabel.cli import EXIT_STATUSES

    for argv in (["--help"], ["assign", "--help"], ["demo", "--help"]):
        rc, out, _ = run_cli(*argv)
        assert rc == 0 and "exit status:" in out
        for code in EXIT_STATUSES:
            assert f"  {code} " in out


def test_not_converged_warning_is_one_cli_line(scores_file, tmp_path):
    path, _ = scores_file
    rc, out, err = run_cli("assign", path, "-o", tmp_path / "l.npy", "--max-iter", "2")
    assert rc == 3 and "labels written" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sinklabel: warning: head(s) 0 did not converge within --max-iter 2")
    assert "init=" not in err and "warnings.warn" not in err and "--tol" in err
    rc, out, err = run_cli("assign", path, "-o", tmp_path / "l.npy", "--max-iter", "2", "-q")
    assert rc == 3 and out == "" and err == ""


def test_readme_lists_the_exit_statuses_of_help():
    from pathlib import Path

    from sinklabel.cli import _epilog

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    assert _epilog() in section


def _run_on_a_terminal(*args, timeout=300):
    """``python -m sinklabel ARGS`` with stderr on a pseudo-terminal: (returncode, stderr)."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sinklabel", *map(str, args)], stderr=slave, stdout=subprocess.DEVNULL
    )
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=timeout), out.decode(errors="replace")


def test_progress_on_a_terminal_only(scores_file, tmp_path):
    pytest.importorskip("tqdm")
    path, _ = scores_file
    rc, err = _run_on_a_terminal("assign", path, "-o", tmp_path / "l.npy", "--lam", "50")
    assert rc == 0, err
    assert "head 1/1" in err and "%|" in err and "iteration" in err and "(tol 0.001)" in err, err
    rc, err = _run_on_a_terminal("assign", path, "-o", tmp_path / "l.npy", "--lam", "50", "-q")
    assert rc == 0 and err == "", err
    rc, out, err = run_cli("assign", path, "-o", tmp_path / "l.npy", "--lam", "50")
    assert rc == 0 and err == "" and "labels written" in out  # in a pipe: no progress


def test_infeasible_pattern_is_a_one_line_error(tmp_path):
    S = make_scores(2000, 20, seed=0)
    S[:, 5] = -np.inf
    S[:10, 5] = 0.0  # 10 points may join cluster 5, which needs 100
    path = tmp_path / "s.npy"
    np.save(path, S)
    rc, _, err = run_cli("assign", path, "-o", tmp_path / "l.npy", "--max-iter", "300")
    assert_one_line_error(rc, err, "cluster 5 needs 100 point(s) but only 10 point(s) can reach it")


def test_lam_too_large_is_a_one_line_error(scores_file, tmp_path):
    path, _ = scores_file
    rc, _, err = run_cli("assign", path, "-o", tmp_path / "l.npy", "--lam", "1e308")
    assert_one_line_error(rc, err, "the largest usable lam for these scores is")


def test_verbose_errors_add_the_traceback(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    rc, _, err = run_cli("assign", tmp_path / "empty.npy", "-o", tmp_path / "l.npy", "-v")
    assert rc == 2 and "Traceback" in err  # for a bug report
    assert (
        err.strip().splitlines()[-1]
        == f"sinklabel: error: {tmp_path / 'empty.npy'}: empty or truncated .npy file"
    )
