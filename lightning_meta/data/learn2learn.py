"""learn2learn tasksets as a task family: keep a learn2learn data pipeline, train with our datamodule and Trainer.

learn2learn (Arnold et al., 2020, https://github.com/learnables/learn2learn) builds tasks with a ``Taskset``
(alias ``TaskDataset``) over a ``MetaDataset`` and task transforms such as ``NWays``, ``KShots``, ``LoadData``,
``RemapLabels`` and ``ConsecutiveLabels``, or with ``l2l.vision.benchmarks.get_tasksets``. Its ``sample()``
returns one task as ``(data, labels)``, and its examples then split support from query themselves.
:class:`Learn2LearnTasks` wraps such a taskset into a :class:`~lightning_meta.data.TaskFamily`, so that
:class:`~lightning_meta.data.EpisodicDataModule` turns its tasks into seeded, DDP-aware meta-batches.

learn2learn itself is never imported here: any object with a ``sample()`` that returns one task as
``(data, labels)`` works. Install learn2learn with ``bash scripts/install_learn2learn.sh``: its last release does
not build from PyPI on Python >= 3.11.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_meta.data.sampler import episode_generator, episode_seed
from lightning_meta.episode import Episode

SupportPositions = Literal["alternate", "first"]
_SUPPORT_POSITIONS = ("alternate", "first")


@contextmanager
def seeded_global_random_state(seed: int) -> Iterator[None]:
    """Seed Python's ``random``, NumPy's global ``RandomState`` and torch's default CPU generator, then restore them.

    learn2learn's task transforms draw from Python's ``random``; dataset transforms (torchvision's random
    augmentations) from torch's global generator, some code from NumPy's. Inside this block all three start from
    ``seed``; on exit they are back where they were, so the caller's own random streams are left undisturbed. CUDA
    generators are not touched.

    Args:
        seed: a non-negative integer (NumPy receives it modulo ``2**32``).

    Example:
        >>> import random
        >>> with seeded_global_random_state(7):
        ...     first = random.random()
        >>> with seeded_global_random_state(7):
        ...     second = random.random()
        >>> first == second
        True
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)


def support_mask(shots: int, queries: int, support_positions: SupportPositions = "alternate") -> Tensor:
    """Which of a class's ``shots + queries`` examples, in the order the task lists them, go to the support set.

    * ``"alternate"``: support and query alternate, starting with support (positions 0, 2, 4, ... are support),
      as learn2learn's MAML and ANIL examples split a task (``adaptation_indices[np.arange(shots * ways) * 2]``);
      when ``shots != queries`` the examples left after ``2 * min(shots, queries)`` go to the larger set.
    * ``"first"``: the first ``shots`` are support, the rest query, as learn2learn's ProtoNet example does.

    Args:
        shots: support examples per class.
        queries: query examples per class.
        support_positions: ``"alternate"`` or ``"first"``.

    Returns:
        A boolean tensor ``[shots + queries]``, true at the support positions.

    Example:
        >>> support_mask(2, 3).int().tolist(), support_mask(2, 3, "first").int().tolist()
        ([1, 0, 1, 0, 0], [1, 1, 0, 0, 0])
    """
    mask = torch.zeros(shots + queries, dtype=torch.bool)
    if support_positions == "first":
        mask[:shots] = True
    else:
        paired = 2 * min(shots, queries)
        mask[0:paired:2] = True
        if shots > queries:
            mask[paired:] = True
    return mask


