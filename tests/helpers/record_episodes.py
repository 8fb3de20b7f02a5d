"""A tiny learner that records which episodes it trains on, and a script that fits it (used for DDP tests).

Run as ``python -m tests.helpers.record_episodes --devices 2 --out DIR``: every rank writes ``DIR/rank{r}.json``
with one entry per training step: the epoch, the global task ids and a checksum of each task's data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from lightning_meta import Episode
from lightning_meta.data import EpisodicDataModule, Sinusoid
from lightning_meta.distributed import end_process_group


class EpisodeRecorder(L.LightningModule):
    """Fits a line to each meta-batch's query set and records the episodes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.line = torch.nn.Linear(1, 1)
        self.seen: list[dict] = []

    def training_step(self, batch: Episode, batch_idx: int) -> torch.Tensor:
        self.seen.append(
            {
                "epoch": self.current_epoch,
                "ids": batch.task_ids.tolist(),
                "sums": [round(float(t.support_x.sum() + t.query_y.sum()), 6) for t in batch],
            }
        )
        return F.mse_loss(self.line(batch.query_x), batch.query_y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def sinusoid_datamodule(tasks_per_batch: int, num_workers: int = 0, train_episodes: int = 24) -> EpisodicDataModule:
    return EpisodicDataModule(
        Sinusoid(), shots=5, queries=5, tasks_per_batch=tasks_per_batch, train_episodes=train_episodes, seed=7,
        num_workers=num_workers,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--tasks-per-batch", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model = EpisodeRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, sinusoid_datamodule(args.tasks_per_batch))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(model.seen))


if __name__ == "__main__":
    main()
    end_process_group()  # without it, gloo can abort the process at exit (SIGABRT) after the work is done
