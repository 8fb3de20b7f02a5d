"""Reptile (Nichol, Achiam and Schulman, 2018) as a gradient of a surrogate loss."""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta.episode import Episode
from lightning_meta.functional import Params
from lightning_meta.inner_loop import InnerLoop
from lightning_meta.learners.gradient import GradientLearner


class Reptile(GradientLearner):
    """Reptile: move the initial weights towards the weights each task's inner loop reaches.

    Nichol, Achiam and Schulman, "On First-Order Meta-Learning Algorithms", 2018. Each task adapts
    ``theta`` with ``inner_loop.steps`` first-order steps on its support set, reaching ``phi``; the outer update is
    ``theta <- theta + lr * mean(phi - theta)``. Here that update is the gradient of the surrogate loss
    ``0.5 * mean_tasks ||theta - stopgrad(phi)||^2`` (its gradient is ``theta - mean(phi)``), returned from
    ``training_step``, so automatic optimization, mixed precision, clipping, accumulation and DDP work unchanged.
    With the default SGD outer optimizer, ``lr`` is Reptile's outer step size epsilon.

    Logged: ``train/loss`` is the surrogate; ``train/query_loss`` the query loss after adaptation.

    Args:
        model: the network to meta-train.
        inner_loop: how it adapts (:class:`~lightning_meta.InnerLoop`; default ``InnerLoop(lr=0.01, steps=5)``).
            Reptile always adapts first order. The paper's Omniglot and mini-ImageNet settings adapt with
            ``optimizer=Adam(betas=(0.0, 0.999))``.
        lr: outer step size (SGD learning rate).

    Example:
        >>> import torch
        >>> from lightning_meta import Episode, InnerLoop
        >>> from lightning_meta.models import MLP
        >>> reptile = Reptile(MLP(), inner_loop=InnerLoop(lr=0.01, steps=3, vectorize="loop"))
        >>> x = torch.randn(2, 10, 1)
        >>> surrogate, predictions = reptile.meta_loss(Episode(x, torch.sin(x), x, torch.sin(x), batched=True))
        >>> surrogate.backward()
        >>> predictions.shape
        torch.Size([2, 10, 1])
    """

    default_inner_loop: ClassVar[dict[str, Any]] = {"steps": 5}
    second_order: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_loop: InnerLoop | None = None,
        lr: float = 1.0,
    ) -> None:
        super().__init__(model, inner_loop=inner_loop, lr=lr)
        self.save_learner_hyperparameters()

    @override
    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        if not self.training:
            return super().meta_loss(episode)
        theta = self.inner_params()
        with torch.no_grad():
            phi = cast(Params, self.adapt_params(episode, steps=self.inner_loop.steps, first_order=True))
            predictions = self.predict(episode.query_x, phi)
            if self._trainer is not None:
                self.log("train/query_loss", self.query_loss(predictions, episode), batch_size=episode.n_tasks)
        surrogate: Tensor = sum(  # type: ignore[assignment]
            0.5 * (p.unsqueeze(0) - phi[name]).pow(2).flatten(1).sum(1).mean() for name, p in theta.items()
        )
        return surrogate, predictions  # type: ignore[return-value]

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)
