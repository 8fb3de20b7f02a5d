"""Models the way users write them: a plain ``nn.Sequential`` and a learner subclass that builds its own module.

Neither records a config (no ``records_config``), so a checkpoint cannot rebuild them: resume must still work, and
``load_from_checkpoint`` must ask for the module by name.
"""

from __future__ import annotations

from torch import nn

from lightning_meta import InnerLoop
from lightning_meta.learners import MAML


def sequential_regressor(width: int = 16) -> nn.Sequential:
    """A plain ``nn.Sequential`` sinusoid regressor, as a user would write it."""
    return nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))


class WideSineMAML(MAML):
    """A user's subclass: its own arguments, its own module built inside, MAML's others fixed."""

    def __init__(self, *, width: int = 16, dropout: float = 0.0, inner_lr: float = 0.05, lr: float = 0.01) -> None:
        module = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Dropout(dropout), nn.Linear(width, 1))
        super().__init__(module, inner_loop=InnerLoop(lr=inner_lr, steps=2, vectorize="loop"), lr=lr)
        self.width = width
