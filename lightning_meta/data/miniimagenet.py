"""mini-ImageNet (Vinyals et al., 2016) with the Ravi & Larochelle (2017) split, from the user's own copy.

The images cannot be redistributed, so nothing is downloaded: the adapter reads any of the three layouts in common
use. JPEG folders are decoded once into a uint8 tensor cached on disk (see :mod:`lightning_meta.data.download`).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lightning_meta._checks import positive_int
from lightning_meta.data.checks import check_split
from lightning_meta.data.download import decode_all, load_or_build
from lightning_meta.data.splits import MINI_IMAGENET_CLASSES

#: Per-channel mean and standard deviation of mini-ImageNet's training images, in [0, 1] units (the values used by
#: MetaOptNet and FEAT), applied when ``normalize=True``.
MINI_IMAGENET_MEAN = (120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255)
MINI_IMAGENET_STD = (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255)

_PICKLE_NAMES = {"train": "train", "val": "validation", "test": "test"}
#: Images per class in every split of the Ravi & Larochelle mini-ImageNet.
IMAGES_PER_CLASS = 600
_FILE_NAME = re.compile(r"^n\d{8}\d{8}\.jpg$")


class MiniImageNet(Dataset):
    """mini-ImageNet as a labelled dataset of ``(image, class)``: 64/16/20 classes of 600 images in train/val/test.

    Reads one of three layouts under ``root``:

    (a) the Ravi & Larochelle layout: an ``images/`` folder of JPEGs (``<wnid><8 digits>.jpg``) and the split
        lists ``train.csv``, ``val.csv``, ``test.csv`` of ``filename,label`` rows beside it (or under
        ``splits/``). Decoded once (PIL, RGB, LANCZOS resize when the stored size differs from ``image_size``) into
        a cache keyed by the split list and the image files' names, sizes and modification times.
    (b) learn2learn's pickles ``mini-imagenet-cache-{train,validation,test}.pkl``: a dict with ``image_data``
        (uint8 ``[N, 84, 84, 3]``) and ``class_dict`` (``{wnid: [indices]}``). Unpickling runs code from the
        file, so only read pickles you trust.
    (c) the split folders that ``mini-imagenet-tools`` (yaoyao-liu) writes:
        ``processed_images/{train,val,test}/<wnid>/<wnid><8 digits>.jpg``; ``root`` may be ``processed_images`` or
        its parent. Decoded and cached like layout (a), keyed by the files' names, sizes and modification times.

    When several are present, the pickle is used first, then (a), then (c). Every class must belong to the Ravi &
    Larochelle split shipped with the package (:data:`~lightning_meta.data.splits.MINI_IMAGENET_CLASSES`). With
    ``check_counts`` the split must be complete: 64/16/20 classes, exactly those WordNet ids, with
    :data:`IMAGES_PER_CLASS` (600) images each. It is on by default for layout (c), whose class list comes from the
    package (an incomplete copy would otherwise silently give a smaller split), and off by default for (a) and (b),
    which carry their own split list. Inputs are float ``[3, S, S]`` in ``[0, 1]``, or standardised with
    :data:`MINI_IMAGENET_MEAN` and :data:`MINI_IMAGENET_STD` when ``normalize=True``. ``classes`` holds the
    WordNet ids (``"n01532829"``) in the order of the split list (layout a), of ``class_dict`` (layout b, as
    learn2learn numbers them) or of the Ravi & Larochelle CSV (layout c, whose images are in file-name order), and
    ``labels[i]`` indexes it.

    Args:
        root: the folder holding either layout.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side of the square inputs (84 is the standard).
        normalize: standardise each channel with the training-set statistics.
        cache_dir: where to keep decoded JPEGs; by default beside the data when ``root`` is writable, else
            ``$LIGHTNING_META_CACHE`` or ``~/.cache/lightning_meta``.
        check_counts: require the full split (every class of the Ravi & Larochelle split, 600 images each);
            ``False`` accepts a subset (small test fixtures, a partial copy), though every class must still belong
            to the split and hold at least one image. ``None`` (default): ``True`` for layout (c), ``False`` for
            layouts (a) and (b).

    Raises:
        ValueError: an unknown split, a bad ``image_size``, a malformed split list or pickle, a class that is not in
            the Ravi & Larochelle split, or (with ``check_counts``) a missing class or an image count that differs from
            the split's (the message names the split, the expected and found counts and the path).
        FileNotFoundError: no layout is complete under ``root`` (the message names all three and what was found),
            or a listed image is missing.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        image_size: int = 84,
        normalize: bool = False,
        cache_dir: str | Path | None = None,
        check_counts: bool | None = None,
    ) -> None:
        if split not in _PICKLE_NAMES:
            raise ValueError(f"MiniImageNet: split must be one of {list(_PICKLE_NAMES)}, got {split!r}.")
        positive_int("MiniImageNet", "image_size", image_size)
        self.root = Path(root).expanduser()
        self.split, self.image_size, self.normalize = split, image_size, normalize
        pickled = self.root / f"mini-imagenet-cache-{_PICKLE_NAMES[split]}.pkl"
        split_list = next(
            (p for p in (self.root / f"{split}.csv", self.root / "splits" / f"{split}.csv") if p.is_file()), None
        )
        split_folder = next(
            (p for p in (self.root / split, self.root / "processed_images" / split) if p.is_dir()), None
        )
        if pickled.is_file():
            self.layout = "pickle"
            images, self.labels, self.classes = _read_pickle(pickled, image_size, cache_dir)
            where = pickled
        elif split_list is not None and (self.root / "images").is_dir():
            self.layout = "images"
            images, self.labels, self.classes = _read_folder(self.root / "images", split_list, image_size, cache_dir)
            where = split_list
        elif split_folder is not None:
            self.layout = "split_folders"
            images, self.labels, self.classes = _read_split_folders(split_folder, split, image_size, cache_dir)
            where = split_folder
        else:
            raise FileNotFoundError(self._missing_message(pickled, split_list))
        check_split(
            "MiniImageNet", split, self.classes, self.labels, MINI_IMAGENET_CLASSES[split], where,
            per_class=IMAGES_PER_CLASS,
            check_counts=self.layout == "split_folders" if check_counts is None else check_counts,
        )  # fmt: skip
        self._images = images  # uint8 [N, S, S, 3]
        self._mean = torch.tensor(MINI_IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(MINI_IMAGENET_STD).view(1, 3, 1, 1)

    def _missing_message(self, pickled: Path, split_list: Path | None) -> str:
        images = self.root / "images"
        found = [
            f"images/ with {sum(1 for _ in images.glob('*.jpg'))} .jpg files" if images.is_dir() else "no images/",
            f"split list {split_list.relative_to(self.root)}" if split_list else f"no {self.split}.csv",
            f"no {pickled.name}",
            f"no {self.split}/ or processed_images/{self.split}/",
        ]
        return (
            f"MiniImageNet found no copy of the {self.split} split under {self.root}. Expected one of three layouts: "
            f"(a) images/<wnid><8 digits>.jpg with the Ravi & Larochelle split list {self.split}.csv (or "
            f"splits/{self.split}.csv) of 'filename,label' rows; (b) learn2learn's pickle {pickled.name}; or (c) "
            f"mini-imagenet-tools' processed_images/{self.split}/<wnid>/<wnid><8 digits>.jpg (root may be "
            "processed_images or its parent). "
            f"Found: {'; '.join(found)}. mini-ImageNet cannot be downloaded automatically (licence); point root at "
            "your own copy."
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"MiniImageNet index {index} out of range for {len(self)} examples.")
        index %= len(self)
        return self.gather_inputs(torch.tensor([index]))[0], int(self.labels[index])

    def gather_inputs(self, index: Tensor) -> Tensor:
        """Stacked float inputs ``[len(index), 3, S, S]`` of the examples ``index`` (see the class docstring)."""
        pixels = self._images.index_select(0, torch.as_tensor(index, dtype=torch.long))
        x = pixels.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        return x.sub_(self._mean).div_(self._std) if self.normalize else x

    def __repr__(self) -> str:
        return (
            f"MiniImageNet(split={self.split!r}, layout={self.layout!r}, classes={len(self.classes)}, "
            f"examples={len(self)}, image_size={self.image_size}, normalize={self.normalize})"
        )


def decode_rgb(item: Path | np.ndarray, size: int) -> np.ndarray:
    """An image file or array as a uint8 RGB array ``[size, size, 3]`` (LANCZOS resize when needed)."""
    if isinstance(item, np.ndarray):
        image = Image.fromarray(item)
    else:
        with Image.open(item) as opened:
            image = opened.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def _read_folder(folder: Path, split_list: Path, size: int, cache_dir: str | Path | None) -> tuple:
    text = split_list.read_text()
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"filename", "label"} <= set(reader.fieldnames):
        raise ValueError(f"{split_list} must have a 'filename,label' header, got {reader.fieldnames}.")
    rows = [(row["filename"], row["label"]) for row in reader]
    if not rows:
        raise ValueError(f"The split list {split_list} has no rows.")
    classes = list(dict.fromkeys(label for _, label in rows))
    position = {wnid: i for i, wnid in enumerate(classes)}
    labels = torch.tensor([position[label] for _, label in rows], dtype=torch.long)
    paths = [folder / name for name, _ in rows]
    try:
        stats = [p.stat() for p in paths]
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{split_list} lists {Path(err.filename).name}, which is not in {folder}.") from err
    identity = {
        "split_list": hashlib.md5(text.encode()).hexdigest(),
        "files": [[p.name, s.st_size, s.st_mtime_ns] for p, s in zip(paths, stats, strict=True)],
    }

    def build() -> dict:
        decode = functools.partial(decode_rgb, size=size)
        description = f"Decoding mini-ImageNet {split_list.stem} ({size}px)"
        return {"images": decode_all(paths, decode, (size, size, 3), len(paths), description)}

    content = load_or_build(
        f"miniimagenet-{split_list.stem}-{size}px",
        {"image_size": size, "source": identity},
        build,
        data_dir=folder.parent,
        cache_dir=cache_dir,
    )
    return content["images"], labels, classes


