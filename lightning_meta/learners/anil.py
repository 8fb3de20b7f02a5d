"""ANIL: MAML that adapts only the head (Raghu et al., 2020)."""

from __future__ import annotations

from torch import nn
from typing_extensions import override

from lightning_meta.inner_loop import InnerLoop
from lightning_meta.learners.maml import MAML


class ANIL(MAML):
    """Almost No Inner Loop: MAML whose inner loop adapts the final layer only; the body is meta-learned.

    Raghu, Raghu, Bengio and Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the Effectiveness
    of MAML", ICLR 2020. The parameters whose names start with ``head + "."`` adapt; every other parameter keeps
    its meta-learned value inside each task.

    Args:
        model: the network; its last layer is the submodule named ``head``.
        head: name of the submodule that adapts (the backbones of :mod:`lightning_meta.models` call it ``head``).
        inner_loop: how it adapts (:class:`~lightning_meta.InnerLoop`; default ``InnerLoop(lr=0.01, steps=1)``).
        multi_step_loss: MAML++'s multi-step loss (see :class:`MAML`).
        multi_step_loss_epochs: epochs over which its weights anneal.
        learn_inner_lr: MAML++'s per-layer per-step learned inner learning rates.
        lr: learning rate of the outer optimizer.

    Raises:
        ValueError: if the model has no parameters under ``head``.

    Example:
        >>> from lightning_meta.models import MLP
        >>> ANIL(MLP(), head="head").adapted_names()
        ['head.weight', 'head.bias']
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        head: str = "head",
        inner_loop: InnerLoop | None = None,
        multi_step_loss: bool = False,
        multi_step_loss_epochs: int = 10,
        learn_inner_lr: bool = False,
        lr: float = 1e-3,
    ) -> None:
        names = (
            [n for n, _ in model.named_parameters() if n.startswith(head + ".")] if isinstance(model, nn.Module) else []
        )
        if not names:
            raise ValueError(
                f"ANIL: head={head!r} names no parameters of the model; its top-level submodules are "
                f"{[n for n, _ in model.named_children()] if isinstance(model, nn.Module) else type(model).__name__}."
            )
        self.head = head
        self._head_names = names
        super().__init__(
            model,
            inner_loop=inner_loop,
            multi_step_loss=multi_step_loss,
            multi_step_loss_epochs=multi_step_loss_epochs,
            learn_inner_lr=learn_inner_lr,
            lr=lr,
        )

    @override
    def adapted_names(self) -> list[str]:
        return list(self._head_names)
