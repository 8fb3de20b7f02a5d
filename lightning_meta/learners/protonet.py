"""Prototypical Networks (Snell et al., 2017)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta.episode import SupportSet
from lightning_meta.functional import class_means, embed
from lightning_meta.learners.base import MetaLearner

_DISTANCES = ("squared_euclidean", "cosine")


class ProtoNet(MetaLearner):
    """Prototypical Networks: classify a query by its distance to the mean embedding (prototype) of each class.

    Snell, Swersky and Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017
    (https://arxiv.org/abs/1703.05175). The logits of a query ``x`` are ``-scale * d(f(x), c_k)`` with ``c_k`` the
    prototype of class ``k``; for ``distance="cosine"`` they are ``scale * cos(f(x), c_k)``. The paper uses the
    squared Euclidean distance, found better than cosine; with cosine, a ``scale`` around 10 lets the softmax
    become confident (Oreshkin et al. 2018 call this metric scaling).

    Adaptation needs no gradients, so evaluation runs under Lightning's inference mode; the number of ways may
    differ between training and evaluation (the paper trains 60-way and tests 5-way on Omniglot).

    Args:
        backbone: embedding network mapping ``[n, *input_shape]`` to ``[n, *feature_shape]`` (flattened here),
            e.g. :class:`~lightning_meta.models.Conv4`.
        distance: ``"squared_euclidean"`` (the paper) or ``"cosine"``.
        scale: positive factor on the logits (fixed).
        lr: learning rate of the outer optimizer, Adam (the paper: 1e-3, halved every 2000 episodes).

    Raises:
        ValueError: for an unknown ``distance`` or a non-positive ``scale`` or ``lr``.

    Example:
        >>> import torch
        >>> from lightning_meta import Episode
        >>> from lightning_meta.learners import ProtoNet
        >>> learner = ProtoNet(torch.nn.Linear(8, 4))
        >>> task = Episode(torch.randn(10, 8), torch.arange(5).repeat_interleave(2), torch.randn(15, 8),
        ...                torch.arange(5).repeat_interleave(3), ways=5)
        >>> learner(Episode.stack([task, task])).shape  # [n_tasks, n_query, ways] logits
        torch.Size([2, 15, 5])
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        distance: str = "squared_euclidean",
        scale: float = 1.0,
        lr: float = 1e-3,
    ) -> None:
        super().__init__(lr=lr)
        if distance not in _DISTANCES:
            raise ValueError(f"ProtoNet: distance must be one of {_DISTANCES}, got {distance!r}.")
        if not scale > 0:
            raise ValueError(f"ProtoNet: scale must be a positive number, got {scale!r}.")
        self.save_learner_hyperparameters()
        self.backbone = backbone
        self.distance = distance
        self.scale = scale

    @override
    def adapt(self, support: SupportSet) -> Tensor:
        """Prototypes ``[n_tasks, ways, features]``: the mean support embedding of each class."""
        if support.ways is None:
            raise ValueError("ProtoNet: episodes must be classification episodes (ways set), got ways=None.")
        return class_means(embed(self.backbone, support.support_x), support.support_y, support.ways)

    @override
    def predict(self, query_x: Tensor, state: Tensor) -> Tensor:
        """Logits ``[n_tasks, n_query, ways]``: negative squared distances (or cosines) to the prototypes."""
        queries = embed(self.backbone, query_x)
        prototypes = state.to(queries.dtype)
        if self.distance == "cosine":
            similarity = F.normalize(queries, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)
            return self.scale * similarity
        # ||q - c||^2 = ||q||^2 - 2 q.c + ||c||^2, one batched matmul instead of a [T, Q, W, D] difference.
        squared = (
            queries.pow(2).sum(-1, keepdim=True)
            - 2 * queries @ prototypes.transpose(1, 2)
            + prototypes.pow(2).sum(-1).unsqueeze(1)
        )
        return -self.scale * squared.clamp_min(0)


__all__ = ["ProtoNet", "class_means", "embed"]
