"""Writers of small copies of the standard few-shot benchmarks, in exactly their official on-disk layouts.

Class names and splits are the real ones (``../shared/data/splits``); pixels are synthetic and encode where each
image came from, so tests can check labels, class order and image order against an independent decoding.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def cifar100_names(data_root: Path) -> tuple[list[str], list[str], dict[str, str]]:
    """CIFAR-100's fine and coarse names (alphabetical, as in the real ``meta``) and each class's superclass.

    The 100 ``[superclass, class]`` pairs of the CIFAR-FS split files cover every class once.
    """
    pairs = [
        pair
        for split in ("train", "val", "test")
        for pair in json.loads((data_root / "splits" / "torchmeta" / "cifar_fs" / f"{split}.json").read_text())
    ]
    superclass = {name: coarse for coarse, name in pairs}
    return sorted(superclass), sorted(set(superclass.values())), superclass


def write_cifar100(root: Path, data_root: Path, *, per_class: tuple[int, int] = (500, 100)) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` as torchvision's CIFAR100 reads them.

    Each file is a pickled dict: ``data`` uint8 ``[N, 3072]`` (red, green, blue planes of 32x32, row-major),
    ``fine_labels``, ``coarse_labels``, ``filenames``, ``batch_label``; ``meta`` holds ``fine_label_names`` and
    ``coarse_label_names``. Images are in a shuffled order, as in the real files. Image ``k`` of file ``train``
    has red = fine label, green = k // 256, blue = k % 256; in ``test`` red is the fine label + 128.
    """
    fine_names, coarse_names, superclass = cifar100_names(data_root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for file_index, (name, count) in enumerate(zip(("train", "test"), per_class, strict=True)):
        fine = rng.permutation(np.repeat(np.arange(100), count))
        k = np.arange(len(fine))
        data = np.empty((len(fine), 3, 1024), dtype=np.uint8)
        data[:, 0] = (fine + 128 * file_index)[:, None]
        data[:, 1] = (k // 256)[:, None]
        data[:, 2] = (k % 256)[:, None]
        content = {
            "filenames": [f"{fine_names[f]}_s_{i:06d}.png" for i, f in enumerate(fine)],
            "batch_label": f"{name} batch",
            "fine_labels": fine.tolist(),
            "coarse_labels": [coarse_names.index(superclass[fine_names[f]]) for f in fine],
            "data": data.reshape(len(fine), 3072),
        }
        with open(folder / name, "wb") as file:
            pickle.dump(content, file, protocol=2)
    with open(folder / "meta", "wb") as file:
        pickle.dump({"fine_label_names": fine_names, "coarse_label_names": coarse_names}, file, protocol=2)
    return root


def cub_picture(class_number: int, image_number: int, size: tuple[int, int]) -> np.ndarray:
    """An RGB image whose red level encodes the class (1..200) and green level the image id's low bits."""
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[..., 0] = class_number
    array[..., 1] = image_number % 256
    array[..., 2] = image_number // 256 * 8
    return array


def write_cub(root: Path, data_root: Path, *, per_class: int = 2) -> Path:
    """Write ``root/CUB_200_2011`` in the official layout with ``per_class`` images of each of the 200 classes.

    ``classes.txt`` (``<id> <NNN.Name>``), ``images.txt`` (``<image id> <NNN.Name>/<Name>_<number>_<n>.jpg``),
    ``image_class_labels.txt`` (``<image id> <class id>``) and ``images/<NNN.Name>/*.jpg``, with image sizes that
    differ between images, as in the real set. Image ids are numbered class by class, as in the real files.
    """
    names = [
        name
        for split in ("train", "val", "test")
        for name in json.loads((data_root / "splits" / "torchmeta" / "cub" / f"{split}.json").read_text())
    ]
    names.sort(key=lambda name: int(name.split(".")[0]))
    folder = root / "CUB_200_2011"
    classes, images, labels = [], [], []
    image_id = 0
    for class_id, name in enumerate(names, start=1):
        classes.append(f"{class_id} {name}")
        (folder / "images" / name).mkdir(parents=True, exist_ok=True)
        bird = name.split(".", 1)[1]
        for n in range(per_class):
            image_id += 1
            relative = f"{name}/{bird}_{1000 + image_id:04d}_{700 + n}.jpg"
            size = (20 + 3 * n, 16 + (class_id % 5))
            Image.fromarray(cub_picture(class_id, image_id, size)).save(folder / "images" / relative, quality=95)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
    for file, lines in (("classes.txt", classes), ("images.txt", images), ("image_class_labels.txt", labels)):
        (folder / file).write_text("\n".join(lines) + "\n")
    return folder


def write_imagenet_train(root: Path, wnids: list[str], *, per_class: int = 2) -> Path:
    """Write ``root/train/<wnid>/<wnid>_<n>.JPEG`` (ImageNet's ILSVRC2012 training layout) for ``wnids``.

    Image ``j`` of class ``i`` is a small RGB image with red = i % 256, green = i // 256 and blue = 10 * j; the
    ``<n>`` of the file names are not contiguous, as in the real folders.
    """
    for i, wnid in enumerate(wnids):
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            array = np.zeros((12 + j, 14, 3), dtype=np.uint8)
            array[...] = (i % 256, i // 256, 10 * j)
            Image.fromarray(array).save(root / "train" / wnid / f"{wnid}_{37 * j + 5 * i + 1}.JPEG", quality=100)
    return root / "train"
