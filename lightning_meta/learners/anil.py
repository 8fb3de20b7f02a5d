"""ANIL: MAML that adapts only the head (Raghu et al., 2020)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.func import vmap
from typing_extensions import override

from lightning_meta import functional
from lightning_meta.episode import Episode
from lightning_meta.inner_loop import InnerLoop
from lightning_meta.learners.maml import MAML


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
        self._kept_features: dict[int, tuple[Tensor, Tensor]] | None = None
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
        kept = self._kept_features.get(id(x)) if self._kept_features is not None else None
        if kept is not None and kept[0] is x:
            return kept[1]
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
        if self._kept_features is not None:
            self._kept_features[id(x)] = (x, inputs)
        return inputs

    @contextlib.contextmanager
    def reusing_features(self) -> Iterator[None]:
        """Inside, :meth:`features` of the same input tensor is computed once (the body is fixed inside a task).

        :meth:`batch_meta_loss` and :meth:`predictions_after` use it, so the query set's features are computed once
        although the query set is predicted after each inner step (MAML++'s multi-step loss, adaptation curves).
        """
        outer, self._kept_features = self._kept_features, {}
        try:
            yield
        finally:
            self._kept_features = outer

    @override
    def batch_meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        with self.reusing_features():
            return super().batch_meta_loss(episode)

    @override
    def predictions_after(self, batch: Episode, steps: Sequence[int]) -> dict[int, Tensor]:
        with self.reusing_features():
            return super().predictions_after(batch, steps)

    @override
    def inner_problem(
        self, support_x: Tensor, params: functional.Params
    ) -> tuple[nn.Module, functional.Params, Tensor, str]:
        """The head on the body's features of ``support_x``, or the whole model where it cannot be split."""
        features = self.features(support_x)
        if features is None:
            return super().inner_problem(support_x, params)
        prefix = self.head + "."
        head_params = {name[len(prefix) :]: p for name, p in params.items() if name.startswith(prefix)}
        return self.model.get_submodule(self.head), head_params, features, prefix

    @override
    def predict(self, query_x: Tensor, state: Mapping[str, Tensor]) -> Tensor:
        features = self.features(query_x)
        if features is None:
            return super().predict(query_x, state)
        prefix = self.head + "."
        head_state = {name[len(prefix) :]: t for name, t in state.items() if name.startswith(prefix)}
        head = self.model.get_submodule(self.head)
        outputs = functional.forward_batch(head, head_state, features, strategy=self.current_vectorize())  # type: ignore[arg-type]
        return self.keep_ways(outputs)


class _NotSplittable(Exception):
    """The model's output is not its head's output on one input tensor."""
