"""The SeLa loop: cross-entropy on the current labels (step 1), re-labelling at scheduled
iterations (step 2), checkpoint/resume, and the final evaluation.

A run is a pure function of its config: data order and augmentation come from (seed, epoch,
batch), the initial labels and weights from the seed. A checkpoint is written after every label
step and at the end of every epoch; a resumed run continues at the exact batch where the
checkpoint was taken and ends with the same labels and weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import labels as L
from .config import Config
from .data import Batches, load_data
from .evaluate import clustering_metrics, evaluate_features
from .models import build_model

log = logging.getLogger("sela")


class StopRequested(Exception):
    """Raised by the ``stop_after_label_step`` hook, after the checkpoint is safely written."""


# ------------------------------------------------------------------------------------------------
# process setup


def _setup_distributed(cfg: Config) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if cfg.device == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        dev = cfg.device
    if world > 1:
        if dev.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            dev = f"cuda:{local}"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.startswith("cuda") else "gloo")
    return rank, world, torch.device(dev)


def _setup_logging(out: Path, rank: int) -> None:
    root = logging.getLogger()
    if rank != 0:
        root.setLevel(logging.WARNING)
        return
    root.setLevel(logging.INFO)
    # the solver logs every convergence check at INFO; the label step logs its own summary line
    logging.getLogger("sinklabel").setLevel(logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    for h in list(root.handlers):
        if getattr(h, "_sela", False):
            root.removeHandler(h)
    for h in (logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stderr)):
        h.setFormatter(fmt)
        h._sela = True  # type: ignore[attr-defined]
        root.addHandler(h)


def _gather_rows(local: np.ndarray, local_idx: np.ndarray, n: int, world: int) -> np.ndarray | None:
    """Rank 0 gets the full (n, ...) array assembled from every rank's rows; others get None."""
    if world == 1:
        return local
    parts = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object((local, local_idx), parts, dst=0)
    if parts is None:
        return None
    full = np.empty((n,) + local.shape[1:], dtype=local.dtype)
    for arr, idx in parts:
        full[idx] = arr
    return full


def _broadcast(obj, world: int):
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _has_distributed_solve() -> bool:
    try:
        from sinklabel import distributed  # noqa: F401

        return True
    except ImportError:
        return False


# ------------------------------------------------------------------------------------------------
# the run


