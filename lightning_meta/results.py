"""Few-shot results as a paper prints them: mean accuracy over test episodes with its 95% confidence interval.

:func:`report_test_results` is what a learner calls at the end of ``trainer.test`` (rank zero, verbose runs only) to
print a rich table such as::

    Omniglot  5-way 1-shot  ProtoNet  98.7 ± 0.2 %  (600 episodes)

:func:`print_results` prints any list of :class:`EpisodeResult` rows the same way (the benchmarks use it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class EpisodeResult:
    """One row of a few-shot results table.

    Args:
        method: the learner's name, e.g. ``"ProtoNet"``.
        accuracy: mean accuracy over the episodes, a fraction in ``[0, 1]``.
        ci95: half-width of the 95% confidence interval of ``accuracy``, a fraction.
        episodes: number of test episodes, when known.
        dataset: the test data's name, e.g. ``"Omniglot"``, when known.
        ways: classes per test episode, when known.
        shots: support examples per class, when known.

    Example:
        >>> str(EpisodeResult("ProtoNet", 0.9871, 0.0018, episodes=600, dataset="Omniglot", ways=5, shots=1))
        'Omniglot 5-way 1-shot  ProtoNet  98.7 ± 0.2 %  (600 episodes)'
    """

    method: str
    accuracy: float
    ci95: float
    episodes: int | None = None
    dataset: str | None = None
    ways: int | None = None
    shots: int | None = None

    @property
    def task(self) -> str:
        """``"5-way 1-shot"``, or the part of it that is known."""
        parts = [f"{self.ways}-way" if self.ways else "", f"{self.shots}-shot" if self.shots else ""]
        return " ".join(p for p in parts if p)

    @property
    def score(self) -> str:
        """``"98.7 ± 0.2 %"``."""
        return f"{100 * self.accuracy:.1f} ± {100 * self.ci95:.1f} %"

    def __str__(self) -> str:
        head = " ".join(p for p in (self.dataset or "", self.task) if p)
        line = "  ".join(p for p in (head, self.method, self.score) if p)
        return f"{line}  ({self.episodes} episodes)" if self.episodes is not None else line


def results_table(results: Sequence[EpisodeResult], *, title: str | None = "Few-shot test accuracy") -> Table:
    """A rich table with one row per result: dataset, task, method, accuracy ± 95% CI, episodes."""
    table = Table(title=title)
    table.add_column("Dataset")
    table.add_column("Task")
    table.add_column("Method")
    table.add_column("Accuracy (95% CI)", justify="right")
    table.add_column("Episodes", justify="right")
    for r in results:
        episodes = "" if r.episodes is None else str(r.episodes)
        table.add_row(r.dataset or "", r.task, r.method, r.score, episodes)
    return table


def print_results(
    results: Sequence[EpisodeResult],
    *,
    title: str | None = "Few-shot test accuracy",
    console: Console | None = None,
) -> None:
    """Print ``results`` as a rich table (on ``console``, default: a new console on standard output).

    Example:
        >>> print_results([EpisodeResult("ProtoNet", 0.987, 0.002, 600, "Omniglot", 5, 1)],
        ...               console=Console(width=100, color_system=None))  # doctest: +NORMALIZE_WHITESPACE
                                  Few-shot test accuracy
        ┏━━━━━━━━━━┳━━━━━━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━┓
        ┃ Dataset  ┃ Task         ┃ Method   ┃ Accuracy (95% CI) ┃ Episodes ┃
        ┡━━━━━━━━━━╇━━━━━━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━┩
        │ Omniglot │ 5-way 1-shot │ ProtoNet │      98.7 ± 0.2 % │      600 │
        └──────────┴──────────────┴──────────┴───────────────────┴──────────┘
    """
    (console or Console()).print(results_table(results, title=title))


def _dataset_name(data: Any) -> str | None:
    if data is None:
        return None
    name = getattr(data, "name", None)
    return name if isinstance(name, str) else type(data).__name__


def result_from_trainer(trainer: L.Trainer, learner: L.LightningModule) -> EpisodeResult | None:
    """The result of the last ``trainer.test`` run, or ``None`` if it logged no ``test/acc``.

    The accuracy and interval come from ``trainer.callback_metrics`` (``test/acc``, ``test/acc_ci95``); the
    dataset, ways, shots and number of episodes from the trainer's datamodule when it is an
    :class:`~lightning_meta.data.EpisodicDataModule` (``eval_ways``, ``eval_shots``, ``eval_episodes``, fewer
    episodes when ``limit_test_batches`` cut the run short).
    """
    metrics = trainer.callback_metrics
    if "test/acc" not in metrics:
        return None
    accuracy = float(metrics["test/acc"])
    ci95 = float(metrics["test/acc_ci95"]) if "test/acc_ci95" in metrics else math.nan
    datamodule = getattr(trainer, "datamodule", None)
    dataset = ways = shots = episodes = None
    if datamodule is not None and hasattr(datamodule, "eval_episodes"):
        data = getattr(datamodule, "data", {})
        dataset = _dataset_name(data.get("test") if isinstance(data, dict) else None)
        ways, shots = datamodule.eval_ways, datamodule.eval_shots
        episodes = datamodule.eval_episodes
        if trainer.limit_test_batches != 1.0:
            ran = sum(trainer.num_test_batches) * datamodule.eval_tasks_per_batch * trainer.world_size
            episodes = min(episodes, int(ran))
    return EpisodeResult(type(learner).__name__, accuracy, ci95, episodes, dataset, ways, shots)


def report_test_results(trainer: L.Trainer, learner: L.LightningModule, *, console: Console | None = None) -> None:
    """Print the result table of ``trainer.test`` on global rank zero, unless the run was ``verbose=False``.

    Meant for :meth:`~lightning.pytorch.core.hooks.ModelHooks.on_test_end`, where ``test/acc`` has been logged.
    """
    if not trainer.is_global_zero or not trainer.test_loop.verbose:
        return
    result = result_from_trainer(trainer, learner)
    if result is not None:
        print_results([result], console=console)
