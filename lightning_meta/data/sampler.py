"""Which tasks make each meta-batch: seeded, DDP-aware and resumable.

Episode identity is a pure function of ``(seed, stage, epoch, index)``: :func:`episode_generator` seeds a fresh
``torch.Generator`` from those four values, so the same seed gives the same episodes in any process, with any
number of workers and on any number of ranks.

* Training: epoch ``e`` holds the global tasks ``0 .. train_episodes - 1``, seeded with ``epoch=e``. Meta-batch
  ``b`` of rank ``r`` out of ``W`` holds tasks ``(b*W + r)*T .. (b*W + r + 1)*T - 1``, so the ranks together see
  exactly the tasks one process sees with a meta-batch of ``W*T`` tasks.
* Validation and test: the fixed tasks ``0 .. eval_episodes - 1`` (``epoch=0`` always), dealt round-robin to
  the ranks, so every episode is evaluated exactly once whatever the number of ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_meta.data.tasks import TaskFamily
from lightning_meta.episode import Episode

#: A meta-batch request: the epoch (0 for evaluation) and the global indices of its tasks.
EpisodeKey = tuple[int, tuple[int, ...]]


def episode_seed(seed: int, stage: str, epoch: int, index: int) -> int:
    """A 63-bit seed for one episode, the same on every platform and process (unlike Python's ``hash``).

    Example:
        >>> episode_seed(0, "train", 0, 0) == episode_seed(0, "train", 0, 0) != episode_seed(0, "train", 1, 0)
        True
    """
    digest = hashlib.blake2b(f"{seed}/{stage}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def episode_generator(seed: int, stage: str, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded by :func:`episode_seed`."""
    return torch.Generator().manual_seed(episode_seed(seed, stage, epoch, index))


class EpisodeSampler(DistributedSampler):
    """Yields the :data:`EpisodeKey` of each meta-batch one rank should build, epoch after epoch.

    It subclasses ``DistributedSampler`` because it already splits the work across ranks: Lightning then leaves it
    in place instead of wrapping it, and calls :meth:`set_epoch` at the start of every epoch.

    Args:
        n_episodes: tasks per epoch, summed over ranks.
        tasks_per_batch: tasks in one meta-batch of one rank.
        train: training order (contiguous blocks, a new draw every epoch, incomplete last block dropped) or
            evaluation order (fixed tasks dealt round-robin, every task kept).
        rank: this process's rank.
        world_size: number of ranks.

    Example:
        >>> list(EpisodeSampler(8, 2, train=True, rank=1, world_size=2))
        [(0, (2, 3)), (0, (6, 7))]
        >>> list(EpisodeSampler(5, 2, train=False, rank=0, world_size=2))
        [(0, (0, 2)), (0, (4,))]
    """

    def __init__(
        self, n_episodes: int, tasks_per_batch: int, *, train: bool, rank: int = 0, world_size: int = 1
    ) -> None:
        # DistributedSampler.__init__ wants a dataset and a process group; this sampler needs neither.
        self.n_episodes = n_episodes
        self.tasks_per_batch = tasks_per_batch
        self.train = train
        self.shuffle = train  # read by Lightning to warn about shuffled evaluation loaders
        self.rank = rank
        self.num_replicas = world_size
        self.epoch = 0
        self._start = 0  # first meta-batch of the next iteration (set when resuming mid-epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the training epoch (evaluation ignores it)."""
        self.epoch = epoch

    def resume(self, epoch: int, position: int) -> None:
        """Make the next iteration start at meta-batch ``position`` of ``epoch`` (the next epoch if it is done)."""
        if position >= len(self):
            epoch, position = epoch + 1, 0
        self.epoch, self._start = epoch, position

    def __len__(self) -> int:
        if self.train:
            return self.n_episodes // (self.tasks_per_batch * self.num_replicas)
        mine = len(range(self.rank, self.n_episodes, self.num_replicas))
        return -(-mine // self.tasks_per_batch)

    def __iter__(self) -> Iterator[EpisodeKey]:  # type: ignore[override]
        start, self._start = self._start, 0
        if self.train:
            epoch, width = self.epoch, self.tasks_per_batch
            for b in range(start, len(self)):
                first = (b * self.num_replicas + self.rank) * width
                yield epoch, tuple(range(first, first + width))
        else:
            mine = range(self.rank, self.n_episodes, self.num_replicas)
            for b in range(start, len(self)):
                yield 0, tuple(mine[b * self.tasks_per_batch : (b + 1) * self.tasks_per_batch])


class EpisodeDataset(Dataset):
    """Builds the meta-batch of an :data:`EpisodeKey`: one seeded draw from ``tasks`` per task index.

    Args:
        tasks: the task family to draw from.
        stage: ``"train"``, ``"val"`` or ``"test"``; part of every episode's seed.
        seed: the run's seed.
        ways: classes per task.
        shots: support examples per class.
        queries: query examples per class.
    """

    def __init__(self, tasks: TaskFamily, *, stage: str, seed: int, ways: int, shots: int, queries: int) -> None:
        self.tasks = tasks
        self.stage = stage
        self.seed = seed
        self.ways = ways
        self.shots = shots
        self.queries = queries

    def episode(self, epoch: int, index: int) -> Episode:
        """The task with global index ``index`` of ``epoch``, its support set in a random order.

        Task families list the support set in class order (class 0's examples first); a learner that reads the
        support set as a sequence (SNAIL) would learn to take a support example's class from its position. So the
        support set is permuted by one more draw from the episode's generator, made after the task's: the classes
        and examples are those ``tasks.sample`` draws, only their order changes.
        """
        generator = episode_generator(self.seed, self.stage, epoch, index)
        task = self.tasks.sample(generator, ways=self.ways, shots=self.shots, queries=self.queries)
        order = torch.randperm(task.support_y.shape[0], generator=generator)
        return Episode(
            task.support_x[order],
            task.support_y[order],
            task.query_x,
            task.query_y,
            ways=task.ways,
            task_ids=torch.tensor(index),
            domains=task.domains,
            domain_names=task.domain_names,
        )

    def __getitem__(self, key: EpisodeKey) -> Episode:  # type: ignore[override]
        epoch, indices = key
        return Episode.stack([self.episode(epoch, i) for i in indices])


def keep_episode(episode: Episode) -> Episode:
    """The loaders' ``collate_fn``: a meta-batch arrives already assembled."""
    return episode


class EpisodeLoader(DataLoader):
    """A ``DataLoader`` of meta-batches that Lightning can checkpoint and resume in the middle of an epoch.

    Lightning saves :meth:`state_dict` with every checkpoint and calls :meth:`load_state_dict` before the first
    iteration of a resumed run; the next iteration then starts at the first meta-batch the interrupted run had
    not fetched.

    Args:
        dataset: the episode dataset.
        sampler: the training sampler.
        progress: returns ``(epoch, meta-batches fetched in that epoch)`` as the training loop counts them
            (the datamodule reads it from the trainer). Without it the loader is not resumable.
        num_workers: ``DataLoader`` worker processes.
        pin_memory: pin meta-batches in page-locked memory.
    """

    def __init__(
        self,
        dataset: EpisodeDataset,
        sampler: EpisodeSampler,
        *,
        progress: Callable[[], tuple[int, int]] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=None,
            sampler=sampler,
            collate_fn=keep_episode,  # type: ignore[arg-type]
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
        )
        self.progress = progress

    def state_dict(self) -> dict[str, Any]:
        """Where the training loop stands: the epoch and the number of meta-batches it has fetched."""
        sampler: EpisodeSampler = self.sampler  # type: ignore[assignment]
        epoch, position = self.progress() if self.progress is not None else (sampler.epoch, 0)
        return {"epoch": epoch, "position": position}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` at the next iteration."""
        sampler: EpisodeSampler = self.sampler  # type: ignore[assignment]
        sampler.resume(int(state_dict["epoch"]), int(state_dict["position"]))
