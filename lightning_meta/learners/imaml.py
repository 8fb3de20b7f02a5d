"""Implicit MAML (Rajeswaran, Finn, Kakade and Levine, 2019): meta-gradients by the implicit function theorem."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta import functional
from lightning_meta._checks import positive_int
from lightning_meta.episode import Episode
from lightning_meta.inner_loop import InnerLoop
from lightning_meta.inner_optim import InnerOptimizer, Proximal
from lightning_meta.learners.gradient import GradientLearner


class IMAML(GradientLearner):
    """Implicit MAML: adapt by solving a proximal problem, meta-learn through its solution without unrolling it.

    Rajeswaran, Finn, Kakade and Levine, "Meta-Learning with Implicit Gradients", NeurIPS 2019. Each task adapts
    the meta-parameters ``theta`` to ``phi`` by approximately solving

        ``min_phi L_support(phi) + lam / 2 * ||phi - theta||^2``

    with ``inner_loop.steps`` steps of the inner optimizer (:class:`~lightning_meta.inner_optim.Proximal` around
    ``inner_loop.optimizer``). At the solution, ``d phi / d theta = (I + H / lam)^-1`` with ``H`` the Hessian of the
    support loss at ``phi`` (implicit function theorem), so the meta-gradient of the query loss is
    ``v = (I + H / lam)^-1 g``, ``g`` the query loss's gradient at ``phi``. ``v`` is computed by ``cg_steps``
    steps of conjugate gradient on Hessian-vector products (double backward through one support forward at
    ``phi``). The inner steps run without a graph: memory does not grow with their number.

    The meta-gradient reaches Lightning through the surrogate loss ``query_loss + sum_t <theta, stopgrad(v_t)> -
    stopgrad(...)``: its value is the query loss, its gradient ``sum_t v_t`` (``g`` already carries the mean over
    tasks), so automatic optimization, clipping, accumulation, AMP and DDP's all-reduce work unchanged. Every
    trainable parameter adapts (frozen ones stay frozen and receive no gradient). Evaluation adapts with the same
    proximal inner loop (``inner_loop.eval_steps`` steps).

    Args:
        model: the network to meta-train.
        inner_loop: how it adapts (:class:`~lightning_meta.InnerLoop`; default ``InnerLoop(lr=0.01, steps=5)``): its
            ``optimizer`` solves the proximal problem (wrapped in :class:`~lightning_meta.inner_optim.Proximal`),
            its steps run without a graph (memory does not depend on them), and with ``precision="float32"`` the
            Hessian-vector products and the query gradient also run in float32.
        lam: the proximal regularisation strength lambda, > 0 (larger: ``phi`` stays closer to ``theta``).
        cg_steps: conjugate-gradient iterations for ``(I + H / lam) v = g``.
        lr: learning rate of the outer optimizer (Adam).

    Raises:
        ValueError: for a non-positive or non-finite ``lam``, a ``cg_steps`` below 1, or an ``inner_loop`` with a
            ``batch_size`` (the implicit gradient needs the whole support set at every step).

    Example:
        >>> import torch
        >>> from lightning_meta import Episode, InnerLoop
        >>> from lightning_meta.models import MLP
        >>> imaml = IMAML(MLP(hidden=(8,)), inner_loop=InnerLoop(lr=0.1, steps=5, vectorize="vmap"), lam=1.0)
        >>> x = torch.randn(3, 10, 1)
        >>> loss, predictions = imaml.meta_loss(Episode(x, torch.sin(x), x, torch.sin(x), batched=True))
        >>> loss.backward()
        >>> predictions.shape, imaml.model.head.weight.grad.shape
        (torch.Size([3, 10, 1]), torch.Size([1, 8]))
    """

    default_inner_loop: ClassVar[dict[str, Any]] = {"steps": 5}
    second_order: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_loop: InnerLoop | None = None,
        lam: float = 1.0,
        cg_steps: int = 5,
        lr: float = 1e-3,
    ) -> None:
        super().__init__(model, inner_loop=inner_loop, lr=lr)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (lam > 0 and math.isfinite(lam)):
            raise ValueError(f"IMAML: lam must be a positive finite number, got {lam!r}.")
        positive_int("IMAML", "cg_steps", cg_steps)
        if self.inner_loop.batch_size is not None:
            raise ValueError(
                "IMAML: inner_loop.batch_size must be None (the whole support set every step): the implicit "
                "meta-gradient assumes the adapted weights minimise the proximal loss on the whole support set; got "
                f"batch_size={self.inner_loop.batch_size} (inner_loop.eval_batch_size may be set)."
            )
        self.lam = float(lam)
        self.cg_steps = cg_steps
        self.proximal = Proximal(self.inner_loop.optimizer, lam=self.lam)
        self.save_learner_hyperparameters()

    @override
    def inner_transform(self) -> InnerOptimizer:
        return self.proximal

    @override
    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The query loss at the proximal solutions, carrying iMAML's meta-gradient (see the class documentation).

        With ``vectorize="loop"`` the implicit part (query gradient, Hessian-vector products, conjugate gradient)
        runs one task at a time, so one task's graph is alive at a time; with ``"vmap"`` all tasks at once.
        """
        if not (self.training and torch.is_grad_enabled()):
            return super().meta_loss(episode)
        theta = self.inner_params()
        names = self.inner_names(theta)
        with torch.no_grad():  # the proximal inner loop: no graph, whatever the number of steps
            phi = cast(functional.Params, self.adapt_params(episode, steps=self.inner_loop.steps, first_order=True))
        fixed = {n: t.detach() for n, t in theta.items() if n not in names}
        device = episode.support_x.device.type
        float32 = self.inner_loop.precision == "float32" and torch.is_autocast_enabled(device)
        if self.current_vectorize() == "loop":
            parts = [
                self._implicit(Episode.stack([task]), fixed, {n: phi[n][i : i + 1] for n in names}, float32)
                for i, task in enumerate(episode)
            ]
        else:
            parts = [self._implicit(episode, fixed, {n: phi[n] for n in names}, float32)]
        n_tasks = episode.n_tasks
        query_loss = torch.stack([part[0] * part[1].shape[0] for part in parts]).sum() / n_tasks
        predictions = torch.cat([part[1] for part in parts])
        # each part's gradients carry the mean over its own tasks: reweight them to the mean over all tasks
        meta_grads = [
            sum(part[2][k].sum(0) * (part[1].shape[0] / n_tasks) for part in parts) for k in range(len(names))
        ]
        surrogate: Tensor = sum(  # type: ignore[assignment]
            (theta[n] * g).sum() for n, g in zip(names, meta_grads, strict=True)
        )
        loss = query_loss.to(surrogate.dtype) + (surrogate - surrogate.detach())
        return loss, predictions

    def _implicit(
        self, episode: Episode, fixed: functional.Params, phi: functional.Params, float32: bool
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Query loss, predictions and per-task ``(I + H / lam)^-1 g`` of the tasks of ``episode``, all detached."""
        device = episode.support_x.device.type
        with torch.autocast(device, enabled=False) if float32 else contextlib.nullcontext(), torch.enable_grad():
            fast = {n: t.detach().requires_grad_() for n, t in phi.items()}
            leaves = list(fast.values())
            predictions = self.predict(episode.query_x, {**fixed, **fast})
            query_loss = self.query_loss(predictions, episode)
            query_grads = torch.autograd.grad(query_loss, leaves)
            outputs = functional.forward_batch(
                self.model,
                {**fixed, **fast},
                episode.support_x,
                strategy=self.current_vectorize(),  # type: ignore[arg-type]
            )
            support_loss: Tensor = sum(  # type: ignore[assignment]
                self.support_loss(self.keep_ways(out), y) for out, y in zip(outputs, episode.support_y, strict=True)
            )
            support_grads = torch.autograd.grad(support_loss, leaves, create_graph=True)

            def matvec(v: Sequence[Tensor]) -> list[Tensor]:
                hv = torch.autograd.grad(support_grads, leaves, grad_outputs=list(v), retain_graph=True)
                return [vi + hvi / self.lam for vi, hvi in zip(v, hv, strict=True)]

            meta_grads = conjugate_gradient(matvec, list(query_grads), steps=self.cg_steps)
        return query_loss.detach(), predictions.detach(), [g.detach() for g in meta_grads]


def conjugate_gradient(
    matvec: Callable[[Sequence[Tensor]], list[Tensor]], b: Sequence[Tensor], *, steps: int
) -> list[Tensor]:
    """Solve ``A x = b`` for every task at once by ``steps`` iterations of conjugate gradient, ``x`` from zero.

    ``b`` is a list of tensors with a leading task dimension ``T``; ``A`` (given as ``matvec``) acts on each task's
    slice separately (block-diagonal) and is symmetric positive definite on it. The step sizes are per task, so
    this is ``T`` independent conjugate-gradient solves; a task whose residual reaches zero stays where it is.

    Args:
        matvec: ``x -> A x`` on lists shaped like ``b``.
        b: the right-hand side.
        steps: iterations (``n`` solves an ``n``-dimensional system exactly, in exact arithmetic).

    Returns:
        ``x``, shaped like ``b``.

    Example:
        >>> import torch
        >>> a = torch.tensor([[[2.0, 1.0], [1.0, 3.0]]])  # one task, A = [[2, 1], [1, 3]]
        >>> def matvec(v):
        ...     return [torch.einsum("tij,tj->ti", a, v[0])]
        >>> x = conjugate_gradient(matvec, [torch.tensor([[1.0, 2.0]])], steps=2)
        >>> torch.allclose(matvec(x)[0], torch.tensor([[1.0, 2.0]]))
        True
    """

    def dot(u: Sequence[Tensor], v: Sequence[Tensor]) -> Tensor:
        return sum((ui * vi).flatten(1).sum(1) for ui, vi in zip(u, v, strict=True))  # type: ignore[return-value]

    def per_task(scale: Tensor, like: Tensor) -> Tensor:
        return scale.view(-1, *([1] * (like.dim() - 1)))

    x = [torch.zeros_like(t) for t in b]
    r = list(b)
    p = list(b)
    rs = dot(r, r)
    for _ in range(steps):
        ap = matvec(p)
        p_ap = dot(p, ap)
        alpha = torch.where(p_ap != 0, rs / p_ap, torch.zeros_like(rs))
        x = [xi + per_task(alpha, xi) * pi for xi, pi in zip(x, p, strict=True)]
        r = [ri - per_task(alpha, ri) * api for ri, api in zip(r, ap, strict=True)]
        rs_new = dot(r, r)
        beta = torch.where(rs != 0, rs_new / rs, torch.zeros_like(rs))
        p = [ri + per_task(beta, pi) * pi for ri, pi in zip(r, p, strict=True)]
        rs = rs_new
    return x
