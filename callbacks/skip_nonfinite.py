"""SkipNonFiniteBatches: skip meta-batches whose meta-loss or meta-gradient is not finite, instead of stopping."""

from __future__ import annotations

from typing import Any

import lightning as L
from typing_extensions import override

from lightning_meta.learners.base import MetaLearner


class SkipNonFiniteBatches(L.Callback):
    """Skip a meta-batch with a NaN or infinite meta-loss or meta-gradient: no optimizer step, a warning each time.

    By default a :class:`~lightning_meta.learners.MetaLearner` stops training at the first such meta-batch with a
    :class:`~lightning_meta.nonfinite.NonFiniteError` that names the step, the tasks and the likely causes. With this
    callback it warns with the same message, takes no optimizer step for that meta-batch, and goes on; it logs
    ``train/skipped_batches``, the number skipped so far. Under DDP every rank skips together (one rank's bad batch
    skips the step everywhere).

    Args:
        max_skipped: stop anyway (with the error) once more than this many meta-batches were skipped in a run, since
            a run that skips every batch learns nothing; ``None`` for no limit.

    Raises:
        ValueError: for a negative ``max_skipped``.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[SkipNonFiniteBatches(max_skipped=10)], logger=False)
        >>> [type(c).__name__ for c in trainer.callbacks if isinstance(c, SkipNonFiniteBatches)]
        ['SkipNonFiniteBatches']
    """

    def __init__(self, max_skipped: int | None = 100) -> None:
        if max_skipped is not None and (isinstance(max_skipped, bool) or not isinstance(max_skipped, int)
                                        or max_skipped < 0):  # fmt: skip
            raise ValueError(f"SkipNonFiniteBatches: max_skipped must be a non-negative integer or None, got "
                             f"{max_skipped!r}.")  # fmt: skip
        self.max_skipped = max_skipped

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, MetaLearner):
            raise TypeError(f"SkipNonFiniteBatches works with lightning_meta learners, got {type(pl_module).__name__}.")
        pl_module.nonfinite = "skip"  # type: ignore[assignment]

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        skipped = getattr(pl_module, "skipped_batches", 0)
        pl_module.log("train/skipped_batches", float(skipped), batch_size=1)
        if self.max_skipped is not None and skipped > self.max_skipped:
            pl_module.nonfinite = "raise"  # type: ignore[assignment]  # the next one stops the run
