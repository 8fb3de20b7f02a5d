"""SNAIL: A Simple Neural Attentive Meta-Learner (Mishra et al., ICLR 2018)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta._checks import positive_int
from lightning_meta.episode import SupportSet
from lightning_meta.functional import embed
from lightning_meta.learners.base import MetaLearner
from lightning_meta.learners.matchingnet import output_features


class DenseBlock(nn.Module):
    """``DenseBlock(R, D)`` of the paper's appendix A: a gated causal convolution whose output is concatenated.

    ``xf, xg = CausalConv(x, R, D), CausalConv(x, R, D)``; ``activations = tanh(xf) * sigmoid(xg)`` (WaveNet's gated
    activation); the block returns ``concat(x, activations)``. The causal convolution has kernel size 2 and dilation
    ``R``: position ``t`` reads ``x[t - R]`` (zero before the start) and ``x[t]``. It is written as one linear map of
    ``[x[t - R], x[t]]`` to ``[xf, xg]`` (the same function and parameter count as two ``Conv1d`` with kernel 2), so
    that a query appended at the end of a sequence (:meth:`step`) reuses the same weights.

    Args:
        in_channels: channels ``C`` of the input sequence.
        dilation: the dilation rate ``R``.
        filters: the number of filters ``D``; the output has ``C + D`` channels.
    """

    def __init__(self, in_channels: int, dilation: int, filters: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.dilation = dilation
        self.out_channels = in_channels + filters
        self.conv = nn.Linear(2 * in_channels, 2 * filters)

    def _gated(self, previous: Tensor, current: Tensor) -> Tensor:
        xf, xg = self.conv(torch.cat([previous, current], dim=-1)).chunk(2, dim=-1)
        return torch.tanh(xf) * torch.sigmoid(xg)

    def forward(self, x: Tensor) -> Tensor:
        """Causal over a whole sequence: ``[B, L, C]`` to ``[B, L, C + D]``."""
        previous = F.pad(x, (0, 0, self.dilation, 0))[:, : x.shape[1]]
        return torch.cat([x, self._gated(previous, x)], dim=-1)

    def step(self, context: Tensor, x: Tensor) -> Tensor:
        """Outputs at position ``L`` for each of ``Q`` alternative elements ``x`` ``[B, Q, C]`` placed there.

        ``context`` ``[B, L, >= C]`` holds this block's inputs at positions ``0..L-1`` in its first ``C`` channels.
        """
        length = context.shape[1]
        if length >= self.dilation:
            previous = context[:, length - self.dilation, : self.in_channels].unsqueeze(1).expand_as(x)
        else:
            previous = torch.zeros_like(x)
        return torch.cat([x, self._gated(previous, x)], dim=-1)


class TCBlock(nn.Module):
    """``TCBlock(T, D)`` of the paper's appendix A: ``DenseBlock(2**i, D)`` for ``i = 1, ..., ceil(log2 T)``.

    The dilations start at 2, as in the paper's pseudocode (and eambutu/snail-pytorch's ``2 ** (i + 1)``), so the
    convolutions alone reach back by even offsets only; the attention blocks around them see every position.

    Args:
        in_channels: channels ``C`` of the input sequence.
        sequence_length: ``T``, the length of the training sequences (``ways * shots + 1``).
        filters: ``D`` per dense block; the output has ``C + ceil(log2 T) * D`` channels.
    """

    def __init__(self, in_channels: int, sequence_length: int, filters: int) -> None:
        super().__init__()
        layers = []
        channels = in_channels
        for i in range(1, math.ceil(math.log2(sequence_length)) + 1):
            layers.append(DenseBlock(channels, 2**i, filters))
            channels = layers[-1].out_channels
        self.layers = nn.ModuleList(layers)
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        """Causal over a whole sequence: ``[B, L, C]`` to ``[B, L, out_channels]``."""
        for layer in self.layers:
            x = layer(x)
        return x

    def step(self, context: Tensor, x: Tensor) -> Tensor:
        """Outputs at position ``L`` for elements ``x`` ``[B, Q, C]`` given the context, as :meth:`DenseBlock.step`."""
        for layer in self.layers:
            x = layer.step(context, x)  # type: ignore[operator]
        return x


class AttentionBlock(nn.Module):
    """``AttentionBlock(K, V)`` of the paper's appendix A: causal single-head key-value attention, concatenated.

    ``keys, query = affine(x, K), affine(x, K)``; ``probs = CausallyMaskedSoftmax(query keys^T / sqrt(K))`` (position
    ``t`` attends to positions ``<= t``, itself included); ``read = probs @ affine(x, V)``; returns
    ``concat(x, read)``.

    Args:
        in_channels: channels ``C`` of the input sequence.
        key_size: ``K``.
        value_size: ``V``; the output has ``C + V`` channels.
    """

    def __init__(self, in_channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels + value_size
        self.scale = 1.0 / math.sqrt(key_size)
        self.query = nn.Linear(in_channels, key_size)
        self.key = nn.Linear(in_channels, key_size)
        self.value = nn.Linear(in_channels, value_size)

    def forward(self, x: Tensor) -> Tensor:
        """Causal over a whole sequence: ``[B, L, C]`` to ``[B, L, C + V]``."""
        logits = self.query(x) @ self.key(x).transpose(1, 2) * self.scale  # [B, L, L]
        future = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)
        probs = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)
        return torch.cat([x, (probs @ self.value(x).to(probs.dtype)).to(x.dtype)], dim=-1)

    def step(self, context: Tensor, x: Tensor) -> Tensor:
        """Outputs at position ``L`` for elements ``x`` ``[B, Q, C]``: each attends to the context and itself only."""
        context = context[..., : self.in_channels]
        query, key, value = self.query(x), self.key(x), self.value(x)  # [B, Q, K], [B, Q, K], [B, Q, V]
        to_context = query @ self.key(context).transpose(1, 2)  # [B, Q, L]
        to_itself = (query * key).sum(-1, keepdim=True)  # [B, Q, 1]
        probs = torch.softmax(torch.cat([to_context, to_itself], dim=-1) * self.scale, dim=-1)
        length = context.shape[1]
        read = probs[..., :length] @ self.value(context).to(probs.dtype) + probs[..., length:] * value.to(probs.dtype)
        return torch.cat([x, read.to(x.dtype)], dim=-1)


class SNAIL(MetaLearner):
    """SNAIL: a sequence model of causal temporal convolutions and attention reads the labelled support set.

    Mishra, Rohaninejad, Chen and Abbeel, "A Simple Neural Attentive Meta-Learner", ICLR 2018
    (https://arxiv.org/abs/1707.03141). Each example is embedded by the backbone (the paper: the Conv4 of Vinyals et
    al. for Omniglot, appendix B) and concatenated with its one-hot label; the support examples form a sequence and
    a query, with an all-zero label, comes last (section 4.1: ``N * K`` labelled examples, then the unlabelled one,
    ``T = N * K + 1``). The sequence goes through the paper's few-shot architecture (appendix B)::

        AttentionBlock(64, 32), TCBlock(T, 128), AttentionBlock(256, 128), TCBlock(T, 128), AttentionBlock(512, 256)

    then a 1x1 convolution (a linear map, here) to ``N`` logits at the query's position. The blocks are
    :class:`DenseBlock` (gated dilated causal convolution), :class:`TCBlock` and :class:`AttentionBlock` (causal
    key-value attention) of appendix A.

    Several queries, none seeing another: every query is evaluated as the last element of its own sequence
    ``support + [query]``, as in the paper. Causality makes the support positions independent of what follows, so
    :meth:`adapt` runs the support sequence once (its outputs are the task state) and :meth:`predict` computes, for
    all queries at once, only the last position: each query's convolutions read the support and itself, and its
    attention reads the support and itself. The result equals running ``n_query`` separate sequences
    (``tests/learners/test_snail.py`` checks it against such a hand-written reference).

    The backbone embeds each task's support set in one call and its query set in one call (as ProtoNet does): with
    a batch-statistics backbone such as :class:`~lightning_meta.models.Conv4`, a query's embedding is normalised
    with its task's query statistics (transductive, like MAML and ProtoNet here); with a backbone without batch
    statistics a query's logits depend on the support set and that query only.

    The label input and the output layer have ``ways`` units, so every episode must be ``ways``-way, except on
    data whose episodes vary in ways (Meta-Dataset's :class:`~lightning_meta.data.VariableEpisodes`): there
    ``ways`` is the most ways of an episode and each episode uses the first ``ways`` label units and logits. The
    number of support examples may differ from ``ways * shots`` (``shots`` fixes only how many dense blocks a TC
    block has), so the adaptation curve against shots applies.

    Warning:
        SNAIL, unlike the other learners, sees the order of the support set. Trained on support sets in class order
        (label ``i`` at positions ``i * shots`` to ``(i + 1) * shots - 1``) it learns to read a support example's
        class from its position instead of its label input: a 20-way 1-shot model trained so scored 88 % on
        class-ordered Omniglot test episodes, 6 % (chance: 5 %) on the same episodes with their support shuffled, and
        3 % with 5 shots. The package's episodes therefore present the support set in a random order
        (:class:`~lightning_meta.data.EpisodeDataset`, so every :class:`~lightning_meta.data.EpisodicDataModule`);
        if you build episodes yourself, shuffle each support set's inputs and labels with one permutation. Check a
        trained model with ``benchmarks/snail_support_order.py`` (it should score the same in both orders).

    Args:
        backbone: embedding network mapping ``[n, *input_shape]`` to ``[n, *feature_shape]`` (flattened here), e.g.
            :class:`~lightning_meta.models.Conv4` (64 features on 28x28 Omniglot).
        ways: classes per episode ``N``.
        shots: support examples per class ``K`` of the training episodes; ``T = ways * shots + 1``.
        embedding_dim: number of features the backbone outputs (default: read from a :mod:`lightning_meta.models`
            backbone: its ``head``'s outputs, else its ``feature_dim``).
        lr: learning rate of the outer optimizer, Adam.

    Raises:
        ValueError: for a non-positive ``ways``, ``shots``, ``embedding_dim`` or ``lr``, an embedding size that is
            neither given nor readable from the backbone; at :meth:`adapt`, for episodes that are not ``ways``-way.

    Example:
        >>> import torch
        >>> from lightning_meta import Episode
        >>> from lightning_meta.learners import SNAIL
        >>> learner = SNAIL(torch.nn.Linear(8, 4), ways=5, shots=2, embedding_dim=4)
        >>> task = Episode(torch.randn(10, 8), torch.arange(5).repeat_interleave(2), torch.randn(15, 8),
        ...                torch.arange(5).repeat_interleave(3), ways=5)
        >>> learner(Episode.stack([task, task])).shape  # [n_tasks, n_query, ways] logits
        torch.Size([2, 15, 5])
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        ways: int,
        shots: int,
        embedding_dim: int | None = None,
        lr: float = 1e-3,
    ) -> None:
        super().__init__(lr=lr)
        positive_int("SNAIL", "ways", ways)
        positive_int("SNAIL", "shots", shots)
        dim = embedding_dim if embedding_dim is not None else output_features(backbone)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(
                "SNAIL: embedding_dim must be the positive number of features the backbone outputs (read from a Conv4 "
                f"or ResNet12 backbone when not given); got embedding_dim={dim!r}."
            )
        self.save_learner_hyperparameters()
        self.backbone = backbone
        self.ways = ways
        self.shots = shots
        self.embedding_dim = dim
        sequence_length = ways * shots + 1
        blocks: list[AttentionBlock | TCBlock] = []
        channels = dim + ways
        for block in (
            lambda c: AttentionBlock(c, 64, 32),
            lambda c: TCBlock(c, sequence_length, 128),
            lambda c: AttentionBlock(c, 256, 128),
            lambda c: TCBlock(c, sequence_length, 128),
            lambda c: AttentionBlock(c, 512, 256),
        ):
            blocks.append(block(channels))
            channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.output = nn.Linear(channels, ways)

    @override
    def adapt(self, support: SupportSet) -> Tensor:
        """The support sequence through every block: ``[n_tasks, n_support, channels]`` (the queries' context).

        Each block concatenates its inputs with new features, so this one tensor holds every block's support inputs
        as a prefix of its channels.
        """
        if self.variable_ways and isinstance(support.ways, int) and support.ways > self.ways:
            raise ValueError(
                f"SNAIL: with episodes of varying ways, SNAIL(ways=...) is the most ways of an episode (the size of "
                "its label input and output; each episode uses the first `ways`), so it must be at least "
                f"{support.ways}; got ways={self.ways}. Set it to VariableEpisodes.max_ways."
            )
        if not self.variable_ways and support.ways != self.ways:
            raise ValueError(
                f"SNAIL: episodes must be {self.ways}-way (the size of its label input and output, set by "
                f"SNAIL(ways=...)), got ways={support.ways!r}."
            )
        self._ways = support.ways if self.variable_ways else None
        features = embed(self.backbone, support.support_x)
        x = torch.cat([features, F.one_hot(support.support_y, self.ways).to(features.dtype)], dim=-1)
        for block in self.blocks:
            x = block(x)
        return x

    @override
    def predict(self, query_x: Tensor, state: Tensor) -> Tensor:
        """Logits ``[n_tasks, n_query, ways]``: each query read as the last element of ``support + [query]``."""
        features = embed(self.backbone, query_x)
        x = torch.cat([features, features.new_zeros(*features.shape[:-1], self.ways)], dim=-1)
        for block in self.blocks:
            x = block.step(state, x)  # type: ignore[operator]
        logits = self.output(x)
        return self.keep_ways(logits)


__all__ = ["SNAIL", "AttentionBlock", "DenseBlock", "TCBlock"]