class Trainer:
    def __init__(self, cfg: Config):
        self._t0 = time.perf_counter()
        cfg.validate()
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world, self.device = _setup_distributed(cfg)
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        _setup_logging(self.out, self.rank)
        if self.rank == 0:
            cfg.save(self.out / "config.json")
        self.data = load_data(cfg)
        self.n = len(self.data.train)
        sup = cfg.mode == "supervised"
        self.ks = (self.data.num_classes,) if sup else tuple(cfg.num_clusters)
        if cfg.mode == "fixed":
            fixed, self.ks = L.read_labels(cfg.labels_from)
            if fixed.shape[1] != self.n:
                raise ValueError(
                    f"labels_from has {fixed.shape[1]} labels per head; the training split {self.n}"
                )
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.data.image_size, self.ks).to(self.device)
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.opt = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.batches = Batches(self.data, cfg, self.device, self.rank, self.world)
        self.iters_per_epoch = self.batches.num_batches(self.n)
        self.total_iters = cfg.epochs * self.iters_per_epoch
        steps = (
            [] if cfg.mode in ("supervised", "fixed") else L.label_schedule(cfg.label_steps, self.total_iters)
        )
        self.schedule = sorted(set(steps))
        if len(self.schedule) < len(steps):
            log.info("%d label steps fall on %d distinct iterations", len(steps), len(self.schedule))
        self.use_dist_solve = self.world > 1 and cfg.mode == "sela" and _has_distributed_solve()

        # the state a checkpoint holds
        self.iteration = 0
        self.next_step = 0
        self.solver_state = None  # previous sinklabel Result (warm start)
        self.history: list[dict] = []
        self.epoch_loss: list[float] = []
        self.running = [0.0, 0]
        # training seconds of earlier (killed) segments of this run, from the checkpoint: a
        # resumed run reports the time it took in all, less the work lost at the kill
        self.seconds_before = 0.0
        if sup:
            self.labels = self.data.train.targets[None].copy()
            method = "supervised"
        elif cfg.mode == "fixed":
            self.labels, method = fixed, "fixed"
        else:
            self.labels, method = L.random_balanced_labels(self.n, self.ks, cfg.seed), "random"
        if not self._maybe_resume() and self.rank == 0:
            self._export(self.out / "labels" / "init.npz", -1, method)

    # ---- checkpoints ---------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _state(self) -> dict:
        return {
            "fingerprint": self.cfg.training_fingerprint(),
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "iteration": self.iteration,
            "next_step": self.next_step,
            "labels": self.labels,
            "solver_state": self.solver_state,
            "history": self.history,
            "epoch_loss": self.epoch_loss,
            "running": self.running,
            "seconds": self.seconds(),
        }

    def seconds(self) -> float:
        """Seconds spent on this run so far, summed over its resumed segments."""
        return self.seconds_before + time.perf_counter() - self._t0

    def save_checkpoint(self) -> None:
        if self.rank == 0:
            tmp = self.ckpt_path.with_suffix(".tmp")
            torch.save(self._state(), tmp)
            tmp.replace(self.ckpt_path)  # atomic: a kill never leaves half a checkpoint
        if self.world > 1:
            dist.barrier()

    def _maybe_resume(self) -> bool:
        if not (self.cfg.resume and self.ckpt_path.exists()):
            return False
        st = torch.load(self.ckpt_path, map_location=self.device, weights_only=False)
        old, new = st["fingerprint"], self.cfg.training_fingerprint()
        if old != new:
            diff = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
            raise RuntimeError(
                f"{self.ckpt_path} was written with a different config ({sorted(diff)}); "
                "use another out_dir or --no-resume"
            )
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.iteration, self.next_step = st["iteration"], st["next_step"]
        self.labels, self.solver_state = st["labels"], st["solver_state"]
        self.history, self.epoch_loss, self.running = st["history"], st["epoch_loss"], st["running"]
        self.seconds_before = st.get("seconds", 0.0)
        if self.use_dist_solve:
            self.solver_state = None  # local results are per rank and not checkpointed
        log.info(
            "resumed from %s at iteration %d/%d, label step %d",
            self.ckpt_path,
            self.iteration,
            self.total_iters,
            self.next_step,
        )
        return True

    def _export(self, path: Path, step: int, method: str) -> None:
        L.export_labels(
            path,
            self.labels,
            num_clusters=self.ks,
            step=step,
            iteration=self.iteration,
            fraction=self.iteration / max(self.total_iters, 1),
            method=method,
            targets=self.data.train.targets,
        )

    # ---- step 2 --------------------------------------------------------------------------------
    def label_step(self) -> None:
        cfg, t0 = self.cfg, time.perf_counter()
        shard = self.world > 1
        heads, emb, _, idx = L.score(self.model, self.batches, self.data.train, shard=shard)
        info: dict = {}
        if cfg.mode == "sela" and self.use_dist_solve:
            local, self.solver_state = L.distributed_sinkhorn_step(heads, cfg, self.solver_state)
            new = _gather_rows(local.T, idx, self.n, self.world)
            new = _broadcast(None if new is None else new.T, self.world)
        elif cfg.mode == "sela":
            full = [_gather_rows(h, idx, self.n, self.world) for h in heads]
            new = None
            if self.rank == 0:
                new, self.solver_state = L.sinkhorn_step(full, cfg, self.solver_state)
                info = {
                    "solver_iters": [int(h.n_iter) for h in self.solver_state.heads],
                    "solver_time": float(self.solver_state.wall_time),
                    "objective": [float(h.objective) for h in self.solver_state.heads],
                }
            new = _broadcast(new, self.world)
        else:  # kmeans
            full = _gather_rows(emb, idx, self.n, self.world)
            new = None
            if self.rank == 0:
                new = L.kmeans_step(full, self.ks, cfg.seed * 1000 + self.next_step)
            new = _broadcast(new, self.world)
            if cfg.reset_heads_after_kmeans:
                self.model.reset_heads(cfg.seed * 1000 + self.next_step)
        prev, self.labels = self.labels, new
        y = self.data.train.targets
        rec = {
            "step": self.next_step,
            "iteration": self.iteration,
            "epoch": self.iteration / self.iters_per_epoch,
            "nmi_gt": [clustering_metrics(y, lab)["nmi"] for lab in new],
            "nmi_prev": [clustering_metrics(p, lab)["nmi"] for p, lab in zip(prev, new)],
            "size_min": [int(np.bincount(lab, minlength=k).min()) for lab, k in zip(new, self.ks)],
            "size_max": [int(np.bincount(lab, minlength=k).max()) for lab, k in zip(new, self.ks)],
            "seconds": time.perf_counter() - t0,
            **info,
        }
        self.history.append(rec)
        log.info(
            "label step %d at iteration %d (epoch %.2f): NMI vs truth %s, vs previous %s, "
            "sizes %s..%s, %.1fs",
            rec["step"],
            rec["iteration"],
            rec["epoch"],
            _fmt(rec["nmi_gt"]),
            _fmt(rec["nmi_prev"]),
            rec["size_min"],
            rec["size_max"],
            rec["seconds"],
        )
        if self.rank == 0:
            name = f"step_{self.next_step:03d}.npz"
            self._export(self.out / "labels" / name, self.next_step, cfg.mode)
        self.next_step += 1

    # ---- step 1 --------------------------------------------------------------------------------
    def lr_at(self, it: int) -> float:
        drops = sum(it >= f * self.total_iters for f in self.cfg.lr_drops)
        return self.cfg.lr * 0.1**drops

    def train(self) -> None:
        cfg = self.cfg
        bar = tqdm(
            total=self.total_iters,
            initial=self.iteration,
            desc=f"{cfg.mode}",
            disable=not (cfg.progress and self.rank == 0),
            dynamic_ncols=True,
            leave=False,
        )
        labels_t = torch.from_numpy(self.labels).to(self.device)
        while True:
            while self.next_step < len(self.schedule) and self.schedule[self.next_step] <= self.iteration:
                self.label_step()
                labels_t = torch.from_numpy(self.labels).to(self.device)
                self.save_checkpoint()
                if self.next_step - 1 == cfg.stop_after_label_step:
                    bar.close()
                    raise StopRequested(f"stopped after label step {self.next_step - 1}")
            if self.iteration >= self.total_iters:
                break
            epoch, start = divmod(self.iteration, self.iters_per_epoch)
            self.model.train()
            for b, x, idx in self.batches.train_epoch(self.data.train, epoch, start):
                for g in self.opt.param_groups:
                    g["lr"] = self.lr_at(self.iteration)
                torch.manual_seed(cfg.seed * 7919 + self.iteration)  # anything stochastic in the net
                outs = self.net(x)
                y = labels_t[:, idx.to(self.device)]
                loss = sum(F.cross_entropy(o, y[t]) for t, o in enumerate(outs)) / len(outs)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                self.running[0] += float(loss.detach())
                self.running[1] += 1
                self.iteration += 1
                bar.update(1)
                if b == self.iters_per_epoch - 1:
                    self.epoch_loss.append(self.running[0] / max(self.running[1], 1))
                    self.running = [0.0, 0]
                    log.info(
                        "epoch %d/%d  loss %.4f  lr %.4g",
                        epoch + 1,
                        cfg.epochs,
                        self.epoch_loss[-1],
                        self.lr_at(self.iteration - 1),
                    )
                    self.save_checkpoint()
                elif self.next_step < len(self.schedule) and self.schedule[self.next_step] <= self.iteration:
                    break  # a label step is due mid-epoch
        bar.close()

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self) -> dict:
        cfg, data = self.cfg, self.data
        feats, preds = {}, {}
        for s in ("train", "val", "test"):
            heads, emb, pooled, _ = L.score(self.model, self.batches, getattr(data, s))
            feats[s] = (pooled, emb)
            preds[s] = [h.argmax(1) for h in heads]
        res = {
            "name": cfg.extra.get("name", cfg.mode),
            "train_images": self.n,
            "num_clusters": list(self.ks),
        }
        res.update(evaluate_features(feats, data, cfg))
        # clustering quality of each head's predictions on the held-out test split, and of the
        # final self-labels on the training split
        res["test_heads"] = [clustering_metrics(data.test.targets, p) for p in preds["test"]]
        res["train_labels"] = [clustering_metrics(data.train.targets, lab) for lab in self.labels]
        # the summary averages the heads with as many clusters as classes (Hungarian accuracy is
        # one-to-one), or every head when none has
        same = [t for t, k in enumerate(self.ks) if k == data.num_classes]
        res["metric_heads"] = same or list(range(len(self.ks)))
        for key in ("nmi", "anmi", "ari", "acc"):
            res[key] = float(np.mean([res["test_heads"][t][key] for t in res["metric_heads"]]))
        res["history"] = self.history
        res["epoch_loss"] = self.epoch_loss
        return res


