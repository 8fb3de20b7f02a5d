"""MetaLearner: the LightningModule every method builds on."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters, _given_hyperparameters_context
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.model_helpers import _restricted_classmethod
from lightning.pytorch.utilities.parsing import collect_init_args
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import override

from lightning_meta.checkpoint import CheckedCheckpointIO, raise_if_corrupt
from lightning_meta.episode import Episode
from lightning_meta.metrics import EpisodeAccuracy, per_episode_accuracy, per_episode_mse
from lightning_meta.results import report_test_results

# A backbone without ``init_config`` is kept in the hyperparameters as a module on purpose, so that
# ``load_from_checkpoint(path)`` rebuilds the learner without being handed it again; Lightning's advice does not apply.
warnings.filterwarnings("ignore", message=r"Attribute '.*' is an instance of `nn.Module`", category=UserWarning)

#: What LightningCLI itself uses to rebuild a module from a config at ``load_from_checkpoint``.
_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def outside_inference_mode(batch: Episode) -> Episode:
    """The meta-batch with copies of its tensors made under ``torch.inference_mode``, which autograd cannot save.

    Lightning's evaluation loops run under inference mode; an inner loop that takes gradients needs these copies
    (and ``torch.inference_mode(False)`` with ``torch.enable_grad()`` around it).
    """
    return batch._apply(lambda t: t.clone() if t.is_inference() else t)


class MetaLearner(L.LightningModule):
    """Base of all meta-learners: owns the training, validation and test steps over meta-batches.

    A method overrides :meth:`adapt` (turn the support set of every task into a task state: adapted weights,
    prototypes, a closed-form head, ...) and :meth:`predict` (query predictions from that state), plus
    ``__init__``. Both work on a whole meta-batch (an :class:`~lightning_meta.Episode` with ``batched=True``);
    :meth:`predict` returns ``[n_tasks, n_query, ways]`` logits for classification or
    ``[n_tasks, n_query, *target_shape]`` predictions for regression. Methods whose meta-loss is not simply the
    query loss of those predictions (MAML++'s multi-step loss, Reptile) override :meth:`meta_loss` instead.

    The meta-loss, the mean query loss over the tasks, is returned from ``training_step``, so automatic
    optimization, mixed precision, gradient clipping, accumulation and DDP's gradient all-reduce work unchanged.

    Evaluation with gradients: Lightning validates and tests under ``torch.inference_mode``, where no inner loop
    can take a gradient. Learners that set ``adapts_with_gradients = True`` are evaluated inside
    ``torch.inference_mode(False)`` with gradients enabled, on copies of the batch made outside inference mode;
    the results are detached at once, so no graph outlives the step. This works under the default ``Trainer()``.

    Logged values (``stage`` is ``train``, ``val`` or ``test``): ``{stage}/loss``, and ``{stage}/acc`` with, for
    validation and test, ``{stage}/acc_ci95`` (the 95% confidence interval over episodes) for classification, or
    ``{stage}/mse`` for regression.

    Args:
        lr: learning rate of the outer (meta) optimizer, Adam.
    """

    #: Whether :meth:`adapt` needs autograd (gradient-based methods); evaluation then runs with gradients enabled.
    adapts_with_gradients: bool = False

    def __init__(self, *, lr: float = 1e-3) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {lr!r}.")
        self.lr = lr
        self.val_accuracy = EpisodeAccuracy()
        self.test_accuracy = EpisodeAccuracy()
        self.val_mse = MeanMetric()
        self.test_mse = MeanMetric()
        # the mean query loss over every evaluation task of all ranks (Lightning's sync_dist would average the ranks'
        # means unweighted, which differs when the ranks hold different numbers of episodes)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    def save_learner_hyperparameters(self) -> None:
        """Save the ``__init__`` arguments so that ``Learner.load_from_checkpoint(path)`` alone rebuilds the learner.

        Call it at the end of a learner's ``__init__`` instead of ``save_hyperparameters()``. A backbone with an
        ``init_config`` (every backbone of :mod:`lightning_meta.models`, or any decorated with
        :func:`~lightning_meta.models.records_config`) is saved as that config, as LightningCLI does, so the
        checkpoint loads with PyTorch's safe ``weights_only`` loading, in a process that has not imported the
        training code. Any other module is saved pickled; load such a checkpoint, when you trust it, with
        ``load_from_checkpoint(path, weights_only=False)``.

        Only the arguments of the class being built are saved (``load_from_checkpoint`` calls that class): a subclass
        that builds its backbone from its own arguments, as in ``examples/subclass_a_learner.py``, saves those
        arguments and not the backbone its parent received.
        """
        current = inspect.currentframe()
        frame = current.f_back if current is not None else None
        if frame is None:  # pragma: no cover - only on Pythons without frame support
            self.save_hyperparameters()
            return
        if _given_hyperparameters.get() is not None:  # LightningCLI built this learner and gave its config
            self.save_hyperparameters()
            return
        init_args: dict[str, Any] = {}
        for args in collect_init_args(frame, []):
            init_args.update(args)
        own = inspect.signature(type(self).__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
            init_args = {k: v for k, v in init_args.items() if k in own}
        if not init_args:
            return
        modules = {k: v for k, v in init_args.items() if isinstance(v, nn.Module)}
        if not modules or any(getattr(m, "init_config", None) is None for m in modules.values()):
            self.save_hyperparameters(*init_args, frame=frame)
            return
        config = {k: (v.init_config if isinstance(v, nn.Module) else v) for k, v in init_args.items()}
        with _given_hyperparameters_context(hparams=config, instantiator=_INSTANTIATOR):
            self.save_hyperparameters()

    @_restricted_classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``load_from_checkpoint``, with a clear error for an unreadable file.

        Raises:
            CorruptCheckpointError: the file is empty, cut short or damaged; the message names the intact
                checkpoints beside it.
        """
        raise_if_corrupt(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)

    @override
    def setup(self, stage: str) -> None:
        """Give the Trainer's default checkpoint IO a clear error for unreadable checkpoints (``ckpt_path=...``).

        Runs before Lightning restores a checkpoint. A checkpoint IO plugin of the user's own is left alone.
        """
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = CheckedCheckpointIO()

    # ----------------------------------------------------------------------------------------------- method API
    def adapt(self, support: Episode) -> Any:
        """Adapt to the support set of every task of a meta-batch; returns the task states.

        Only ``support_x`` and ``support_y`` may be read (the query fields are there, but looking at them is
        cheating).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement adapt(support)")

    def predict(self, query_x: Tensor, state: Any) -> Tensor:
        """Predictions for the query inputs ``[n_tasks, n_query, ...]`` of every task from its state."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict(query_x, state)")

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The meta-loss of a meta-batch and the query predictions it was computed from."""
        predictions = self.predict(episode.query_x, self.adapt(episode))
        return self.query_loss(predictions, episode), predictions

    def query_loss(self, predictions: Tensor, episode: Episode) -> Tensor:
        """Mean query loss over tasks: cross-entropy for classification, mean squared error for regression."""
        if episode.is_classification:
            return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), episode.query_y.reshape(-1))
        return F.mse_loss(predictions, episode.query_y)

    @override
    def forward(self, episode: Episode) -> Tensor:
        """Adapt to each task's support set and predict its query set."""
        return self.predict(episode.query_x, self.adapt(episode))

    # ----------------------------------------------------------------------------------------------- steps
    @override
    def training_step(self, batch: Episode, batch_idx: int) -> Tensor:
        loss, predictions = self.meta_loss(batch)
        n = batch.n_tasks
        self.log("train/loss", loss, batch_size=n, prog_bar=True)
        if batch.is_classification:
            accuracy = per_episode_accuracy(predictions.detach(), batch.query_y).mean()
            self.log("train/acc", accuracy, batch_size=n, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: Episode, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    @override
    def test_step(self, batch: Episode, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @override
    def predict_step(self, batch: Episode, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._eval_forward(batch)[1]

    def _eval_forward(self, batch: Episode) -> tuple[Tensor, Tensor]:
        if not self.adapts_with_gradients:
            return self.meta_loss(batch)
        with torch.inference_mode(False), torch.enable_grad():
            batch = outside_inference_mode(batch)
            loss, predictions = self.meta_loss(batch)
        return loss.detach(), predictions.detach()

    def _evaluate(self, batch: Episode, stage: str) -> None:
        loss, predictions = self._eval_forward(batch)
        getattr(self, f"{stage}_loss").update(loss, weight=batch.n_tasks)
        if batch.is_classification:
            getattr(self, f"{stage}_accuracy").update(predictions, batch.query_y)
        else:
            getattr(self, f"{stage}_mse").update(per_episode_mse(predictions, batch.query_y))

    def _log_episode_metrics(self, stage: str) -> None:
        accuracy: EpisodeAccuracy = getattr(self, f"{stage}_accuracy")
        mse: MeanMetric = getattr(self, f"{stage}_mse")
        loss: MeanMetric = getattr(self, f"{stage}_loss")
        if loss.update_count:
            self.log(f"{stage}/loss", loss.compute(), sync_dist=False, rank_zero_only=False)
        if accuracy.update_count:
            result = accuracy.compute()
            self.log(f"{stage}/acc", result.mean, sync_dist=False, rank_zero_only=False)
            self.log(f"{stage}/acc_ci95", result.ci95, sync_dist=False, rank_zero_only=False)
        if mse.update_count:
            self.log(f"{stage}/mse", mse.compute())
        accuracy.reset()
        mse.reset()
        loss.reset()

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_episode_metrics("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_episode_metrics("test")

    @override
    def on_test_end(self) -> None:
        report_test_results(self.trainer, self)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
