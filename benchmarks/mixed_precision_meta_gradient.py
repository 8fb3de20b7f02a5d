"""How far the second-order MAML meta-gradient under autocast is from float32, and what a float32 inner loop costs.

Run: ``python benchmarks/mixed_precision_meta_gradient.py [--repeats 5]``.

For a sinusoid MLP (25 tasks) and a Conv4-64 on 28x28 5-way 1-shot 15-query images (8 tasks), with the loop and vmap
strategies: the relative error ``|g - g32| / |g32|`` of the meta-gradient under bf16 and float16 autocast
(float16 with the loss multiplied by GradScaler's first scale, 2**16, and the gradient divided by it, as
``precision="16-mixed"`` does), for ``inner_precision="float32"`` (the default: autocast off in the inner loop) and
``"autocast"``, and the median time of a meta-step (forward + backward) relative to float32.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from lightning_meta import Episode, InnerLoop
from lightning_meta.data import Sinusoid
from lightning_meta.learners import MAML
from lightning_meta.models import MLP, Conv4


def sinusoid_batch() -> Episode:
    g = torch.Generator().manual_seed(0)
    return Episode.stack([Sinusoid().sample(g, ways=1, shots=10, queries=10) for _ in range(25)])


def image_batch() -> Episode:
    g = torch.Generator().manual_seed(0)

    def x(n: int) -> torch.Tensor:
        return torch.rand(8, n, 1, 28, 28, generator=g)

    def y(k: int) -> torch.Tensor:
        return torch.arange(5).repeat_interleave(k).expand(8, -1)

    return Episode(x(5), y(1), x(75), y(15), ways=5, batched=True)


def meta_step(learner: MAML, batch: Episode, dtype: torch.dtype | None) -> torch.Tensor:
    learner.zero_grad()
    scale = 2.0**16 if dtype == torch.float16 else 1.0
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss, _ = learner.meta_loss(batch)
    (loss * scale).backward()
    return torch.cat([p.grad.flatten() for p in learner.parameters()]) / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed meta-steps per setting (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("model | strategy | autocast | inner_precision | relative error vs float32 | time vs float32")
    for name, net, batch, inner_lr in [
        ("sinusoid MLP", MLP(), sinusoid_batch(), 0.01),
        ("Conv4-64 28x28 5w1s", Conv4(1, 64, 5, 28), image_batch(), 0.4),
    ]:
        for strategy in ("loop", "vmap"):

            def learner(
                inner_precision: str, net: torch.nn.Module = net, strategy: str = strategy, inner_lr: float = inner_lr
            ) -> MAML:
                loop = InnerLoop(lr=inner_lr, vectorize=strategy, precision=inner_precision)  # type: ignore[arg-type]
                return MAML(copy.deepcopy(net), inner_loop=loop)

            def timed(model: MAML, dtype: torch.dtype | None) -> float:
                meta_step(model, batch, dtype)  # noqa: B023 - warm-up
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    meta_step(model, batch, dtype)  # noqa: B023
                    times.append(time.perf_counter() - start)
                return statistics.median(times)

            reference_model = learner("float32")
            reference = meta_step(reference_model, batch, None)
            reference_time = timed(reference_model, None)
            for dtype in (torch.bfloat16, torch.float16):
                for inner_precision in ("float32", "autocast"):
                    model = learner(inner_precision)
                    gradient = meta_step(model, batch, dtype)
                    error = float((gradient - reference).norm() / reference.norm())
                    ratio = timed(model, dtype) / reference_time
                    dtype_name = str(dtype).removeprefix("torch.")
                    print(f"{name} | {strategy} | {dtype_name} | {inner_precision} | {error:.4f} | {ratio:.2f}x",
                          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
