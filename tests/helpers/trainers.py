"""The quiet CPU Trainer of the tests, and the before/after-training check of the learner tests."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_meta.data import EpisodicDataModule
from lightning_meta.learners import MetaLearner


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A CPU Trainer without logger, progress bar or model summary, checkpointing only with a given ModelCheckpoint,
    and with ``strategy="ddp"`` (processes, gloo) when ``devices`` is above 1.

    ``kwargs`` override these defaults and pass through to ``L.Trainer``.
    """
    given_checkpoint = any(isinstance(c, ModelCheckpoint) for c in kwargs.get("callbacks") or [])
    strategy = "ddp" if kwargs.get("devices", 1) > 1 else "auto"
    defaults = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                "enable_checkpointing": given_checkpoint, "strategy": strategy}  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def metrics_before_and_after_fit(
    learner: MetaLearner, datamodule: EpisodicDataModule, **trainer_kwargs: Any
) -> tuple[dict[str, float], dict[str, float]]:
    """``trainer.test`` of the learner as it is, then after ``trainer.fit`` (one epoch unless told otherwise)."""
    trainer = quiet_trainer(**{"max_epochs": 1, **trainer_kwargs})
    (before,) = trainer.test(learner, datamodule=datamodule, verbose=False)
    trainer.fit(learner, datamodule=datamodule)
    (after,) = trainer.test(learner, datamodule=datamodule, verbose=False)
    return before, after
