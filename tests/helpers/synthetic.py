"""Synthetic labelled data for the learner tests."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from lightning_meta import Episode


def blobs(n_classes: int, per_class: int, *, seed: int, dim: int = 16, informative: int = 4) -> TensorDataset:
    """Gaussian blobs: class means differ in the first ``informative`` dims; the rest is loud shared noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.zeros(n_classes, dim)
    means[:, :informative] = 2.0 * torch.randn(n_classes, informative, generator=g)
    noise = torch.randn(n_classes, per_class, dim, generator=g)
    noise[..., informative:] *= 3.0
    x = (means.unsqueeze(1) + 0.5 * noise).reshape(-1, dim)
    return TensorDataset(x, torch.arange(n_classes).repeat_interleave(per_class))


def random_meta_batch(n_tasks: int, ways: int, shots: int, queries: int, dim: int, *, seed: int = 0) -> Episode:
    """Tasks whose support labels are shuffled (not grouped), so the test cannot rely on the layout."""
    g = torch.Generator().manual_seed(seed)
    support_y = torch.stack([torch.arange(ways).repeat(shots)[torch.randperm(ways * shots, generator=g)]
                             for _ in range(n_tasks)])  # fmt: skip
    return Episode(
        torch.randn(n_tasks, ways * shots, dim, generator=g, dtype=torch.float64),
        support_y,
        torch.randn(n_tasks, ways * queries, dim, generator=g, dtype=torch.float64),
        torch.randint(ways, (n_tasks, ways * queries), generator=g),
        ways=ways,
        batched=True,
    )
