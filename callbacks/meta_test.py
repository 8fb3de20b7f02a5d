"""MetaTest: the few-shot test protocol, run on the held-out test episodes while training."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics.aggregation import CatMetric
from typing_extensions import override

from lightning_meta._checks import positive_int
from lightning_meta.callbacks._evaluation import (
    episode_dataset,
    episodic_datamodule,
    fixed_episodes,
    meta_learner,
    to_device,
    undisturbed,
)
from lightning_meta.metrics import EpisodeAccuracy, mean_and_ci95, per_episode_mse


class MetaTest(Callback):
    """Meta-test during training: mean query accuracy and its 95% confidence interval on the fixed test episodes.

    Every ``every_n_epochs`` training epochs (at the end of the epoch, after validation), the learner adapts to
    each of the first ``episodes`` test episodes of the :class:`~lightning_meta.data.EpisodicDataModule` (the very
    episodes ``trainer.test`` uses when ``eval_episodes == episodes``) and predicts its query set, as
    ``trainer.test`` would. Logged, so that ``ModelCheckpoint`` or ``EarlyStopping`` may monitor them:

    * classification: ``meta_test/acc`` (mean over episodes) and ``meta_test/acc_ci95`` (``1.96 * std / sqrt(n)``);
    * regression: ``meta_test/mse`` and ``meta_test/mse_ci95``.

    Training is not disturbed: the callback never touches the training loader, evaluates with every module in
    evaluation mode (restored afterwards, so batch norm statistics are left alone), draws nothing from the random
    generators (and restores torch's, NumPy's and Python's state in case the model does), and leaves no gradient
    behind; a run with the callback ends with the same weights as one without. Under DDP the episodes are dealt to
    the ranks and the per-episode results gathered (:class:`~lightning_meta.metrics.EpisodeAccuracy`), so the
    logged values are those of one process evaluating every episode.

    Args:
        every_n_epochs: run after every ``every_n_epochs``-th training epoch (epochs ``n - 1``, ``2n - 1``, ...).
        episodes: number of test episodes (600 is the usual protocol).
        tasks_per_batch: tasks per evaluation meta-batch (default: the datamodule's ``eval_tasks_per_batch``).

    Raises:
        ValueError: for a count that is not a positive integer; at ``fit`` when the learner is not a
            :class:`~lightning_meta.learners.MetaLearner` or the datamodule is not an ``EpisodicDataModule``
            with test data.

    Example:
        >>> import lightning as L
        >>> from lightning_meta.data import EpisodicDataModule, Sinusoid
        >>> from lightning_meta import MAML, InnerLoop
        >>> from lightning_meta.models import MLP
        >>> dm = EpisodicDataModule(Sinusoid(), test=Sinusoid(), shots=5, queries=5, train_episodes=8)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[MetaTest(episodes=20)], accelerator="cpu", logger=False,
        ...                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(MAML(MLP(hidden=(8,)), inner_loop=InnerLoop(vectorize="vmap")), datamodule=dm)
        >>> sorted(key for key in trainer.callback_metrics if key.startswith("meta_test/"))
        ['meta_test/mse', 'meta_test/mse_ci95']
    """

    def __init__(self, *, every_n_epochs: int = 1, episodes: int = 600, tasks_per_batch: int | None = None) -> None:
        self.every_n_epochs = positive_int("MetaTest", "every_n_epochs", every_n_epochs)
        self.episodes = positive_int("MetaTest", "episodes", episodes)
        if tasks_per_batch is not None:
            positive_int("MetaTest", "tasks_per_batch", tasks_per_batch)
        self.tasks_per_batch = tasks_per_batch

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_epochs=self.every_n_epochs, episodes=self.episodes)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            meta_learner(pl_module, "MetaTest")
            episodic_datamodule(trainer, "MetaTest", "test")

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        for name, value in self.evaluate(trainer, pl_module).items():
            # Every rank holds the value over all episodes already; the mean over ranks keeps it as it is.
            pl_module.log(f"meta_test/{name}", value, sync_dist=True)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Tensor]:
        """Evaluate the learner on the test episodes now; every rank must call it.

        Returns:
            ``{"acc": mean, "acc_ci95": half-width}`` for classification, ``{"mse": ..., "mse_ci95": ...}`` for
            regression, over all ``episodes`` (of all ranks).
        """
        learner = meta_learner(pl_module, "MetaTest")
        datamodule = episodic_datamodule(trainer, "MetaTest", "test")
        dataset = episode_dataset(datamodule, "test")
        classification = dataset.episode(0, 0).is_classification  # the same answer on every rank
        loader = fixed_episodes(
            trainer,
            dataset,
            episodes=self.episodes,
            tasks_per_batch=self.tasks_per_batch or datamodule.eval_tasks_per_batch,
            num_workers=datamodule.num_workers,
        )
        accuracy = EpisodeAccuracy().to(learner.device)
        errors = CatMetric(nan_strategy="disable").to(learner.device)
        with undisturbed(learner), trainer.precision_plugin.test_step_context():
            for index, batch in enumerate(loader):
                batch = to_device(trainer, batch)
                predictions = learner.predict_step(batch, index)
                if classification:
                    accuracy.update(predictions, batch.query_y)
                else:
                    errors.update(per_episode_mse(predictions, batch.query_y))
        if classification:
            result = accuracy.compute()
            return {"acc": result.mean, "acc_ci95": result.ci95}
        return _mean_and_ci95("mse", errors.compute(), learner.device)


def _mean_and_ci95(name: str, values: Any, device: torch.device) -> dict[str, Tensor]:
    """Mean and 95% half-width of per-episode values (in float64 on the CPU), as float32 tensors on ``device``."""
    mean, ci95 = mean_and_ci95(torch.as_tensor(values).flatten().cpu().double())
    return {name: mean.float().to(device), f"{name}_ci95": ci95.float().to(device)}
