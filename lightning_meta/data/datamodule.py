"""EpisodicDataModule: episodes from any labelled dataset or task family, reproducible and DDP-aware."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_meta._checks import positive_int
from lightning_meta.data.sampler import EpisodeDataset, EpisodeLoader, EpisodeSampler, keep_episode
from lightning_meta.data.tasks import LabelledTasks, TaskFamily

_STAGES = ("train", "val", "test")


class EpisodicDataModule(L.LightningDataModule):
    """Meta-batches of N-way K-shot episodes for ``Trainer.fit``, ``validate`` and ``test``.

    Each split is either a map-style dataset of ``(x, label)`` pairs (wrapped in
    :class:`~lightning_meta.data.LabelledTasks`) or a :class:`~lightning_meta.data.TaskFamily` such as
    :class:`~lightning_meta.data.Sinusoid`. Every batch is an :class:`~lightning_meta.Episode` with
    ``tasks_per_batch`` tasks on its leading dimension.

    Guarantees:
        * Episodes are a pure function of ``(seed, stage, epoch, index)``: the same on any machine, in any process,
          with any ``num_workers``.
        * Training episodes are drawn anew every epoch; validation and test use the same ``eval_episodes`` fixed
          episodes every time (validation and test episodes differ from each other).
        * Under DDP each rank gets different tasks, with no Trainer flag needed: with ``W`` ranks the ranks together
          see exactly the tasks one process sees with ``tasks_per_batch * W``; ``tasks_per_batch`` is per rank and
          ``train_episodes`` is the total per epoch. Evaluation episodes are dealt to the ranks round-robin, each
          evaluated once.
        * A run resumed from a checkpoint saved in the middle of an epoch continues with the episodes the
          uninterrupted run would have seen (the loader's position is saved in the checkpoint).

    Args:
        train: training data (dataset or task family).
        val: validation data, or ``None`` for no validation.
        test: test data, or ``None``.
        ways: classes per training task (ignored by regression families).
        shots: support examples per class (per task for regression).
        queries: query examples per class (per task for regression).
        tasks_per_batch: tasks per training meta-batch, per rank.
        eval_ways: classes per validation/test task (default: ``ways``); ProtoNets train 60-way and test 5-way.
        eval_shots: support examples per class at evaluation (default: ``shots``).
        eval_queries: query examples per class at evaluation (default: ``queries``).
        eval_tasks_per_batch: tasks per evaluation meta-batch (default: ``tasks_per_batch``).
        train_episodes: training tasks per epoch, summed over ranks.
        eval_episodes: fixed validation and test tasks (600 is the usual protocol).
        seed: seed of every episode.
        num_workers: ``DataLoader`` worker processes.
        pin_memory: pin meta-batches in page-locked memory (for GPU training).

    Raises:
        ValueError: at construction for a count that is not a positive integer; at :meth:`setup` for an empty split,
            non-integer labels, more ways than classes, a class with fewer than ``shots + queries`` examples, or
            a task family of variable-size episodes (``variable_size``) with more than one task per meta-batch;
            when the training loader is built, for ``train_episodes`` smaller than one meta-batch across ranks.

    Example:
        >>> from lightning_meta.data import EpisodicDataModule, Sinusoid
        >>> dm = EpisodicDataModule(Sinusoid(), shots=5, queries=10, tasks_per_batch=3, train_episodes=6)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch.n_tasks, tuple(batch.support_x.shape), tuple(batch.query_y.shape)
        (3, (3, 5, 1), (3, 10, 1))
    """

    def __init__(
        self,
        train: Dataset | TaskFamily,
        val: Dataset | TaskFamily | None = None,
        test: Dataset | TaskFamily | None = None,
        *,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        tasks_per_batch: int = 4,
        eval_ways: int | None = None,
        eval_shots: int | None = None,
        eval_queries: int | None = None,
        eval_tasks_per_batch: int | None = None,
        train_episodes: int = 1000,
        eval_episodes: int = 600,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        for name in ("ways", "shots", "queries", "tasks_per_batch", "eval_ways", "eval_shots", "eval_queries",
                     "eval_tasks_per_batch", "train_episodes", "eval_episodes"):  # fmt: skip
            value = locals()[name]
            if value is not None:  # the eval_* ones default to their training counterparts
                positive_int("EpisodicDataModule", name, value)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"EpisodicDataModule: num_workers must be a non-negative integer, got {num_workers!r}.")
        if not isinstance(seed, int):
            raise ValueError(f"EpisodicDataModule: seed must be an integer, got {seed!r}.")
        self.data = {"train": train, "val": val, "test": test}
        self.ways, self.shots, self.queries = ways, shots, queries
        self.tasks_per_batch = tasks_per_batch
        self.eval_ways = eval_ways or ways
        self.eval_shots = eval_shots or shots
        self.eval_queries = eval_queries or queries
        self.eval_tasks_per_batch = eval_tasks_per_batch or tasks_per_batch
        self.train_episodes = train_episodes
        self.eval_episodes = eval_episodes
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._tasks: dict[str, TaskFamily] = {}

    def _size(self, split: str) -> tuple[int, int, int]:
        if split == "train":
            return self.ways, self.shots, self.queries
        return self.eval_ways, self.eval_shots, self.eval_queries

    def tasks(self, split: str) -> TaskFamily:
        """The task family of ``split``, built and validated on first use."""
        if split not in self._tasks:
            data = self.data[split]
            if data is None:
                raise ValueError(f"EpisodicDataModule has no {split} data: pass {split}=... to use this stage.")
            if isinstance(data, TaskFamily):
                tasks: TaskFamily = data
            elif callable(getattr(data, "sample", None)) and hasattr(data, "task_transforms"):
                raise TypeError(
                    f"EpisodicDataModule {split}= got a learn2learn {type(data).__name__}: wrap it as "
                    f"{split}=Learn2LearnTasks(taskset) (from lightning_meta.data) so that its tasks become seeded "
                    "episodes."
                )
            elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
                tasks = LabelledTasks(data, split=split)  # type: ignore[arg-type]
            else:
                raise TypeError(
                    f"EpisodicDataModule {split}= must be a map-style dataset of (x, label) pairs or a TaskFamily, "
                    f"got {type(data).__name__}."
                )
            ways, shots, queries = self._size(split)
            tasks.validate(ways=ways, shots=shots, queries=queries, split=split)
            setting = "tasks_per_batch" if split == "train" else "eval_tasks_per_batch"
            per_batch = self.tasks_per_batch if split == "train" else self.eval_tasks_per_batch
            if getattr(tasks, "variable_size", False) and per_batch != 1:
                raise ValueError(
                    f"EpisodicDataModule: the {split} tasks have variable ways and shots, so each meta-batch holds one "
                    f"task: {setting} must be 1, got {per_batch}. For the meta-gradient of a larger meta-batch, "
                    "accumulate gradients with Trainer(accumulate_grad_batches=...)."
                )
            self._tasks[split] = tasks
        return self._tasks[split]

    @override
    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}[stage]
        for split in splits:
            if self.data[split] is not None or split != "val":
                self.tasks(split)

    def _dataset(self, split: str) -> EpisodeDataset:
        ways, shots, queries = self._size(split)
        return EpisodeDataset(self.tasks(split), stage=split, seed=self.seed, ways=ways, shots=shots, queries=queries)

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _training_progress(self) -> tuple[int, int]:
        """(epoch, meta-batches fetched) as the trainer's fit loop counts them, for the loader's checkpoint."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        epoch = trainer.current_epoch
        fetched = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if fetched >= trainer.num_training_batches:  # the epoch is over (also under limit_train_batches)
            return epoch + 1, 0
        return epoch, fetched

    @override
    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._ranks()
        if self.train_episodes < self.tasks_per_batch * world_size:
            raise ValueError(
                f"EpisodicDataModule: train_episodes={self.train_episodes} is smaller than one meta-batch across "
                f"ranks (tasks_per_batch={self.tasks_per_batch} x {world_size} ranks)."
            )
        sampler = EpisodeSampler(
            self.train_episodes, self.tasks_per_batch, train=True, rank=rank, world_size=world_size
        )
        return EpisodeLoader(
            self._dataset("train"),
            sampler,
            progress=self._training_progress if self.trainer is not None else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def _eval_dataloader(self, split: str) -> DataLoader | list:
        if self.data[split] is None:
            return []
        rank, world_size = self._ranks()
        sampler = EpisodeSampler(
            self.eval_episodes, self.eval_tasks_per_batch, train=False, rank=rank, world_size=world_size
        )
        return DataLoader(
            self._dataset(split),
            batch_size=None,
            sampler=sampler,
            collate_fn=keep_episode,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def val_dataloader(self) -> Any:
        return self._eval_dataloader("val")

    @override
    def test_dataloader(self) -> Any:
        return self._eval_dataloader("test")
