"""The sinusoid regression task family of the MAML paper."""

from __future__ import annotations

import math

import torch

from lightning_meta.episode import Episode


class Sinusoid:
    """Regression tasks ``y = amplitude * sin(x - phase)`` (Finn et al., 2017, section 5.1).

    Each task draws an amplitude in ``amplitude_range``, a phase in ``phase_range`` and ``shots + queries`` inputs
    uniformly in ``x_range``; the first ``shots`` points are the support set, the rest the query set. ``ways`` has
    no meaning for regression and is ignored. Inputs and targets have shape ``[n, 1]``.

    Args:
        amplitude_range: lowest and highest amplitude (paper: 0.1 to 5.0).
        phase_range: lowest and highest phase (paper: 0 to pi).
        x_range: interval of the inputs (paper: -5 to 5).

    Example:
        >>> import torch
        >>> task = Sinusoid().sample(torch.Generator().manual_seed(0), ways=1, shots=10, queries=5)
        >>> task.support_x.shape, task.query_y.shape, task.ways
        (torch.Size([10, 1]), torch.Size([5, 1]), None)
    """

    def __init__(
        self,
        *,
        amplitude_range: tuple[float, float] = (0.1, 5.0),
        phase_range: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        for name, (low, high) in (
            ("amplitude_range", amplitude_range),
            ("phase_range", phase_range),
            ("x_range", x_range),
        ):
            if not low <= high:
                raise ValueError(f"Sinusoid {name} must be (low, high) with low <= high, got ({low}, {high}).")
        self.amplitude_range = tuple(amplitude_range)
        self.phase_range = tuple(phase_range)
        self.x_range = tuple(x_range)

    def validate(self, *, ways: int, shots: int, queries: int, split: str) -> None:
        """Sinusoid tasks can hold any number of points; nothing to check beyond positive counts."""

    def sample(self, generator: torch.Generator, *, ways: int, shots: int, queries: int) -> Episode:
        """Draw one sinusoid task with ``shots`` support and ``queries`` query points."""
        u = torch.rand(2 + shots + queries, generator=generator)
        amplitude = self.amplitude_range[0] + (self.amplitude_range[1] - self.amplitude_range[0]) * u[0]
        phase = self.phase_range[0] + (self.phase_range[1] - self.phase_range[0]) * u[1]
        x = (self.x_range[0] + (self.x_range[1] - self.x_range[0]) * u[2:]).unsqueeze(1)
        y = amplitude * torch.sin(x - phase)
        return Episode(x[:shots], y[:shots], x[shots:], y[shots:], ways=None)

    def __repr__(self) -> str:
        return (
            f"Sinusoid(amplitude_range={self.amplitude_range}, phase_range={self.phase_range}, x_range={self.x_range})"
        )
