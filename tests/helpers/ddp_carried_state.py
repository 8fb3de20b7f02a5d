"""Reptile(carry_inner_state=True) under 2-process DDP: what inner state each rank starts each meta-step from.

``python -m tests.helpers.ddp_carried_state --out DIR`` fits 3 meta-steps with ``Trainer(strategy="ddp", devices=2)``;
each rank saves ``DIR/rank{r}.pt``: the carried state at the start of every ``training_step`` (before the DDP forward,
which broadcasts buffers), inside it (what the adaptation starts from) and at the end of the step (used by
tests/learners/test_ddp.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from typing_extensions import override

from lightning_meta import InnerLoop
from lightning_meta.distributed import end_process_group
from lightning_meta.episode import Episode
from lightning_meta.inner_optim import Adam
from lightning_meta.learners import Reptile
from lightning_meta.models import MLP
from tests.helpers.ddp_one_step import datamodule
from tests.helpers.trainers import quiet_trainer


class RecordingReptile(Reptile):
    """Reptile that records its carried state where each adaptation starts from and after each step."""

    def __init__(self) -> None:
        super().__init__(MLP(hidden=(16,)), inner_loop=InnerLoop(lr=0.01, steps=2, optimizer=Adam(betas=(0.0, 0.999)),
                         vectorize="loop"), lr=0.5, carry_inner_state=True)  # fmt: skip
        self.starts: list[dict[str, torch.Tensor]] = []
        self.ends: list[dict[str, torch.Tensor]] = []

    def snapshot(self) -> dict[str, torch.Tensor]:
        assert self.inner_state is not None
        return {k: v.detach().clone() for k, v in self.inner_state.state_dict().items()}

    @override
    def adapt_in_sequence(self, episode: Episode) -> Any:
        self.starts.append(self.snapshot())
        return super().adapt_in_sequence(episode)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ends.append(self.snapshot())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    learner = RecordingReptile()
    trainer = quiet_trainer(devices=2, max_steps=3)
    trainer.fit(learner, datamodule("reptile", 2))
    torch.save({"starts": learner.starts, "ends": learner.ends}, args.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
    end_process_group()  # without it, gloo can abort the process at exit (SIGABRT) after the work is done
