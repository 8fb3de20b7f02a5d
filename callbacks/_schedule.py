"""What the schedule callbacks share: a learner attribute set from the epoch alone, so resume is exact."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class EpochSchedule(Callback):
    """Set the learner's :attr:`attribute` to :meth:`value_at` ``(trainer.current_epoch)`` and log it.

    It is set at the start of training (after a checkpoint is restored, before the first step) and of every training
    epoch, and logged once per epoch as ``schedule/<attribute>``. Nothing needs saving: a run resumed from any
    checkpoint, even one written in the middle of an epoch, gets the same value at every step.
    """

    #: The learner attribute the schedule sets.
    attribute: str

    def value_at(self, epoch: int) -> Any:
        """The value of training epoch ``epoch`` (0-based)."""
        raise NotImplementedError

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        value = self.value_at(trainer.current_epoch)
        setattr(pl_module, self.attribute, value)
        return value

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = self._apply(trainer, pl_module)
        pl_module.log(f"schedule/{self.attribute}", float(value), on_step=False, on_epoch=True)
