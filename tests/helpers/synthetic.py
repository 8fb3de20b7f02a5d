"""Synthetic labelled data for the learner tests."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def blobs(n_classes: int, per_class: int, *, seed: int, dim: int = 16, informative: int = 4) -> TensorDataset:
    """Gaussian blobs: class means differ in the first ``informative`` dims; the rest is loud shared noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.zeros(n_classes, dim)
    means[:, :informative] = 2.0 * torch.randn(n_classes, informative, generator=g)
    noise = torch.randn(n_classes, per_class, dim, generator=g)
    noise[..., informative:] *= 3.0
    x = (means.unsqueeze(1) + 0.5 * noise).reshape(-1, dim)
    return TensorDataset(x, torch.arange(n_classes).repeat_interleave(per_class))