def _fmt(xs) -> str:
    return "[" + " ".join(f"{x:.3f}" for x in xs) + "]"


def run(cfg: Config) -> dict | None:
    """Train (or resume) and evaluate; writes ``metrics.json``, ``labels/final.npz`` and plots
    into ``cfg.out_dir``. Returns the metrics on rank 0 (None on other ranks)."""
    tr = Trainer(cfg)
    tr.train()
    t_train = tr.seconds()
    if tr.rank != 0:
        if tr.world > 1:
            dist.barrier()
        return None
    tr._export(tr.out / "labels" / "final.npz", tr.next_step - 1, cfg.mode)
    res = tr.evaluate()
    res["seconds_train"] = t_train  # summed over resumed segments (see Trainer.seconds)
    res["seconds_total"] = tr.seconds()
    (tr.out / "metrics.json").write_text(json.dumps(res, indent=1))
    from .plots import plot_run

    plot_run(res, tr.labels, tr.ks, tr.out)
    log.info(
        "kNN test %.3f | probe test %.3f | NMI %.3f aNMI %.3f ARI %.3f acc %.3f | %.0fs",
        res["knn_test"],
        res["probe_test"],
        res["nmi"],
        res["anmi"],
        res["ari"],
        res["acc"],
        res["seconds_total"],
    )
    if tr.world > 1:
        dist.barrier()
    return res