def split_task(
    data: Tensor,
    labels: Tensor,
    *,
    ways: int,
    shots: int,
    queries: int,
    support_positions: SupportPositions = "alternate",
) -> Episode:
    """Split one task, as a learn2learn taskset returns it, into an :class:`~lightning_meta.Episode`.

    The examples of each class are taken in the order the task lists them and split by :func:`support_mask`. The
    episode's label ``i`` is the ``i``-th smallest label of the task (after learn2learn's ``RemapLabels`` the labels
    are already ``0..ways-1`` and stay as they are), and its examples are grouped by label (episodes of an
    :class:`~lightning_meta.data.EpisodicDataModule` over :class:`Learn2LearnTasks` then shuffle the support set).

    With ``"alternate"`` and ``shots == queries`` this is exactly the split of learn2learn's MAML and ANIL
    examples whenever that split gives every class ``shots`` support examples, i.e. whenever the task lists each
    class's examples together, as ``KShots``, ``FusedNWaysKShots`` and ``ConsecutiveLabels`` do; the examples are
    then the same, only grouped by label.

    Args:
        data: the task's inputs ``[n, *input_shape]``.
        labels: their integer labels ``[n]``.
        ways: classes the task must hold.
        shots: support examples per class.
        queries: query examples per class; every class must hold exactly ``shots + queries`` examples.
        support_positions: ``"alternate"`` or ``"first"`` (see :func:`support_mask`).

    Returns:
        An unbatched classification episode.

    Raises:
        ValueError: if the labels are not integers, do not match the data, or the task does not hold ``ways``
            classes of ``shots + queries`` examples each.

    Example:
        >>> import torch
        >>> data, labels = torch.arange(8.0).unsqueeze(1), torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
        >>> task = split_task(data, labels, ways=2, shots=2, queries=2)
        >>> task.support_x.flatten().tolist(), task.support_y.tolist(), task.query_x.flatten().tolist()
        ([4.0, 6.0, 0.0, 2.0], [0, 0, 1, 1], [5.0, 7.0, 1.0, 3.0])
    """
    data, labels = torch.as_tensor(data), torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"A learn2learn task must have integer class labels; got labels of dtype {labels.dtype}. "
            "Regression tasks belong in a TaskFamily such as Sinusoid."
        )
    if labels.dim() != 1 or data.dim() == 0 or labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"A learn2learn task must be (data [n, ...], labels [n]); got data of shape {tuple(data.shape)} and "
            f"labels of shape {tuple(labels.shape)}."
        )
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) != ways:
        raise ValueError(
            f"ways={ways}, but the learn2learn task holds {len(classes)} classes (labels {classes.tolist()}); "
            "set ways (eval_ways for validation and test) to the n of the taskset's NWays or FusedNWaysKShots."
        )
    need = shots + queries
    if bool((counts != need).any()):
        raise ValueError(
            f"shots + queries = {shots} + {queries} = {need}, but the learn2learn task holds "
            f"{counts.tolist()} examples per class; every class must hold exactly {need}: set the k of the "
            "taskset's KShots or FusedNWaysKShots to shots + queries (learn2learn's examples use k = 2 * shots, "
            "i.e. queries = shots)."
        )
    grouped = torch.argsort(inverse, stable=True).view(ways, need)  # each class's positions, in task order
    mask = support_mask(shots, queries, support_positions)
    support_index, query_index = grouped[:, mask].reshape(-1), grouped[:, ~mask].reshape(-1)
    label_values = torch.arange(ways)
    return Episode(
        support_x=data[support_index],
        support_y=label_values.repeat_interleave(shots),
        query_x=data[query_index],
        query_y=label_values.repeat_interleave(queries),
        ways=ways,
    )


