"""Episode assembly speed from the Omniglot cache, on one core, through the datamodule's own path.

    python benchmarks/episode_assembly.py [--root ../shared/data/omniglot] [--seconds 3]

Measures, with ``torch.set_num_threads(1)``:

* the first (cold cache, decoding every PNG into a temporary cache folder) and second (warm) load of ``Omniglot``;
* episodes per second built by ``EpisodeDataset`` over ``LabelledTasks`` (what every ``DataLoader`` worker runs),
  in meta-batches of 4 tasks, for 5-way 1-shot 15-query and 20-way 5-shot 5-query tasks;
* the share of that time spent in ``Omniglot.gather_inputs`` (the same index sizes, gathered alone).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lightning_meta.data import EpisodeDataset, LabelledTasks
from lightning_meta.data.omniglot import Omniglot

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


if __name__ == "__main__":
    main()
