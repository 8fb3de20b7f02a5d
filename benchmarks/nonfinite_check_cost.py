"""Cost of the non-finite checks (meta-loss and meta-gradient) against a sinusoid MAML meta-step, side by side.

Each round times ``--steps`` Trainer-free meta-steps (meta-loss, backward, Adam step) of MAML on the sinusoid family
(MLP 1-40-40-1, meta-batch 25, 1 inner step, vmap), and the same steps with the two checks
``MetaLearner.on_before_optimizer_step`` runs (one sum per gradient and the meta-loss, stacked, summed and read back
once), alternating round by round; the figure is the median of per-round ratios. The check is also timed alone (a
busy machine's noise does not swamp that) and given as a share of the median meta-step. The goal of issue 12 is
under 2% of a meta-step.

    python benchmarks/nonfinite_check_cost.py --rounds 20 --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_meta import Episode, InnerLoop
from lightning_meta.learners import MAML
from lightning_meta.models import MLP
from lightning_meta.nonfinite import all_finite


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    learner = MAML(MLP(), inner_loop=InnerLoop(lr=0.01, steps=1, vectorize="vmap"))
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    x = torch.rand(25, 20, 1) * 10 - 5
    episode = Episode(x[:, :10], torch.sin(x[:, :10]), x[:, 10:], torch.sin(x[:, 10:]), batched=True)

    def check_now(loss: torch.Tensor) -> bool:
        return bool(all_finite([loss.detach(), *(p.grad for p in learner.parameters() if p.grad is not None)]))

    def step(check: bool) -> None:
        optimizer.zero_grad()
        loss, _ = learner.meta_loss(episode)
        loss.backward()
        if check and not bool(
            all_finite([loss.detach(), *(p.grad for p in learner.parameters() if p.grad is not None)])
        ):
            raise FloatingPointError
        optimizer.step()

    for _ in range(args.steps):  # warm-up
        step(True)
    ratios, plain_times = [], []
    for _ in range(args.rounds):
        times = {}
        for check in (False, True):
            start = time.perf_counter()
            for _ in range(args.steps):
                step(check)
            times[check] = (time.perf_counter() - start) / args.steps
        ratios.append(times[True] / times[False])
        plain_times.append(times[False])
    loss, _ = learner.meta_loss(episode)
    loss.backward()
    alone = []
    for _ in range(args.rounds):  # the check by itself, on the gradients of a real step
        start = time.perf_counter()
        for _ in range(args.steps):
            check_now(loss)
        alone.append((time.perf_counter() - start) / args.steps)
    overhead = statistics.median(ratios) - 1
    print(
        f"the check alone: {statistics.median(alone) * 1e6:.1f} us per step, "
        f"{statistics.median(alone) / statistics.median(plain_times) * 100:.2f}% of a meta-step"
    )
    print(f"meta-step without checks: {statistics.median(plain_times) * 1e3:.2f} ms (median of {args.rounds} rounds)")
    print(f"with the checks: {statistics.median(ratios):.4f}x, overhead {overhead * 100:+.2f}% "
          f"(per-round ratios {min(ratios):.3f}-{max(ratios):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
