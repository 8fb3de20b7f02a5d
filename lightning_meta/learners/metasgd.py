"""Meta-SGD: MAML with a learned learning rate for every weight (Li et al., 2017)."""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from lightning_meta import functional
from lightning_meta.inner_loop import InnerLoop
from lightning_meta.learners.maml import MAML


class MetaSGD(MAML):
    """Meta-SGD: meta-learns the initial weights and an inner learning rate for each of them.

    Li, Zhou, Chen and Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017. The inner update is
    ``theta - alpha * grad`` with ``alpha`` a tensor of the shape of ``theta`` (initialised to the inner ``lr``)
    learned by the outer optimizer together with ``theta``.

    Args:
        model: the network to meta-train.
        inner_loop: how it adapts (:class:`~lightning_meta.InnerLoop`; default ``InnerLoop(lr=0.01, steps=1)``, the
            paper's one step); its ``lr`` is the initial value of every learned rate. With ``first_order`` the
            rates still learn.
        lr: learning rate of the outer optimizer.

    Example:
        >>> from lightning_meta import InnerLoop
        >>> from lightning_meta.models import MLP
        >>> learner = MetaSGD(MLP(hidden=(4,)), inner_loop=InnerLoop(lr=0.1))
        >>> sorted(learner.meta_sgd_lrs.keys()), learner.meta_sgd_lrs["head__weight"].shape
        (['body__0__bias', 'body__0__weight', 'head__bias', 'head__weight'], torch.Size([1, 4]))
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_loop: InnerLoop | None = None,
        lr: float = 1e-3,
    ) -> None:
        super().__init__(model, inner_loop=inner_loop, lr=lr)
        self.meta_sgd_lrs = nn.ParameterDict(
            {
                name.replace(".", "__"): nn.Parameter(torch.full_like(p, self.inner_loop.lr))
                for name, p in model.named_parameters()
            }
        )

    @override
    def inner_lr_for(self, steps: int) -> functional.LR:
        return {key.replace("__", "."): rate for key, rate in self.meta_sgd_lrs.items()}
