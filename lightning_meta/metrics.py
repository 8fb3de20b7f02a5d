"""Few-shot evaluation metrics: mean accuracy over episodes with its 95% confidence interval.

The protocol of the few-shot literature (Vinyals et al., 2016; Finn et al., 2017; Chen et al., 2019): evaluate
on many fixed test episodes (600 by default), score each episode by the accuracy over its query examples, and
report the mean over episodes with the half-width of its 95% confidence interval, ``1.96 * std / sqrt(n)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

#: Two-sided 95% quantile of the standard normal distribution, the factor the few-shot literature uses.
Z_95 = 1.96


class EpisodeAccuracyResult(NamedTuple):
    """What :meth:`EpisodeAccuracy.compute` returns.

    Attributes:
        mean: mean accuracy over the episodes, a 0-d float tensor in ``[0, 1]`` (NaN when ``n == 0``).
        ci95: half-width of the 95% confidence interval of ``mean``, ``1.96 * std(ddof=1) / sqrt(n)``, a 0-d float
            tensor (NaN when ``n < 2``: the spread of a single episode is unknown).
        n: number of episodes, summed over all processes.
    """

    mean: Tensor
    ci95: Tensor
    n: int


def _check_inputs(preds: Tensor, target: Tensor, caller: str) -> None:
    """Raise a ``ValueError`` naming the argument, what is accepted and what was given."""
    if not isinstance(preds, Tensor) or not isinstance(target, Tensor):
        raise ValueError(
            f"{caller}: preds and target must be tensors, got {type(preds).__name__} and {type(target).__name__}."
        )
    if target.ndim != 2:
        raise ValueError(
            f"{caller}: target must be query labels of shape [n_tasks, n_query], got shape {tuple(target.shape)}."
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"{caller}: target must hold integer class labels, got dtype {target.dtype}.")
    if target.numel() == 0:
        raise ValueError(
            f"{caller}: target must hold at least one task with at least one query, got shape {tuple(target.shape)}."
        )
    if preds.ndim == target.ndim + 1:
        if not preds.is_floating_point():
            raise ValueError(
                f"{caller}: preds of shape [n_tasks, n_query, ways] must be float logits, got {preds.dtype}."
            )
        if preds.shape[:-1] != target.shape or preds.shape[-1] == 0:
            raise ValueError(
                f"{caller}: preds logits must have shape [n_tasks, n_query, ways] = "
                f"[{target.shape[0]}, {target.shape[1]}, ways >= 1] to match target of shape {tuple(target.shape)}, "
                f"got {tuple(preds.shape)}."
            )
    elif preds.ndim == target.ndim:
        if preds.shape != target.shape:
            raise ValueError(
                f"{caller}: preds labels must have the shape of target, [n_tasks, n_query] = {tuple(target.shape)}, "
                f"got {tuple(preds.shape)}."
            )
        if preds.is_floating_point() or preds.is_complex() or preds.dtype == torch.bool:
            raise ValueError(
                f"{caller}: preds of shape [n_tasks, n_query] must be integer class labels, got dtype {preds.dtype}; "
                "pass float logits as [n_tasks, n_query, ways]."
            )
    else:
        raise ValueError(
            f"{caller}: preds must be logits [n_tasks, n_query, ways] or labels [n_tasks, n_query] for target of shape "
            f"{tuple(target.shape)}, got shape {tuple(preds.shape)}."
        )


def per_episode_accuracy(preds: Tensor, target: Tensor) -> Tensor:
    """Accuracy over the query examples of each task of a meta-batch.

    Args:
        preds: query logits ``[n_tasks, n_query, ways]`` (float), or predicted labels ``[n_tasks, n_query]``
            (integer).
        target: query labels ``[n_tasks, n_query]`` (integer, ``0..ways-1``).

    Returns:
        The fraction of correctly classified queries of each task, a float tensor ``[n_tasks]`` (default float
        dtype) on the device of the inputs.

    Raises:
        ValueError: if the shapes or dtypes of ``preds`` and ``target`` do not match one of the layouts above.

    Example:
        >>> import torch
        >>> from lightning_meta.metrics import per_episode_accuracy
        >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [3.0, 0.0]]])  # 2 tasks, 2 queries, 2 ways
        >>> per_episode_accuracy(logits, torch.tensor([[0, 1], [0, 1]]))
        tensor([1.0000, 0.5000])
    """
    return _per_episode_accuracy(preds, target, "per_episode_accuracy")


def per_episode_mse(predictions: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the query examples of each task of a meta-batch, ``[n_tasks]``, in float32 or wider.

    Example:
        >>> import torch
        >>> per_episode_mse(torch.zeros(2, 3, 1), torch.tensor([[[1.0], [1.0], [1.0]], [[2.0], [0.0], [0.0]]]))
        tensor([1.0000, 1.3333])
    """
    if predictions.dtype in (torch.float16, torch.bfloat16):  # mixed precision: square in float32
        predictions, target = predictions.float(), target.float()
    return (predictions - target).pow(2).flatten(1).mean(1)


