"""CIFAR-FS (Bertinetto et al., 2019) and FC100 (Oreshkin et al., 2018) from the user's CIFAR-100.

Both benchmarks re-split the 100 classes of CIFAR-100 (Krizhevsky, 2009), pooling each class's 500 training and 100
test images into 600 examples: CIFAR-FS draws 64/16/20 classes at random, FC100 takes whole superclasses (12/4/4,
60/20/20 classes) so that the splits share no superclass. The files are torchvision's ``CIFAR100`` files
(``cifar-100-python/{train,test,meta}``, pickles of Python dicts); ``download=True`` fetches them through
torchvision. 184 MB of pixels load in about a second, so nothing is cached.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from lightning_meta._checks import positive_int
from lightning_meta.data.checks import check_split
from lightning_meta.data.download import decode_all
from lightning_meta.data.miniimagenet import decode_rgb
from lightning_meta.data.splits import CIFAR_FS_CLASSES, FC100_CLASSES, FC100_SUPERCLASSES
from lightning_meta.data.stored import StoredImages

#: Images per CIFAR-100 class: 500 in ``train`` and 100 in ``test``, pooled by both benchmarks.
IMAGES_PER_CLASS = 600
_FILES = ("train", "test", "meta")
_SPLITS = ("train", "val", "test")


def _load(path: Path) -> dict[str, Any]:
    with open(path, "rb") as file:
        content = pickle.load(file, encoding="latin1")  # noqa: S301 - the official format is a pickle
    if not isinstance(content, dict):
        raise ValueError(f"{path} should hold a dict (the CIFAR-100 python format), got {type(content).__name__}.")
    return content


def read_cifar100(root: str | Path, *, download: bool = False) -> dict[str, Any]:
    """Read torchvision's CIFAR-100 files: every image of ``train`` then ``test``, with fine and coarse labels.

    Args:
        root: the folder holding ``cifar-100-python/``, or that folder itself.
        download: fetch the official archive through ``torchvision.datasets.CIFAR100`` (md5-checked) when the files
            are missing.

    Returns:
        ``rows`` (uint8 ``[60000, 3072]``, the stored red, green and blue planes of each 32x32 image), ``fine`` and
        ``coarse`` (long ``[60000]``), ``fine_names`` and ``coarse_names`` (lists of 100 and 20 names) and
        ``folder``.

    Raises:
        FileNotFoundError: a file is missing and ``download`` is false (the message names it and the path).
        ValueError: a file is not in the CIFAR-100 python format.
    """
    root = Path(root).expanduser()
    folder = root if root.name == "cifar-100-python" else root / "cifar-100-python"
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing and download:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(folder.parent), train=True, download=True)
        missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-100 is missing {', '.join(missing)} in {folder}. Expected torchvision's CIFAR100 files "
            "cifar-100-python/{train,test,meta}; pass download=True to fetch them."
        )
    meta = _load(folder / "meta")
    parts = [_load(folder / name) for name in ("train", "test")]
    for name, part in zip(("train", "test"), parts, strict=True):
        if not {"data", "fine_labels", "coarse_labels"} <= set(part):
            raise ValueError(
                f"{folder / name} should hold 'data', 'fine_labels' and 'coarse_labels' (CIFAR-100 python format), "
                f"found {sorted(part)}."
            )
    data = np.concatenate([np.asarray(part["data"], dtype=np.uint8) for part in parts])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{folder}: 'data' should be uint8 rows of 3072 values, got shape {list(data.shape)}.")
    return {
        "rows": torch.from_numpy(data),
        "fine": torch.tensor([v for part in parts for v in part["fine_labels"]], dtype=torch.long),
        "coarse": torch.tensor([v for part in parts for v in part["coarse_labels"]], dtype=torch.long),
        "fine_names": list(meta["fine_label_names"]),
        "coarse_names": list(meta["coarse_label_names"]),
        "folder": folder,
    }


class _CIFAR100Split(StoredImages):
    """A few-shot split of CIFAR-100's classes as a labelled dataset of ``(image, class)``."""

    name: ClassVar[str] = ""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        image_size: int = 32,
        download: bool = False,
        check_counts: bool = True,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"{self.name}: split must be one of {list(_SPLITS)}, got {split!r}.")
        positive_int(self.name, "image_size", image_size)
        self.split, self.image_size = split, image_size
        cifar = read_cifar100(root, download=download)
        self.root = cifar["folder"]
        self.classes = self._classes(cifar, split)
        fine_position = {name: i for i, name in enumerate(cifar["fine_names"])}
        unknown = [name for name in self.classes if name not in fine_position]
        if unknown:
            raise ValueError(f"{self.name}: {self.root}/meta names no CIFAR-100 class {unknown[0]!r}.")
        wanted = torch.tensor([fine_position[name] for name in self.classes], dtype=torch.long)
        # class c of the split takes its training images then its test images, each in file order
        label_of = torch.full((len(cifar["fine_names"]),), -1, dtype=torch.long)
        label_of[wanted] = torch.arange(len(wanted))
        labels = label_of[cifar["fine"]]
        keep = torch.nonzero(labels >= 0).flatten()
        order = keep[torch.argsort(labels[keep], stable=True)]
        self.labels = labels[order]
        check_split(
            self.name, split, self.classes, self.labels, self.classes, self.root,
            per_class=IMAGES_PER_CLASS, check_counts=check_counts,
        )  # fmt: skip
        self._check_superclasses(cifar, order)
        images = cifar["rows"].index_select(0, order).view(-1, 3, 32, 32).permute(0, 2, 3, 1).contiguous()
        if image_size != 32:
            resize = functools.partial(decode_rgb, size=image_size)
            images = decode_all(
                iter(images.numpy()), resize, (image_size, image_size, 3), len(images), f"Resizing {self.name}"
            )
        self._images = images  # uint8 [N, S, S, 3]

    def _classes(self, cifar: dict[str, Any], split: str) -> list[str]:
        raise NotImplementedError

    def _check_superclasses(self, cifar: dict[str, Any], order: Tensor) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{self.name}(split={self.split!r}, classes={len(self.classes)}, examples={len(self)}, "
            f"image_size={self.image_size})"
        )


