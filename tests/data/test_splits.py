"""The class splits shipped in lightning_meta.data.splits equal the public split files, order included."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lightning_meta.data import splits

SPLITS = ("train", "val", "test")


@pytest.mark.parametrize("split", SPLITS)
def test_shipped_splits_equal_the_public_split_files(data_root: Path, split: str) -> None:
    root = data_root / "splits"
    with open(root / "miniimagenet_ravi" / f"{split}.csv", newline="") as file:
        ravi = list(dict.fromkeys(row["label"] for row in csv.DictReader(file)))
    assert list(splits.MINI_IMAGENET_CLASSES[split]) == ravi
    cifar_fs = json.loads((root / "torchmeta" / "cifar_fs" / f"{split}.json").read_text())
    assert list(splits.CIFAR_FS_CLASSES[split]) == [f"{superclass}:{name}" for superclass, name in cifar_fs]
    fc100 = json.loads((root / "torchmeta" / "fc100_superclasses" / f"{split}.json").read_text())
    assert list(splits.FC100_SUPERCLASSES[split]) == fc100
    assert list(splits.FC100_CLASSES[split]) == json.loads((root / "derived" / "fc100_classes.json").read_text())[split]
    assert list(splits.CUB_CLASSES[split]) == json.loads((root / "torchmeta" / "cub" / f"{split}.json").read_text())
    tiered = json.loads((root / "tieredimagenet_easyfsl" / f"{split}.json").read_text())
    assert list(splits.TIERED_IMAGENET_CLASSES[split]) == tiered["class_names"]


def test_shipped_splits_have_the_published_sizes_and_are_disjoint() -> None:
    sizes = {
        "MINI_IMAGENET_CLASSES": (64, 16, 20),
        "CIFAR_FS_CLASSES": (64, 16, 20),
        "FC100_SUPERCLASSES": (12, 4, 4),
        "FC100_CLASSES": (60, 20, 20),
        "CUB_CLASSES": (100, 50, 50),
        "TIERED_IMAGENET_CLASSES": (351, 97, 160),
    }
    for name, expected in sizes.items():
        table = getattr(splits, name)
        assert tuple(len(table[s]) for s in SPLITS) == expected, name
        assert len({c for s in SPLITS for c in table[s]}) == sum(expected), name
