"""Reptile's meta-step with inner mini-batches (the reference's ``--inner-batch``) against whole-support steps.

    python benchmarks/reptile_inner_batch.py [--rounds 5] [--steps 3] [--ways 5 20]

openai/supervised-reptile takes each inner step on a mini-batch of the task's training images, cycling through
them (5-way: 50 images, ``--inner-batch 10``, 5 steps: one pass; 20-way: 200 images, ``--inner-batch 20``, 10 steps:
one pass). Before ``InnerLoop(batch_size=...)`` this package took every step on the whole support set: the same
number of steps, each on 5x (5-way) or 10x (20-way) the images. This times one training meta-step of
``Reptile`` (Conv4-64 on 28x28 inputs) with the inner loop and episode shapes read from
``examples/configs/omniglot_5w1s_reptile.yaml`` and ``omniglot_20w1s_reptile.yaml`` (ways, training images per
class, meta-batch, inner steps, step size, Adam's betas, ``batch_size``), both ways on random inputs, alternating
the two in each round (the machine is shared), and prints the median seconds per meta-step and their ratio. One
thread.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_meta import Episode, InnerLoop
from lightning_meta.inner_optim import Adam
from lightning_meta.learners import Reptile
from lightning_meta.models import Conv4

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"


def config_settings(ways: int) -> dict[str, Any]:
    """The training settings of ``omniglot_{ways}w1s_reptile.yaml`` that shape one meta-step."""
    config = yaml.safe_load((CONFIGS / f"omniglot_{ways}w1s_reptile.yaml").read_text())
    data = config["data"]["init_args"]
    loop = config["model"]["init_args"]["inner_loop"]["init_args"]
    return {
        "ways": data["ways"],
        "shots": data["shots"],
        "tasks": data["tasks_per_batch"],
        "steps": loop["steps"],
        "lr": loop["lr"],
        "betas": tuple(loop["optimizer"]["init_args"]["betas"]),
        "batch_size": loop["batch_size"],
        "eval_steps": loop["eval_steps"],
        "eval_batch_size": loop["eval_batch_size"],
    }


def meta_step_seconds(learner: Reptile, episode: Episode, steps: int) -> float:
    optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss, _ = learner.meta_loss(episode)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="meta-steps timed per round and setting")
    parser.add_argument("--ways", type=int, nargs="+", default=[5, 20], choices=[5, 20])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for ways in args.ways:
        c = config_settings(ways)
        shots, tasks, inner_steps, batch = c["shots"], c["tasks"], c["steps"], c["batch_size"]
        g = torch.Generator().manual_seed(0)
        x = torch.rand(tasks, ways * shots, 1, 28, 28, generator=g)
        y = torch.arange(ways).repeat(shots).expand(tasks, -1)
        episode = Episode(x, y, x[:, :ways], y[:, :ways], ways=ways, batched=True)
        learners = {}
        for name, batch_size in (("whole support", None), (f"batch {batch}", batch)):
            torch.manual_seed(0)
            loop = InnerLoop(lr=c["lr"], steps=inner_steps, optimizer=Adam(betas=c["betas"]), batch_size=batch_size,
                             vectorize="vmap")  # fmt: skip
            learners[name] = Reptile(Conv4(in_channels=1, hidden=64, out_features=ways, image_size=28),
                                     inner_loop=loop).train()  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in learners}
        for learner in learners.values():
            meta_step_seconds(learner, episode, 1)  # warm-up
        for _ in range(args.rounds):
            for name, learner in learners.items():
                times[name].append(meta_step_seconds(learner, episode, args.steps))
        medians = {name: statistics.median(t) for name, t in times.items()}
        whole, mini = medians.values()
        figures = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in medians.items())
        print(f"{ways}-way, {ways * shots} images x {tasks} tasks, {inner_steps} inner steps: {figures} per meta-step; "
              f"ratio {whole / mini:.2f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