def _read_split_folders(folder: Path, split: str, size: int, cache_dir: str | Path | None) -> tuple:
    """Layout (c): ``folder/<wnid>/<wnid><8 digits>.jpg``, classes in the Ravi & Larochelle order."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    position = {wnid: i for i, wnid in enumerate(MINI_IMAGENET_CLASSES[split])}
    classes = sorted(found, key=lambda wnid: position.get(wnid, len(position)))  # unknown ones are named later
    paths: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(classes):
        files = sorted(p for p in (folder / wnid).iterdir() if _FILE_NAME.match(p.name) and p.name.startswith(wnid))
        paths += files
        labels += [label] * len(files)
    identity = {"files": [[f"{p.parent.name}/{p.name}", *_size_and_mtime(p)] for p in paths]}

    def build() -> dict:
        decode = functools.partial(decode_rgb, size=size)
        description = f"Decoding mini-ImageNet {split} ({size}px)"
        return {"images": decode_all(paths, decode, (size, size, 3), len(paths), description)}

    if not paths:  # nothing to decode; check_split names the empty classes
        images = torch.zeros(0, size, size, 3, dtype=torch.uint8)
    else:
        key = {"image_size": size, "source": identity}
        content = load_or_build(
            f"miniimagenet-{split}-folders-{size}px", key, build, data_dir=folder.parent, cache_dir=cache_dir
        )
        images = content["images"]
    return images, torch.tensor(labels, dtype=torch.long), classes


def _size_and_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _read_pickle(path: Path, size: int, cache_dir: str | Path | None) -> tuple:
    with open(path, "rb") as file:
        data = pickle.load(file)  # noqa: S301 - the format is a pickle; the docstring warns
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path} should hold a dict with 'image_data' and 'class_dict' (learn2learn's format): {found}."
        )
    image_data = np.asarray(data["image_data"])
    if image_data.dtype != np.uint8 or image_data.ndim != 4 or image_data.shape[3] != 3:
        raise ValueError(
            f"{path}: 'image_data' should be uint8 [N, H, W, 3], got {image_data.dtype} {list(image_data.shape)}."
        )
    classes = [str(wnid) for wnid in data["class_dict"]]
    labels = torch.full((len(image_data),), -1, dtype=torch.long)
    for label, indices in enumerate(data["class_dict"].values()):
        indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if bool((labels[indices] != -1).any()):
            raise ValueError(f"{path}: class_dict lists an image under two classes (class {classes[label]!r}).")
        labels[indices] = label
    if bool((labels == -1).any()):
        first = int(torch.nonzero(labels == -1)[0])
        raise ValueError(f"{path}: image {first} of {len(labels)} belongs to no class of class_dict.")
    images = torch.from_numpy(image_data)
    if image_data.shape[1:3] != (size, size):
        stat = path.stat()

        def build() -> dict:
            decode = functools.partial(decode_rgb, size=size)
            resized = decode_all(iter(image_data), decode, (size, size, 3), len(image_data), f"Resizing {path.name}")
            return {"images": resized}

        identity = {"file": path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        key = {"image_size": size, "source": identity}
        content = load_or_build(
            f"miniimagenet-{path.stem}-{size}px", key, build, data_dir=path.parent, cache_dir=cache_dir
        )
        images = content["images"]
    return images, labels, classes
