"""Tiny synthetic image classes for the callback tests: each class is a noisy copy of its own random glyph."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset


def glyphs(n_classes: int, per_class: int, *, seed: int, size: int = 16, noise: float = 0.15) -> TensorDataset:
    """``[N, 1, size, size]`` images in ``[0, 1]``: a random 4x4 ink pattern per class, upscaled, plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = (torch.rand(n_classes, 1, 4, 4, generator=g) > 0.5).float()
    templates = F.interpolate(patterns, size=(size, size), mode="nearest")  # [C, 1, S, S]
    images = templates.unsqueeze(1) + noise * torch.randn(n_classes, per_class, 1, size, size, generator=g)
    x = images.clamp(0.0, 1.0).reshape(-1, 1, size, size)
    return TensorDataset(x, torch.arange(n_classes).repeat_interleave(per_class))
