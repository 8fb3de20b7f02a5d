"""Relative error of the second-order MAML meta-gradient under bf16 autocast on the CPU, against float32.

Preliminary measurement for issue 5 (mixed precision). Run: ``python benchmarks/bf16_meta_gradient.py``.
"""

import copy

import torch

from lightning_meta import Episode
from lightning_meta.data import Sinusoid
from lightning_meta.learners import MAML
from lightning_meta.models import MLP, Conv4

torch.set_num_threads(1)
torch.manual_seed(0)


def sin_batch():
    g = torch.Generator().manual_seed(0)
    return Episode.stack([Sinusoid().sample(g, ways=1, shots=10, queries=10) for _ in range(25)])


def img_batch():
    g = torch.Generator().manual_seed(0)

    def x(n):
        return torch.rand(8, n, 1, 28, 28, generator=g)

    def y(k):
        return torch.arange(5).repeat_interleave(k).expand(8, -1)

    return Episode(x(5), y(1), x(75), y(15), ways=5, batched=True)


for name, net, batch in [
    ("sinusoid MLP", MLP(), sin_batch()),
    ("Conv4-64 28x28 5w1s", Conv4(1, 64, 5, 28), img_batch()),
]:
    for strategy in ["vmap", "loop"]:
        grads = {}
        for mode in ["fp32", "bf16"]:
            m = MAML(copy.deepcopy(net), inner_lr=0.01 if "MLP" in name else 0.4, inner_steps=1, strategy=strategy)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=(mode == "bf16")):
                loss, _ = m.meta_loss(batch)
            loss.backward()
            grads[mode] = torch.cat([p.grad.flatten() for p in m.parameters()])
        rel = (grads["bf16"] - grads["fp32"]).norm() / grads["fp32"].norm()
        print(f"{name:22s} {strategy}: relative error of the bf16 meta-gradient vs fp32: {rel:.3f}")
