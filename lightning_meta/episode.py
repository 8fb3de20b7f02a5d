"""The unit of meta-learning data: one task, or a meta-batch of tasks, split into support and query."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor


class _Tasks:
    """What :class:`Episode` and :class:`SupportSet` share: the number of tasks and the kind of targets."""

    support_x: Tensor
    ways: int | None
    batched: bool

    @property
    def n_tasks(self) -> int:
        """Number of tasks: the size of dimension 0 when batched, else 1."""
        return self.support_x.shape[0] if self.batched else 1

    @property
    def is_classification(self) -> bool:
        """Whether the targets are class labels (``ways`` is set)."""
        return self.ways is not None

    def __len__(self) -> int:
        return self.n_tasks


@dataclass(frozen=True)
class Episode(_Tasks):
    """Support and query sets of one task, or of a meta-batch of tasks stacked on a leading dimension.

    A classification episode holds ``ways * shots`` support and ``ways * queries`` query examples with labels
    ``0..ways-1``; which class of the dataset receives which label is drawn at random for every episode. The episodes
    of :class:`~lightning_meta.data.EpisodicDataModule` list the support set in a random order (so that a learner
    reading it as a sequence, such as SNAIL, cannot take a class from a position) and the query set grouped by label
    (``query_y == [0]*queries + [1]*queries + ...``); learners accept any order. A regression episode (such as a
    sinusoid) holds float targets and ``ways=None``.

    A meta-batch (``batched=True``) stacks ``n_tasks`` tasks on dimension 0 of every tensor. Iterating over an
    episode yields its tasks one by one as unbatched episodes.

    Args:
        support_x: support inputs, ``[n_support, *input_shape]`` (or ``[n_tasks, n_support, *input_shape]``).
        support_y: support targets, ``[n_support]`` class labels or ``[n_support, *target_shape]`` regression targets.
        query_x: query inputs, laid out like ``support_x``.
        query_y: query targets, laid out like ``support_y``.
        ways: number of classes in the task, or ``None`` for regression.
        batched: whether dimension 0 indexes tasks.
        task_ids: the global index of each task in its stage and epoch (``[n_tasks]`` when batched), for
            tracing which tasks a process saw; ``None`` when unknown.
        domains: for episodes drawn from several datasets (:class:`~lightning_meta.data.MultiDomainTasks`), the
            index in ``domain_names`` of the dataset of each task (long, ``[n_tasks]`` when batched); moved with
            the episode. ``None`` for single-dataset episodes.
        domain_names: the names of the datasets ``domains`` indexes.

    Example:
        >>> import torch
        >>> from lightning_meta import Episode
        >>> task = Episode(torch.zeros(5, 3), torch.arange(5), torch.zeros(10, 3), torch.arange(5).repeat(2), ways=5)
        >>> batch = Episode.stack([task, task])
        >>> batch.n_tasks, batch.support_x.shape
        (2, torch.Size([2, 5, 3]))
        >>> [t.query_y.shape for t in batch]
        [torch.Size([10]), torch.Size([10])]
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int | None = None
    batched: bool = False
    task_ids: Tensor | None = None
    domains: Tensor | None = None
    domain_names: tuple[str, ...] | None = None

    def __iter__(self) -> Iterator[Episode]:
        if not self.batched:
            yield self
            return
        for i in range(self.n_tasks):
            yield Episode(
                self.support_x[i],
                self.support_y[i],
                self.query_x[i],
                self.query_y[i],
                ways=self.ways,
                batched=False,
                task_ids=None if self.task_ids is None else self.task_ids[i],
                domains=None if self.domains is None else self.domains[i],
                domain_names=self.domain_names,
            )

    @property
    def support_set(self) -> SupportSet:
        """The support half alone: what a learner's ``adapt`` receives, so that it cannot read the query."""
        return SupportSet(self.support_x, self.support_y, ways=self.ways, batched=self.batched, domains=self.domains)

    def _apply(self, fn: Any) -> Episode:
        return replace(
            self,
            support_x=fn(self.support_x),
            support_y=fn(self.support_y),
            query_x=fn(self.query_x),
            query_y=fn(self.query_y),
            domains=None if self.domains is None else fn(self.domains),
        )

    def to(self, *args: Any, **kwargs: Any) -> Episode:
        """Move (or cast) every tensor, like :meth:`torch.Tensor.to`; a dtype applies to floating tensors only.

        Lightning calls this to move a batch to the device, so an ``Episode`` travels whole.
        """
        dtype = kwargs.pop("dtype", None)
        tensor_args = [a for a in args if not isinstance(a, torch.dtype)]
        dtype = dtype or next((a for a in args if isinstance(a, torch.dtype)), None)

        def move(t: Tensor) -> Tensor:
            t = t.to(*tensor_args, **kwargs)
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        return self._apply(move)

    def pin_memory(self) -> Episode:
        """Pin every tensor in page-locked memory (called by ``DataLoader(pin_memory=True)``)."""
        return self._apply(lambda t: t.pin_memory())

    @staticmethod
    def stack(episodes: Sequence[Episode]) -> Episode:
        """Stack unbatched episodes of the same shape into a meta-batch.

        Raises:
            ValueError: no episodes, a batched episode, or episodes of different ways or shapes (variable-way or
                variable-shot episodes cannot share a meta-batch: draw them one task per meta-batch).
        """
        if not episodes:
            raise ValueError("Episode.stack needs at least one episode, got an empty sequence.")
        first = episodes[0]
        if any(e.batched for e in episodes):
            raise ValueError("Episode.stack takes single-task episodes; got an episode with batched=True.")
        for e in episodes[1:]:
            if (
                e.ways != first.ways
                or e.support_x.shape != first.support_x.shape
                or (e.query_x.shape != first.query_x.shape)
            ):
                raise ValueError(
                    "Episode.stack needs episodes of one size: got ways "
                    f"{first.ways} and {e.ways}, support {tuple(first.support_x.shape)} and "
                    f"{tuple(e.support_x.shape)}, query {tuple(first.query_x.shape)} and {tuple(e.query_x.shape)}. "
                    "Variable-way or variable-shot episodes need one task per meta-batch (tasks_per_batch=1)."
                )
        ids = None
        if all(e.task_ids is not None for e in episodes):
            ids = torch.stack([torch.as_tensor(e.task_ids) for e in episodes])
        domains = None
        if all(e.domains is not None for e in episodes):
            domains = torch.stack([torch.as_tensor(e.domains) for e in episodes])
        return Episode(
            torch.stack([e.support_x for e in episodes]),
            torch.stack([e.support_y for e in episodes]),
            torch.stack([e.query_x for e in episodes]),
            torch.stack([e.query_y for e in episodes]),
            ways=first.ways,
            batched=True,
            task_ids=ids,
            domains=domains,
            domain_names=first.domain_names,
        )

    def __repr__(self) -> str:
        kind = f"ways={self.ways}" if self.ways is not None else "regression"
        return (
            f"Episode(n_tasks={self.n_tasks}, {kind}, support_x={tuple(self.support_x.shape)}, "
            f"query_x={tuple(self.query_x.shape)}, batched={self.batched})"
        )


