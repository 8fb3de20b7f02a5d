"""TaskDataModule: meta-batches of environment parameters, with every guarantee of EpisodicDataModule.

It is an :class:`~lightning_meta.data.EpisodicDataModule` whose episodes are tasks of an
:class:`~lightning_meta.rl.EnvFamily` instead of labelled examples: the sampler, the resumable loader and the
rank split are the supervised ones (:mod:`lightning_meta.data.sampler`), so a task is a pure function of
``(seed, stage, epoch, index)``, ranks get different tasks under DDP, validation and test tasks are fixed, and a run
resumed mid-epoch continues with the tasks it would have seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_meta.data import EpisodicDataModule
from lightning_meta.data.sampler import EpisodeDataset, EpisodeKey, episode_generator
from lightning_meta.rl.families import EnvFamily


@dataclass
class TaskBatch:
    """A meta-batch of RL tasks: each task's environment parameters and the seed of its rollouts.

    Attributes:
        family: the family the tasks come from (it builds and sets the environments).
        params: ``{name: [n_tasks, ...]}``, float64.
        seeds: ``[n_tasks]`` int64: each task's rollout seed (action noise and environment resets).
        task_ids: ``[n_tasks]``: the global index of each task in its stage and epoch.
    """

    family: EnvFamily
    params: dict[str, Tensor]
    seeds: Tensor
    task_ids: Tensor

    @property
    def n_tasks(self) -> int:
        """Number of tasks in the meta-batch."""
        return int(self.seeds.shape[0])

    def task_params(self, i: int) -> dict[str, Tensor]:
        """The parameters of task ``i``."""
        return {name: value[i] for name, value in self.params.items()}

    def to(self, *args: Any, **kwargs: Any) -> TaskBatch:
        """The batch itself: environment parameters stay on the CPU, where the environments run."""
        return self


class TaskDataset(EpisodeDataset):
    """Builds the :class:`TaskBatch` of an :data:`~lightning_meta.data.sampler.EpisodeKey`.

    Task ``index`` of ``epoch`` draws its parameters, then its rollout seed, from
    ``episode_generator(seed, stage, epoch, index)``.

    Args:
        family: the task family.
        stage: ``"train"``, ``"val"`` or ``"test"``.
        seed: the run's seed.
    """

    def __init__(self, family: EnvFamily, *, stage: str, seed: int) -> None:
        self.family = family
        self.stage = stage
        self.seed = seed

    def task(self, epoch: int, index: int) -> tuple[dict[str, Tensor], int]:
        """The parameters and rollout seed of the task with global index ``index`` of ``epoch``."""
        generator = episode_generator(self.seed, self.stage, epoch, index)
        params = self.family.sample(generator)
        return params, int(torch.randint(0, 2**62, (), generator=generator))

    @override
    def __getitem__(self, key: EpisodeKey) -> TaskBatch:  # type: ignore[override]
        epoch, indices = key
        tasks = [self.task(epoch, i) for i in indices]
        names = tasks[0][0].keys()
        return TaskBatch(
            family=self.family,
            params={name: torch.stack([params[name] for params, _ in tasks]) for name in names},
            seeds=torch.tensor([seed for _, seed in tasks], dtype=torch.int64),
            task_ids=torch.tensor(list(indices), dtype=torch.int64),
        )


class TaskDataModule(EpisodicDataModule):
    """Meta-batches of tasks (:class:`TaskBatch`) of an environment family for ``Trainer.fit``, ``validate``, ``test``.

    Guarantees (those of :class:`~lightning_meta.data.EpisodicDataModule`, through the same sampler and loader):
        * tasks are a pure function of ``(seed, stage, epoch, index)``, with any number of processes or workers;
        * training tasks are drawn anew every epoch; validation and test use ``eval_tasks`` fixed tasks each (the two
          sets differ);
        * under DDP each rank gets different tasks (``tasks_per_batch`` per rank; ``train_tasks`` per epoch in all),
          and the ranks together see the tasks one process sees with ``tasks_per_batch * world_size``;
        * a run resumed from a mid-epoch checkpoint continues with the tasks the uninterrupted run would have seen.

    Args:
        family: the task family (for example :class:`~lightning_meta.rl.Navigation2D`).
        tasks_per_batch: tasks per training meta-batch, per rank (20 in the MAML paper).
        eval_tasks_per_batch: tasks per evaluation meta-batch (default: ``tasks_per_batch``).
        train_tasks: training tasks per epoch, summed over ranks.
        eval_tasks: fixed validation tasks, and as many fixed test tasks.
        seed: seed of every task.
        num_workers: ``DataLoader`` worker processes (0 is best: a task is a few numbers, and the environments run in
            the main process).

    Example:
        >>> from lightning_meta.rl import Navigation2D, TaskDataModule
        >>> dm = TaskDataModule(Navigation2D(), tasks_per_batch=4, train_tasks=8)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch.n_tasks, tuple(batch.params["goal"].shape), batch.task_ids.tolist()
        (4, (4, 2), [0, 1, 2, 3])
    """

    def __init__(
        self,
        family: EnvFamily,
        *,
        tasks_per_batch: int = 20,
        eval_tasks_per_batch: int | None = None,
        train_tasks: int = 2000,
        eval_tasks: int = 40,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        if not isinstance(family, EnvFamily):
            raise ValueError(f"TaskDataModule: family must be an EnvFamily, got {type(family).__name__}.")
        super().__init__(
            family,  # type: ignore[arg-type]
            family,  # type: ignore[arg-type]
            family,  # type: ignore[arg-type]
            ways=1,
            shots=1,
            queries=1,
            tasks_per_batch=tasks_per_batch,
            eval_tasks_per_batch=eval_tasks_per_batch,
            train_episodes=train_tasks,
            eval_episodes=eval_tasks,
            seed=seed,
            num_workers=num_workers,
        )
        self.family = family

    @override
    def tasks(self, split: str) -> Any:
        """The task family (the same for every split; the stage in each task's seed keeps the splits apart)."""
        return self.family

    @override
    def _dataset(self, split: str) -> TaskDataset:  # type: ignore[override]
        return TaskDataset(self.family, stage=split, seed=self.seed)


def stack_params(params: list[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """``{name: [n_tasks, ...]}`` from one parameter dictionary per task."""
    return {name: torch.stack([p[name] for p in params]) for name in params[0]}
