"""Episode assembly speed from the Omniglot cache, on one core, through the datamodule's own path.

    python benchmarks/episode_assembly.py [--root ../shared/data/omniglot] [--seconds 3]

Measures, with ``torch.set_num_threads(1)``:

* the first (cold cache, decoding every PNG into a temporary cache folder) and second (warm) load of ``Omniglot``;
* episodes per second built by ``EpisodeDataset`` over ``LabelledTasks`` (what every ``DataLoader`` worker runs),
  in meta-batches of 4 tasks, for 5-way 1-shot 15-query and 20-way 5-shot 5-query tasks;
* the share of that time spent in ``Omniglot.gather_inputs`` (the same index sizes, gathered alone);
* multi-domain episodes (``MultiDomainTasks``: Omniglot + a mini-ImageNet stand-in of 64 classes x 600 random 84x84
  RGB images held as uint8, as the real adapter holds them), one task per meta-batch, at 84x84x3: fixed 5-way 1-shot
  15-query and Meta-Dataset's variable-way variable-shot episodes, with the share of the time spent bringing
  Omniglot's grey 28px drawings to 84px RGB, beside the CPU time of one ProtoNet (Conv4) training step on the same
  episodes, which the assembly must not limit.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from lightning_meta.data import EpisodeDataset, LabelledTasks, MultiDomainTasks, VariableEpisodes
from lightning_meta.data.omniglot import Omniglot
from lightning_meta.learners import ProtoNet
from lightning_meta.models import Conv4

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
TASKS = [("5-way 1-shot 15-query", 5, 1, 15), ("20-way 5-shot 5-query", 20, 5, 5)]


def rate(step, seconds: float) -> tuple[float, float]:
    """Calls of ``step`` per wall-clock second and per CPU second of this process, after a short warm-up.

    On a machine shared with other jobs the wall-clock rate drops; the CPU-time rate is what one free core gives.
    """
    for _ in range(20):
        step()
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            step()
        calls += 50
    return calls / elapsed, calls / (time.process_time() - cpu)


def timed(make):
    """(result, wall seconds, CPU seconds) of ``make()``."""
    start, cpu = time.perf_counter(), time.process_time()
    result = make()
    return result, time.perf_counter() - start, time.process_time() - cpu


class StandIn(torch.utils.data.Dataset):
    """mini-ImageNet's shape without its images: 64 classes x 600 uint8 84x84 RGB images (a pool of 1,024 reused)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (1024, 84, 84, 3), dtype=torch.uint8, generator=generator)
        self.targets = torch.arange(64).repeat_interleave(600)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.gather_inputs(torch.tensor([index]))[0], int(self.targets[index])

    def gather_inputs(self, index: torch.Tensor) -> torch.Tensor:
        pixels = self.images.index_select(0, index % len(self.images))
        return pixels.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format).div_(255)


def multidomain_table(omniglot: Omniglot, seconds: float) -> Table:
    """Episodes per CPU second of MultiDomainTasks, beside one ProtoNet training step on the same episodes."""
    table = Table(title="Multi-domain episodes (Omniglot + mini-ImageNet stand-in, 84x84x3), one core, 1 task/batch")
    columns = ("episodes", "images/episode", "episodes/CPU-s", "CPU ms/episode", "grey->84px RGB share",
               "ProtoNet step CPU ms", "assembly / step")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right" if column != "episodes" else "left")
    domains = {"omniglot": omniglot, "mini_imagenet": StandIn()}
    learner = ProtoNet(Conv4(in_channels=3, hidden=64, image_size=84))
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    for name, variable in (
        ("fixed 5-way 1-shot 15-query", None),
        ("variable (Meta-Dataset limits)", VariableEpisodes()),
    ):
        tasks = MultiDomainTasks(domains, variable=variable, image_size=84, channels=3)
        episodes = EpisodeDataset(tasks, stage="train", seed=0, ways=5, shots=1, queries=15)
        counter = iter(range(10**9))
        _, cpu = rate(lambda episodes=episodes, counter=counter: episodes[(0, (next(counter),))], seconds)
        sample = [episodes[(1, (i,))] for i in range(40)]
        images = sum(e.support_x.shape[1] + e.query_x.shape[1] for e in sample) / len(sample)
        small = sample[:8]
        grey = omniglot.gather_inputs(torch.arange(int(images)))  # the conversion alone, on as many drawings
        _, converts = rate(
            lambda grey=grey: (
                F.interpolate(grey, size=(84, 84), mode="bilinear", antialias=True).expand(-1, 3, -1, -1).contiguous()
            ),
            seconds / 2,
        )
        omniglot_share = sum(int(e.domains[0]) == 0 for e in sample) / len(sample)
        start = time.process_time()
        for batch in small:  # a training step: adapt, predict, loss, backward, update
            loss, _ = learner.meta_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        step_ms = 1000 * (time.process_time() - start) / len(small)
        table.add_row(
            name, f"{images:.0f}", f"{cpu:,.0f}", f"{1000 / cpu:.1f}", f"{omniglot_share * cpu / converts:.0%}",
            f"{step_ms:,.0f}", f"{(1000 / cpu) / step_ms:.1%}",
        )  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    parser.add_argument("--tasks-per-batch", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    console = Console(width=120)

    with tempfile.TemporaryDirectory() as cache_dir:
        _, first, first_cpu = timed(lambda: Omniglot(args.root, "train", cache_dir=cache_dir))
        dataset, second, second_cpu = timed(lambda: Omniglot(args.root, "train", cache_dir=cache_dir))

        loads = Table(title="Omniglot (Vinyals train, 28px) load time")
        for column in ("load", "wall s", "CPU s"):
            loads.add_column(column, justify="left" if column == "load" else "right")
        threads = max(1, min(4, os.cpu_count() or 1))
        loads.add_row(f"first (cold cache: decode 32,460 PNGs, {threads} threads)", f"{first:.2f}", f"{first_cpu:.2f}")
        loads.add_row("second (warm cache)", f"{second:.3f}", f"{second_cpu:.3f}")
        loads.add_row("ratio", f"{first / second:.0f}x", f"{first_cpu / second_cpu:.0f}x")
        console.print(loads)

        tasks = LabelledTasks(dataset, split="train")
        table = Table(title=f"Episode assembly from the cache, one core, meta-batches of {args.tasks_per_batch}")
        columns = ("task", "episodes/s (wall)", "episodes/CPU-s", "CPU us/episode", "gather_inputs share")
        for column in columns:
            table.add_column(column, justify="right" if column != "task" else "left")
        for name, ways, shots, queries in TASKS:
            episodes = EpisodeDataset(tasks, stage="train", seed=0, ways=ways, shots=shots, queries=queries)
            counter = iter(range(10**9))
            width = args.tasks_per_batch

            def batch(episodes: EpisodeDataset = episodes, counter=counter, width: int = width) -> None:
                first_task = next(counter) * width
                episodes[(0, tuple(range(first_task, first_task + width)))]

            wall, cpu = (width * r for r in rate(batch, args.seconds))
            generator = torch.Generator().manual_seed(0)
            index = torch.randint(0, len(dataset), (ways * (shots + queries),), generator=generator)
            _, gathers = rate(lambda index=index: dataset.gather_inputs(index), args.seconds / 2)
            table.add_row(name, f"{wall:,.0f}", f"{cpu:,.0f}", f"{1e6 / cpu:.0f}", f"{cpu / gathers:.0%}")
        console.print(table)
        console.print(multidomain_table(dataset, args.seconds))


if __name__ == "__main__":
    main()
