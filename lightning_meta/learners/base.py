"""MetaLearner: the LightningModule every method builds on."""

from __future__ import annotations

import inspect
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.parsing import collect_init_args
from torch import Tensor
from torch.optim import Optimizer
from torchmetrics import MeanMetric
from typing_extensions import override

from lightning_meta.checkpoint import CheckedCheckpointIO, raise_if_corrupt
from lightning_meta.data.domain_accuracy import DomainAccuracy, log_domain_accuracy
from lightning_meta.episode import Episode, SupportSet
from lightning_meta.hparams import check_checkpoint_class, class_name, learner_hparams, rebuild_arguments
from lightning_meta.metrics import EpisodeAccuracy, per_episode_accuracy, per_episode_mse
from lightning_meta.nonfinite import ACTIONS, NonFiniteError, all_finite, describe
from lightning_meta.results import report_test_results


def check_positive_finite(owner: str, name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive, finite number (a learning rate, a scale)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{owner}: {name} must be a positive finite number, got {value!r}.")


def varies_in_ways(data: Any, stage: str) -> bool:
    """Whether the task families ``data`` uses at ``stage`` give episodes of varying ways (``variable_size``)."""
    tasks = getattr(data, "tasks", None)
    if not callable(tasks):
        return False
    splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(stage, ())
    for split in splits:
        try:
            family = tasks(split)
        except (ValueError, TypeError):  # no such split: the stage itself reports it
            continue
        if getattr(family, "variable_size", False):
            return True
    return False


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

    #: What training does with a non-finite meta-loss or meta-gradient: ``"raise"`` a
    #: :class:`~lightning_meta.nonfinite.NonFiniteError` naming the step and the tasks (the default), or ``"skip"``
    #: the meta-batch with a warning (set by the :class:`~lightning_meta.callbacks.SkipNonFiniteBatches` callback), or
    #: ``"ignore"`` (no check; measured cost of the check: ``benchmarks/nonfinite_check_cost.py``).
    nonfinite: str = "raise"

    def __init__(self, *, lr: float = 1e-3) -> None:
        super().__init__()
        check_positive_finite(type(self).__name__, "lr", lr)
        self.lr = lr
        #: classification episodes of varying ways (Meta-Dataset's sampling): a learner with a fixed output layer
        #: gets as many outputs as the most ways, and each episode uses its first ``ways`` (:meth:`keep_ways`). Set by
        #: :meth:`setup` from the data, kept in checkpoints; set it yourself to call the learner without a Trainer.
        self.variable_ways = False
        self._ways: int | None = None
        self.val_accuracy = EpisodeAccuracy()
        self.test_accuracy = EpisodeAccuracy()
        # accuracy per domain of multi-domain episodes (lightning_meta.data.MultiDomainTasks); nothing otherwise
        self.val_domain_accuracy = DomainAccuracy()
        self.test_domain_accuracy = DomainAccuracy()
        # NaN propagates (torchmetrics' default would drop NaN episodes and make the figures look better)
        self.val_mse = MeanMetric(nan_strategy="disable")
        self.test_mse = MeanMetric(nan_strategy="disable")
        # the mean query loss over every evaluation task of all ranks (Lightning's sync_dist would average the ranks'
        # means unweighted, which differs when the ranks hold different numbers of episodes)
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.skipped_batches = 0
        self._last_step: tuple[Episode, Tensor, Tensor] | None = None

    def save_learner_hyperparameters(self) -> None:
        """Save the ``__init__`` arguments as data, so that checkpoints load with PyTorch's safe ``weights_only``.

        Call it at the end of a learner's ``__init__`` instead of ``save_hyperparameters()``. Numbers, strings, lists
        and dicts are saved as they are. A module with an ``init_config`` (every backbone of
        :mod:`lightning_meta.models`, or any decorated with :func:`~lightning_meta.models.records_config`) is saved as
        that config (the ``class_path``/``init_args`` form LightningCLI writes), so
        ``Learner.load_from_checkpoint(path)`` rebuilds it. Any other module (a plain ``nn.Sequential``, your own
        network) or object is not saved: no module is ever pickled into a checkpoint. Resuming with
        ``trainer.fit(learner, data, ckpt_path=...)`` needs nothing more (the learner you built holds the module);
        ``load_from_checkpoint`` asks for it by name:
        ``MAML.load_from_checkpoint(path, model=MyNet())``.

        Only the arguments of the class being built are saved (``load_from_checkpoint`` calls that class): a subclass
        that builds its backbone from its own arguments, as in ``examples/subclass_a_learner.py``, saves those
        arguments and not the backbone its parent received.
        """
        current = inspect.currentframe()
        frame = current.f_back if current is not None else None
        if frame is None:  # pragma: no cover - only on Pythons without frame support
            return
        init_args: dict[str, Any] = {}
        for args in collect_init_args(frame, []):
            init_args.update(args)
        hparams = learner_hparams(type(self), init_args)
        if hparams:
            self.save_hyperparameters(hparams, frame=frame)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``load_from_checkpoint``, which also rebuilds saved backbone configs and explains failures.

        Args:
            checkpoint_path: the checkpoint.
            map_location: as in Lightning.
            hparams_file: as in Lightning.
            strict: as in Lightning.
            weights_only: as in Lightning (PyTorch's safe loading is the default and is enough for checkpoints
                written by this package).
            **kwargs: arguments of the learner to use instead of the saved ones; a module that was not saved as a
                config (a plain ``nn.Module``) must be passed again this way, e.g. ``model=MyNet()``.

        Raises:
            CorruptCheckpointError: the file is empty, cut short or damaged; the message names the intact
                checkpoints beside it.
            TypeError: the checkpoint holds another learner class, or an argument that was not saved (a plain module)
                is not passed again.
        """
        raise_if_corrupt(checkpoint_path)
        kwargs = rebuild_arguments(cls, checkpoint_path, kwargs)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the learner's class (loading with another class then fails clearly) and :attr:`variable_ways`."""
        checkpoint["learner_class"] = class_name(type(self))
        checkpoint["variable_ways"] = self.variable_ways

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_class(type(self), checkpoint.get("learner_class"), "the checkpoint")
        self.variable_ways = self.variable_ways or bool(checkpoint.get("variable_ways", False))

    @override
    def setup(self, stage: str) -> None:
        """Clear errors for unreadable checkpoints (``ckpt_path=...``); :attr:`variable_ways` from the data.

        Runs before Lightning restores a checkpoint. A checkpoint IO plugin of the user's own is left alone.
        """
        if not self.variable_ways and varies_in_ways(getattr(self.trainer, "datamodule", None), stage):
            self.variable_ways = True
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = CheckedCheckpointIO()

    # ----------------------------------------------------------------------------------------------- method API
    def adapt(self, support: SupportSet) -> Any:
        """Adapt to the support set of every task of a meta-batch; returns the task states.

        ``support`` is the episode's :class:`~lightning_meta.episode.SupportSet`: its support examples, labels and
        ways, without the query, so a method cannot read the query by accident.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement adapt(support)")

    def keep_ways(self, outputs: Tensor) -> Tensor:
        """The outputs for the current episode: the first ``ways`` logits when :attr:`variable_ways` is on.

        A learner with a fixed output layer records the episode's ways in ``_ways`` when it adapts, and passes its
        logits through this before a loss or a prediction.
        """
        return outputs if self._ways is None else outputs[..., : self._ways]

    def predict(self, query_x: Tensor, state: Any) -> Tensor:
        """Predictions for the query inputs ``[n_tasks, n_query, ...]`` of every task from its state."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict(query_x, state)")

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The meta-loss of a meta-batch and the query predictions it was computed from."""
        predictions = self.predict(episode.query_x, self.adapt(episode.support_set))
        return self.query_loss(predictions, episode), predictions

    def query_loss(self, predictions: Tensor, episode: Episode) -> Tensor:
        """Mean query loss over tasks: cross-entropy for classification, mean squared error for regression."""
        if episode.is_classification:
            return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), episode.query_y.reshape(-1))
        return F.mse_loss(predictions, episode.query_y)

    @override
    def forward(self, episode: Episode) -> Tensor:
        """Adapt to each task's support set and predict its query set."""
        return self.predict(episode.query_x, self.adapt(episode.support_set))

    # ----------------------------------------------------------------------------------------------- steps
    @override
    def training_step(self, batch: Episode, batch_idx: int) -> Tensor:
        loss, predictions = self.meta_loss(batch)
        self._last_step = (batch, loss.detach(), predictions.detach())  # checked before the optimizer step
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
            getattr(self, f"{stage}_domain_accuracy").update(predictions, batch)
        else:
            getattr(self, f"{stage}_mse").update(per_episode_mse(predictions, batch.query_y))

    def _log_episode_metrics(self, stage: str) -> None:
        log_domain_accuracy(self, getattr(self, f"{stage}_domain_accuracy"), stage)
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

    # ----------------------------------------------------------------------------------------------- non-finite
    @override
    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Check the meta-loss and the meta-gradient before the optimizer uses them, with one device sync.

        Under a float16 ``GradScaler`` an infinite gradient is expected now and then (the scaler skips that step and
        lowers its scale), so only the meta-loss is checked then. A bad meta-batch raises
        :class:`~lightning_meta.nonfinite.NonFiniteError` or, with ``nonfinite="skip"``, loses its gradients, so
        that the optimizer leaves every parameter as it is.
        """
        if self.nonfinite == "ignore" or self._last_step is None:
            return
        batch, loss, predictions = self._last_step
        self._last_step = None
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        grads = [] if scaled else [p.grad for p in self.parameters() if p.grad is not None]
        if self._any_rank(~all_finite([loss, *grads])):
            self._nonfinite_batch(batch, "meta-loss" if not bool(loss.isfinite()) else "meta-gradient", predictions)
            for p in self.parameters():  # an optimizer skips parameters without a gradient: no update at all
                p.grad = None

    def _any_rank(self, flag: Tensor) -> bool:
        """Whether ``flag`` holds on any process (every rank must skip or stop together, or DDP would hang)."""
        if self._trainer is not None and self.trainer.world_size > 1:
            return bool(self.trainer.strategy.reduce_boolean_decision(bool(flag), all=False))
        return bool(flag)

    def _nonfinite_batch(self, batch: Episode, what: str, predictions: Tensor | None) -> None:
        if self.nonfinite not in ACTIONS:
            raise ValueError(f"{type(self).__name__}.nonfinite must be one of {ACTIONS}, got {self.nonfinite!r}.")
        message = describe(self, batch, what, predictions)
        if self.nonfinite == "raise":
            raise NonFiniteError(message)
        self.skipped_batches += 1
        rank_zero_warn(f"Skipped meta-batch ({self.skipped_batches} so far): {message}")

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
