"""``trainer.test`` of untrained learners on 9 fixed test episodes, on one process or two (tests/learners/test_ddp.py).

``python -m tests.helpers.ddp_test_metrics --devices 2 --out DIR`` runs ``Trainer(strategy="ddp", devices=2)``;
every rank saves the logged test metrics to ``DIR/NAME.rankR.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lightning_meta.distributed import end_process_group
from tests.helpers.ddp_one_step import LEARNERS, datamodule
from tests.helpers.trainers import quiet_trainer

NAMES = ("maml_loop", "protonet", "r2d2")
TEST_EPISODES = 9  # 5 on rank 0 and 4 on rank 1: an uneven split must still count each episode once


def run(name: str, devices: int) -> dict[str, float]:
    torch.manual_seed(0)
    learner = LEARNERS[name]()
    trainer = quiet_trainer(devices=devices)
    (results,) = trainer.test(learner, datamodule(name, 2, eval_episodes=TEST_EPISODES), verbose=False)
    return {key: float(value) for key, value in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for name in NAMES:
        results = run(name, args.devices)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        torch.save(results, args.out / f"{name}.rank{rank}.pt")


if __name__ == "__main__":
    main()
    end_process_group()  # without it, gloo can abort the process at exit (SIGABRT) after the work is done
