"""Matching Networks (Vinyals et al., 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta._checks import positive_int
from lightning_meta.episode import SupportSet
from lightning_meta.functional import embed
from lightning_meta.learners.base import MetaLearner


def output_features(backbone: nn.Module) -> int | None:
    """Features a backbone of :mod:`lightning_meta.models` outputs: its linear ``head``'s, else its ``feature_dim``."""
    head = getattr(backbone, "head", None)
    if isinstance(head, nn.Linear):
        return head.out_features
    dim = getattr(backbone, "feature_dim", None)
    return dim if isinstance(dim, int) else None


class MatchingNet(MetaLearner):
    """Matching Networks: a query's class distribution is an attention over the labelled support examples.

    Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra, "Matching Networks for One Shot Learning",
    NeurIPS 2016 (https://arxiv.org/abs/1606.04080). With ``g`` the support and ``f`` the query embedding,
    ``P(y = k | x) = sum_i a(x, x_i) [y_i = k]`` where ``a(x, x_i) = softmax_i(scale * cos(f(x), g(x_i)))``.
    :meth:`predict` returns ``log P`` as logits, so the base's cross-entropy is the paper's negative
    log-likelihood and ``softmax(logits) == P``.

    Without full-context embeddings ``f = g =`` the backbone. With ``full_context_embeddings=True``, ``g`` reads
    the whole support set through a bidirectional LSTM (``g(x_i) = g'(x_i) + h_fwd_i + h_bwd_i``) and ``f`` is
    the paper's attention LSTM run for ``fce_steps`` steps over the support embeddings; as in most public
    implementations the read-out is added to the LSTM state (``h + r``) rather than concatenated to it. The
    LSTM reads the support set in the order it comes, so FCE sees that order (without FCE the predictions do not
    depend on it); the package's episodes list it in a random order, so a position says nothing about a class.

    Adaptation needs no gradients; the number of ways may differ between training and evaluation.

    Args:
        backbone: embedding network mapping ``[n, *input_shape]`` to ``[n, *feature_shape]`` (flattened here).
        full_context_embeddings: use the paper's full-context embeddings (FCE).
        embedding_dim: number of features the backbone outputs, needed only to build the FCE LSTMs (default: read
            from a :mod:`lightning_meta.models` backbone: its ``head``'s outputs, else its ``feature_dim``).
        fce_steps: processing steps of the attention LSTM (FCE only).
        scale: positive factor on the cosine similarities before the softmax (the paper: 1). It bounds how sure
            the attention can be: in a ``W``-way 1-shot episode a query gets at most ``1 / (1 + (W - 1) exp(-2 *
            scale))`` on its class, and with non-negative embeddings (a backbone ending in ReLU and pooling, such as
            :class:`~lightning_meta.models.Conv4`, whose cosines lie in ``[0, 1]``) at most ``exp(scale) /
            (exp(scale) + W - 1)``: 0.40 for 5-way at scale 1, so the loss cannot fall below 0.90 and stays large
            for tasks already classified right. A larger scale (10 gives 0.9998) lifts the bound.
        lr: learning rate of the outer optimizer, Adam.

    Raises:
        ValueError: for a non-positive ``fce_steps``, ``scale`` or ``lr``, or with FCE when the embedding size is
            neither given nor readable from the backbone.

    Example:
        >>> import torch
        >>> from lightning_meta import Episode
        >>> from lightning_meta.learners import MatchingNet
        >>> learner = MatchingNet(torch.nn.Linear(8, 4), full_context_embeddings=True, embedding_dim=4)
        >>> task = Episode(torch.randn(10, 8), torch.arange(5).repeat_interleave(2), torch.randn(15, 8),
        ...                torch.arange(5).repeat_interleave(3), ways=5)
        >>> log_p = learner(Episode.stack([task, task]))
        >>> log_p.shape, bool(torch.allclose(log_p.exp().sum(-1), torch.ones(2, 15)))
        (torch.Size([2, 15, 5]), True)
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        full_context_embeddings: bool = False,
        embedding_dim: int | None = None,
        fce_steps: int = 2,
        scale: float = 1.0,
        lr: float = 1e-3,
    ) -> None:
        super().__init__(lr=lr)
        positive_int("MatchingNet", "fce_steps", fce_steps)
        if not scale > 0:
            raise ValueError(f"MatchingNet: scale must be a positive number, got {scale!r}.")
        self.save_learner_hyperparameters()
        self.backbone = backbone
        self.full_context_embeddings = full_context_embeddings
        self.fce_steps = fce_steps
        self.scale = scale
        if full_context_embeddings:
            dim = embedding_dim if embedding_dim is not None else output_features(backbone)
            if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
                raise ValueError(
                    "MatchingNet: full_context_embeddings=True needs embedding_dim, the positive number of features "
                    "the backbone outputs (read from a Conv4 or ResNet12 backbone when not given); got "
                    f"embedding_dim={dim!r}."
                )
            self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
            self.query_lstm = nn.LSTMCell(dim, dim)

    @override
    def adapt(self, support: SupportSet) -> tuple[Tensor, Tensor]:
        """Support embeddings ``[n_tasks, n_support, features]`` and one-hot labels ``[n_tasks, n_support, ways]``."""
        if support.ways is None:
            raise ValueError("MatchingNet: episodes must be classification episodes (ways set), got ways=None.")
        features = embed(self.backbone, support.support_x)
        if self.full_context_embeddings:
            context, _ = self.support_lstm(features)
            forward, backward = context.chunk(2, dim=-1)
            features = features + forward + backward
        return features, F.one_hot(support.support_y, support.ways).to(features.dtype)

    @override
    def predict(self, query_x: Tensor, state: tuple[Tensor, Tensor]) -> Tensor:
        """Log-probabilities ``[n_tasks, n_query, ways]`` from the cosine attention over the support set."""
        support, one_hot = state
        queries = embed(self.backbone, query_x)
        if self.full_context_embeddings:
            queries = self._attend_to_support(queries, support)
        similarity = F.normalize(queries, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)  # [T, Q, S]
        probabilities = torch.softmax(self.scale * similarity, dim=-1) @ one_hot.to(similarity.dtype)  # [T, Q, W]
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()

    def _attend_to_support(self, queries: Tensor, support: Tensor) -> Tensor:
        """The attention LSTM ``f(x, S)``: ``fce_steps`` read-outs of the support set, conditioned on the query."""
        n_tasks, n_query, dim = queries.shape
        flat = queries.reshape(n_tasks * n_query, dim)
        h = torch.zeros_like(flat)
        c = torch.zeros_like(flat)
        for _ in range(self.fce_steps):
            attention = torch.softmax(h.reshape(n_tasks, n_query, dim) @ support.transpose(1, 2), dim=-1)
            readout = (attention @ support).reshape_as(flat)
            h_hat, c = self.query_lstm(flat, (h + readout, c))
            h = h_hat + flat
        return h.reshape(n_tasks, n_query, dim)