def mean_and_ci95(values: Tensor) -> tuple[Tensor, Tensor]:
    """The mean of per-episode values and the half-width of its 95% interval, ``1.96 * std(ddof=1) / sqrt(n)``.

    The mean is NaN without values, the half-width NaN with fewer than two.

    Example:
        >>> mean, ci95 = mean_and_ci95(torch.tensor([0.5, 0.7, 0.9]))
        >>> round(float(mean), 4), round(float(ci95), 4)
        (0.7, 0.2263)
    """
    n = values.numel()
    nan = values.new_tensor(math.nan)
    mean = values.mean() if n > 0 else nan
    ci95 = Z_95 * values.std(correction=1) / math.sqrt(n) if n > 1 else nan
    return mean, ci95


def _per_episode_accuracy(preds: Tensor, target: Tensor, caller: str) -> Tensor:
    _check_inputs(preds, target, caller)
    if preds.ndim == target.ndim + 1:  # logits: a query with any non-finite logit counts as wrong
        correct = (preds.argmax(-1) == target) & preds.isfinite().all(-1)
    else:
        correct = preds == target
    return correct.to(torch.get_default_dtype()).mean(dim=1)


class EpisodeAccuracy(Metric):
    """Mean query accuracy over episodes with its 95% confidence interval, synchronised across processes.

    Each :meth:`update` receives the query predictions and labels of a meta-batch and stores the accuracy of
    every episode (task) in it. :meth:`compute` returns the mean over all stored episodes, the half-width of
    the 95% confidence interval ``1.96 * std(ddof=1) / sqrt(n)`` and the number of episodes ``n``. The
    per-episode accuracies are a ``cat`` state, so under DDP :meth:`compute` gathers the episodes of every
    process first and all processes return the same numbers, as if one process had seen every episode.

    ``n == 1`` gives ``ci95 = NaN`` (an interval needs at least two episodes to estimate the spread), and
    ``n == 0`` (compute before any update) gives ``mean = ci95 = NaN`` after torchmetrics' own warning.

    Args:
        compute_on_cpu: move the stored accuracies to the CPU after each update (a long evaluation then keeps
            no device memory).
        sync_on_compute: gather the episodes of all processes in :meth:`compute` (torchmetrics' default).
        process_group: the process group to gather over; the default group when ``None``.
        dist_sync_fn: the function that gathers a state across processes; torchmetrics' all-gather when
            ``None``.

    Example:
        >>> import torch
        >>> from lightning_meta.metrics import EpisodeAccuracy
        >>> metric = EpisodeAccuracy()
        >>> target = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 1]])  # 2 tasks with 4 queries each
        >>> metric.update(torch.tensor([[0, 1, 1, 0], [0, 0, 0, 1]]), target)  # accuracies 1.0 and 0.75
        >>> result = metric.compute()
        >>> result.mean, result.ci95, result.n
        (tensor(0.8750), tensor(0.2450), 2)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    accuracies: list[Tensor]  # after a sync, torchmetrics may hold it as one concatenated Tensor

    def __init__(
        self,
        *,
        compute_on_cpu: bool = False,
        sync_on_compute: bool = True,
        process_group: Any | None = None,
        dist_sync_fn: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(
            compute_on_cpu=compute_on_cpu,
            sync_on_compute=sync_on_compute,
            process_group=process_group,
            dist_sync_fn=dist_sync_fn,
        )
        self.add_state("accuracies", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Store the accuracy of every episode of a meta-batch.

        Args:
            preds: query logits ``[n_tasks, n_query, ways]`` (float), or predicted labels ``[n_tasks, n_query]``
                (integer).
            target: query labels ``[n_tasks, n_query]`` (integer).

        Raises:
            ValueError: if the shapes or dtypes of ``preds`` and ``target`` do not match one of the layouts above.
        """
        self.accuracies.append(_per_episode_accuracy(preds, target, f"{type(self).__name__}.update"))

    def compute(self) -> EpisodeAccuracyResult:
        """Mean accuracy over all episodes seen (by all processes), its 95% interval and the episode count.

        Returns:
            An :class:`EpisodeAccuracyResult` ``(mean, ci95, n)``; see the class docstring for ``n < 2``.
        """
        state = self.accuracies
        if isinstance(state, list) and not state:
            accuracies = torch.empty(0, dtype=torch.get_default_dtype(), device=self.device)
        else:
            accuracies = dim_zero_cat(state)
        mean, ci95 = mean_and_ci95(accuracies)
        return EpisodeAccuracyResult(mean=mean, ci95=ci95, n=accuracies.numel())
