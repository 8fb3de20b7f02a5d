"""tieredImageNet (Ren et al., ICLR 2018) built from the user's ImageNet (ILSVRC-2012) training folder.

tieredImageNet takes every training image of 608 ImageNet classes, grouped by 34 high-level WordNet nodes into
351/97/160 classes (20/6/8 nodes) for train/val/test: 448,695/124,261/206,209 images, 779,165 in all. The split is
easyfsl's (``tiered_imagenet/*.json``, shipped as :data:`~lightning_meta.data.splits.TIERED_IMAGENET_CLASSES`).
The JPEGs are decoded once (PIL, RGB, LANCZOS resize to 84x84) into a uint8 tensor cached on disk (see
:mod:`lightning_meta.data.download`). Building the cache of the train split reads 448,695 full-size JPEGs (about an
hour on four cores) and holds its 9.5 GB of 84px pixels in memory; later loads memory-map it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from lightning_meta._checks import positive_int
from lightning_meta.data.checks import check_split
from lightning_meta.data.download import decode_all, load_or_build
from lightning_meta.data.miniimagenet import decode_rgb
from lightning_meta.data.splits import TIERED_IMAGENET_CLASSES
from lightning_meta.data.stored import StoredImages, size_and_mtime

#: Images of each tieredImageNet split (Ren et al., 2018): every ILSVRC-2012 training image of its classes.
TIERED_IMAGENET_IMAGES = {"train": 448695, "val": 124261, "test": 206209}
_EXTENSIONS = (".JPEG", ".jpeg", ".jpg")


class TieredImageNet(StoredImages):
    """tieredImageNet as a labelled dataset of ``(image, class)``: 351/97/160 ImageNet classes in train/val/test.

    Reads ImageNet's training layout ``train/<wnid>/<wnid>_<n>.JPEG``; ``root`` is that ``train`` folder or the
    folder holding it. ``classes`` holds the WordNet ids in the split file's order and ``labels[i]`` indexes it;
    a class's images are in file-name order. The copy is verified by its counts: every class of the split present
    and the split's total number of images (:data:`TIERED_IMAGENET_IMAGES`; ImageNet classes hold 732 to 1,300
    images, so there is no per-class figure). Inputs are float ``[3, S, S]`` in ``[0, 1]``.

    Args:
        root: the ImageNet ``train`` folder, or its parent.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side of the square inputs (84 is the standard).
        cache_dir: where to keep the decoded images; by default beside the ``train`` folder when it is writable,
            else ``$LIGHTNING_META_CACHE`` or ``~/.cache/lightning_meta``.
        check_counts: require every class of the split and its full image count; ``False`` accepts a subset (test
            fixtures, a partial copy), though every class found must hold at least one image.

    Raises:
        ValueError: an unknown split, a bad ``image_size``, or (with ``check_counts``) missing classes or another
            total (the message names the split, the expected and found counts, the first missing classes and the
            path).
        FileNotFoundError: ``root`` holds no ImageNet training folder.
    """

    name = "TieredImageNet"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        image_size: int = 84,
        cache_dir: str | Path | None = None,
        check_counts: bool = True,
    ) -> None:
        if split not in TIERED_IMAGENET_CLASSES:
            raise ValueError(f"TieredImageNet: split must be one of {list(TIERED_IMAGENET_CLASSES)}, got {split!r}.")
        positive_int("TieredImageNet", "image_size", image_size)
        root = Path(root).expanduser()
        self.root = root / "train" if (root / "train").is_dir() else root
        self.split, self.image_size = split, image_size
        expected = TIERED_IMAGENET_CLASSES[split]
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"TieredImageNet: {root} holds no ImageNet training folder; expected train/<wnid>/<wnid>_<n>.JPEG "
                "(ILSVRC-2012, which cannot be downloaded automatically; point root at your copy)."
            )
        self.classes = [wnid for wnid in expected if (self.root / wnid).is_dir()]
        paths: list[Path] = []
        labels: list[int] = []
        for label, wnid in enumerate(self.classes):
            files = sorted(p for p in (self.root / wnid).iterdir() if p.suffix in _EXTENSIONS)
            paths += files
            labels += [label] * len(files)
        self.labels = torch.tensor(labels, dtype=torch.long)
        check_split(
            "TieredImageNet", split, self.classes, self.labels, expected, self.root,
            total=TIERED_IMAGENET_IMAGES[split], check_counts=check_counts,
        )  # fmt: skip
        identity = [[f"{p.parent.name}/{p.name}", *size_and_mtime(p)] for p in paths]

        def build() -> dict:
            decode = functools.partial(decode_rgb, size=image_size)
            description = f"Decoding tieredImageNet {split} ({image_size}px)"
            return {"images": decode_all(paths, decode, (image_size, image_size, 3), len(paths), description)}

        content = load_or_build(
            f"tieredimagenet-{split}-{image_size}px",
            {"image_size": image_size, "files": identity},
            build,
            data_dir=self.root.parent,
            cache_dir=cache_dir,
        )
        self._images = content["images"]  # uint8 [N, S, S, 3]

    def __repr__(self) -> str:
        size = f"examples={len(self)}, image_size={self.image_size}"
        return f"TieredImageNet(split={self.split!r}, classes={len(self.classes)}, {size})"
