"""GradientLearner: the shared base of the methods that adapt by gradient descent (MAML, ANIL, Meta-SGD, Reptile)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta import functional
from lightning_meta.episode import Episode, SupportSet
from lightning_meta.inner_loop import InnerLoop
from lightning_meta.inner_optim import InnerOptimizer, OptState
from lightning_meta.learners.auto_vectorize import AutoVectorize, has_native_batch_norm
from lightning_meta.learners.base import MetaLearner
from lightning_meta.summary import print_adaptation


def task_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """The inner (support) loss of one task: cross-entropy for integer labels, mean squared error otherwise."""
    if targets.is_floating_point():
        return F.mse_loss(outputs, targets)
    return F.cross_entropy(outputs, targets)


def _under(lr: Any, prefix: str) -> Any:
    """Learning rates keyed by the model's parameter names, keyed by the names under ``prefix`` instead."""
    if not prefix:
        return lr
    if isinstance(lr, Mapping):
        return {name[len(prefix) :]: rate for name, rate in lr.items() if name.startswith(prefix)}
    if isinstance(lr, (list, tuple)):
        return type(lr)(_under(rates, prefix) for rates in lr)
    return lr


class GradientLearner(MetaLearner):
    """Adapts a model to each task by gradient steps on its support loss, through :mod:`lightning_meta.functional`.

    How it adapts is one :class:`~lightning_meta.InnerLoop` (steps, rate, update rule, order, vectorisation,
    precision, compilation), the same object for every gradient learner; a learner's own arguments are its method's.

    The inner loop runs on a dictionary of parameters through ``torch.func.functional_call``, out of place: the
    module is never mutated. The tasks of a meta-batch are adapted together under ``torch.func.vmap``
    (``vectorize="vmap"``) or one by one (``"loop"``); both give the same numbers. ``"auto"`` times both on the
    first training meta-batches (the :class:`~lightning_meta.learners.auto_vectorize.AutoVectorize` callback, which
    the learner adds to the Trainer itself), keeps the faster and saves the choice in checkpoints. Before ``auto``
    has chosen (e.g. ``trainer.validate`` on a fresh model) evaluation loops.

    Evaluation adapts with ``eval_steps`` first-order steps (the adapted weights are the same as second order; no
    graph to the initial weights is needed, and none is kept).

    Mixed precision: with ``precision="float32"`` (the default) the inner loop runs with autocast turned off, so its
    gradients, and the second-order terms through them, are float32 under ``precision="bf16-mixed"`` or
    ``"16-mixed"``; only the query forward and backward run in the low precision. Measured on the CPU
    (``benchmarks/mixed_precision_meta_gradient.py``, Conv4-64, 5-way 1-shot, second order): the bf16 meta-gradient
    is 0.6% from float32 this way against 13.6% with ``precision="autocast"`` (float16: 0.16% against 6.1%).
    ``"autocast"`` lets the inner loop run in the low precision too: faster on GPUs with bf16 tensor cores, but
    under float16 its unscaled inner gradients can underflow to zero and the loss scale can overflow the second-order
    terms (Lightning issue #12600), so keep ``"float32"`` with ``"16-mixed"``.

    Episodes of varying ways (Meta-Dataset's :class:`~lightning_meta.data.VariableEpisodes`): give the model as many
    outputs as the most ways; :meth:`setup` sees that the data varies in ways and sets :attr:`variable_ways`, and
    each episode then uses the first ``ways`` outputs in the inner loop, the predictions and the loss (the other
    rows of the head get no gradient from it). Set ``variable_ways = True`` yourself when calling the learner
    without a Trainer. It is kept in checkpoints.

    Subclasses choose the adapted parameters (:meth:`adapted_names`) and the learning rates (:meth:`inner_lr_for`),
    and give their defaults in :attr:`default_inner_loop`.

    Args:
        model: the network to meta-train; it maps inputs to logits (classification) or predictions (regression).
        inner_loop: how it adapts (default: ``InnerLoop(**default_inner_loop)``).
        lr: learning rate of the outer optimizer.
    """

    adapts_with_gradients = True
    #: whether the meta-gradient can go through the inner gradients (``InnerLoop.first_order`` then matters);
    #: Reptile and iMAML never do
    second_order: ClassVar[bool] = True
    #: the InnerLoop settings used when no ``inner_loop`` is given (a subclass's defaults, e.g. Reptile's 5 steps)
    default_inner_loop: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: nn.Module, *, inner_loop: InnerLoop | None, lr: float) -> None:
        super().__init__(lr=lr)
        name = type(self).__name__
        if not isinstance(model, nn.Module):
            raise ValueError(f"{name}: model must be a torch.nn.Module, got {type(model).__name__}.")
        if inner_loop is None:
            inner_loop = InnerLoop(**self.default_inner_loop)
        elif not isinstance(inner_loop, InnerLoop):
            raise ValueError(
                f"{name}: inner_loop must be a lightning_meta.InnerLoop (e.g. InnerLoop(lr=0.4, steps=1)) or None, "
                f"got {type(inner_loop).__name__}."
            )
        if inner_loop.vectorize == "vmap" and has_native_batch_norm(model):
            raise ValueError(
                f"{name}: vectorize='vmap' with PyTorch's native BatchNorm in the model: under torch.func.vmap its "
                "second-order gradients are wrong (measured: 1e-2 relative error against the per-task loop), and "
                "with running statistics it fails. Use vectorize='loop' (or 'auto', which picks it), or replace the "
                "BatchNorm layers with lightning_meta.models.BatchStatNorm2d, which is exact under vmap."
            )
        self.model = model
        self.inner_loop = inner_loop
        #: the vectorisation adaptation uses: ``inner_loop.vectorize``, or with ``"auto"`` AutoVectorize's choice
        #: (``None`` until it has chosen; evaluation loops meanwhile)
        self.chosen_vectorize: str | None = None if inner_loop.vectorize == "auto" else inner_loop.vectorize
        #: set by AutoVectorize for the training steps it times
        self.trial_vectorize: str | None = None
        self._checked_outputs: set[tuple[int | None, tuple[int, ...]]] = set()

    # ------------------------------------------------------------------------------------------ what subclasses set
    def adapted_names(self) -> list[str] | None:
        """Names of the parameters the inner loop adapts (``None``: all of them)."""
        return None

    def support_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The inner-loop loss of one task: cross-entropy for integer labels, mean squared error otherwise.

        Override it (with :meth:`query_loss` for the outer loss) to meta-train with a loss of your own; it must be
        a scalar, the mean over the task's support set, and stay free of in-place tricks so that ``vmap`` works.
        """
        return task_loss(outputs, targets)

    def inner_lr_for(self, steps: int) -> functional.LR:
        """The learning rates of an inner loop of ``steps`` steps (a float, per parameter, or per step)."""
        return self.inner_loop.lr

    def inner_transform(self) -> InnerOptimizer:
        """The update rule of the inner loop (:attr:`inner_optimizer`; iMAML wraps it in a proximal term)."""
        return self.inner_loop.optimizer

    # ------------------------------------------------------------------------------------------ the inner loop
    def current_vectorize(self) -> str:
        """How the next adaptation vectorises the tasks: ``"vmap"`` or ``"loop"``."""
        return self.trial_vectorize or self.chosen_vectorize or "loop"

    def inner_params(self) -> dict[str, Tensor]:
        """The initial (meta-learned) parameters of the model, by name."""
        return dict(self.model.named_parameters())

    def inner_names(self, params: Mapping[str, Tensor]) -> list[str]:
        """The parameters the inner loop adapts: :meth:`adapted_names`, less those with ``requires_grad=False``.

        A frozen parameter (a pretrained feature extractor, ``layer.requires_grad_(False)``) stays frozen in the
        inner loop too, however it is vectorised, as it does in the outer step.
        """
        chosen = self.adapted_names()
        names = [n for n in (params if chosen is None else chosen) if params[n].requires_grad]
        if not names:
            raise ValueError(
                f"{type(self).__name__}: no parameter to adapt: every parameter the inner loop would adapt has "
                "requires_grad=False. Unfreeze at least the layers the inner loop should adapt (for ANIL, the head)."
            )
        return names

    def check_outputs(self, support: Episode | SupportSet) -> None:
        """Check once per episode layout that the model's outputs fit the targets, before the inner loop runs.

        Raises:
            ValueError: a classifier with more or fewer outputs than the episode's ways, or a regressor whose
                output shape differs from the targets'; the message names both and what to change.
        """
        key = (support.ways, tuple(support.support_y.shape[2:]))
        if key in self._checked_outputs:
            return
        was_training = self.model.training
        self.model.eval()  # no side effects: no running statistics updated, no dropout randomness drawn
        try:
            with torch.no_grad():
                outputs = self.model(support.support_x[0])
        finally:
            self.model.train(was_training)
        name = type(self).__name__
        if support.is_classification and self.variable_ways:
            if outputs.dim() != 2 or outputs.shape[-1] < support.ways:
                raise ValueError(
                    f"{name}: the model gives outputs of shape {tuple(outputs.shape[1:])} per example but this episode "
                    f"is {support.ways}-way: with episodes of varying ways the model needs one logit per way of the "
                    "largest episode (each episode uses the first `ways` logits). Give the model's last layer as many "
                    f"outputs as VariableEpisodes.max_ways (at least {support.ways})."
                )
        elif support.is_classification:
            if outputs.dim() != 2 or outputs.shape[-1] != support.ways:
                raise ValueError(
                    f"{name}: the model gives outputs of shape {tuple(outputs.shape[1:])} per example but the episodes "
                    f"are {support.ways}-way: a classifier needs exactly one logit per way. Give the model's last "
                    f"layer {support.ways} outputs (e.g. Conv4(out_features={support.ways})), or set the datamodule's "
                    f"ways (and eval_ways) to {outputs.shape[-1]}."
                )
        elif tuple(outputs.shape[1:]) != tuple(support.support_y.shape[2:]):
            raise ValueError(
                f"{name}: the model gives outputs of shape {tuple(outputs.shape[1:])} per example but the regression "
                f"targets have shape {tuple(support.support_y.shape[2:])}: the mean squared error would broadcast. "
                "Make the model's output match the targets (e.g. MLP(out_features=1) for the sinusoid)."
            )
        self._checked_outputs.add(key)

    @override
    def setup(self, stage: str) -> None:
        """Refuse, before any step, evaluation episodes with other ways than training (the head is fixed)."""
        super().setup(stage)
        data = getattr(self.trainer, "datamodule", None)
        ways, eval_ways = getattr(data, "ways", None), getattr(data, "eval_ways", None)
        fixed = isinstance(ways, int) and isinstance(eval_ways, int)
        if stage == "fit" and fixed and ways != eval_ways and not self.variable_ways:
            raise ValueError(
                f"{type(self).__name__}: the datamodule trains {ways}-way and evaluates eval_ways={eval_ways}: a "
                "gradient-based learner adapts a model with one output per way, so both must be equal (metric "
                "learners such as ProtoNet can evaluate with other ways)."
            )

    def initial_inner_state(self) -> tuple[OptState | None, int]:
        """The inner optimizer's state every adaptation starts from, and the number of its first step.

        ``(None, 0)``: a fresh state for every task, unless a subclass carries one (``Reptile(carry_inner_state=True)``,
        keyed by the model's parameter names).
        """
        return None, 0

    def adapt_params(
        self,
        support: Episode | SupportSet,
        *,
        steps: int,
        first_order: bool,
        return_all: bool = False,
        state: OptState | None = None,
        first_step: int = 0,
        return_state: bool = False,
    ) -> Any:
        """Adapted parameters for every task of ``support`` (a leading task dimension on the adapted ones).

        The inner optimizer starts from ``state`` at step ``first_step`` (keyed by the model's parameter names), by
        default from :meth:`initial_inner_state`. With ``return_state`` it returns a pair: the adapted parameters
        and each task's final state (a leading task dimension, keyed by the model's names, adapted ones only).
        """
        if state is None:
            state, first_step = self.initial_inner_state()
        self.check_outputs(support)
        self._ways = support.ways if self.variable_ways and support.is_classification else None
        params = self.inner_params()
        device = support.support_x.device.type
        float32 = self.inner_loop.precision == "float32" and torch.is_autocast_enabled(device)
        with torch.autocast(device, enabled=False) if float32 else contextlib.nullcontext():
            module, inner_params, inputs, prefix = self.inner_problem(support.support_x, params)
            result: Any = functional.adapt_batch(
                module,
                inner_params,
                inputs,
                support.support_y,
                loss_fn=self.support_loss if self._ways is None else self._support_loss_of_ways,
                steps=steps,
                lr=_under(self.inner_lr_for(steps), prefix),
                first_order=first_order,
                names=[name[len(prefix) :] for name in self.inner_names(params)],
                return_all=return_all,
                strategy=cast(functional.Strategy, self.current_vectorize()),
                compiled=self.inner_loop.compiled,
                optimizer=self.inner_transform(),
                batch_size=self.inner_loop.batch_size if self.training else self.inner_loop.evaluation_batch_size,
                state=None if state is None else _under(state, prefix),
                first_step=first_step,
                return_state=return_state,
            )
        adapted, final = result if return_state else (result, {})
        if prefix:

            def in_model(tensors: functional.Params) -> functional.Params:
                return {**params, **{prefix + name: t for name, t in tensors.items()}}

            adapted = [in_model(p) for p in adapted] if isinstance(adapted, list) else in_model(adapted)
            final = {prefix + name: s for name, s in final.items()}
        return (adapted, final) if return_state else adapted

    def inner_problem(
        self, support_x: Tensor, params: functional.Params
    ) -> tuple[nn.Module, functional.Params, Tensor, str]:
        """What the inner loop differentiates: ``(module, its parameters, its inputs, prefix)``.

        By default the whole model on the support inputs, with prefix ``""``. A learner whose inner loop runs on a
        part of the model overrides this: :class:`ANIL` returns its head, the head's parameters (named without
        ``prefix``, ``"head."``), and the body's features of ``support_x``; the adapted tensors are put back into
        the model's parameters under ``prefix``, and the learning rates keyed by the model's names are re-keyed.

        Args:
            support_x: the support inputs, ``[tasks, n, ...]``.
            params: the model's parameters for the inner loop (:meth:`inner_params`).
        """
        return self.model, params, support_x, ""

    def _support_loss_of_ways(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.support_loss(self.keep_ways(outputs), targets)

    @override
    def adapt(self, support: SupportSet) -> functional.Params:
        if self.training:
            return self.adapt_params(support, steps=self.inner_loop.steps, first_order=self.first_order_now())  # type: ignore[return-value]
        # evaluation: the adapted weights, cut from the meta-parameters, so predictions build no graph for a backward
        # that never comes (one per query made Reptile's non-transductive test of a 5-shot meta-batch reach 17 GB)
        state = self.adapt_params(support, steps=self.inner_loop.evaluation_steps, first_order=True)
        return {name: t.detach() for name, t in state.items()}  # type: ignore[union-attr]

    def first_order_now(self) -> bool:
        """Whether training adaptation cuts the graph through the inner gradients (``inner_loop.first_order``)."""
        return self.inner_loop.first_order

    @override
    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The meta-loss of a meta-batch; with ``vectorize="loop"`` it is differentiated one task at a time.

        With ``vectorize="loop"`` in training, each task's meta-loss is differentiated as soon as it is computed
        (:func:`~lightning_meta.functional.mean_task_by_task`), so only one task's graph is alive at a time, as in
        learn2learn's per-task ``backward()``; the returned loss carries the same meta-gradient.
        """
        if not (self.training and torch.is_grad_enabled() and self.current_vectorize() == "loop"):
            return self.batch_meta_loss(episode)
        predictions = []

        def task_losses() -> Iterator[Tensor]:
            for task in episode:
                loss, prediction = self.batch_meta_loss(Episode.stack([task]))
                predictions.append(prediction.detach())
                yield loss

        loss = functional.mean_task_by_task(task_losses(), wrt=list(self.parameters()))
        return loss, torch.cat(predictions)

    def batch_meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The meta-loss of a meta-batch, differentiated as a whole (the base class's query loss by default)."""
        return super().meta_loss(episode)

    @override
    def predict(self, query_x: Tensor, state: Mapping[str, Tensor]) -> Tensor:
        outputs = functional.forward_batch(self.model, state, query_x, strategy=self.current_vectorize())  # type: ignore[arg-type]
        return self.keep_ways(outputs)

    @override
    def configure_callbacks(self) -> list[Callback]:
        """With ``vectorize="auto"``, the AutoVectorize callback that times vmap and loop.

        A subclass that overrides this keeps it: ``return [*super().configure_callbacks(), ...]``.
        """
        return [AutoVectorize()] if self.inner_loop.vectorize == "auto" else []

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["chosen_vectorize"] = self.chosen_vectorize

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.inner_loop.vectorize == "auto":
            self.chosen_vectorize = checkpoint.get("chosen_vectorize", checkpoint.get("chosen_strategy"))

    # ------------------------------------------------------------------------------------------ reporting
    def predictions_after(self, batch: Episode, steps: Sequence[int]) -> dict[int, Tensor]:
        """Query predictions after each number of first-order inner steps, from one inner loop of ``max(steps)``.

        Step 0 is the meta-learned initialisation itself. Steps above 0 need autograd: outside
        ``torch.inference_mode``, on tensors made outside it (see
        :func:`~lightning_meta.learners.base.outside_inference_mode`).

        Returns:
            ``{k: predictions [n_tasks, n_query, ...] after k steps}``.
        """
        most = max(steps)
        trace = self.adapt_params(batch, steps=most, first_order=True, return_all=True) if most else []
        states = [self.inner_params(), *trace]  # the state after k steps is states[k]
        return {k: self.predict(batch.query_x, states[k]) for k in steps}  # type: ignore[arg-type]

    @torch.no_grad()
    def adaptation_curve(self, episodes: Sequence[Episode] | Any, steps: Sequence[int]) -> dict[int, float]:
        """Mean query loss (MSE for regression, cross-entropy for classification) after each number of steps.

        Args:
            episodes: meta-batches, such as a validation dataloader.
            steps: numbers of first-order inner steps; 0 is the meta-learned initialisation itself.

        Returns:
            ``{steps: mean query loss over the episodes}``.
        """
        was_training = self.training
        self.eval()
        totals = {k: 0.0 for k in steps}
        count = 0
        try:
            for batch in episodes:
                batch = batch.to(self.device)
                for k, predictions in self.predictions_after(batch, steps).items():
                    totals[k] += float(self.query_loss(predictions, batch)) * batch.n_tasks
                count += batch.n_tasks
        finally:
            self.train(was_training)
        return {k: total / max(count, 1) for k, total in totals.items()}

    def summarize_adaptation(
        self, datamodule: Any, steps: Sequence[int] | None = None, max_batches: int | None = None
    ) -> dict[int, float]:
        """Print (and return) the query loss before and after adaptation on the validation episodes.

        See :func:`lightning_meta.summary.print_adaptation` (what ``lightning-meta fit`` prints at the end).
        """
        return print_adaptation(self, datamodule, steps=steps, max_batches=max_batches)
