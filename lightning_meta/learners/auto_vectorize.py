"""AutoVectorize: the callback behind ``InnerLoop(vectorize="auto")``, which times vmap and the per-task loop.

A gradient learner adapts the tasks of a meta-batch together under :func:`torch.func.vmap` or one by one; which is
faster depends on the model, the meta-batch and the device. With ``vectorize="auto"`` the learner adds this
callback to the Trainer (``configure_callbacks``): it runs the first training meta-batches alternately with each
(one warm-up and one timed step each, forward, backward and optimizer step included), keeps the faster, logs the
choice, and sets the learner's ``chosen_vectorize``, which the learner saves in checkpoints. Under DDP rank 0's
choice is broadcast, so every rank adapts the same way.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

_NATIVE_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def has_native_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` holds one of PyTorch's native batch norm layers (wrong second order under vmap)."""
    return any(isinstance(m, _NATIVE_BATCH_NORMS) for m in model.modules())


def vmap_ruled_out(model: nn.Module, device: torch.device) -> str | None:
    """Why ``auto`` must not try vmap on this model and device, or ``None``.

    * PyTorch's native BatchNorm: with running statistics it refuses vmap in training mode; without them its
      second-order gradients under vmap are wrong (measured against learn2learn in float64: 2e-3 relative error,
      the loop 1e-15). Our backbones use :class:`~lightning_meta.models.BatchStatNorm2d` instead.
    * Convolutions on a CPU: vmap makes them grouped convolutions and keeps every task's activations. Measured
      with ``benchmarks/maml_throughput.py`` (Conv4-32, 84x84, 5-way 1-shot, second order): vmap was 2x slower
      than the per-task loop and took 28x its memory (15 GB more at a meta-batch of 32).

    Example:
        >>> vmap_ruled_out(nn.Linear(2, 1), torch.device("cpu")) is None
        True
        >>> vmap_ruled_out(nn.Sequential(nn.Conv2d(1, 2, 3)), torch.device("cpu"))[:36]
        'the model has convolutions and runs '
    """
    if has_native_batch_norm(model):
        return "the model has PyTorch's native BatchNorm, whose second-order gradients under vmap are wrong"
    if device.type == "cpu" and any(isinstance(m, _CONVOLUTIONS) for m in model.modules()):
        return (
            "the model has convolutions and runs on the CPU, where vmap is slower and holds every task's "
            "activations at once"
        )
    return None


class AutoVectorize(Callback):
    """Time ``vmap`` and ``loop`` on the first training meta-batches and set the learner's ``chosen_vectorize``.

    Works with any learner that has ``model``, ``chosen_vectorize`` and ``trial_vectorize`` attributes (every
    :class:`~lightning_meta.learners.gradient.GradientLearner`); a learner whose choice is already made (given, or
    restored from a checkpoint) is left alone. A model that :func:`vmap_ruled_out` names goes straight to ``loop``.

    Args:
        trial_steps: training meta-batches per candidate: the first is a warm-up, the fastest of the rest counts.
    """

    def __init__(self, trial_steps: int = 2) -> None:
        if isinstance(trial_steps, bool) or not isinstance(trial_steps, int) or trial_steps < 2:
            raise ValueError(f"AutoVectorize: trial_steps must be an integer of at least 2, got {trial_steps!r}.")
        self.trial_steps = trial_steps
        self.times: dict[str, list[float]] = {"vmap": [], "loop": []}
        self._start = 0.0

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.chosen_vectorize is not None:
            return
        name = type(pl_module).__name__
        reason = vmap_ruled_out(pl_module.model, pl_module.device)
        if reason is not None:
            pl_module.chosen_vectorize = "loop"
            rank_zero_info(f"{name}(vectorize='auto') adapts with 'loop': {reason}.")
            return
        done = sum(len(t) for t in self.times.values())
        pl_module.trial_vectorize = ("vmap", "loop")[done % 2]
        self._start = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        trial = pl_module.trial_vectorize
        if trial is None:
            return
        self.times[trial].append(time.perf_counter() - self._start)
        pl_module.trial_vectorize = None
        if all(len(t) >= self.trial_steps for t in self.times.values()):
            timed = {s: min(t[1:]) for s, t in self.times.items()}  # the first of each was the warm-up
            choice = trainer.strategy.broadcast(min(timed, key=timed.__getitem__), src=0)
            pl_module.chosen_vectorize = choice
            rank_zero_info(
                f"{type(pl_module).__name__}(vectorize='auto') adapts with {choice!r}: "
                + ", ".join(f"{s} {t * 1e3:.1f} ms" for s, t in timed.items())
                + " per training step."
            )


__all__ = ["AutoVectorize", "has_native_batch_norm", "vmap_ruled_out"]
