"""CUB-200-2011 (Wah et al., 2011) with the few-shot class split of Chen et al. (ICLR 2019), from the user's copy.

The images are decoded once (PIL, RGB, LANCZOS resize to 84x84 by default, the whole image as Chen et al. use it,
not the bounding-box crop) into a uint8 tensor cached on disk (see :mod:`lightning_meta.data.download`).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch

from lightning_meta._checks import positive_int
from lightning_meta.data.checks import check_split
from lightning_meta.data.download import decode_all, load_or_build
from lightning_meta.data.miniimagenet import decode_rgb
from lightning_meta.data.splits import CUB_CLASSES
from lightning_meta.data.stored import StoredImages, size_and_mtime

#: Classes and images of CUB-200-2011 (``classes.txt`` and ``images.txt``).
CUB_CLASS_COUNT, CUB_IMAGE_COUNT = 200, 11788
_FILES = ("classes.txt", "images.txt", "image_class_labels.txt")


def _read_table(path: Path, expected_fields: int) -> list[list[str]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=expected_fields - 1)
        if len(fields) != expected_fields:
            raise ValueError(f"{path}, line {number}: expected {expected_fields} fields, got {line!r}.")
        rows.append(fields)
    return rows


class CUB(StoredImages):
    """CUB-200-2011 birds as a labelled dataset of ``(image, class)``: 100/50/50 classes in train/val/test.

    Reads the official ``CUB_200_2011`` folder: ``images/<NNN.Class_Name>/*.jpg``, ``images.txt`` (``<image id>
    <path under images/>``), ``image_class_labels.txt`` (``<image id> <class id>``) and ``classes.txt``
    (``<class id> <NNN.Class_Name>``). The split is Chen et al.'s, as torchmeta ships it (``cub/*.json``, here
    :data:`~lightning_meta.data.splits.CUB_CLASSES`); ``classes`` holds the ``NNN.Class_Name`` names in that order,
    ``labels[i]`` indexes it, and a class's images are in ``images.txt`` order. The copy is verified by its counts:
    200 classes in ``classes.txt`` and 11,788 images in ``images.txt``, every listed file present. Inputs are float
    ``[3, S, S]`` in ``[0, 1]`` (grey images are converted to RGB).

    Args:
        root: the ``CUB_200_2011`` folder, or the folder holding it.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side of the square inputs (84 is the standard).
        cache_dir: where to keep the decoded images; by default beside the data when it is writable, else
            ``$LIGHTNING_META_CACHE`` or ``~/.cache/lightning_meta``.
        check_counts: require the full dataset (200 classes, 11,788 images); ``False`` accepts a copy with fewer
            images per class (test fixtures), though every class of the split must still be there.

    Raises:
        ValueError: an unknown split, a bad ``image_size``, malformed metadata files, or (with ``check_counts``) a
            class or image count that differs from CUB-200-2011's (the message names the expected and found counts
            and the path).
        FileNotFoundError: a metadata file or a listed image is missing (the message names it).
    """

    name = "CUB"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        image_size: int = 84,
        cache_dir: str | Path | None = None,
        check_counts: bool = True,
    ) -> None:
        if split not in CUB_CLASSES:
            raise ValueError(f"CUB: split must be one of {list(CUB_CLASSES)}, got {split!r}.")
        positive_int("CUB", "image_size", image_size)
        root = Path(root).expanduser()
        self.root = root if root.name == "CUB_200_2011" or (root / "images.txt").is_file() else root / "CUB_200_2011"
        self.split, self.image_size = split, image_size
        missing = [name for name in (*_FILES, "images") if not (self.root / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"CUB: {self.root} is missing {', '.join(missing)}. Expected the official CUB_200_2011 folder: "
                "images/<NNN.Class_Name>/*.jpg, images.txt, image_class_labels.txt and classes.txt (CUB cannot be "
                "downloaded automatically; point root at your copy)."
            )
        class_rows = _read_table(self.root / "classes.txt", 2)
        image_rows = _read_table(self.root / "images.txt", 2)
        label_rows = _read_table(self.root / "image_class_labels.txt", 2)
        if check_counts and (len(class_rows), len(image_rows)) != (CUB_CLASS_COUNT, CUB_IMAGE_COUNT):
            raise ValueError(
                f"CUB at {self.root}: expected {CUB_CLASS_COUNT} classes in classes.txt and {CUB_IMAGE_COUNT} images "
                f"in images.txt, found {len(class_rows)} and {len(image_rows)}. Point root at the full copy, or pass "
                "check_counts=False to accept a subset."
            )
        class_name = dict(class_rows)
        image_class = dict(label_rows)
        self.classes = list(CUB_CLASSES[split])
        position = {name: i for i, name in enumerate(self.classes)}
        chosen = [
            (position[class_name[image_class[image_id]]], path)
            for image_id, path in image_rows
            if class_name.get(image_class.get(image_id, ""), "") in position
        ]
        chosen.sort(key=lambda item: item[0])  # stable: images.txt order within a class
        paths = [self.root / "images" / path for _, path in chosen]
        self.labels = torch.tensor([label for label, _ in chosen], dtype=torch.long)
        check_split("CUB", split, self.classes, self.labels, self.classes, self.root, check_counts=check_counts)
        try:
            identity = [[path, *size_and_mtime(p)] for (_, path), p in zip(chosen, paths, strict=True)]
        except FileNotFoundError as err:
            raise FileNotFoundError(f"CUB: images.txt lists {err.filename}, which does not exist.") from err
        key = {
            "image_size": image_size,
            "images_txt": hashlib.md5((self.root / "images.txt").read_bytes()).hexdigest(),
            "files": identity,
        }

        def build() -> dict:
            decode = functools.partial(decode_rgb, size=image_size)
            description = f"Decoding CUB {split} ({image_size}px)"
            return {"images": decode_all(paths, decode, (image_size, image_size, 3), len(paths), description)}

        content = load_or_build(f"cub-{split}-{image_size}px", key, build, data_dir=self.root, cache_dir=cache_dir)
        self._images = content["images"]  # uint8 [N, S, S, 3]

    def __repr__(self) -> str:
        size = f"examples={len(self)}, image_size={self.image_size}"
        return f"CUB(split={self.split!r}, classes={len(self.classes)}, {size})"
