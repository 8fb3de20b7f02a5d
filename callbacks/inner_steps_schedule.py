"""InnerStepsSchedule: the number of inner-loop steps of training as a piecewise-constant function of the epoch."""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import lightning as L
from typing_extensions import override

from lightning_meta.callbacks._schedule import EpochSchedule


class InnerStepsSchedule(EpochSchedule):
    """Change the number of inner (adaptation) steps of training at given epochs.

    ``milestones`` maps an epoch to the number of inner steps used from that epoch on, like
    ``torch.optim.lr_scheduler.MultiStepLR``'s milestones: ``{0: 1, 10: 3, 20: 5}`` trains with one step for
    epochs 0-9, three for 10-19 and five from epoch 20. The callback sets the learner's ``inner_loop.steps`` (every
    gradient learner: MAML, ANIL, Meta-SGD, Reptile) at the start of training and of every training epoch;
    ``inner_loop.eval_steps`` (validation and test) is left as it is.

    The value is a function of ``trainer.current_epoch`` alone, so nothing needs saving: a run resumed from any
    checkpoint, even one written in the middle of an epoch, uses the same number of steps at every step as the
    uninterrupted run. The value is logged as ``schedule/inner_steps`` once per epoch.

    Args:
        milestones: ``{epoch: inner steps from that epoch on}``; must contain epoch 0.

    Raises:
        ValueError: for milestones without epoch 0, a negative or non-integer epoch, or a number of steps that is
            not a positive integer; at ``fit`` for a learner without an integer ``inner_loop.steps`` (or
            ``inner_steps``), or for MAML++ with learned per-step rates (``learn_inner_lr=True``) asked for more
            steps than it has rates.

    Example:
        >>> schedule = InnerStepsSchedule(milestones={0: 1, 10: 3, 20: 5})
        >>> [schedule.steps_at(epoch) for epoch in (0, 9, 10, 19, 20, 99)]
        [1, 1, 3, 3, 5, 5]
    """

    def __init__(self, *, milestones: Mapping[int, int]) -> None:
        if not isinstance(milestones, Mapping) or not milestones:
            raise ValueError(
                "InnerStepsSchedule: milestones must be a non-empty mapping {epoch: inner steps}, "
                f"got {milestones!r}."
            )
        for epoch, steps in milestones.items():
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(
                    "InnerStepsSchedule: milestone epochs must be non-negative integers, "
                    f"got {epoch!r} in {milestones!r}."
                )
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValueError(
                    f"InnerStepsSchedule: inner steps must be positive integers, got {steps!r} for epoch {epoch} "
                    f"in {milestones!r}."
                )
        if 0 not in milestones:
            raise ValueError(
                "InnerStepsSchedule: milestones must contain epoch 0 (the inner steps of the first epochs), got "
                f"{dict(milestones)!r}."
            )
        self.milestones = dict(sorted(milestones.items()))
        self._epochs = list(self.milestones)

    attribute = "inner_steps"
    setting = "steps"

    def steps_at(self, epoch: int) -> int:
        """The number of inner steps of training epoch ``epoch`` (0-based)."""
        return self.milestones[self._epochs[bisect.bisect_right(self._epochs, epoch) - 1]]

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(milestones=self.milestones)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        current = self.current(pl_module)
        if isinstance(current, bool) or not isinstance(current, int):
            raise ValueError(
                "InnerStepsSchedule sets the learner's inner_loop.steps (MAML, ANIL, MetaSGD, Reptile) or its own "
                f"inner_steps attribute; {type(pl_module).__name__} has neither."
            )
        rates = getattr(pl_module, "inner_lrs", None)
        if getattr(pl_module, "learn_inner_lr", False) and rates:
            learned = min(r.numel() for r in rates.values())
            most = max(self.milestones.values())
            if most > learned:
                raise ValueError(
                    f"InnerStepsSchedule: {type(pl_module).__name__}(learn_inner_lr=True) has learned rates for "
                    f"{learned} inner steps, but milestones ask for up to {most}; build it with "
                    f"InnerLoop(steps={most})."
                )

    @override
    def value_at(self, epoch: int) -> int:
        return self.steps_at(epoch)
