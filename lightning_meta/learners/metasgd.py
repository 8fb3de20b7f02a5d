"""Meta-SGD: MAML with a learned learning rate for every weight (Li et al., 2017)."""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from lightning_meta import functional
from lightning_meta.inner_optim import InnerOptimizer
from lightning_meta.learners.gradient import InnerPrecision, StrategyChoice
from lightning_meta.learners.maml import MAML


class MetaSGD(MAML):
    """Meta-SGD: meta-learns the initial weights and an inner learning rate for each of them.

    Li, Zhou, Chen and Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017. The inner update is
    ``theta - alpha * grad`` with ``alpha`` a tensor of the shape of ``theta`` (initialised to ``inner_lr``)
    learned by the outer optimizer together with ``theta``.

    Args:
        model: the network to meta-train.
        inner_lr: initial value of every learned rate.
        inner_steps: inner steps during training (the paper uses one).
        eval_inner_steps: inner steps at validation and test (default: ``inner_steps``).
        first_order: treat the inner gradients as constants (the rates still learn).
        strategy: ``"auto"``, ``"vmap"`` or ``"loop"``.
        inner_precision: ``"float32"`` or ``"autocast"``: the inner loop's precision under mixed precision
            (see :class:`~lightning_meta.learners.gradient.GradientLearner`).
        compile_inner_loop: adapt through :func:`torch.compile`.
        inner_optimizer: the inner update rule (default plain SGD; see :mod:`lightning_meta.inner_optim`).
        lr: learning rate of the outer optimizer.

    Example:
        >>> from lightning_meta.models import MLP
        >>> learner = MetaSGD(MLP(hidden=(4,)), inner_lr=0.1)
        >>> sorted(learner.meta_sgd_lrs.keys()), learner.meta_sgd_lrs["head__weight"].shape
        (['body__0__bias', 'body__0__weight', 'head__bias', 'head__weight'], torch.Size([1, 4]))
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        strategy: StrategyChoice = "auto",
        inner_precision: InnerPrecision = "float32",
        compile_inner_loop: bool = False,
        inner_optimizer: InnerOptimizer | None = None,
        lr: float = 1e-3,
    ) -> None:
        super().__init__(
            model,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            first_order=first_order,
            strategy=strategy,
            inner_precision=inner_precision,
            compile_inner_loop=compile_inner_loop,
            inner_optimizer=inner_optimizer,
            lr=lr,
        )
        self.meta_sgd_lrs = nn.ParameterDict(
            {
                name.replace(".", "__"): nn.Parameter(torch.full_like(p, inner_lr))
                for name, p in model.named_parameters()
            }
        )

    @override
    def inner_lr_for(self, steps: int) -> functional.LR:
        return {key.replace("__", "."): rate for key, rate in self.meta_sgd_lrs.items()}
