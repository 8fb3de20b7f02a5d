"""ANIL: MAML that adapts only the head (Raghu et al., 2020)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.func import vmap
from typing_extensions import override

from lightning_meta import functional
from lightning_meta.episode import Episode, SupportSet
from lightning_meta.inner_loop import InnerLoop
from lightning_meta.learners.maml import MAML


def _strip(lr: Any, prefix: str) -> Any:
    """Learning rates keyed by the model's parameter names, keyed by the head's own names instead."""
    if isinstance(lr, Mapping):
        return {name[len(prefix) :]: rate for name, rate in lr.items() if name.startswith(prefix)}
    if isinstance(lr, (list, tuple)):
        return type(lr)(_strip(rates, prefix) for rates in lr)
    return lr


class ANIL(MAML):
    """Almost No Inner Loop: MAML whose inner loop adapts the final layer only; the body is meta-learned.

    Raghu, Raghu, Bengio and Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the Effectiveness
    of MAML", ICLR 2020. The parameters whose names start with ``head + "."`` adapt; every other parameter keeps
    its meta-learned value inside each task.

    The body does not change inside a task, so its features are computed once per task (support and query), and
    the inner loop runs the head alone on them, as learn2learn's ANIL example does: the same adapted weights and
    meta-gradient as running the whole network at every inner step, at a fraction of the cost (3.0x faster per
    20-way 1-shot meta-step of 16 tasks on a CPU: ``benchmarks/anil_feature_reuse.py``). This needs the model's
    output to be the head's output, the head called once on one tensor (true of :mod:`lightning_meta.models` and
    of ``nn.Sequential``); otherwise, checked on the first batch, every inner step runs the whole network, and a
    message says so. With dropout in the body,
    each task draws one mask for all its inner steps; a batch norm with running statistics updates them once.

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
        #: whether the body's features are computed once per task (decided on the first batch; see above)
        self.caches_features: bool | None = None
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

    def features(self, x: Tensor) -> Tensor | None:
        """The head's inputs for every task of ``x`` (``[T, n, ...]``), or ``None`` if the model cannot be split.

        Runs the model on each task (under ``torch.func.vmap`` or in a loop, as the inner loop vectorises) and keeps
        what its head received. The first call checks that the model returns the head's output unchanged and calls
        the head once on one tensor; if not, ANIL runs the whole network in the inner loop from then on.
        """
        if self.caches_features is False:
            return None
        head = self.model.get_submodule(self.head)

        def task_features(x_task: Tensor) -> tuple[Tensor, Tensor]:
            seen: list[tuple[Any, Tensor]] = []
            handle = head.register_forward_hook(lambda module, args, output: seen.append((args, output)))
            try:
                output = self.model(x_task)
            finally:
                handle.remove()
            one_call = len(seen) == 1 and len(seen[0][0]) == 1 and isinstance(seen[0][0][0], Tensor)
            if not (one_call and output is seen[0][1]):
                raise _NotSplittable
            return seen[0][0][0], output

        try:
            if self.current_vectorize() == "vmap":
                inputs, _ = vmap(task_features, randomness="different")(x)
            else:
                inputs = torch.stack([task_features(x_task)[0] for x_task in x.unbind(0)])
        except _NotSplittable:
            self.caches_features = False
            rank_zero_info(
                f"ANIL: the model's output is not its head {self.head!r}'s output on one input, so every inner step "
                "runs the whole network (slower; the same numbers)."
            )
            return None
        self.caches_features = True
        return inputs

    @override
    def adapt_params(
        self, support: Episode | SupportSet, *, steps: int, first_order: bool, return_all: bool = False
    ) -> functional.Params | list[functional.Params]:
        """As :meth:`GradientLearner.adapt_params`, with the inner loop on the head alone over cached features."""
        if self.caches_features is False:
            return super().adapt_params(support, steps=steps, first_order=first_order, return_all=return_all)
        self.check_outputs(support)
        self._ways = support.ways if self.variable_ways and support.is_classification else None
        prefix = self.head + "."
        model_params = self.inner_params()
        names = [name[len(prefix) :] for name in self.inner_names(model_params)]
        params = {name[len(prefix) :]: p for name, p in model_params.items() if name.startswith(prefix)}
        device = support.support_x.device.type
        float32 = self.inner_loop.precision == "float32" and torch.is_autocast_enabled(device)
        with torch.autocast(device, enabled=False) if float32 else contextlib.nullcontext():
            features = self.features(support.support_x)
            if features is None:
                return super().adapt_params(support, steps=steps, first_order=first_order, return_all=return_all)
            adapted = functional.adapt_batch(
                self.model.get_submodule(self.head),
                params,
                features,
                support.support_y,
                loss_fn=self.support_loss if self._ways is None else self._support_loss_of_ways,
                steps=steps,
                lr=_strip(self.inner_lr_for(steps), prefix),
                first_order=first_order,
                names=names,
                return_all=return_all,
                strategy=self.current_vectorize(),  # type: ignore[arg-type]
                compiled=self.inner_loop.compiled,
                optimizer=self.inner_transform(),
            )
        if isinstance(adapted, list):
            return [{**model_params, **{prefix + name: t for name, t in state.items()}} for state in adapted]
        return {**model_params, **{prefix + name: t for name, t in adapted.items()}}

    @override
    def predict(self, query_x: Tensor, state: Mapping[str, Tensor]) -> Tensor:
        features = None if self.caches_features is False else self.features(query_x)
        if features is None:
            return super().predict(query_x, state)
        prefix = self.head + "."
        head_state = {name[len(prefix) :]: t for name, t in state.items() if name.startswith(prefix)}
        head = self.model.get_submodule(self.head)
        outputs = functional.forward_batch(head, head_state, features, strategy=self.current_vectorize())  # type: ignore[arg-type]
        return self.keep_ways(outputs)


class _NotSplittable(Exception):
    """The model's output is not its head's output on one input tensor."""