class Learn2LearnTasks:
    """Classification tasks from a learn2learn ``Taskset`` (or any object whose ``sample()`` returns one task).

    Hand one per split to :class:`~lightning_meta.data.EpisodicDataModule`, with ``ways`` equal to the taskset's
    ``n`` and ``shots + queries`` equal to its ``k`` (learn2learn's examples draw ``k = 2 * shots``, so
    ``queries = shots``)::

        tasksets = l2l.vision.benchmarks.get_tasksets("mini-imagenet", train_ways=5, train_samples=2,
                                                      test_ways=5, test_samples=2, root="~/data")
        data = EpisodicDataModule(Learn2LearnTasks(tasksets.train), Learn2LearnTasks(tasksets.validation),
                                  Learn2LearnTasks(tasksets.test), ways=5, shots=1, queries=1)

    (``examples/migrating_from_learn2learn.md`` explains why not ``get_tasksets("omniglot")`` of learn2learn 0.2.0:
    its train taskset draws validation and test classes too.)

    Each task is split into support and query per class by :func:`split_task`: ``"alternate"`` (the default)
    as learn2learn's MAML and ANIL examples do (every other example), ``"first"`` as its ProtoNet example does.

    Randomness: learn2learn samples tasks from Python's global ``random`` state (``NWays``, ``KShots``,
    ``RemapLabels``, ``RandomClassRotation`` and ``Taskset.sample`` itself); dataset transforms may draw from
    torch's or NumPy's global state. This adapter seeds all three from the episode's generator right before each
    draw and restores them afterwards (:func:`seeded_global_random_state`), so the caller's random streams are
    not disturbed.

    What holds, as for any task family:
        * A task is a pure function of the episode's seed, so the datamodule's guarantees carry over: the same
          ``seed`` gives the same episodes in any process and with any ``num_workers``; validation and test
          episodes are fixed; under DDP every rank draws different episodes (the seed differs per rank and
          episode: no global ``random.seed`` per rank is needed); a run resumed mid-epoch continues with the
          episodes it would have seen.
        * A taskset with ``num_tasks=N > 0`` (a fixed pool of ``N`` tasks, which learn2learn fills lazily in the
          order tasks happen to be drawn) is drawn as a pool too: each episode picks pool task
          ``i`` with its generator, and task ``i``'s description is drawn from a seed of its own (``seed`` and
          ``i``), so the pool is the same in every process, worker and resumed run. Data transforms (learn2learn's
          ``LoadData`` and what follows) run under the episode's seed.

    What does not hold:
        * The taskset must be built the same way in every process and run: ``get_tasksets`` shuffles the classes
          into train, validation and test splits with the global ``random`` state, so call ``random.seed(...)``
          before it (or build the splits yourself), or the splits differ between runs and ranks.
        * Pool descriptions already cached in the taskset (by iterating it or calling ``sample()`` before) are used
          as they are; if those differ between processes, so do the tasks.
        * Randomness from elsewhere (a transform's own ``random.Random`` or ``torch.Generator``, CUDA generators,
          state kept between calls) is not controlled.
        * Seeding the global state is not thread-safe: another thread using ``random`` during a draw interleaves
          with it. DataLoader workers are processes, so they are safe.
        * Started with ``spawn`` (macOS, Windows), DataLoader workers receive a pickled taskset: learn2learn's
          cached descriptions hold lambdas and do not pickle, so pass a pool taskset with an empty cache.
        * Pool tasks are drawn with replacement, as ``Taskset.sample()`` does: evaluation over a pool does not
          visit each task once. The datamodule already fixes the validation and test episodes, so
          ``num_tasks=-1`` (no pool) is the natural choice for every split.

    Args:
        taskset: a learn2learn ``Taskset``/``TaskDataset``, or any object with ``sample()`` returning one
            task as ``(data [n, ...], labels [n])``.
        support_positions: ``"alternate"`` or ``"first"`` (see :func:`support_mask`).
        seed: seed of the pool task descriptions (``num_tasks > 0``) and of the task drawn by :meth:`validate`.

    Raises:
        TypeError: if ``taskset`` has no callable ``sample``.
        ValueError: for an unknown ``support_positions`` or a ``seed`` that is not a non-negative integer.

    Example:
        >>> import random
        >>> import torch
        >>> class ToyTaskset:  # stands in for a learn2learn Taskset: 3 of 10 classes, 4 examples each
        ...     def sample(self):
        ...         classes = random.sample(range(10), k=3)
        ...         labels = torch.arange(3).repeat_interleave(4)
        ...         return torch.tensor(classes).repeat_interleave(4).float().unsqueeze(1), labels
        >>> tasks = Learn2LearnTasks(ToyTaskset())
        >>> state = random.getstate()
        >>> task = tasks.sample(torch.Generator().manual_seed(0), ways=3, shots=2, queries=2)
        >>> again = tasks.sample(torch.Generator().manual_seed(0), ways=3, shots=2, queries=2)
        >>> torch.equal(task.support_x, again.support_x), random.getstate() == state
        (True, True)
        >>> task.support_y.tolist(), task.query_x.shape
        ([0, 0, 1, 1, 2, 2], torch.Size([6, 1]))
    """

    def __init__(self, taskset: Any, *, support_positions: SupportPositions = "alternate", seed: int = 0) -> None:
        if not callable(getattr(taskset, "sample", None)):
            raise TypeError(
                "Learn2LearnTasks: taskset must be a learn2learn Taskset/TaskDataset or another object with a "
                f"sample() method returning one task as (data, labels); got {type(taskset).__name__}."
            )
        if support_positions not in _SUPPORT_POSITIONS:
            raise ValueError(
                f"Learn2LearnTasks: support_positions must be one of {_SUPPORT_POSITIONS}, got {support_positions!r}."
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Learn2LearnTasks: seed must be a non-negative integer, got {seed!r}.")
        self.taskset = taskset
        self.support_positions = support_positions
        self.seed = seed

    @property
    def pool_size(self) -> int | None:
        """``N`` for a learn2learn taskset built with ``num_tasks=N > 0`` (a fixed pool of tasks), else ``None``."""
        n = getattr(self.taskset, "num_tasks", None)
        pooled = all(hasattr(self.taskset, a) for a in ("sampled_descriptions", "sample_task_description", "get_task"))
        return n if pooled and isinstance(n, int) and not isinstance(n, bool) and n > 0 else None

    def draw(self, generator: torch.Generator, *, cache: bool = True) -> tuple[Tensor, Tensor]:
        """One task as the taskset returns it, ``(data, labels)``, drawn with ``generator``.

        Args:
            generator: the episode's generator; the task is a pure function of its state.
            cache: store a pool task's description in the taskset, as learn2learn does (``False`` leaves the
                taskset unchanged).

        Returns:
            The task's inputs and labels, as tensors.

        Raises:
            ValueError: if the taskset does not return a pair ``(data, labels)``.
        """
        task_seed = int(torch.randint(2**62, (1,), generator=generator))
        pool = self.pool_size
        if pool is None:
            with seeded_global_random_state(task_seed):
                task = self.taskset.sample()
        else:
            index = int(torch.randint(pool, (1,), generator=generator))
            descriptions = self.taskset.sampled_descriptions
            description = descriptions.get(index)
            if description is None:
                with seeded_global_random_state(episode_seed(self.seed, "learn2learn-pool", 0, index)):
                    description = self.taskset.sample_task_description()
                if cache:
                    descriptions[index] = description
            with seeded_global_random_state(task_seed):
                task = self.taskset.get_task(description)
        if not isinstance(task, Sequence) or len(task) != 2:
            raise ValueError(
                "Learn2LearnTasks: the taskset's sample() must return one task as (data, labels); got "
                f"{type(task).__name__}" + (f" of length {len(task)}" if isinstance(task, Sequence) else "") + "."
            )
        return torch.as_tensor(task[0]), torch.as_tensor(task[1])

    def sample(self, generator: torch.Generator, *, ways: int, shots: int, queries: int) -> Episode:
        """Draw one task with ``generator`` and split it into ``shots`` support and ``queries`` query per class."""
        data, labels = self.draw(generator)
        return split_task(
            data, labels, ways=ways, shots=shots, queries=queries, support_positions=self.support_positions
        )

    def validate(self, *, ways: int, shots: int, queries: int, split: str) -> None:
        """Draw one task (leaving the taskset's cache as it was) and check it has the requested size.

        Raises:
            ValueError: naming ``ways``/``shots``/``queries`` (``eval_*`` for validation and test) when the
                taskset draws another number of classes or of examples per class.
        """
        p = "" if split == "train" else "eval_"
        _, labels = self.draw(episode_generator(self.seed, f"validate-{split}", 0, 0), cache=False)
        _, counts = torch.unique(labels, return_counts=True)
        if len(counts) != ways:
            raise ValueError(
                f"{p}ways={ways}, but the learn2learn taskset of the {split} split draws {len(counts)}-way tasks; "
                f"set {p}ways={len(counts)} or the n of its NWays/FusedNWaysKShots to {ways}."
            )
        need = shots + queries
        if bool((counts != need).any()):
            per_class = int(counts[0]) if bool((counts == counts[0]).all()) else counts.tolist()
            raise ValueError(
                f"{p}shots + {p}queries = {shots} + {queries} = {need}, but the learn2learn taskset of the {split} "
                f"split draws {per_class} examples per class; set the k of its KShots/FusedNWaysKShots to {need}, "
                f"or {p}shots + {p}queries to k (learn2learn's examples use k = 2 * shots, i.e. queries = shots)."
            )

    def __repr__(self) -> str:
        pool = f", pool_size={self.pool_size}" if self.pool_size is not None else ""
        return (
            f"Learn2LearnTasks({type(self.taskset).__name__}{pool}, support_positions={self.support_positions!r}, "
            f"seed={self.seed})"
        )
