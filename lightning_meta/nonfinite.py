"""Non-finite meta-losses and meta-gradients: find them, say where they came from, stop or skip.

A NaN or an infinity in a meta-batch (one corrupt input, an inner learning rate that makes the adaptation diverge,
an outer step too large) otherwise trains on silently until every weight is NaN. :class:`~lightning_meta.learners.
MetaLearner` checks the meta-loss of every training step and the meta-gradient before every optimizer step, and by
default stops with a :class:`NonFiniteError` whose message names the global step, the epoch, the ids of the tasks in
the meta-batch, which of them hold non-finite inputs, targets or predictions, and the likely causes. The
:class:`~lightning_meta.callbacks.SkipNonFiniteBatches` callback makes it skip such meta-batches instead (no
optimizer step), with a warning each time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_meta.episode import Episode

if TYPE_CHECKING:
    from lightning_meta.learners.base import MetaLearner

#: What a learner does with a non-finite meta-loss or meta-gradient in training (``"ignore"``: no check at all).
ACTIONS = ("raise", "skip", "ignore")


class NonFiniteError(FloatingPointError):
    """The meta-loss or the meta-gradient of a training step is NaN or infinite."""


def all_finite(tensors: Iterable[Tensor]) -> Tensor:
    """One boolean tensor: whether every element of every tensor is finite (no device sync).

    One reduction per tensor: the sum of the sums is finite exactly when no element is NaN or infinite (barring an
    overflow of the sum itself, which needs values near the largest float).

    Example:
        >>> import torch
        >>> bool(all_finite([torch.ones(3), torch.zeros(2)]))
        True
        >>> bool(all_finite([torch.ones(3), torch.tensor([float("nan")])]))
        False
    """
    sums = [t.sum() for t in tensors]
    if not sums:
        return torch.tensor(True)
    return torch.stack(sums).sum().isfinite()


def _tasks_with_nonfinite(tensor: Tensor | None, n_tasks: int) -> list[int]:
    if tensor is None or not tensor.is_floating_point():
        return []
    bad = ~tensor.reshape(n_tasks, -1).isfinite().all(1)
    return bad.nonzero().flatten().tolist()


def describe(learner: MetaLearner, batch: Episode, what: str, predictions: Tensor | None = None) -> str:
    """The message of a :class:`NonFiniteError`: where it happened, in which tasks, and what to try."""
    n = batch.n_tasks
    ids = batch.task_ids.tolist() if batch.task_ids is not None else None
    where = f"at global step {learner.global_step}"
    try:
        where += f" (epoch {learner.trainer.current_epoch})"
    except RuntimeError:  # not attached to a Trainer
        pass
    lines = [f"{type(learner).__name__}: the {what} is not finite {where}."]
    lines.append(
        f"The meta-batch holds {n} tasks"
        + (
            f" with episode ids {ids} (the index of each task in its stage and epoch; the datamodule's seed, the "
            "stage 'train' and the epoch give the same tasks again)."
            if ids is not None
            else "."
        )  # fmt: skip
    )

    def named(positions: list[int]) -> str:
        return str([ids[i] for i in positions]) if ids is not None else f"at positions {positions}"

    causes = []
    for field, label in (("support_x", "support inputs"), ("query_x", "query inputs"),
                         ("support_y", "support targets"), ("query_y", "query targets")):  # fmt: skip
        bad = _tasks_with_nonfinite(getattr(batch, field), n)
        if bad:
            causes.append(
                f"non-finite {label} in tasks {named(bad)}: check the data (a corrupt file, a division by zero)"
            )
    weights_bad = [name for name, p in learner.named_parameters() if not bool(p.detach().isfinite().all())]
    if weights_bad:
        causes.append(
            f"the weights are already non-finite ({weights_bad[:5]}{' ...' if len(weights_bad) > 5 else ''}): an "
            "earlier step diverged, or the model was loaded that way"
        )
    bad_predictions = _tasks_with_nonfinite(predictions, n) if predictions is not None else []
    if bad_predictions and not causes:
        causes.append(f"non-finite query predictions in tasks {named(bad_predictions)} from finite inputs and weights")
    inner_loop = getattr(learner, "inner_loop", None)
    settings = ", ".join(
        [f"inner lr={inner_loop.lr:g}, inner steps={inner_loop.steps}"] if inner_loop is not None else []
    )
    settings += (", " if settings else "") + f"lr={getattr(learner, 'lr', '?')}"
    causes.append(
        f"the adaptation or the outer step diverged: try smaller learning rates ({settings}), gradient clipping "
        "(Trainer(gradient_clip_val=1.0)), or float32 instead of float16 mixed precision"
    )
    lines.append("Likely causes: " + "; ".join(f"({i + 1}) {c}" for i, c in enumerate(causes)) + ".")
    lines.append(
        "To skip such meta-batches instead of stopping, add the callback "
        "lightning_meta.callbacks.SkipNonFiniteBatches() to the Trainer."
    )
    return " ".join(lines)


__all__ = ["ACTIONS", "NonFiniteError", "all_finite", "describe"]
