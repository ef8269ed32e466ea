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
    assert got["log_v_0"].shape == (4,) and got["log_v_1"].shape == (6,)
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
    with pytest.warns(Warning):
        assert (
            main(["assign", str(path), "-o", str(tmp_path / "l.npy"), "--max-iter", "2", "-q"]) == 3
        )


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
