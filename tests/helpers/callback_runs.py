"""Tiny fits for the callback tests: data, learners, a quiet trainer, logged values read back, hand references."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from torch import nn

from lightning_meta import Episode, InnerLoop
from lightning_meta.data import EpisodicDataModule, Sinusoid
from lightning_meta.learners import MAML, GradientLearner, ProtoNet
from lightning_meta.models import MLP
from tests.helpers import trainers
from tests.helpers.synthetic import blobs
from tests.helpers.synthetic_images import glyphs

WAYS = 5


def image_datamodule(**kwargs) -> EpisodicDataModule:
    """5-way episodes of 16x16 glyph images: 30 training classes, 10 validation and 10 test classes of 20 images."""
    defaults = dict(ways=WAYS, shots=1, queries=3, tasks_per_batch=4, train_episodes=16, eval_episodes=10,
                    eval_tasks_per_batch=4)  # fmt: skip
    return EpisodicDataModule(glyphs(30, 20, seed=0), glyphs(10, 20, seed=1), glyphs(10, 20, seed=2),
                              **{**defaults, **kwargs})  # fmt: skip


def blobs_datamodule(**kwargs) -> EpisodicDataModule:
    """5-way episodes of 16-dimensional Gaussian blobs (not images)."""
    defaults = dict(ways=WAYS, shots=1, queries=3, tasks_per_batch=4, train_episodes=16, eval_episodes=10)
    return EpisodicDataModule(blobs(30, 20, seed=0), blobs(10, 20, seed=1), blobs(10, 20, seed=2),
                              **{**defaults, **kwargs})  # fmt: skip


def sinusoid_datamodule(**kwargs) -> EpisodicDataModule:
    defaults = dict(shots=5, queries=5, tasks_per_batch=4, train_episodes=16, eval_episodes=8)
    return EpisodicDataModule(Sinusoid(), Sinusoid(), Sinusoid(), **{**defaults, **kwargs})


def image_maml(*, dropout: float = 0.0, **inner_loop) -> MAML:
    """A small MAML on 16x16 images; keywords are InnerLoop settings over lr 0.5, one step, vmap."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, WAYS))
    return MAML(model, inner_loop=InnerLoop(**{"lr": 0.5, "steps": 1, "vectorize": "vmap", **inner_loop}), lr=1e-2)


def image_protonet(*, dropout: float = 0.0) -> ProtoNet:
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(32, 16))  # fmt: skip
    return ProtoNet(backbone, lr=1e-2)


def sinusoid_maml(*, learn_inner_lr: bool = False, **inner_loop) -> MAML:
    """A small sinusoid MAML; keywords are InnerLoop settings over lr 0.01, one step, vmap."""
    settings = {"lr": 0.01, "steps": 1, "vectorize": "vmap", **inner_loop}
    return MAML(MLP(hidden=(16,)), inner_loop=InnerLoop(**settings), learn_inner_lr=learn_inner_lr, lr=1e-2)


def quiet_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    """The tests' quiet Trainer for one epoch in ``tmp_path``."""
    return trainers.quiet_trainer(**{"default_root_dir": tmp_path, "devices": 1, "max_epochs": 1, **kwargs})


def read_metrics(logger_dir: Path) -> list[dict[str, str]]:
    """The rows of a CSVLogger's ``metrics.csv``."""
    with open(Path(logger_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def logged(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    """``(epoch, value)`` of every row that holds ``key``."""
    return [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]


def reference_step_scores(learner: GradientLearner, loader, steps) -> dict[int, float]:
    """Mean query accuracy (or MSE) after each number of first-order steps, one inner loop per number of steps."""
    learner.eval()
    scores: dict[int, list[float]] = {k: [] for k in steps}
    for batch in loader:
        for k in steps:
            with torch.enable_grad():
                params = learner.inner_params() if k == 0 else learner.adapt_params(batch, steps=k, first_order=True)
            with torch.no_grad():
                predictions = learner.predict(batch.query_x, params)
            if batch.is_classification:
                scores[k] += (predictions.argmax(-1) == batch.query_y).double().mean(1).tolist()
            else:
                scores[k] += (predictions - batch.query_y).pow(2).flatten(1).mean(1).double().tolist()
    return {k: sum(v) / len(v) for k, v in scores.items()}


def first_k_per_class(task: Episode, k: int) -> Episode:
    """One unbatched task with the first ``k`` support examples of each class, picked by a plain loop."""
    keep = []
    for c in range(task.ways):
        keep += [i for i in range(len(task.support_y)) if int(task.support_y[i]) == c][:k]
    return Episode(task.support_x[keep], task.support_y[keep], task.query_x, task.query_y, ways=task.ways)


class ScheduleRecorder(L.Callback):
    """``(epoch, first_order, inner_steps)`` of the learner at every training step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, pl_module.inner_loop.first_order, pl_module.inner_loop.steps))


def fit_interrupted_and_resumed(tmp_path: Path, make_callbacks, *, stop_step: int, max_epochs: int = 4):
    """Fit sinusoid MAML (4 steps per epoch) once straight through and once stopped at ``stop_step`` and resumed
    from that checkpoint, with new callbacks and a new learner; returns both runs' records and final weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def trainer(**kwargs) -> L.Trainer:
        return quiet_trainer(tmp_path, max_epochs=max_epochs, **kwargs)

    torch.manual_seed(0)
    full, learner = ScheduleRecorder(), sinusoid_maml()
    trainer(callbacks=[*make_callbacks(), full]).fit(learner, sinusoid_datamodule())

    torch.manual_seed(0)
    first = ScheduleRecorder()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=stop_step, save_top_k=-1)
    trainer(max_steps=stop_step, enable_checkpointing=True, callbacks=[*make_callbacks(), first, checkpoint]).fit(
        sinusoid_maml(), sinusoid_datamodule()
    )
    (path,) = (tmp_path / "ckpt").glob(f"*step={stop_step}.ckpt")
    second, resumed = ScheduleRecorder(), sinusoid_maml()
    trainer(callbacks=[*make_callbacks(), second]).fit(resumed, sinusoid_datamodule(), ckpt_path=path)
    assert len(first.seen) == stop_step
    return full.seen, first.seen + second.seen, learner.state_dict(), resumed.state_dict()
