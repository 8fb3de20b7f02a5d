"""From an existing Lightning classifier to a meta-learner: subclass a learner, keep your backbone, loss and Trainer.

    python examples/subclass_a_learner.py --root ../shared/data/omniglot --max-steps 2000 --out runs/meta

A Lightning project that trains a character classifier has a backbone (``CharacterCNN`` below), a loss it likes
(label smoothing) and a ``Trainer`` with its own callbacks and logger. To meta-train it for 5-way 1-shot
classification of new characters, it subclasses :class:`~lightning_meta.learners.MAML`: the backbone goes in
unchanged (its last layer sized to the number of ways), the loss goes into ``support_loss`` (inner loop) and
``query_loss`` (outer loop), and the same ``Trainer`` runs it, fed by an ``EpisodicDataModule``.
Nothing else of lightning-meta is needed. At the end the script prints the test accuracy over held-out characters
with its 95% confidence interval, and the CSV logger holds the curves.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta import Episode, InnerLoop
from lightning_meta.data import EpisodicDataModule
from lightning_meta.data.omniglot import Omniglot
from lightning_meta.learners import MAML


class CharacterCNN(nn.Module):
    """The project's own backbone, as it was: three conv blocks and a linear classifier."""

    def __init__(self, classes: int) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            # batch statistics in the inner loop: BatchNorm without running statistics
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, track_running_stats=False),
                                 nn.ReLU(), nn.MaxPool2d(2))  # fmt: skip

        self.features = nn.Sequential(block(1, 32), block(32, 32), block(32, 32), nn.Flatten())
        self.classifier = nn.Linear(32 * 3 * 3, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SmoothedMAML(MAML):
    """MAML with the project's label-smoothed cross-entropy in both loops."""

    def __init__(self, *, ways: int, smoothing: float = 0.1, inner_lr: float = 0.4, lr: float = 1e-3) -> None:
        super().__init__(CharacterCNN(ways), inner_loop=InnerLoop(lr=inner_lr, steps=1, eval_steps=3), lr=lr)
        self.smoothing = smoothing

    @override
    def support_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=self.smoothing)

    @override
    def query_loss(self, predictions: Tensor, episode: Episode) -> Tensor:
        flat = predictions.reshape(-1, predictions.shape[-1])
        return F.cross_entropy(flat, episode.query_y.reshape(-1), label_smoothing=self.smoothing)

    @override
    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache (default: beside the data)")
    parser.add_argument("--out", type=Path, default=Path("runs/subclass_a_learner"))
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--tasks-per-batch", type=int, default=16)
    parser.add_argument("--eval-episodes", type=int, default=200)
    args = parser.parse_args(argv)

    L.seed_everything(0)
    ways = 5
    data = EpisodicDataModule(
        Omniglot(args.root, "train", cache_dir=args.cache_dir),
        Omniglot(args.root, "val", cache_dir=args.cache_dir),
        Omniglot(args.root, "test", cache_dir=args.cache_dir),
        ways=ways,
        shots=1,
        queries=15,
        tasks_per_batch=args.tasks_per_batch,
        train_episodes=args.tasks_per_batch * min(args.max_steps, 500),
        eval_episodes=args.eval_episodes,
    )
    learner = SmoothedMAML(ways=ways)
    trainer = L.Trainer(  # the project's own Trainer, callbacks and logger
        accelerator="auto",
        max_steps=args.max_steps,
        log_every_n_steps=max(1, min(50, args.max_steps // 4)),
        logger=CSVLogger(args.out, name="meta"),
        callbacks=[
            ModelCheckpoint(monitor="val/acc", mode="max", save_last=True),
            EarlyStopping(monitor="val/acc", mode="max", patience=5),
            LearningRateMonitor(logging_interval="step"),
        ],
        enable_progress_bar=False,
    )
    trainer.fit(learner, data)
    results = trainer.test(learner, data, ckpt_path="best", verbose=False)[0]
    print(f"5-way 1-shot test accuracy: {results['test/acc']:.3f} ± {results['test/acc_ci95']:.3f}")
    return results


if __name__ == "__main__":
    main()
