"""Checks that a user's copy of a benchmark is complete: its classes against the split, its image counts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


def _first(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def check_split(
    owner: str,
    split: str,
    classes: Sequence[str],
    labels: Tensor,
    expected: Sequence[str],
    where: str | Path,
    *,
    per_class: int | None = None,
    total: int | None = None,
    check_counts: bool = True,
) -> None:
    """Raise a ``ValueError`` when the classes or image counts of a split differ from the benchmark's.

    Always: every class must belong to ``expected`` and hold at least one image. With ``check_counts``: the classes
    must be exactly ``expected`` (none missing), every class must hold ``per_class`` images (when given) and the
    split ``total`` images (when given). The message names the dataset, the split, the expected and the found
    counts, the first missing or odd classes and the path.

    Args:
        owner: the dataset's name, for the message.
        split: ``"train"``, ``"val"`` or ``"test"``.
        classes: the class names found, indexed by label.
        labels: the label of every image.
        expected: the class names of the benchmark's split.
        where: the file or folder read.
        per_class: images every class must hold, or ``None`` when classes differ.
        total: images the split must hold, or ``None``.
        check_counts: require the full split; ``False`` accepts a subset.

    Example:
        >>> import torch
        >>> check_split("Demo", "val", ["a", "b"], torch.tensor([0, 0, 1, 1]), ["a", "b"], "/data", per_class=2)
        >>> check_split("Demo", "val", ["a"], torch.tensor([0, 0]), ["a", "b"], "/data")
        Traceback (most recent call last):
        ...
        ValueError: Demo val split at /data: expected the 2 classes of the split, found 1; missing 1: b. Point root at the full copy, or pass check_counts=False to accept a subset.
    """  # noqa: E501
    head = f"{owner} {split} split at {where}"
    allowed = set(expected)
    unknown = [name for name in classes if name not in allowed]
    if unknown:
        raise ValueError(
            f"{head}: {len(unknown)} classes are not in the {split} split of the benchmark ({len(expected)} "
            f"classes): {_first(unknown)}."
        )
    counts = torch.bincount(labels, minlength=len(classes))
    empty = [classes[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise ValueError(f"{head}: {len(empty)} classes hold no image: {_first(empty)}.")
    if not check_counts:
        return
    hint = "Point root at the full copy, or pass check_counts=False to accept a subset."
    present = set(classes)
    missing = [name for name in expected if name not in present]
    if missing:
        raise ValueError(
            f"{head}: expected the {len(expected)} classes of the split, found {len(classes)}; missing "
            f"{len(missing)}: {_first(missing)}. {hint}"
        )
    if per_class is not None:
        odd = [f"{classes[i]} ({int(counts[i])})" for i in torch.nonzero(counts != per_class).flatten().tolist()]
        if odd:
            raise ValueError(
                f"{head}: expected {per_class} images in every class, found {len(odd)} classes with another count: "
                f"{_first(odd)}. {hint}"
            )
    if total is not None and len(labels) != total:
        raise ValueError(f"{head}: expected {total} images in the split, found {len(labels)}. {hint}")
