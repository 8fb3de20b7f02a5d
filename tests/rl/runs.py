"""Subprocess entry points of the RL integration tests (tests/rl/test_integration.py).

``python -m tests.rl.runs ddp --devices D --tasks-per-batch T --out DIR``: one optimizer step of MAMLPolicyGradient
under ``Trainer(strategy="ddp", devices=D)``; rank 0 saves ``{name: (parameter, gradient)}`` to ``DIR/step.pt`` and
every rank the task ids and goals it trained on to ``DIR/tasks.rank{R}.pt``.

``python -m tests.rl.runs fit --out DIR [--hang-at-step K] [--resume]``: 14 meta-steps of a 10-meta-batch epoch with
a checkpoint every 2 steps; ``--hang-at-step`` waits (to be SIGKILLed) once the checkpoint of step K - 1 or K is on
disk; ``DIR/final.pt`` holds the weights, the optimizer state and the global step.

``python -m tests.rl.runs curve --devices D --out DIR``: one epoch (2 meta-steps per rank) with
``AdaptationCurve(steps=CURVE_STEPS, episodes=CURVE_TASKS)``; every process records the validation tasks it evaluated
(``DIR/curve-tasks.rank{R}.pt``) and the PNGs it wrote (``DIR/writes-rank{R}.txt``); rank 0 saves the weights, the
logged ``adaptation/return_{k}_steps`` and the curve's history to ``DIR/curve.pt``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from PIL import Image
from typing_extensions import override

from lightning_meta.callbacks import AdaptationCurve
from lightning_meta.distributed import end_process_group
from lightning_meta.rl import GaussianMLPPolicy, MAMLPolicyGradient, Navigation2D, TaskDataModule
from tests.helpers.trainers import quiet_trainer

#: The AdaptationCurve settings of ``curve`` (5 tasks are dealt 3 and 2 to two ranks).
CURVE_STEPS = (0, 1)
CURVE_TASKS = 5


def tiny_learner() -> MAMLPolicyGradient:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(observation_size=2, action_size=2, hidden=[16])
    return MAMLPolicyGradient(policy, inner_lr=0.1, trajectories_per_task=4, eval_inner_steps=1, lr=0.01)


def tiny_datamodule(tasks_per_batch: int, train_tasks: int) -> TaskDataModule:
    return TaskDataModule(Navigation2D(horizon=20), tasks_per_batch=tasks_per_batch, train_tasks=train_tasks,
                          eval_tasks=4, seed=7)  # fmt: skip


class RecordTasks(Callback):
    def __init__(self) -> None:
        self.ids: list[torch.Tensor] = []
        self.goals: list[torch.Tensor] = []

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        self.ids.append(batch.task_ids.clone())
        self.goals.append(batch.params["goal"].clone())


class HangAfterCheckpoint(Callback):
    def __init__(self, step: int, folder: Path) -> None:
        self.step = step
        self.folder = folder

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        if trainer.global_step == self.step and (self.folder / "checkpoints" / "last.ckpt").exists():
            (self.folder / "hanging").write_text(str(trainer.global_step))
            time.sleep(600)


def ddp_step(devices: int, tasks_per_batch: int, out: Path) -> None:
    learner = tiny_learner()
    record = RecordTasks()
    trainer = quiet_trainer(devices=devices, max_steps=1, callbacks=[record], limit_val_batches=0)
    trainer.fit(learner, tiny_datamodule(tasks_per_batch, train_tasks=8))
    torch.save({"ids": record.ids, "goals": record.goals}, out / f"tasks.rank{trainer.global_rank}.pt")
    if trainer.global_rank == 0:
        torch.save({n: (p.detach().clone(), p.grad.clone()) for n, p in learner.named_parameters()}, out / "step.pt")


def fit(out: Path, hang_at_step: int | None, resume: bool) -> None:
    learner = tiny_learner()
    callbacks: list[Callback] = [ModelCheckpoint(dirpath=out / "checkpoints", every_n_train_steps=2, save_last=True,
                                                 save_top_k=-1)]  # fmt: skip
    if hang_at_step is not None:
        callbacks.append(HangAfterCheckpoint(hang_at_step, out))
    trainer = quiet_trainer(max_steps=14, callbacks=callbacks, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(learner, tiny_datamodule(2, train_tasks=20), ckpt_path="last" if resume else None)
    torch.save({"weights": learner.state_dict(), "optimizer": trainer.optimizers[0].state_dict(),
                "global_step": trainer.global_step, "epoch": trainer.current_epoch}, out / "final.pt")  # fmt: skip


def curve(devices: int, out: Path) -> None:
    learner = tiny_learner()
    evaluated: list[torch.Tensor] = []
    returns_after = learner.returns_after

    def recording_returns_after(batch: Any, steps: int) -> torch.Tensor:
        evaluated.append(batch.task_ids.clone())
        return returns_after(batch, steps)

    learner.returns_after = recording_returns_after  # type: ignore[method-assign]
    save = Image.Image.save

    def recording_save(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        with open(out / f"writes-rank{rank}.txt", "a") as f:
            f.write(f"{fp}\n")
        save(self, fp, *args, **kwargs)

    Image.Image.save = recording_save  # type: ignore[method-assign]
    callback = AdaptationCurve(steps=CURVE_STEPS, episodes=CURVE_TASKS, dirpath=out / "figures")
    trainer = quiet_trainer(devices=devices, max_epochs=1, callbacks=[callback], limit_val_batches=0)
    rank = trainer.global_rank
    trainer.fit(learner, tiny_datamodule(2, train_tasks=4 * devices))
    torch.save(evaluated, out / f"curve-tasks.rank{rank}.pt")
    if rank == 0:
        logged = {k: float(trainer.callback_metrics[f"adaptation/return_{k}_steps"]) for k in CURVE_STEPS}
        torch.save({"weights": learner.state_dict(), "logged": logged, "history": callback.history}, out / "curve.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["ddp", "fit", "curve"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--tasks-per-batch", type=int, default=2)
    parser.add_argument("--hang-at-step", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "ddp":
        ddp_step(args.devices, args.tasks_per_batch, args.out)
    elif args.command == "curve":
        curve(args.devices, args.out)
    else:
        fit(args.out, args.hang_at_step, args.resume)


if __name__ == "__main__":
    main()
    end_process_group()  # without it, gloo can abort the process at exit (SIGABRT) after the work is done
