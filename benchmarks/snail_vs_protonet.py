"""SNAIL against ProtoNet: episodes per second on the same Omniglot episodes and the same Conv4, alternating.

    python benchmarks/snail_vs_protonet.py [--root ../shared/data/omniglot] [--cache-dir DIR] [--rounds 5]

Both learners get the same fixed meta-batches (5-way 1-shot Omniglot, from the datamodule's own path) and a Conv4
(64 channels) initialised from the same seed. Each round times, for one learner and then the other:

* a training step (meta-loss, backward, Adam step) on meta-batches of ``--tasks-per-batch`` episodes with one query
  per class (the SNAIL config's training episodes), and
* evaluation (the forward pass under ``torch.inference_mode``) on meta-batches of 20 episodes with 15 queries per
  class (the test protocol's episodes).

Rates are episodes per wall-clock second and per CPU second of this process (on a shared machine the wall-clock
rate drops; the CPU-time rate is what one free core gives), the median over the rounds; the last column is
ProtoNet's rate over SNAIL's, i.e. how many times slower SNAIL is. ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lightning_meta import Episode
from lightning_meta.data import EpisodicDataModule
from lightning_meta.data.omniglot import Omniglot
from lightning_meta.learners import SNAIL, MetaLearner, ProtoNet
from lightning_meta.models import Conv4

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


def batches(root: Path, cache_dir: str | None, tasks_per_batch: int, n: int) -> tuple[list[Episode], list[Episode]]:
    """``n`` training meta-batches (1 query per class) and ``n`` evaluation meta-batches (20 tasks, 15 queries)."""
    data = Omniglot(root, "train", cache_dir=cache_dir)
    dm = EpisodicDataModule(
        data, data, ways=5, shots=1, queries=1, eval_queries=15, tasks_per_batch=tasks_per_batch,
        eval_tasks_per_batch=20, train_episodes=n * tasks_per_batch, eval_episodes=n * 20,
    )  # fmt: skip
    dm.setup("fit")
    return list(dm.train_dataloader()), list(dm.val_dataloader())


def timed_rate(step: Callable[[Episode], None], meta_batches: list[Episode], seconds: float) -> tuple[float, float]:
    """Episodes per wall-clock second and per CPU second of ``step`` cycled over ``meta_batches``."""
    step(meta_batches[0])  # warm-up
    episodes, start, cpu, i = 0, time.perf_counter(), time.process_time(), 0
    while (elapsed := time.perf_counter() - start) < seconds:
        batch = meta_batches[i % len(meta_batches)]
        step(batch)
        episodes += batch.n_tasks
        i += 1
    return episodes / elapsed, episodes / (time.process_time() - cpu)


def train_step(learner: MetaLearner) -> Callable[[Episode], None]:
    optimizer = learner.configure_optimizers()

    def step(batch: Episode) -> None:
        optimizer.zero_grad()
        loss, _ = learner.meta_loss(batch)
        loss.backward()
        optimizer.step()

    return step


def eval_step(learner: MetaLearner) -> Callable[[Episode], None]:
    def step(batch: Episode) -> None:
        with torch.inference_mode():
            learner(batch)

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--cache-dir", default=None, help="where decoded images are cached (root is read-only)")
    parser.add_argument("--tasks-per-batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per learner, mode and round")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train_batches, eval_batches = batches(args.root, args.cache_dir, args.tasks_per_batch, 4)
    learners: dict[str, MetaLearner] = {}
    for name, build in (("SNAIL", lambda b: SNAIL(b, ways=5, shots=1)), ("ProtoNet", ProtoNet)):
        torch.manual_seed(0)
        learners[name] = build(Conv4(in_channels=1, hidden=64, image_size=28))
    modes = {"train": (train_step, train_batches), "eval": (eval_step, eval_batches)}
    rates: dict[tuple[str, str], list[tuple[float, float]]] = {(m, n): [] for m in modes for n in learners}
    steps = {(m, n): make(learner) for m, (make, _) in modes.items() for n, learner in learners.items()}
    for _ in range(args.rounds):  # alternating, so that a change in the machine's load hits both alike
        for mode, (_, meta_batches) in modes.items():
            for name in learners:
                rates[mode, name].append(timed_rate(steps[mode, name], meta_batches, args.seconds))
    table = Table(title=f"5-way 1-shot Omniglot, Conv4-64, episodes/s (median of {args.rounds} alternating rounds)")
    for column in ("mode", "learner", "episodes/s (wall)", "episodes/s (CPU)", "ProtoNet / SNAIL (CPU)"):
        table.add_column(column)
    for mode in modes:
        cpu = {n: statistics.median(r[1] for r in rates[mode, n]) for n in learners}
        for name in learners:
            wall = statistics.median(r[0] for r in rates[mode, name])
            ratio = f"{cpu['ProtoNet'] / cpu['SNAIL']:.2f}x" if name == "SNAIL" else ""
            table.add_row(mode, name, f"{wall:.1f}", f"{cpu[name]:.1f}", ratio)
    Console().print(table)
    params = {n: sum(p.numel() for p in learner.parameters()) for n, learner in learners.items()}
    Console().print(f"parameters: SNAIL {params['SNAIL']:,} (Conv4 {params['ProtoNet']:,} of them), ProtoNet "
                    f"{params['ProtoNet']:,}; train meta-batches of {args.tasks_per_batch} tasks x (5 support + 5 "
                    "query), eval meta-batches of 20 tasks x (5 support + 75 query)")  # fmt: skip


if __name__ == "__main__":
    main()
