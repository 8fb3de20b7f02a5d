"""One optimizer step of every learner, on one process or several (used by tests/learners/test_ddp.py).

``python -m tests.helpers.ddp_one_step --devices 2 --tasks-per-batch 2 --out DIR`` fits each learner for one step
with ``Trainer(strategy="ddp", devices=2)`` (no other flag) and rank 0 saves ``{name: (parameter, gradient)}`` after
the step to ``DIR/NAME.pt`` (the gradient is DDP's all-reduced one).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from lightning_meta import InnerLoop
from lightning_meta.data import EpisodicDataModule, Sinusoid
from lightning_meta.distributed import end_process_group
from lightning_meta.learners import ANIL, MAML, R2D2, SNAIL, MatchingNet, MetaLearner, MetaSGD, ProtoNet, Reptile
from lightning_meta.models import MLP
from tests.helpers.trainers import quiet_trainer


def blobs() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(8).repeat_interleave(10)
    return TensorDataset(y.float().unsqueeze(1).expand(-1, 4) + torch.randn(80, 4, generator=g), y)


LEARNERS: dict[str, Callable[[], MetaLearner]] = {
    "maml_vmap": lambda: MAML(MLP(hidden=(16,)), inner_loop=InnerLoop(lr=0.05, steps=2, vectorize="vmap"), lr=0.01),
    "maml_loop": lambda: MAML(MLP(hidden=(16,)), inner_loop=InnerLoop(lr=0.05, steps=2, vectorize="loop"), lr=0.01),
    "maml++": lambda: MAML(
        MLP(hidden=(16,)),
        inner_loop=InnerLoop(steps=2, vectorize="vmap"),
        multi_step_loss=True,
        learn_inner_lr=True,
        lr=0.01,
    ),  # fmt: skip
    "anil": lambda: ANIL(MLP(hidden=(16,)), inner_loop=InnerLoop(lr=0.05, vectorize="vmap"), lr=0.01),
    "metasgd": lambda: MetaSGD(MLP(hidden=(16,)), inner_loop=InnerLoop(lr=0.05, vectorize="loop"), lr=0.01),
    "reptile": lambda: Reptile(MLP(hidden=(16,)), inner_loop=InnerLoop(lr=0.05, steps=2, vectorize="vmap"), lr=0.5),
    "protonet": lambda: ProtoNet(MLP(in_features=4, hidden=(16,), out_features=8), lr=0.01),
    "matchingnet": lambda: MatchingNet(MLP(in_features=4, hidden=(16,), out_features=8), embedding_dim=8, lr=0.01),
    "r2d2": lambda: R2D2(MLP(in_features=4, hidden=(16,), out_features=8), lr=0.01),
    # Adam's first step moves a weight whose gradient is ~1e-9 (SNAIL's attention key biases shift a whole softmax row)
    # by up to lr with a rounding-level sign; at lr 3e-4 the DDP-vs-one-process difference stays under 1e-6.
    "snail": lambda: SNAIL(MLP(in_features=4, hidden=(16,), out_features=8), ways=3, shots=2, lr=3e-4),
}


def datamodule(
    name: str, tasks_per_batch: int, *, train_episodes: int = 8, eval_episodes: int | None = None
) -> EpisodicDataModule:
    """The episodes of learner ``name``: 3-way blobs for the metric learners, sinusoids for the others.

    With ``eval_episodes``, the validation and test splits are the training data too (fixed episodes of it).
    """
    data = blobs() if name in ("protonet", "matchingnet", "r2d2", "snail") else Sinusoid()
    evaluation = data if eval_episodes is not None else None
    size = {"ways": 3, "shots": 2, "queries": 3} if isinstance(data, TensorDataset) else {"shots": 5, "queries": 5}
    return EpisodicDataModule(data, evaluation, evaluation, **size, tasks_per_batch=tasks_per_batch,
                              train_episodes=train_episodes, eval_episodes=eval_episodes or 600, seed=3)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--tasks-per-batch", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in LEARNERS.items():
        torch.manual_seed(0)
        learner = make()
        trainer = quiet_trainer(devices=args.devices, max_steps=1)
        trainer.fit(learner, datamodule(name, args.tasks_per_batch))
        if trainer.global_rank == 0:
            state = {n: (p.detach().clone(), p.grad.clone()) for n, p in learner.named_parameters()}
            torch.save(state, args.out / f"{name}.pt")


if __name__ == "__main__":
    main()
    end_process_group()  # without it, gloo can abort the process at exit (SIGABRT) after the work is done
