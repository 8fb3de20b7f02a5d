"""EpisodeProgress: Lightning's rich progress bar, counting tasks per second and the running query accuracy."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn, RichProgressBarTheme
from rich.progress import ProgressColumn, Task
from rich.style import Style
from rich.text import Text
from torch import Tensor
from typing_extensions import override


class TasksPerSecondColumn(ProgressColumn):
    """Speed in tasks per second: the bar's meta-batches per second times its ``tasks_per_batch`` field.

    Example:
        >>> from rich.progress import Progress
        >>> clock = iter(range(100))
        >>> progress = Progress(get_time=lambda: float(next(clock)))
        >>> bar = progress.add_task("train", total=10, tasks_per_batch=8)
        >>> for _ in range(3):
        ...     progress.advance(bar)  # one meta-batch per second
        >>> TasksPerSecondColumn().render(progress.tasks[bar]).plain
        '8.0 tasks/s'
    """

    def __init__(self, style: str | Style = "") -> None:
        self.style = style
        super().__init__()

    @override
    def render(self, task: Task) -> Text:
        speed = task.speed or 0.0
        return Text(f"{speed * task.fields.get('tasks_per_batch', 1):.1f} tasks/s", style=self.style)


class EpisodeProgress(RichProgressBar):
    """Lightning's :class:`~lightning.pytorch.callbacks.RichProgressBar`, in tasks instead of batches.

    The speed column counts tasks per second over all processes (meta-batches per second times the tasks of a
    meta-batch times the number of ranks) instead of Lightning's batches per second, and the metrics show the
    running query accuracy of the current training epoch, ``train/acc_running``: the mean of the learner's
    ``train/acc`` over the epoch's tasks so far (the per-step ``train/acc`` is noisy with few tasks per batch).
    For regression, ``train/loss_running`` is the running mean of ``train/loss`` instead. Everything else
    (validation and test bars, themes, ``leave``) is Lightning's.

    Pass it in ``callbacks``; it replaces Lightning's default progress bar.

    Args:
        refresh_rate: refreshes per second (Lightning's default); 0 disables the bar.
        leave: keep each finished epoch's bar on the screen.
        theme: the styles of Lightning's ``RichProgressBarTheme`` (its ``processing_speed`` styles the tasks/s).
        console_kwargs: arguments of the ``rich.console.Console`` it draws on.

    Example:
        >>> from lightning_meta.callbacks import EpisodeProgress
        >>> bar = EpisodeProgress(leave=True)
        >>> bar.running_metrics()  # before training
        {}
    """

    def __init__(
        self,
        *,
        refresh_rate: int = 100,
        leave: bool = False,
        theme: RichProgressBarTheme | None = None,
        console_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ValueError(f"EpisodeProgress: refresh_rate must be a non-negative integer, got {refresh_rate!r}.")
        super().__init__(
            refresh_rate=refresh_rate,
            leave=leave,
            theme=theme if theme is not None else RichProgressBarTheme(),
            console_kwargs=console_kwargs,
        )
        self._sums: dict[str, Tensor] = {}
        self._tasks = 0

    def running_metrics(self) -> dict[str, Tensor]:
        """The running means of this training epoch, ``{"train/acc_running": ...}`` (or ``train/loss_running``)."""
        if not self._tasks:
            return {}
        return {f"{name}_running": total / self._tasks for name, total in self._sums.items()}

    @override
    def configure_columns(self, trainer: L.Trainer) -> list:
        return [
            TasksPerSecondColumn(self.theme.processing_speed) if isinstance(column, ProcessingSpeedColumn) else column
            for column in super().configure_columns(trainer)
        ]

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.update({name: float(value) for name, value in self.running_metrics().items()})
        return items

    def _set_tasks_per_batch(self, bar: Any, batch: Any, trainer: L.Trainer) -> None:
        n_tasks = getattr(batch, "n_tasks", 1)
        if self.progress is not None and bar is not None:
            self.progress.update(bar, tasks_per_batch=n_tasks * trainer.world_size)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sums, self._tasks = {}, 0
        super().on_train_epoch_start(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n_tasks = getattr(batch, "n_tasks", 1)
        metrics = trainer.callback_metrics
        name = "train/acc" if "train/acc" in metrics else "train/loss" if "train/loss" in metrics else None
        if name is not None:
            value = metrics[name].detach().float() * n_tasks  # stays on the device: no sync per step
            self._sums = {name: self._sums.get(name, 0.0) + value}
            self._tasks += n_tasks
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._set_tasks_per_batch(self.train_progress_bar_id, batch, trainer)

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if not trainer.sanity_checking:
            self._set_tasks_per_batch(self.val_progress_bar_id, batch, trainer)

    @override
    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._set_tasks_per_batch(self.test_progress_bar_id, batch, trainer)
