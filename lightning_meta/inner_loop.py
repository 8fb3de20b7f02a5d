"""InnerLoop: how a gradient learner adapts to a task, as one object that every gradient learner takes.

Steps, learning rate, update rule, first or second order, how the tasks of a meta-batch are vectorised, the
precision and compilation are the same settings for MAML, ANIL, Meta-SGD, Reptile and iMAML, so they live here
once instead of in every learner's signature. LightningCLI reads it as a nested block:

.. code-block:: yaml

    model:
      class_path: lightning_meta.learners.MAML
      init_args:
        model: {class_path: lightning_meta.models.Conv4, init_args: {out_features: 5}}
        inner_loop:
          class_path: lightning_meta.InnerLoop
          init_args: {lr: 0.4, steps: 1, eval_steps: 3, vectorize: loop}
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from torch import nn
from typing_extensions import override

from lightning_meta._checks import positive_int
from lightning_meta.inner_optim import SGD, InnerOptimizer

Vectorize: TypeAlias = Literal["auto", "vmap", "loop"]
"""How the tasks of a meta-batch adapt: together under ``torch.func.vmap``, one by one, or ``auto`` (timed)."""
Precision: TypeAlias = Literal["float32", "autocast"]
"""The inner loop's precision under mixed precision: ``float32`` (autocast off) or ``autocast``."""

VECTORIZE_CHOICES = ("auto", "vmap", "loop")
PRECISIONS = ("float32", "autocast")


