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

    Evaluation is transductive by default: the adapted model sees a task's queries as one batch, so a
    batch-statistics normalisation (:class:`~lightning_meta.models.BatchStatNorm2d`) normalises them together,
    as in the other learners here. ``transductive=False`` is the paper's headline protocol (its Table 1
    "non-transductive" rows; ``run_omniglot.py`` without ``--transductive``): each query is classified alone, in
    one batch with the task's support set (supervised_reptile's ``_test_predictions``), so no query's statistics
    reach another's prediction. It costs one forward pass per query instead of one per task, and applies only in
    evaluation; training is unchanged.

    Logged: ``train/loss`` is the surrogate; ``train/query_loss`` the query loss after adaptation.

    Args:
        model: the network to meta-train.
        inner_loop: how it adapts (:class:`~lightning_meta.InnerLoop`; default ``InnerLoop(lr=0.01, steps=5)``).
            Reptile always adapts first order. The paper's Omniglot and mini-ImageNet settings adapt with
            ``optimizer=Adam(betas=(0.0, 0.999))``.
        lr: outer step size (SGD learning rate).
        transductive: whether evaluation predicts a task's queries together (``True``) or each one alone beside
            the support set (``False``).

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
        >>> alone = Reptile(MLP(), inner_loop=InnerLoop(lr=0.01, steps=3, vectorize="loop"), transductive=False)
        >>> _ = alone.eval()
        >>> loss, predictions = alone.meta_loss(Episode(x, torch.sin(x), x, torch.sin(x), batched=True))
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
        transductive: bool = True,
    ) -> None:
        super().__init__(model, inner_loop=inner_loop, lr=lr)
        if not isinstance(transductive, bool):
            raise ValueError(f"Reptile: transductive must be True or False, got {transductive!r}.")
        self.transductive = transductive
        self.save_learner_hyperparameters()

    def predict_each_alone(self, support_x: Tensor, query_x: Tensor, state: Params) -> Tensor:
        """Query predictions, each query in a batch of its own with the support inputs (non-transductive).

        Args:
            support_x: ``[T, n_support, ...]``.
            query_x: ``[T, n_query, ...]``.
            state: the adapted parameters, as :meth:`adapt` returns them.

        Returns:
            ``[T, n_query, ...]``, the output for each query from the batch ``support + that query``.
        """
        n_support = support_x.shape[1]
        outputs = [
            self.predict(torch.cat([support_x, query_x[:, j : j + 1]], dim=1), state)[:, n_support:]
            for j in range(query_x.shape[1])
        ]
        return torch.cat(outputs, dim=1)

    @override
    def forward(self, episode: Episode) -> Tensor:
        if self.training or self.transductive:
            return super().forward(episode)
        return self.predict_each_alone(episode.support_x, episode.query_x, self.adapt(episode.support_set))

    @override
    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        if not self.training:
            if self.transductive:
                return super().meta_loss(episode)
            predictions = self.forward(episode)
            return self.query_loss(predictions, episode), predictions
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
