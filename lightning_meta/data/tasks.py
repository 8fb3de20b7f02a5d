"""Task families: where episodes come from.

Everything the datamodule samples from is a :class:`TaskFamily`: an object that draws one task from an explicit
``torch.Generator``. A labelled dataset becomes one through :class:`LabelledTasks`, which draws ``ways`` classes
and ``shots + queries`` examples of each; a synthetic family such as :class:`~lightning_meta.data.Sinusoid`
draws its own tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from rich.progress import track
from torch import Tensor
from torch.utils.data import Dataset

from lightning_meta.episode import Episode


@runtime_checkable
class TaskFamily(Protocol):
    """A distribution over tasks, sampled with an explicit generator.

    ``sample`` must be a pure function of the generator's state: the datamodule seeds one generator per episode
    from (seed, stage, epoch, index), which is what makes episodes reproducible across processes and workers.
    ``validate`` raises a ``ValueError`` naming the setting, the limit and the value when a request cannot be met.
    """

    def sample(self, generator: torch.Generator, *, ways: int, shots: int, queries: int) -> Episode:
        """Draw one task (an unbatched :class:`Episode`)."""
        ...

    def validate(self, *, ways: int, shots: int, queries: int, split: str) -> None:
        """Raise ``ValueError`` if tasks of this size cannot be drawn."""
        ...


def _labels_of(dataset: Dataset, split: str) -> Tensor:
    """Return the integer label of every example, from a ``labels``/``targets`` attribute or one pass."""
    for name in ("labels", "targets"):
        labels = getattr(dataset, name, None)
        if labels is not None:
            return _as_label_tensor(labels, f"{split} dataset.{name}")
    n = len(dataset)  # type: ignore[arg-type]
    values = [dataset[i][1] for i in track(range(n), description=f"Indexing {split} labels", transient=True)]
    return _as_label_tensor(values, f"{split} labels (dataset[i][1])")


def _as_label_tensor(labels: Any, where: str) -> Tensor:
    try:
        if isinstance(labels, Sequence) and labels and isinstance(labels[0], Tensor):
            labels = torch.stack([torch.as_tensor(v).reshape(()) for v in labels])
        tensor = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"Class labels must be integers; {where} could not be read as integers ({err}).") from err
    if tensor.dtype in (torch.bool,) or tensor.is_floating_point() or tensor.is_complex():
        example = tensor.flatten()[0].item() if tensor.numel() else None
        raise ValueError(
            f"Class labels must be integers; {where} has dtype {tensor.dtype} (first value {example!r}). "
            "Regression data belongs in a TaskFamily such as Sinusoid."
        )
    return tensor.reshape(-1).long()


class LabelledTasks:
    """N-way K-shot classification tasks drawn from a map-style dataset of ``(x, label)`` pairs.

    Each task draws ``ways`` distinct classes in random order (class ``i`` of the draw gets label ``i``), then
    ``shots + queries`` distinct examples of each class: the first ``shots`` are support, the rest query.

    The labels come from a ``labels`` or ``targets`` attribute when the dataset has one (as torchvision's datasets
    do), otherwise from one pass over ``dataset[i][1]`` with a progress bar. Inputs come from
    ``dataset.gather_inputs(indices)`` when the dataset offers that fast path (a tensor of stacked inputs for a
    1-D tensor of indices), otherwise from ``dataset[i][0]`` one by one.

    Args:
        dataset: map-style dataset of ``(x, label)`` pairs with integer labels.
        split: name used in error messages (``"train"``, ``"val"``, ``"test"``).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(60, 3), torch.arange(6).repeat_interleave(10))
        >>> tasks = LabelledTasks(data)
        >>> task = tasks.sample(torch.Generator().manual_seed(0), ways=3, shots=2, queries=4)
        >>> task.support_x.shape, task.support_y.tolist(), task.query_y.shape
        (torch.Size([6, 3]), [0, 0, 1, 1, 2, 2], torch.Size([12]))
    """

    def __init__(self, dataset: Dataset, *, split: str = "train") -> None:
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError(f"The {split} split is empty: its dataset has 0 examples.")
        self.dataset = dataset
        self.split = split
        labels = _labels_of(dataset, split)
        if labels.numel() != len(dataset):  # type: ignore[arg-type]
            raise ValueError(
                f"The {split} dataset has {len(dataset)} examples but {labels.numel()} labels."  # type: ignore[arg-type]
            )
        self.class_values, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        order = torch.argsort(inverse, stable=True)
        n_classes, max_count = len(self.class_values), int(counts.max())
        # members[c, :counts[c]] are the dataset indices of class c; the rest is padding.
        self.members = torch.zeros(n_classes, max_count, dtype=torch.long)
        self.valid = torch.arange(max_count).expand(n_classes, -1) < counts.unsqueeze(1)
        self.members[self.valid] = order
        self.counts = counts

    @property
    def n_classes(self) -> int:
        """Number of distinct labels in the dataset."""
        return len(self.class_values)

    def class_name(self, c: int) -> str:
        """A readable name for class index ``c`` (the dataset's ``classes`` entry when it has one)."""
        label = int(self.class_values[c])
        names = getattr(self.dataset, "classes", None)
        if names is not None and 0 <= label < len(names):
            return f"{names[label]!r} (label {label})"
        return f"label {label}"

    def validate(self, *, ways: int, shots: int, queries: int, split: str) -> None:
        """Raise ``ValueError`` if ``ways``-way tasks with ``shots + queries`` examples per class cannot be drawn.

        The message names the datamodule's settings: ``ways``/``shots``/``queries`` for the train split and
        ``eval_ways``/``eval_shots``/``eval_queries`` for the others.
        """
        p = "" if split == "train" else "eval_"
        if ways < 2:
            raise ValueError(
                f"{p}ways={ways}: a task needs at least 2 classes (with one class every prediction is right, the "
                "cross-entropy is exactly 0 and nothing is learned)."
            )
        if ways > self.n_classes:
            raise ValueError(
                f"{p}ways={ways} exceeds the number of classes in the {split} split ({self.n_classes} classes)."
            )
        need = shots + queries
        smallest = int(torch.argmin(self.counts))
        have = int(self.counts[smallest])
        if need > have:
            raise ValueError(
                f"{p}shots + {p}queries = {shots} + {queries} = {need} exceeds the {have} examples "
                f"of class {self.class_name(smallest)} in the {split} split; every class must hold at least {need}."
            )

        self.check_examples(split)

    def check_examples(self, split: str, *, classes: int = 32) -> None:
        """Check the first example of up to ``classes`` classes: ``(tensor, label)`` pairs, all of one shape.

        Catches at setup what would otherwise fail at the first batch with an obscure message: dictionaries as
        items, PIL images without ``ToTensor``, images of different sizes.

        Raises:
            ValueError: naming the item, what was found and the transform or wrapper that fixes it.
        """
        if getattr(self.dataset, "gather_inputs", None) is not None:  # the dataset stacks its own inputs
            return
        shapes: dict[tuple[int, ...], int] = {}
        for c in range(min(classes, self.n_classes)):
            index = int(self.members[c, 0])
            item = self.dataset[index]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise ValueError(
                    f"The {split} dataset's item {index} is a {type(item).__name__}"
                    + (f" with keys {list(item)[:5]}" if isinstance(item, dict) else "")
                    + ", not an (input, label) pair: wrap the dataset so that dataset[i] returns (x, y), "
                    "or pass a TaskFamily."
                )
            x = item[0]
            if not isinstance(x, Tensor):
                try:
                    x = torch.as_tensor(x)
                except (TypeError, ValueError, RuntimeError):
                    hint = (
                        " add torchvision.transforms.ToTensor() (or PILToTensor()) to the dataset's transform"
                        if type(x).__module__.startswith("PIL")
                        else " make the dataset return tensors"
                    )
                    raise ValueError(
                        f"The {split} dataset's item {index} has an input of type {type(x).__module__}."
                        f"{type(x).__name__}, which cannot be stacked into episodes:{hint}."
                    ) from None
            shape = tuple(x.shape)
            if shapes and shape not in shapes:
                first_shape, first_index = next(iter(shapes.items()))
                raise ValueError(
                    f"The {split} dataset's inputs have different shapes: {first_shape} (item {first_index}) and "
                    f"{shape} (item {index}). Episodes stack their inputs, so they need one shape: add a transform "
                    "such as torchvision.transforms.Resize((84, 84)) (with CenterCrop for other aspect ratios)."
                )
            shapes.setdefault(shape, index)

    def sample(self, generator: torch.Generator, *, ways: int, shots: int, queries: int) -> Episode:
        """Draw one ``ways``-way task with ``shots`` support and ``queries`` query examples per class."""
        classes = torch.randperm(self.n_classes, generator=generator)[:ways]
        keys = torch.rand(ways, self.members.shape[1], generator=generator)
        keys.masked_fill_(~self.valid[classes], 2.0)  # padding sorts last
        picks = keys.argsort(dim=1)[:, : shots + queries]
        index = self.members[classes.unsqueeze(1), picks]  # [ways, shots + queries]
        support_index = index[:, :shots].reshape(-1)
        query_index = index[:, shots:].reshape(-1)
        inputs = self._gather(torch.cat([support_index, query_index]))
        labels = torch.arange(ways)
        return Episode(
            support_x=inputs[: support_index.numel()],
            support_y=labels.repeat_interleave(shots),
            query_x=inputs[support_index.numel() :],
            query_y=labels.repeat_interleave(queries),
            ways=ways,
        )

    def gather(self, index: Tensor) -> Tensor:
        """The stacked inputs of the dataset's examples ``index`` (through ``gather_inputs`` when it has one)."""
        return self._gather(index)

    def _gather(self, index: Tensor) -> Tensor:
        gather = getattr(self.dataset, "gather_inputs", None)
        if gather is not None:
            return gather(index)
        return torch.stack([torch.as_tensor(self.dataset[i][0]) for i in index.tolist()])
