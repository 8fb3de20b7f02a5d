"""The adaptation summary ``lightning-meta fit`` prints at the end: query loss before and after inner steps."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import track
from rich.table import Table


def print_adaptation(
    learner: Any, datamodule: Any, *, steps: Sequence[int] | None = None, max_batches: int | None = None
) -> dict[int, float]:
    """Print (and return) a gradient learner's query loss before and after adaptation on the validation episodes.

    Args:
        learner: a :class:`~lightning_meta.learners.gradient.GradientLearner` (it has ``adaptation_curve``).
        datamodule: an :class:`~lightning_meta.data.EpisodicDataModule` with validation data.
        steps: numbers of inner steps to report (default: 0, 1 and the learner's evaluation steps).
        max_batches: use only the first validation meta-batches (the CLI passes the number the Trainer's
            validation used, so ``fast_dev_run`` and ``limit_val_batches`` hold here too).

    Returns:
        ``{steps: mean query loss}``; empty when there is no validation data.
    """
    loader = datamodule.val_dataloader()
    if not loader or max_batches == 0:
        return {}
    batches = list(itertools.islice(loader, max_batches))
    steps = steps or sorted({0, 1, learner.inner_loop.evaluation_steps})
    tasks = sum(batch.n_tasks for batch in batches)
    console = Console()
    # as long as a validation run of as many meta-batches: say what runs, and show progress on a terminal
    meta_batches = f"{len(batches)} meta-batch" + ("" if len(batches) == 1 else "es")
    console.print(
        f"Adaptation summary: {type(learner).__name__} on {tasks} validation tasks ({meta_batches}), "
        f"query loss after {', '.join(map(str, steps))} inner steps"
    )
    progress = track(batches, description="adapting", console=console, transient=True)
    curve: dict[int, float] = learner.adaptation_curve(progress, steps)
    metric = "query cross-entropy" if batches[0].is_classification else "query MSE"
    table = Table(title=f"{type(learner).__name__}, {tasks} validation tasks")
    table.add_column("inner steps", justify="right")
    table.add_column(metric, justify="right")
    for k, value in curve.items():
        table.add_row(f"{k}" + (" (before adaptation)" if k == 0 else ""), f"{value:.4f}")
    console.print(table)
    return curve


__all__ = ["print_adaptation"]
