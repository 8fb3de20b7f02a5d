"""ANIL's meta-step with the body's features computed once per task, against running the whole network per step.

ANIL adapts only the head, so the body's features of a task do not change during its inner loop.
``lightning_meta.learners.ANIL`` computes them once per task and runs the inner loop on the head alone
(``cached``); ``whole`` is the same learner made to run the whole network at every inner step
(``caches_features = False``, the path it takes for a model whose output is not its head's output). Both give the
same meta-gradient (``tests/learners/test_gradient_learners.py``); this script times them.

One meta-step: ``loss, _ = learner.meta_loss(batch)`` in training mode (what ``training_step`` runs),
``loss.backward()``, ``Adam.step()``, on the same random Omniglot-sized meta-batch for both.

Timing: both live in one process and alternate, round after round (the order swaps every round), so machine noise
hits them alike; the first round is warm-up and dropped. Reported: the median seconds per meta-step of each and the
median over rounds of the per-round ratio ``whole / cached``.

Default row: the ``omniglot_20w1s_anil.yaml`` settings (Conv4-64 on 28x28, 20-way 1-shot, 1 query per class,
meta-batch 16, 5 second-order inner steps at 0.1, vectorize="loop" as on a CPU).

Example::

    python benchmarks/anil_feature_reuse.py --rounds 5          # about 3 minutes on one thread
    python benchmarks/anil_feature_reuse.py --rounds 3 --tasks 4 --steps-per-round 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from lightning_meta import Episode, InnerLoop
from lightning_meta.learners import ANIL
from lightning_meta.models import Conv4


def make_batch(tasks: int, ways: int, shots: int, queries: int, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    labels = lambda k: torch.arange(ways).repeat_interleave(k).expand(tasks, -1)  # noqa: E731
    images = lambda n: torch.randn(tasks, n, 1, 28, 28, generator=g)  # noqa: E731
    return Episode(
        images(ways * shots), labels(shots), images(ways * queries), labels(queries), ways=ways, batched=True
    )


def make_learner(model: torch.nn.Module, steps: int, cached: bool) -> tuple[ANIL, torch.optim.Optimizer]:
    learner = ANIL(copy.deepcopy(model), inner_loop=InnerLoop(lr=0.1, steps=steps, first_order=False, vectorize="loop"))
    if not cached:
        learner.caches_features = False
    return learner, torch.optim.Adam(learner.parameters(), lr=1e-3)


def meta_step(learner: ANIL, optimizer: torch.optim.Optimizer, batch: Episode) -> float:
    start = time.perf_counter()
    optimizer.zero_grad()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds after one warm-up round")
    parser.add_argument("--steps-per-round", type=int, default=3, help="meta-steps of each learner per round")
    parser.add_argument("--tasks", type=int, default=16, help="meta-batch size (default 16, the config's)")
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Conv4(in_channels=1, hidden=64, out_features=args.ways, image_size=28)
    batch = make_batch(args.tasks, args.ways, shots=1, queries=1)
    learners = {name: make_learner(model, args.inner_steps, name == "cached") for name in ("cached", "whole")}
    times: dict[str, list[float]] = {name: [] for name in learners}
    for round_ in range(args.rounds + 1):
        order = list(learners) if round_ % 2 == 0 else list(reversed(learners))
        for name in order:
            learner, optimizer = learners[name]
            per_step = statistics.median(meta_step(learner, optimizer, batch) for _ in range(args.steps_per_round))
            if round_ > 0:
                times[name].append(per_step)
        if round_ > 0:
            print(f"round {round_}: " + ", ".join(f"{name} {times[name][-1]:.3f} s" for name in learners))
    assert learners["cached"][0].caches_features is True and learners["whole"][0].caches_features is False
    ratios = [w / c for w, c in zip(times["whole"], times["cached"], strict=True)]
    print(
        f"ANIL meta-step, Conv4-64 28x28, {args.ways}-way 1-shot 1-query, {args.tasks} tasks, {args.inner_steps} "
        f"second-order inner steps, {args.threads} thread(s), median of {args.rounds} rounds:"
    )
    for name in learners:
        print(f"  {name:6s} {statistics.median(times[name]):.3f} s per meta-step")
    print(f"  whole / cached: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
