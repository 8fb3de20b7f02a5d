"""What the schedule callbacks share: a learner attribute set from the epoch alone, so resume is exact."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class EpochSchedule(Callback):
    """Set a learner setting to :meth:`value_at` ``(trainer.current_epoch)`` and log it as ``schedule/<attribute>``.

    The setting is :attr:`setting` of the learner's ``inner_loop`` (an :class:`~lightning_meta.InnerLoop`, as every
    gradient learner has), or else the learner's own :attr:`attribute` (a learner of your own, meta-RL).

    It is set at the start of training (after a checkpoint is restored, before the first step) and of every training
    epoch, and logged once per epoch as ``schedule/<attribute>``. Nothing needs saving: a run resumed from any
    checkpoint, even one written in the middle of an epoch, gets the same value at every step.
    """

    #: The learner attribute the schedule sets (and the name it logs under).
    attribute: str
    #: The :class:`~lightning_meta.InnerLoop` setting it sets instead, when the learner has an ``inner_loop``.
    setting: str

    def target(self, pl_module: Any) -> tuple[Any, str]:
        """The object and the attribute name the schedule sets on ``pl_module``."""
        from lightning_meta.inner_loop import InnerLoop

        inner_loop = getattr(pl_module, "inner_loop", None)
        if isinstance(inner_loop, InnerLoop):
            return inner_loop, self.setting
        return pl_module, self.attribute

    def current(self, pl_module: Any) -> Any:
        """The setting's current value (``None`` when the learner has none)."""
        owner, name = self.target(pl_module)
        return getattr(owner, name, None)

    def value_at(self, epoch: int) -> Any:
        """The value of training epoch ``epoch`` (0-based)."""
        raise NotImplementedError

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        value = self.value_at(trainer.current_epoch)
        owner, name = self.target(pl_module)
        setattr(owner, name, value)
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
