"""Channels-last memory format for the conv backbones: does the MAML meta-step gain on this CPU?

    python benchmarks/channels_last.py [--rounds 5] [--seconds 2] [--threads 1] [--cases ...] [--vectorize loop vmap]

One MAML meta-step (adaptation, query loss, backward; no optimizer step) of a Conv4 on 5-way 1-shot episodes with 15
queries per class, meta-batch 4, for each combination of:

* backbone: Conv4-32 on 84x84 x 3 (mini-ImageNet's MAML) and Conv4-64 on 28x28 x 1 (Omniglot's);
* vectorisation: ``loop`` and ``vmap``; order: first and second;
* memory format: ``Conv4(channels_last=False)`` (PyTorch's default NCHW) against ``channels_last=True`` (Conv4 turns
  its input NHWC, so every block runs channels-last; inside ``torch.func`` transforms, which is everything under
  vmap, it keeps NCHW, so the vmap rows compare like with like and should show 1.0x).

Rounds alternate the two formats on the same episodes and weights; the table gives the median time of a step and
the ratio contiguous / channels-last (above 1: channels-last is faster). A combination that raises says so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from lightning_meta import MAML, Episode, InnerLoop
from lightning_meta.models import Conv4

CASES = {
    "Conv4-32 84x84": dict(in_channels=3, hidden=32, image_size=84),
    "Conv4-64 28x28": dict(in_channels=1, hidden=64, image_size=28),
}


def episode(in_channels: int, image_size: int, tasks: int = 4, ways: int = 5, queries: int = 15) -> Episode:
    g = torch.Generator().manual_seed(0)
    support = torch.randn(tasks, ways, in_channels, image_size, image_size, generator=g)
    query = torch.randn(tasks, ways * queries, in_channels, image_size, image_size, generator=g)
    return Episode(
        support, torch.arange(ways).repeat(tasks, 1), query, torch.arange(ways).repeat(tasks, queries), ways=ways,
        batched=True,
    )  # fmt: skip


def step_time(learner: MAML, batch: Episode, seconds: float) -> float:
    """Median seconds of one meta-step (forward and backward), after one warm-up step."""
    times = []
    learner.zero_grad(set_to_none=True)
    learner.meta_loss(batch)[0].backward()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        learner.zero_grad(set_to_none=True)
        t = time.perf_counter()
        learner.meta_loss(batch)[0].backward()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per format per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--vectorize", nargs="+", default=["loop", "vmap"], choices=["loop", "vmap"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = Table(title=f"MAML meta-step, 5-way 1-shot q15, meta-batch 4, {args.threads} thread(s), median ms")
    for column in ("backbone", "vectorize", "order", "contiguous", "channels-last", "contiguous / channels-last"):
        table.add_column(column, justify="right")
    for name in args.cases:
        case = CASES[name]
        batch = episode(case["in_channels"], case["image_size"])
        for vectorize in args.vectorize:
            for first_order in (False, True):
                torch.manual_seed(0)
                model = Conv4(**case, out_features=5, channels_last=False)
                loop = InnerLoop(lr=0.1, steps=1, first_order=first_order, vectorize=vectorize)
                plain = MAML(model, inner_loop=loop)
                fast = MAML(Conv4(**case, out_features=5, channels_last=True), inner_loop=loop)
                fast.model.load_state_dict(model.state_dict())
                fast_batch = batch  # Conv4 converts its input itself (outside torch.func transforms)
                rounds: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
                error = None
                for _ in range(args.rounds):
                    rounds["contiguous"].append(step_time(plain, batch, args.seconds))
                    try:
                        rounds["channels_last"].append(step_time(fast, fast_batch, args.seconds))
                    except Exception as exc:  # report, do not hide
                        error = f"{type(exc).__name__}: {str(exc)[:60]}"
                        break
                base = statistics.median(rounds["contiguous"]) * 1e3
                order = "first" if first_order else "second"
                if error:
                    table.add_row(name, vectorize, order, f"{base:.1f}", "fails", error)
                    continue
                last = statistics.median(rounds["channels_last"]) * 1e3
                table.add_row(name, vectorize, order, f"{base:.1f}", f"{last:.1f}", f"{base / last:.2f}x")
                print(f"{name} {vectorize} {order}: {base:.1f} ms vs {last:.1f} ms = {base / last:.2f}x", flush=True)
    Console().print(table)


if __name__ == "__main__":
    main()
