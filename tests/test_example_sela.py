"""The SeLa example (examples/sela_train): a smoke run and an exact checkpoint/resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.sela_train.config import Config  # noqa: E402
from examples.sela_train.labels import label_schedule, random_balanced_labels, read_labels  # noqa: E402
from examples.sela_train.train import StopRequested, run  # noqa: E402


def tiny(out: Path, **kw) -> Config:
    """A few hundred cluttered digits, a narrow AlexNet, two epochs, two label steps."""
    base = dict(
        out_dir=str(out),
        threads=1,
        progress=False,
        max_train=256,
        copies=1,
        epochs=2,
        batch_size=64,
        label_steps=2,
        width=0.125,
        embed_dim=32,
        num_clusters=(10, 4),
        probe_cs=(1.0,),
    )
    base.update(kw)
    return Config(**base)


def test_schedule_and_initial_labels():
    assert label_schedule(0, 100) == []
    assert label_schedule(1, 100) == [100]
    assert label_schedule(3, 100) == [0, 25, 100]
    lab = random_balanced_labels(103, (10, 7), seed=0)
    assert lab.shape == (2, 103)
    for row, k in zip(lab, (10, 7)):
        sizes = np.bincount(row, minlength=k)
        assert sizes.max() - sizes.min() <= 1


def test_smoke_two_label_steps(tmp_path):
    res = run(tiny(tmp_path / "run"))
    assert [h["step"] for h in res["history"]] == [0, 1]
    for key in ("knn_test", "probe_test", "nmi", "anmi", "ari", "acc"):
        assert np.isfinite(res[key]), key
    assert 0.0 <= res["knn_test"] <= 1.0
    out = tmp_path / "run"
    for name in (
        "metrics.json",
        "training.png",
        "cluster_sizes.png",
        "labels/init.npz",
        "labels/step_000.npz",
        "labels/step_001.npz",
        "labels/final.npz",
        "checkpoint.pt",
    ):
        assert (out / name).exists(), name
    labels, ks = read_labels(out / "labels" / "final.npz")
    assert ks == (10, 4) and labels.shape == (2, 256)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_clusters"] == [10, 4]
    # the summary clustering metrics are those of the head with K = the 10 classes
    assert metrics["metric_heads"] == [0]
    assert metrics["nmi"] == metrics["test_heads"][0]["nmi"]

    # label transfer: a fresh network trained on the exported labels
    tr = run(
        tiny(tmp_path / "transfer", mode="fixed", labels_from=str(out / "labels" / "final.npz"), epochs=1)
    )
    assert tr["history"] == [] and tr["num_clusters"] == [10, 4]
    moved, _ = read_labels(tmp_path / "transfer" / "labels" / "final.npz")
    np.testing.assert_array_equal(moved, labels)


def test_resume_after_label_step_gives_the_same_final_labels(tmp_path):
    # three label steps at iterations 0, 2 and 8 of 8 (4 batches per epoch): stop after the
    # mid-epoch step 1, as if killed, then resume
    kw = dict(label_steps=3)
    full = run(tiny(tmp_path / "full", **kw))
    with pytest.raises(StopRequested):
        run(tiny(tmp_path / "cut", stop_after_label_step=1, **kw))
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert cut["next_step"] == 2 and 0 < cut["iteration"] < 8
    # the run's time is summed over its segments: mark the first segment as 1000 s long
    assert cut["seconds"] > 0
    cut["seconds"] += 1000.0
    torch.save(cut, tmp_path / "cut" / "checkpoint.pt")
    resumed = run(tiny(tmp_path / "cut", **kw))
    assert resumed["seconds_train"] > 1000.0 and resumed["seconds_total"] >= resumed["seconds_train"]
    a, _ = read_labels(tmp_path / "full" / "labels" / "final.npz")
    b, _ = read_labels(tmp_path / "cut" / "labels" / "final.npz")
    np.testing.assert_array_equal(a, b)

    def timeless(history):
        return [{k: v for k, v in r.items() if "time" not in k and k != "seconds"} for r in history]

    assert timeless(resumed["history"]) == timeless(full["history"])
    assert resumed["epoch_loss"] == full["epoch_loss"]
    assert resumed["knn_test"] == full["knn_test"]


def test_first_label_step_of_a_default_run_leaves_no_cluster_empty(tmp_path):
    # label step 0 runs on the untrained network, whose scores are nearly uniform: the argmax of
    # the plan can leave clusters empty (on this tiny config with --no-balanced: sizes 6...63 for
    # K = 10 and 0...57 for K = 50); the default labels must use every cluster of every head
    ks = (10, 50)
    with pytest.raises(StopRequested):
        run(tiny(tmp_path / "run", num_clusters=ks, stop_after_label_step=0))
    assert Config().balanced == tiny(tmp_path).balanced  # the tiny config keeps the default rule
    labels, got = read_labels(tmp_path / "run" / "labels" / "step_000.npz")
    assert got == ks and labels.shape == (2, 256)
    for row, k in zip(labels, ks):
        sizes = np.bincount(row, minlength=k)
        assert sizes.min() > 0, (k, sizes)


def test_nuisance_explained_variance_and_statistics():
    from examples.sela_train.nuisance import explained, image_statistics

    rng = np.random.default_rng(0)
    v = rng.normal(size=600)
    assert explained(v, (v > 0).astype(int)) > 0.6  # a split at the median explains 2/pi
    assert explained(v, np.digitize(v, np.quantile(v, np.linspace(0, 1, 11)[1:-1]))) > 0.9
    d = rng.integers(0, 3, 600)
    assert explained(d.astype(float), d) == pytest.approx(1.0)
    assert abs(explained(v, rng.integers(0, 10, 600))) < 0.05
    assert explained(np.ones(600), rng.integers(0, 10, 600)) == 0.0
    # a white 8 x 8 square at rows 4..11 on a dark red background
    img = np.zeros((2, 3, 32, 32), np.uint8)
    img[:, 0] = 50
    img[0, :, 4:12, 10:18] = 255
    img[1, :, 20:28, 2:10] = 255
    st = image_statistics(img)
    np.testing.assert_allclose(st["background R"], 50 / 255, atol=1e-6)
    np.testing.assert_allclose(st["digit area"], 64 / 1024)
    np.testing.assert_allclose(st["digit centre y"], [7.5, 23.5])
    np.testing.assert_allclose(st["digit centre x"], [13.5, 5.5])
    np.testing.assert_allclose(st["digit luma"], 1.0, atol=1e-6)


def _fake_row(d: Path, name: str, knn: float) -> None:
    d.mkdir(parents=True, exist_ok=True)
    row = dict(name=name, knn_test=knn, probe_test=0.5, nmi=0.1, anmi=0.05, ari=0.02, acc=0.2)
    (d / "metrics.json").write_text(json.dumps(row))


def test_compare_keeps_every_finished_row_and_aggregates_seeds(tmp_path):
    from examples.sela_train import compare

    out = tmp_path / "cmp"
    _fake_row(out / "sela", "SeLa", 0.40)
    _fake_row(out / "sela_t_1", "SeLa T=1", 0.30)
    # an invocation with only the heads study still tabulates the main row already there
    assert compare.main(["--out", str(out), "--study", "heads", "--report-only"]) == 0
    names = [r["name"] for r in json.loads((out / "results.json").read_text())]
    assert names == ["SeLa", "SeLa T=1"]
    assert "### main" in (out / "results.md").read_text()

    other = tmp_path / "cmp_seed1"
    _fake_row(other / "sela", "SeLa", 0.50)
    assert compare.main(["--out", str(other), "--study", "main", "--report-only"]) == 0
    lines = compare.aggregate([out, other]).splitlines()
    assert lines[2] == (
        "| SeLa | 2 | 45.0 ± 7.1 | 50.0 ± 0.0 | 0.100 ± 0.000 | 0.050 ± 0.000 | 0.020 ± 0.000 | 20.0 ± 0.0 "
        "| – |"
    )
    assert lines[3].startswith("| SeLa T=1 | 1 | 30.0 | 50.0 |")


def test_compare_cluster_sizes_and_budget_points(tmp_path):
    from examples.sela_train import compare
    from examples.sela_train.config import Config

    hist = [
        dict(step=0, epoch=0.0, size_min=[3, 0, 1], size_max=[40, 9, 8]),
        dict(step=1, epoch=1.5, size_min=[9, 2, 2], size_max=[12, 5, 6]),
    ]
    row = dict(name="SeLa", num_clusters=[10, 50, 50], history=hist)
    lines = compare.sizes_summary([("a", row)]).splitlines()
    assert lines[0] == (
        "| run | step 0, K=10 | step 0, K=50 | last step, K=10 | last step, K=50 | all steps, K=10 "
        "| all steps, K=50 | steps with an empty cluster |"
    )
    assert lines[2] == "| a | 3…40 | 0…9 | 9…12 | 2…6 | 3…40 | 0…9 | 1 of 2 |"
    assert compare.sizes_table(row).splitlines()[3] == "| 1 | 1.50 | 9…12 | 2…5 | 2…6 |"

    # the budget curve takes the rows whose config is the default but for epochs and label steps
    # scaled alike (16 per 30 epochs); a SeLa row with the other label rule is not on it
    default = Config().balanced
    rows = {
        "A": dict(mode="sela", epochs=60, label_steps=32),
        "B": dict(mode="kmeans", epochs=30, label_steps=16, balanced=not default),
        "C": dict(mode="sela", epochs=30, label_steps=16, balanced=not default),
        "D": dict(mode="sela", epochs=60, label_steps=16),
    }
    by = {}
    for n, kw in rows.items():
        (tmp_path / n.lower()).mkdir()
        Config(**kw).save(tmp_path / n.lower() / "config.json")
        by[n] = dict(name=n)
    got = [(m, ep, r["name"]) for m, ep, r in compare.budget_points(tmp_path, by)]
    assert got == [("SeLa", 60, "A"), ("k-means in the loop", 30, "B")]