@dataclass(frozen=True)
class SupportSet(_Tasks):
    """The support examples of one task or of a meta-batch: what :meth:`MetaLearner.adapt` sees of an episode.

    An :class:`Episode` without its query, so that a method's adaptation cannot read the query examples or their
    labels by accident (``support.query_x`` is an ``AttributeError``). Made by :attr:`Episode.support_set`.

    Args:
        support_x: support inputs, ``[n_support, *input_shape]`` (or ``[n_tasks, n_support, *input_shape]``).
        support_y: support targets, laid out like those of :class:`Episode`.
        ways: number of classes, or ``None`` for regression.
        batched: whether dimension 0 indexes tasks.
        domains: the dataset of each task, for multi-domain episodes (see :class:`Episode`).

    Example:
        >>> import torch
        >>> task = Episode(torch.zeros(5, 3), torch.arange(5), torch.zeros(10, 3), torch.arange(5).repeat(2), ways=5)
        >>> support = Episode.stack([task, task]).support_set
        >>> support.n_tasks, support.support_x.shape, hasattr(support, "query_x")
        (2, torch.Size([2, 5, 3]), False)
    """

    support_x: Tensor
    support_y: Tensor
    ways: int | None = None
    batched: bool = False
    domains: Tensor | None = None

    def __repr__(self) -> str:
        kind = f"ways={self.ways}" if self.ways is not None else "regression"
        return f"SupportSet(n_tasks={self.n_tasks}, {kind}, support_x={tuple(self.support_x.shape)})"