class InnerLoop(nn.Module):
    """The inner loop of a gradient learner: how many steps, at what rate, with which update rule, and how it runs.

    It holds settings only (and the update rule, itself a stateless module); a learner reads them at every
    adaptation, so a callback may change ``steps`` or ``first_order`` during training (``InnerStepsSchedule``,
    ``FirstOrderAnnealing``). It is an :class:`torch.nn.Module` so that a learner saves it in checkpoints as its
    ``class_path``/``init_args`` config (plain data, never a pickle), as it saves backbones.

    Args:
        lr: the inner step size (the initial value of learned rates for Meta-SGD and MAML++'s ``learn_inner_lr``).
        steps: inner steps during training.
        eval_steps: inner steps at validation and test (default: ``steps``). Evaluation adapts first order: the
            adapted weights are the same, and no graph to the initial weights is kept.
        optimizer: the update rule (:mod:`lightning_meta.inner_optim`: ``SGD(momentum=...)``, ``Adam(betas=...)``
            or your own); default plain SGD. It receives ``lr`` (or the learned rates) at every step.
        batch_size: support examples per inner step in training, cycling through the support set (Reptile's inner
            mini-batches: its ``--inner-batch``); ``None`` (default): the whole support set every step.
        eval_batch_size: the same at validation and test (Reptile's ``--eval-batch``); default ``batch_size``.
        first_order: treat the inner gradients as constants in the meta-gradient (FOMAML); the learner decides
            where it applies (Reptile and iMAML always adapt first order).
        vectorize: ``"vmap"`` adapts the tasks of a meta-batch together under :func:`torch.func.vmap`, ``"loop"``
            one by one (both give the same numbers); ``"auto"`` times both on the first training meta-batches and
            keeps the faster (see :class:`~lightning_meta.learners.gradient.GradientLearner`). Named so as not to
            clash with the Trainer's ``strategy`` (DDP and the like).
        precision: ``"float32"`` runs the inner loop with autocast off under ``precision="bf16-mixed"`` or
            ``"16-mixed"`` (its gradients and second-order terms stay float32); ``"autocast"`` lets it run in the low
            precision too (see :class:`~lightning_meta.learners.gradient.GradientLearner`).
        compiled: adapt through :func:`torch.compile` (second order works).

    Raises:
        ValueError: a setting out of its range; the message names it, the limit and the value.

    Example:
        >>> from lightning_meta.inner_optim import Adam
        >>> loop = InnerLoop(lr=0.001, steps=5, eval_steps=10, optimizer=Adam(betas=(0.0, 0.999)))
        >>> loop
        InnerLoop(lr=0.001, steps=5, eval_steps=10, optimizer=Adam(betas=[0.0, 0.999], eps=1e-08), vectorize='auto')
        >>> loop.init_config["init_args"]["optimizer"]["class_path"]
        'lightning_meta.inner_optim.Adam'
        >>> InnerLoop(steps=0)
        Traceback (most recent call last):
        ...
        ValueError: InnerLoop: steps must be a positive integer, got 0.
    """

    init_config: dict[str, Any]

    def __init__(
        self,
        *,
        lr: float = 0.01,
        steps: int = 1,
        eval_steps: int | None = None,
        optimizer: InnerOptimizer | None = None,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        first_order: bool = False,
        vectorize: Vectorize = "auto",
        precision: Precision = "float32",
        compiled: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise ValueError(f"InnerLoop: lr must be a positive finite number, got {lr!r}.")
        positive_int("InnerLoop", "steps", steps)
        if eval_steps is not None:
            positive_int("InnerLoop", "eval_steps", eval_steps)
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None:
                positive_int("InnerLoop", name, value)
        if optimizer is not None and not isinstance(optimizer, InnerOptimizer):
            raise ValueError(
                "InnerLoop: optimizer must be an InnerOptimizer of lightning_meta.inner_optim (SGD, Adam, ...) or None "
                f"(plain SGD), got {type(optimizer).__name__}."
            )
        for name, value in (("first_order", first_order), ("compiled", compiled)):
            if not isinstance(value, bool):
                raise ValueError(f"InnerLoop: {name} must be True or False, got {value!r}.")
        if vectorize not in VECTORIZE_CHOICES:
            raise ValueError(f"InnerLoop: vectorize must be one of {VECTORIZE_CHOICES}, got {vectorize!r}.")
        if precision not in PRECISIONS:
            raise ValueError(f"InnerLoop: precision must be one of {PRECISIONS}, got {precision!r}.")
        self.lr = float(lr)
        self.steps = steps
        self.eval_steps = eval_steps
        self.optimizer = optimizer if optimizer is not None else SGD()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.first_order = first_order
        self.vectorize = vectorize
        self.precision = precision
        self.compiled = compiled
        self.__dict__["init_config"] = {
            "class_path": f"{InnerLoop.__module__}.{InnerLoop.__qualname__}",
            "init_args": {
                "lr": self.lr,
                "steps": steps,
                "eval_steps": eval_steps,
                "optimizer": self.optimizer.init_config,
                "batch_size": batch_size,
                "eval_batch_size": eval_batch_size,
                "first_order": first_order,
                "vectorize": vectorize,
                "precision": precision,
                "compiled": compiled,
            },
        }

    @property
    def evaluation_steps(self) -> int:
        """Inner steps at validation and test: ``eval_steps``, or ``steps`` when it is not set."""
        return self.eval_steps if self.eval_steps is not None else self.steps

    @property
    def evaluation_batch_size(self) -> int | None:
        """Support examples per inner step at validation and test: ``eval_batch_size``, else ``batch_size``."""
        return self.eval_batch_size if self.eval_batch_size is not None else self.batch_size

    @override
    def extra_repr(self) -> str:
        shown = [f"lr={self.lr:g}", f"steps={self.steps}"]
        if self.eval_steps is not None:
            shown.append(f"eval_steps={self.eval_steps}")
        if not (type(self.optimizer) is SGD and self.optimizer.init_config == SGD().init_config):
            config = self.optimizer.init_config
            arguments = ", ".join(f"{k}={v!r}" for k, v in config["init_args"].items())
            shown.append(f"optimizer={config['class_path'].rsplit('.', 1)[-1]}({arguments})")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) is not None:
                shown.append(f"{name}={getattr(self, name)}")
        for name, default in (("first_order", False), ("precision", "float32"), ("compiled", False)):
            if getattr(self, name) != default:
                shown.append(f"{name}={getattr(self, name)!r}")
        shown.append(f"vectorize={self.vectorize!r}")
        return ", ".join(shown)

    @override
    def __repr__(self) -> str:  # one line: the optimizer is a setting here, not a child layer
        return f"InnerLoop({self.extra_repr()})"


__all__ = ["PRECISIONS", "VECTORIZE_CHOICES", "InnerLoop", "Precision", "Vectorize"]
