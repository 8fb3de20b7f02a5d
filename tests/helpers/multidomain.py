"""Synthetic domains for the multi-domain tests, a recorder of the episodes a Trainer sees, and a DDP script.

Each example's pixels encode where it came from: channel 0 of a colour domain (or the only channel of a grey one)
is ``(domain + 1) / 8`` plus ``class / 1000``, so a test can recover the domain and class of any input after the
family's channel repetition (the resize keeps constant images constant).

``python -m tests.helpers.multidomain --devices 2 --out DIR`` fits the recorder for 2 epochs of variable episodes and
writes ``DIR/rank{r}.json``: per step, the epoch, the task id, the domain, the ways and a checksum of the data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import TensorDataset

from lightning_meta import Episode
from lightning_meta.data import EpisodicDataModule, MultiDomainTasks, VariableEpisodes
from lightning_meta.distributed import end_process_group
from lightning_meta.learners import ProtoNet
from lightning_meta.models import Conv4


def constant_images(domain: int, n_classes: int, per_class: list[int] | int, channels: int, size: int) -> TensorDataset:
    """Class ``c`` of domain ``d``: constant images of value ``(d + 1) / 8 + c / 1000`` in every channel."""
    counts = [per_class] * n_classes if isinstance(per_class, int) else per_class
    labels = torch.repeat_interleave(torch.arange(n_classes), torch.tensor(counts))
    values = (domain + 1) / 8 + labels.double() / 1000
    x = values.view(-1, 1, 1, 1).expand(-1, channels, size, size).float().contiguous()
    dataset = TensorDataset(x, labels)
    dataset.targets = labels  # labels without a pass over the data
    return dataset


def decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(domain, class) of each input ``[n, C, S, S]`` made by :func:`constant_images`."""
    value = x[:, 0, 0, 0].double()
    domain = torch.floor(value * 8 + 1e-3).long() - 1
    return domain, torch.round((value - (domain + 1) / 8) * 1000).long()


def domains(split: str = "train") -> dict[str, TensorDataset]:
    """Three domains: grey 8px (30 classes of 20, as Omniglot), colour 12px (12 unequal classes), colour 8px."""
    offset = 0 if split == "train" else 3
    return {
        "grey": constant_images(0 + offset, 30, 20, 1, 8),
        "colour": constant_images(1 + offset, 12, [6 + 3 * c for c in range(12)], 3, 12),
        "small": constant_images(2 + offset, 8, 40, 3, 8),
    }


def variable_datamodule(
    *, seed: int = 3, num_workers: int = 0, train_episodes: int = 12, sizes: VariableEpisodes | None = None
) -> EpisodicDataModule:
    sizes = sizes or VariableEpisodes(max_ways=10, max_support=60)
    return EpisodicDataModule(
        MultiDomainTasks(domains(), variable=sizes, image_size=16),
        MultiDomainTasks(domains("val"), variable=sizes, image_size=16, split="val"),
        tasks_per_batch=1, eval_tasks_per_batch=1, train_episodes=train_episodes, eval_episodes=6, seed=seed,
        num_workers=num_workers,
    )  # fmt: skip


def fingerprint(batch: Episode) -> dict:
    return {
        "ids": batch.task_ids.tolist(),
        "domains": batch.domains.tolist(),
        "ways": batch.ways,
        "support": list(batch.support_x.shape),
        "sum": round(float(batch.support_x.double().sum() + batch.query_x.double().sum()), 6),
    }


class Recorder(L.LightningModule):
    """Records the fingerprint of every training meta-batch; its loss moves one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.seen: list[dict] = []

    def training_step(self, batch: Episode, batch_idx: int) -> torch.Tensor:
        self.seen.append({"epoch": self.current_epoch, **fingerprint(batch)})
        return (self.weight * batch.query_x.mean()).pow(2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--validate", action="store_true", help="write ProtoNet's per-domain validation metrics")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.validate:
        torch.manual_seed(0)
        learner = ProtoNet(Conv4(in_channels=3, hidden=8, image_size=16))
        trainer = L.Trainer(
            accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto", logger=False,
            enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        (metrics,) = trainer.validate(learner, variable_datamodule(), verbose=False)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"validate{args.devices}-rank{trainer.global_rank}.json").write_text(json.dumps(metrics))
        return
    model = Recorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto", max_epochs=2,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, variable_datamodule())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(model.seen))


if __name__ == "__main__":
    main()
    end_process_group()  # without it, gloo can abort the process at exit (SIGABRT) after the work is done
