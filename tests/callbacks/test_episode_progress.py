"""EpisodeProgress: tasks per second and the running query accuracy on Lightning's rich progress bar."""

from __future__ import annotations

import io

import lightning as L
import pytest
import rich
import torch
from rich.progress import Progress

from lightning_meta.callbacks import EpisodeProgress
from lightning_meta.callbacks.episode_progress import TasksPerSecondColumn
from tests.helpers.callback_runs import (
    image_datamodule,
    image_protonet,
    quiet_trainer,
    sinusoid_datamodule,
    sinusoid_maml,
)


@pytest.fixture
def screen():
    """A recorded terminal for rich; the global console is put back afterwards."""
    out = io.StringIO()
    yield out, {"file": out, "force_terminal": True, "width": 250, "color_system": None}
    rich.reconfigure()


class StepValues(L.Callback):
    def __init__(self, name: str) -> None:
        self.name, self.values = name, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == trainer.max_epochs - 1:
            self.values.append((float(trainer.callback_metrics[self.name]), batch.n_tasks))


def running_mean(values) -> float:
    return sum(v * n for v, n in values) / sum(n for _, n in values)


def test_the_bar_shows_tasks_per_second_and_the_running_query_accuracy_of_the_epoch(tmp_path, screen):
    out, console = screen
    torch.manual_seed(0)
    bar = EpisodeProgress(leave=True, console_kwargs=console)
    steps = StepValues("train/acc")
    trainer = quiet_trainer(tmp_path, max_epochs=2, enable_progress_bar=True, callbacks=[bar, steps])
    assert trainer.progress_bar_callback is bar
    trainer.fit(image_protonet(), image_datamodule(train_episodes=20, tasks_per_batch=3))  # 6 batches of 3 tasks
    text = out.getvalue()
    assert "tasks/s" in text and "it/s" not in text
    assert "train/acc_running" in text and "Epoch 1/1" in text
    assert len(steps.values) == 6
    # the running accuracy is the task-weighted mean of the epoch's per-step accuracies (here: of epoch 1 only)
    assert float(bar.running_metrics()["train/acc_running"]) == pytest.approx(running_mean(steps.values), abs=1e-6)


def test_regression_shows_the_running_loss(tmp_path, screen):
    out, console = screen
    bar = EpisodeProgress(console_kwargs=console)
    steps = StepValues("train/loss")
    trainer = quiet_trainer(tmp_path, enable_progress_bar=True, callbacks=[bar, steps])
    trainer.fit(sinusoid_maml(), sinusoid_datamodule())
    assert set(bar.running_metrics()) == {"train/loss_running"}
    assert float(bar.running_metrics()["train/loss_running"]) == pytest.approx(running_mean(steps.values), rel=1e-6)


def test_tasks_per_second_is_batches_per_second_times_the_tasks_of_a_batch():
    clock = iter([0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    progress = Progress(get_time=lambda: next(clock))
    bar = progress.add_task("train", total=10, tasks_per_batch=6)
    for _ in range(4):
        progress.advance(bar)  # two meta-batches per second
    assert TasksPerSecondColumn().render(progress.tasks[bar]).plain == "12.0 tasks/s"


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_episode_progress_refuses_a_bad_refresh_rate_naming_it(value):
    with pytest.raises(
        ValueError, match=rf"EpisodeProgress: refresh_rate must be a non-negative integer, got {value!r}"
    ):
        EpisodeProgress(refresh_rate=value)
