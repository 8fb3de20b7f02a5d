"""Fit every learner in a subprocess that can hang to be killed, or resume, or run uninterrupted (tests/test_resume.py).

``python -m tests.helpers.killed_run --out DIR --learner NAME [--hang-at-step K] [--resume]``

Each learner fits 14 meta-batches of a 10-meta-batch epoch (so the run crosses an epoch boundary) with an outer-rate
scheduler, a checkpoint every 2 steps (``save_last=True``) and a stateful callback. ``--hang-at-step K`` stops at the
start of step K+1, once the checkpoint of step K - 1 or K is on disk, writes ``DIR/NAME/hanging`` and sleeps until it
is killed. ``--die-while-saving-step K`` SIGKILLs the process half-way through writing the checkpoint of step K.
``--resume`` continues from ``ckpt_path="last"``. At the end, ``DIR/NAME/final.pt`` holds the weights,
the optimizer and scheduler states, the callback's state and the global step.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import Any

import fsspec.implementations.local
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

from lightning_meta import InnerLoop
from lightning_meta.inner_optim import Adam
from lightning_meta.learners import MAML, MetaLearner, Reptile
from lightning_meta.models import MLP
from tests.helpers.ddp_one_step import LEARNERS, datamodule
from tests.helpers.trainers import quiet_trainer
from tests.helpers.user_models import WideSineMAML, sequential_regressor

#: Every learner, plus the two ways users bring their own model (no config recorded: nothing to rebuild from).
RESUMED: dict[str, Any] = {
    **LEARNERS,
    "maml_sequential": lambda: MAML(
        sequential_regressor(), inner_loop=InnerLoop(lr=0.05, steps=2, vectorize="vmap"), lr=0.01
    ),
    "user_subclass": lambda: WideSineMAML(width=12),
    # the inner Adam's state is carried in buffers from step to step: a resumed run must continue with the same one
    "reptile_carried": lambda: Reptile(
        MLP(hidden=(16,)),
        inner_loop=InnerLoop(lr=0.01, steps=2, optimizer=Adam(betas=(0.0, 0.999)), vectorize="vmap"),
        lr=0.5,
        carry_inner_state=True,
    ),
}

STEPS = 14
TASKS_PER_BATCH = 2
EPISODES_PER_EPOCH = 20  # 10 meta-batches


class SeenTasks(Callback):
    """Stateful: counts the meta-batches it has seen and sums their first support input (state not derivable)."""

    def __init__(self) -> None:
        self.batches = 0
        self.checksum = 0.0

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        self.batches += 1
        self.checksum += float(batch.support_x.double().sum())

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "checksum": self.checksum}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = state_dict["batches"]
        self.checksum = state_dict["checksum"]


class HangAfterCheckpoint(Callback):
    """At the start of step ``step + 1``, with a checkpoint of a step <= ``step`` on disk: say so, then wait."""

    def __init__(self, step: int, folder: Path) -> None:
        self.step = step
        self.folder = folder

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        if trainer.global_step == self.step and (self.folder / "checkpoints" / "last.ckpt").exists():
            (self.folder / "hanging").write_text(str(trainer.global_step))
            time.sleep(600)


class DieWhileSaving(Callback):
    """Make the next file write after step ``step`` stop half-way and kill the process (a crash while saving)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if trainer.global_step != self.step:
            return
        write = fsspec.implementations.local.LocalFileOpener.write

        def write_half_then_die(opener: Any, data: bytes) -> int:
            write(opener, data[: len(data) // 2])
            opener.flush()
            os.kill(os.getpid(), signal.SIGKILL)
            return 0  # pragma: no cover

        fsspec.implementations.local.LocalFileOpener.write = write_half_then_die  # type: ignore[method-assign]


def with_scheduler(learner: L.LightningModule) -> L.LightningModule:
    """The learner's own optimizer plus a step-wise exponential decay of the outer rate."""
    configure = learner.configure_optimizers

    def configure_optimizers() -> dict[str, Any]:
        optimizer = configure()
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    learner.configure_optimizers = configure_optimizers  # type: ignore[method-assign]
    return learner


def run(name: str, folder: Path, hang_at_step: int | None, die_while_saving_step: int | None, resume: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    learner: MetaLearner = with_scheduler(RESUMED[name]())
    seen = SeenTasks()
    callbacks: list[Callback] = [seen, ModelCheckpoint(dirpath=folder / "checkpoints", every_n_train_steps=2,
                                                       save_last=True, save_top_k=-1)]  # fmt: skip
    if hang_at_step is not None:
        callbacks.append(HangAfterCheckpoint(hang_at_step, folder))
    if die_while_saving_step is not None:
        callbacks.append(DieWhileSaving(die_while_saving_step))
    trainer = quiet_trainer(max_steps=STEPS, callbacks=callbacks, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(
        learner,
        datamodule(name, TASKS_PER_BATCH, train_episodes=EPISODES_PER_EPOCH),
        ckpt_path="last" if resume else None,
    )
    torch.save(
        {
            "weights": learner.state_dict(),
            "optimizer": trainer.optimizers[0].state_dict(),
            "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "callback": seen.state_dict(),
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
        },
        folder / "final.pt",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--learner", choices=list(RESUMED), nargs="+", required=True)
    parser.add_argument("--hang-at-step", type=int)
    parser.add_argument("--die-while-saving-step", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.learner:
        run(name, args.out / name, args.hang_at_step, args.die_while_saving_step, args.resume)


if __name__ == "__main__":
    main()