class CIFARFS(_CIFAR100Split):
    """CIFAR-FS (Bertinetto et al., ICLR 2019): 64/16/20 CIFAR-100 classes of 600 32x32 images.

    The split is torchmeta's ``cifar_fs/{train,val,test}.json`` (shipped as
    :data:`~lightning_meta.data.splits.CIFAR_FS_CLASSES`); ``classes`` holds the fine class names in that order
    and ``labels[i]`` indexes it. A class's examples are its 500 ``train`` images, then its 100 ``test`` images,
    each in file order. Inputs are float ``[3, S, S]`` in ``[0, 1]``.

    Args:
        root: the folder holding ``cifar-100-python/`` (torchvision's ``CIFAR100`` root), or that folder itself.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side of the square inputs (32, the stored size, is the standard; others are resized once with
            LANCZOS at load).
        download: fetch CIFAR-100 through torchvision when its files are missing.
        check_counts: require 600 images in every class (``False`` accepts a partial copy, e.g. test fixtures).

    Raises:
        ValueError: an unknown split, a bad ``image_size``, files not in the CIFAR-100 format, a class whose
            superclass differs from the split file's, or (with ``check_counts``) a class without 600 images.
        FileNotFoundError: a CIFAR-100 file is missing and ``download`` is false.
    """

    name = "CIFARFS"

    def _classes(self, cifar: dict[str, Any], split: str) -> list[str]:
        return [pair.split(":")[1] for pair in CIFAR_FS_CLASSES[split]]

    def _check_superclasses(self, cifar: dict[str, Any], order: Tensor) -> None:
        expected = [pair.split(":")[0] for pair in CIFAR_FS_CLASSES[self.split]]
        _check_coarse(self.name, self.split, self.root, self.classes, expected, cifar, order, self.labels)


class FC100(_CIFAR100Split):
    """FC100 (Oreshkin et al., NeurIPS 2018): CIFAR-100 split by superclass, 12/4/4 superclasses, 60/20/20 classes.

    The superclasses are torchmeta's ``fc100_superclasses/{train,val,test}.json``
    (:data:`~lightning_meta.data.splits.FC100_SUPERCLASSES`); ``classes`` holds their fine classes in the order of
    :data:`~lightning_meta.data.splits.FC100_CLASSES`, checked against the superclasses of the user's data. Each
    class has 600 32x32 images: its 500 ``train`` images, then its 100 ``test`` images, each in file order.

    Args:
        root: the folder holding ``cifar-100-python/`` (torchvision's ``CIFAR100`` root), or that folder itself.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side of the square inputs (32 is the standard; others are resized once with LANCZOS).
        download: fetch CIFAR-100 through torchvision when its files are missing.
        check_counts: require 600 images in every class (``False`` accepts a partial copy, e.g. test fixtures).

    Raises:
        ValueError: as :class:`CIFARFS`, or when the classes are not exactly the fine classes of the split's
            superclasses.
        FileNotFoundError: a CIFAR-100 file is missing and ``download`` is false.
    """

    name = "FC100"

    def _classes(self, cifar: dict[str, Any], split: str) -> list[str]:
        return list(FC100_CLASSES[split])

    def _check_superclasses(self, cifar: dict[str, Any], order: Tensor) -> None:
        superclasses = FC100_SUPERCLASSES[self.split]
        coarse_position = {name: i for i, name in enumerate(cifar["coarse_names"])}
        members = {
            cifar["fine_names"][f]
            for f, c in zip(cifar["fine"].tolist(), cifar["coarse"].tolist(), strict=True)
            if c in {coarse_position.get(s) for s in superclasses}
        }
        if members != set(self.classes):
            raise ValueError(
                f"FC100 {self.split} split at {self.root}: the superclasses {list(superclasses)} hold the classes "
                f"{sorted(members)}, expected {sorted(self.classes)}."
            )


def _check_coarse(
    name: str,
    split: str,
    root: Path,
    classes: list[str],
    expected: list[str],
    cifar: dict[str, Any],
    order: Tensor,
    labels: Tensor,
) -> None:
    coarse = cifar["coarse"].index_select(0, order)
    pairs = torch.unique(labels * len(cifar["coarse_names"]) + coarse)  # one (label, superclass) pair per class
    found = pairs % len(cifar["coarse_names"])
    for label, code in zip((pairs // len(cifar["coarse_names"])).tolist(), found.tolist(), strict=True):
        if cifar["coarse_names"][code] != expected[label]:
            raise ValueError(
                f"{name} {split} split at {root}: class {classes[label]!r} belongs to superclass "
                f"{cifar['coarse_names'][code]!r} in the data, expected {expected[label]!r} (split file)."
            )
