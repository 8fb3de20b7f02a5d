"""AdaptationCurve: how well the learner adapts after 0, 1, 2, 5, 10 inner steps (or 1, 5, 10 shots, or k RL steps)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics.aggregation import CatMetric
from typing_extensions import override

from lightning_meta._checks import positive_int
from lightning_meta.callbacks._evaluation import (
    episode_dataset,
    episodic_datamodule,
    figure_dir,
    fixed_episodes,
    meta_learner,
    new_figure,
    positive_ints,
    publish_figure,
    require_matplotlib,
    to_device,
    undisturbed,
)
from lightning_meta.episode import Episode
from lightning_meta.learners.base import MetaLearner, outside_inference_mode
from lightning_meta.learners.gradient import GradientLearner
from lightning_meta.metrics import mean_and_ci95, per_episode_accuracy, per_episode_mse
from lightning_meta.rl.datamodule import TaskBatch, TaskDataModule, TaskDataset


def first_shots(batch: Episode, shots: int) -> Episode:
    """The episode with only the first ``shots`` support examples of each class (every class must have them).

    Example:
        >>> import torch
        >>> from lightning_meta import Episode
        >>> task = Episode(torch.arange(6.0).unsqueeze(1), torch.tensor([0, 0, 0, 1, 1, 1]), torch.zeros(2, 1),
        ...                torch.tensor([0, 1]), ways=2)
        >>> one_shot = first_shots(Episode.stack([task]), 1)
        >>> one_shot.support_x.flatten().tolist(), one_shot.support_y.tolist()
        ([0.0, 3.0], [[0, 1]])
    """
    if batch.ways is None:
        raise ValueError("first_shots: shots apply to classification episodes (ways set), got a regression episode.")
    one_hot = F.one_hot(batch.support_y, batch.ways)  # [T, S, W]
    position = ((one_hot.cumsum(1) - 1) * one_hot).sum(-1)  # the rank of each example within its class
    keep = position < shots
    n_tasks, n_support = batch.n_tasks, batch.ways * shots
    return dataclasses.replace(
        batch,
        support_x=batch.support_x[keep].reshape(n_tasks, n_support, *batch.support_x.shape[2:]),
        support_y=batch.support_y[keep].reshape(n_tasks, n_support),
    )


def returns_learner(learner: MetaLearner, datamodule: Any) -> bool:
    """Whether ``learner`` is a meta-RL learner (it has ``returns_after``) on a task datamodule; a mismatch errors."""
    has_returns = callable(getattr(learner, "returns_after", None))
    on_tasks = isinstance(datamodule, TaskDataModule)
    if has_returns and not on_tasks:
        raise ValueError(
            f"AdaptationCurve: {type(learner).__name__} is a meta-RL learner (it has returns_after), so its curve is "
            f"the return on fixed environment tasks: fit it with a lightning_meta.rl.TaskDataModule, got "
            f"{type(datamodule).__name__}."
        )
    if on_tasks and not has_returns:
        raise ValueError(
            f"AdaptationCurve: a TaskDataModule's tasks are environments; the curve of the return on them needs a "
            f"learner with returns_after(batch, steps) (such as lightning_meta.rl.MAMLPolicyGradient), got "
            f"{type(learner).__name__}."
        )
    return has_returns


class AdaptationCurve(Callback):
    """Query accuracy (or MSE) on fixed validation episodes after each number of inner steps, logged and plotted.

    The question MAML answers is how much a few gradient steps on the support set help. Every ``every_n_epochs``
    training epochs (at the end of the epoch, after validation) the callback adapts the learner to the first
    ``episodes`` validation episodes with 0, 1, 2, 5, 10, ... first-order inner steps (0 is the meta-learned
    initialisation itself) and measures the query accuracy (classification) or mean squared error (regression)
    after each. It logs ``adaptation/acc_{k}_steps`` (a fraction, like ``val/acc``) or ``adaptation/mse_{k}_steps``
    and, with ``plot=True``, draws the curve (mean and 95% confidence interval over the episodes, the first
    evaluated epoch as a dashed reference, chance level for classification) into ``{dirpath}/epoch={epoch}.png``;
    with a ``TensorBoardLogger`` the figure also goes to TensorBoard under the tag ``adaptation_curve``.

    Metric-based learners (ProtoNet, MatchingNet, R2D2: ``adapts_with_gradients = False``) take no inner steps;
    for them the curve is over the number of support examples per class: the callback draws fixed validation
    episodes with ``max(shots)`` shots and keeps the first ``k`` of each class, so every point uses the same
    queries and nested supports, and logs ``adaptation/acc_{k}_shots``. Shots the validation classes cannot supply
    (with the queries) are dropped with a warning. For a metric learner on regression tasks the callback warns
    that it does not apply and does nothing.

    Meta-RL learners (any learner with a ``returns_after(batch, steps)`` method giving each task's mean return after
    ``0 .. steps`` inner steps, as :class:`~lightning_meta.rl.MAMLPolicyGradient` has) on a
    :class:`~lightning_meta.rl.TaskDataModule`: the curve is the mean return on the first ``episodes`` fixed
    validation tasks (the tasks of the learner's own validation) after each number of ``steps``, logged as
    ``adaptation/return_{k}_steps`` and drawn with its 95% confidence interval over the tasks. Every point costs
    one round of rollouts per task, so pass the steps you need (``steps=(0, 1, 2, 3)`` as in the MAML paper). The
    rollouts are seeded by each task, so the values do not depend on the training run's random state (nor move it).

    The evaluation disturbs nothing (modules' modes, random state, gradients; see
    :class:`~lightning_meta.callbacks.MetaTest`). Under DDP the episodes are dealt to the ranks and the results
    gathered, so the logged values are those of one process; only global rank zero writes files. The history of
    curves is saved in checkpoints, so a resumed run still draws its first epoch as the reference.

    Args:
        steps: numbers of inner steps (gradient learners).
        shots: support examples per class (metric learners).
        episodes: number of fixed validation episodes (the first ones of the datamodule's validation split).
        every_n_epochs: run after every ``every_n_epochs``-th training epoch.
        plot: draw the PNG (needs matplotlib: ``pip install 'lightning-meta[plots]'``); without it, only log.
        dirpath: folder of the PNGs (default: ``<trainer.log_dir>/adaptation_curve``).
        figsize: figure size in inches.
        dpi: dots per inch; the PNG is ``figsize * dpi`` pixels.

    Raises:
        ValueError: for bad arguments; at ``fit`` when the learner is not a
            :class:`~lightning_meta.learners.MetaLearner` or the datamodule is not an ``EpisodicDataModule`` with
            validation data, or when a meta-RL learner (one with ``returns_after``) and a
            :class:`~lightning_meta.rl.TaskDataModule` do not come together.
        ImportError: when ``plot=True`` and matplotlib is not installed.

    Example:
        >>> import lightning as L
        >>> from lightning_meta.data import EpisodicDataModule, Sinusoid
        >>> from lightning_meta.learners import MAML
        >>> from lightning_meta.models import MLP
        >>> dm = EpisodicDataModule(Sinusoid(), val=Sinusoid(), shots=5, queries=5, train_episodes=8)
        >>> curve = AdaptationCurve(steps=(0, 1, 5), episodes=8, plot=False)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[curve], accelerator="cpu", logger=False, limit_val_batches=0,
        ...                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(MAML(MLP(hidden=(8,))), datamodule=dm)
        >>> sorted(key for key in trainer.callback_metrics if key.startswith("adaptation/"))
        ['adaptation/mse_0_steps', 'adaptation/mse_1_steps', 'adaptation/mse_5_steps']
    """

    def __init__(
        self,
        *,
        steps: Sequence[int] = (0, 1, 2, 5, 10),
        shots: Sequence[int] = (1, 5, 10),
        episodes: int = 100,
        every_n_epochs: int = 1,
        plot: bool = True,
        dirpath: str | Path | None = None,
        figsize: tuple[float, float] = (6.4, 4.8),
        dpi: int = 100,
    ) -> None:
        self.steps = positive_ints("AdaptationCurve", "steps", steps, zero=True)
        self.shots = positive_ints("AdaptationCurve", "shots", shots)
        self.episodes = positive_int("AdaptationCurve", "episodes", episodes)
        self.every_n_epochs = positive_int("AdaptationCurve", "every_n_epochs", every_n_epochs)
        if len(figsize) != 2 or not all(isinstance(v, int | float) and v > 0 for v in figsize):
            raise ValueError(f"AdaptationCurve: figsize must be two positive numbers (inches), got {figsize!r}.")
        self.dpi = positive_int("AdaptationCurve", "dpi", dpi)
        if plot:
            require_matplotlib("AdaptationCurve")
        self.plot = plot
        self.dirpath = dirpath
        self.figsize = (float(figsize[0]), float(figsize[1]))
        #: ``{epoch: {x: mean}}`` of every curve so far (saved in checkpoints).
        self.history: dict[int, dict[int, float]] = {}
        self._mode: str | None = None  # "steps", "shots" or None (does not apply)
        self._returns = False  # a meta-RL learner: the curve is the mean return
        self._rl_setting = ""
        self._rl_xlabel = ""
        self._xs: tuple[int, ...] = ()
        self._episode_shots: int | None = None
        self._dir = Path(".")
        self._classification = True
        self._ways = 0
        self._shots_label = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(steps=self.steps, shots=self.shots, episodes=self.episodes)

    # ------------------------------------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        learner = meta_learner(pl_module, "AdaptationCurve")
        datamodule = episodic_datamodule(trainer, "AdaptationCurve", "val")
        self._dir = figure_dir(trainer, self.dirpath, "adaptation_curve")  # on every rank: log_dir broadcasts
        self._returns = returns_learner(learner, datamodule)
        if self._returns:
            self._mode, self._xs, self._episode_shots, self._classification = "steps", self.steps, None, False
            family = cast(TaskDataModule, datamodule).family
            episodes = getattr(learner, "trajectories_per_task", None)
            self._rl_setting = type(family).__name__
            self._rl_xlabel = f"inner policy-gradient steps ({family.horizon}-step episodes" + (
                f", {episodes} per task and step)" if episodes is not None else ")"
            )
            return
        classification = episode_dataset(datamodule, "val").episode(0, 0).is_classification
        if isinstance(learner, GradientLearner):
            self._mode, self._xs, self._episode_shots = "steps", self.steps, None
        elif classification:
            self._mode, self._episode_shots = "shots", self._largest_shots(datamodule)
            self._xs = tuple(k for k in self.shots if k <= self._episode_shots)
        else:
            self._mode = None
            rank_zero_warn(
                f"AdaptationCurve does not apply to {type(learner).__name__} on regression tasks: it adapts without "
                "gradient steps and its tasks have no classes to count shots of. Nothing will be logged or drawn."
            )
        self._classification = classification
        self._ways = datamodule.eval_ways
        self._shots_label = datamodule.eval_shots

    def _largest_shots(self, datamodule: Any) -> int:
        """The largest requested shots the validation classes can supply with the queries; warn about the rest."""
        tasks = datamodule.tasks("val")
        for shots in sorted(self.shots, reverse=True):
            try:
                tasks.validate(ways=datamodule.eval_ways, shots=shots, queries=datamodule.eval_queries, split="val")
            except ValueError as err:
                last_error = err
                continue
            dropped = [k for k in self.shots if k > shots]
            if dropped:
                rank_zero_warn(
                    f"AdaptationCurve: shots {dropped} dropped: the validation classes cannot supply them with "
                    f"{datamodule.eval_queries} queries per class ({last_error})"
                )
            return shots
        raise ValueError(
            f"AdaptationCurve: the validation classes cannot supply any of shots={self.shots} with "
            f"{datamodule.eval_queries} queries per class ({last_error})"
        )

    # ------------------------------------------------------------------------------------------------ hooks
    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._mode is None or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        values = self.evaluate(trainer, pl_module)
        metric = "return" if self._returns else "acc" if self._classification else "mse"
        for x, per_episode in values.items():  # the same on every rank: the mean over ranks keeps it
            mean = per_episode.mean().float().to(pl_module.device)
            pl_module.log(f"adaptation/{metric}_{x}_{self._mode}", mean, sync_dist=True)
        epoch = trainer.current_epoch
        self.history[epoch] = {x: float(v.mean()) for x, v in values.items()}
        if self.plot and trainer.is_global_zero:
            figure = self.draw(type(pl_module).__name__, epoch, values)
            publish_figure(trainer, figure, self._dir / f"epoch={epoch}.png", "adaptation_curve")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": {epoch: dict(curve) for epoch, curve in self.history.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(e): {int(x): float(v) for x, v in c.items()} for e, c in state_dict["history"].items()}

    # ------------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[int, Tensor]:
        """The per-episode accuracy (or MSE, or mean return) after each number of steps (or shots), over all ranks.

        Every rank must call it (the results are gathered). Call it after ``setup``.

        Returns:
            ``{k: values of the episodes}`` for each ``k`` of ``steps`` (or of the usable ``shots``).
        """
        learner = meta_learner(pl_module, "AdaptationCurve")
        datamodule = episodic_datamodule(trainer, "AdaptationCurve", "val")
        if self._returns:
            return self._evaluate_returns(trainer, learner, cast(TaskDataModule, datamodule))
        loader = fixed_episodes(
            trainer,
            episode_dataset(datamodule, "val", shots=self._episode_shots),
            episodes=self.episodes,
            tasks_per_batch=datamodule.eval_tasks_per_batch,
            num_workers=datamodule.num_workers,
        )
        gathered = {x: CatMetric(nan_strategy="disable").to(learner.device) for x in self._xs}
        with undisturbed(learner), trainer.precision_plugin.val_step_context():
            for index, batch in enumerate(loader):
                batch = to_device(trainer, batch)
                for x, predictions in self._predictions(learner, batch, index):
                    if batch.is_classification:
                        gathered[x].update(per_episode_accuracy(predictions, batch.query_y))
                    else:
                        gathered[x].update(per_episode_mse(predictions, batch.query_y))
        return {x: torch.as_tensor(metric.compute()).flatten().cpu().double() for x, metric in gathered.items()}

    def _evaluate_returns(
        self, trainer: L.Trainer, learner: MetaLearner, datamodule: TaskDataModule
    ) -> dict[int, Tensor]:
        """Each fixed validation task's mean return after each number of steps (the RL form of :meth:`evaluate`)."""
        loader = fixed_episodes(
            trainer,
            TaskDataset(datamodule.family, stage="val", seed=datamodule.seed),
            episodes=self.episodes,
            tasks_per_batch=datamodule.eval_tasks_per_batch,
            num_workers=datamodule.num_workers,
        )
        gathered = {x: CatMetric(nan_strategy="disable").to(learner.device) for x in self._xs}
        with undisturbed(learner):
            for batch in loader:
                curve = learner.returns_after(cast(TaskBatch, batch), max(self._xs))  # type: ignore[operator]
                for x in self._xs:
                    gathered[x].update(curve[x].to(learner.device))
        return {x: torch.as_tensor(metric.compute()).flatten().cpu().double() for x, metric in gathered.items()}

    def _predictions(self, learner: MetaLearner, batch: Episode, index: int) -> Iterator[tuple[int, Tensor]]:
        if self._mode == "shots":
            for shots in self._xs:
                yield shots, learner.predict_step(first_shots(batch, shots), index)
            return
        with torch.inference_mode(False), torch.enable_grad():
            predictions = cast(GradientLearner, learner).predictions_after(outside_inference_mode(batch), self._xs)
        for steps, prediction in predictions.items():
            yield steps, prediction.detach()

    # ------------------------------------------------------------------------------------------------ figure
    def draw(self, learner_name: str, epoch: int, values: dict[int, Tensor]) -> Any:
        """The figure of one epoch's curve (with the first epoch of :attr:`history` as a reference)."""
        figure = new_figure(self.figsize, self.dpi)
        ax = figure.add_subplot()
        xs = list(values)
        scale = 100.0 if self._classification else 1.0
        summaries = [mean_and_ci95(v) for v in values.values()]
        means = [float(mean) * scale for mean, _ in summaries]
        ci95 = [float(half.nan_to_num(0.0)) * scale for _, half in summaries]  # one episode: no interval
        n = next(iter(values.values())).numel()
        earlier = [e for e in self.history if e < epoch]
        if earlier:
            first = min(earlier)
            reference = self.history[first]
            ax.plot(
                list(reference),
                [v * scale for v in reference.values()],
                linestyle="--",
                marker="o",
                color="0.6",
                label=f"epoch {first}",
            )
        ax.errorbar(xs, means, yerr=ci95, marker="o", capsize=4, color="C0", linewidth=2, label=f"epoch {epoch}")
        for x, mean, half in zip(xs, means, ci95, strict=True):  # each value above its interval
            text = f"{mean:.1f}%" if self._classification else f"{mean:.1f}" if self._returns else f"{mean:.3g}"
            ax.annotate(text, (x, mean + half), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8,
                        color="C0")  # fmt: skip
        if self._classification:
            ax.axhline(100.0 / self._ways, color="C3", linestyle=":", linewidth=1, label=f"chance (1/{self._ways})")
            ax.set_ylim(0, 112)
            ax.set_yticks(range(0, 101, 20))
            ax.set_ylabel("query accuracy (%)")
        elif self._returns:
            ax.set_ylabel("mean return")
        else:
            ax.set_ylabel("query mean squared error")
            ax.set_ylim(bottom=0)
        if self._returns:
            ax.set_xlabel(self._rl_xlabel)
            setting = self._rl_setting
        elif self._mode == "steps":
            ax.set_xlabel("inner gradient steps on the support set")
            setting = f"{self._ways}-way {self._shots_label}-shot" if self._classification else "regression"
        else:
            ax.set_xlabel("support examples per class (shots)")
            setting = f"{self._ways}-way"
        ax.set_xticks(xs)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        ax.set_title(
            f"{learner_name}: adaptation after epoch {epoch}\n"
            f"{n} validation tasks ({setting}), mean and 95% confidence interval",
            fontsize=10,
        )
        figure.tight_layout()
        return figure
