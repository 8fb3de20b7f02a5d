"""FirstOrderAnnealing: MAML++'s derivative-order annealing, first order early and second order later."""

from __future__ import annotations

import lightning as L
from typing_extensions import override

from lightning_meta.callbacks._schedule import EpochSchedule


class FirstOrderAnnealing(EpochSchedule):
    """Train with first-order MAML for the first epochs, then with second order (MAML++'s derivative-order annealing).

    Antoniou, Edwards and Storkey, "How to train your MAML", ICLR 2019, section 4: first-order gradients for the
    first 50 epochs save computation while the model is far from a good initialisation, and second-order ones
    afterwards give the better final accuracy. The callback sets the learner's ``inner_loop.first_order`` (MAML,
    ANIL, Meta-SGD) to ``epoch < second_order_epoch`` at the start of training and of every training epoch.

    The value is a function of ``trainer.current_epoch`` alone, so nothing needs saving: a run resumed from any
    checkpoint, even one written in the middle of an epoch, uses the same order at every step as the uninterrupted
    run. The value is logged as ``schedule/first_order`` (1.0 or 0.0) once per epoch. Evaluation is unaffected
    (it always adapts with first-order steps, which give the same adapted weights).

    Args:
        second_order_epoch: the first epoch (0-based) trained with second-order gradients; 0 trains second order
            throughout (the paper: 50).

    Raises:
        ValueError: for a ``second_order_epoch`` that is not a non-negative integer; at ``fit`` for a learner
            without a boolean ``inner_loop.first_order`` (or ``first_order`` attribute).

    Example:
        >>> annealing = FirstOrderAnnealing(second_order_epoch=50)
        >>> [annealing.first_order_at(epoch) for epoch in (0, 49, 50, 100)]
        [True, True, False, False]
    """

    def __init__(self, *, second_order_epoch: int = 50) -> None:
        if isinstance(second_order_epoch, bool) or not isinstance(second_order_epoch, int) or second_order_epoch < 0:
            raise ValueError(
                f"FirstOrderAnnealing: second_order_epoch must be a non-negative integer (the first epoch trained "
                f"with second-order gradients), got {second_order_epoch!r}."
            )
        self.second_order_epoch = second_order_epoch

    attribute = "first_order"
    setting = "first_order"

    def first_order_at(self, epoch: int) -> bool:
        """Whether training epoch ``epoch`` (0-based) uses first-order gradients."""
        return epoch < self.second_order_epoch

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and getattr(pl_module, "second_order", True) is False:
            raise ValueError(
                f"FirstOrderAnnealing: {type(pl_module).__name__} always adapts first order (its meta-gradient never "
                "goes through the inner gradients), so there is no order to anneal; remove the callback."
            )
        if stage == "fit" and not isinstance(self.current(pl_module), bool):
            raise ValueError(
                "FirstOrderAnnealing sets the learner's inner_loop.first_order (MAML, ANIL, MetaSGD) or its own "
                f"first_order attribute; {type(pl_module).__name__} has neither."
            )

    @override
    def value_at(self, epoch: int) -> bool:
        return self.first_order_at(epoch)
