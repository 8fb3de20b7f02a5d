"""CIFAR-FS and FC100 on CIFAR-100 files generated in torchvision's exact format, checked against the split files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from lightning_meta.data import CIFARFS, FC100, EpisodicDataModule
from tests.helpers.benchmark_fixtures import write_cifar100

SPLITS = ("train", "val", "test")
SMALL = (5, 2)  # images per class in the small copy's train and test files


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("cifar-small"), data_root, per_class=SMALL)


def origin(dataset: CIFARFS | FC100) -> list[tuple[int, int, int]]:
    """(fine label, file 0/1 for train/test, position in the file) of every example, decoded from its pixels."""
    pixels = (dataset.gather_inputs(torch.arange(len(dataset))) * 255).round().long()[:, :, 0, 0]
    red, green, blue = pixels.unbind(1)
    return list(zip((red % 128).tolist(), (red // 128).tolist(), (green * 256 + blue).tolist(), strict=True))


def reference(root: Path, classes: list[str]) -> list[tuple[int, int, int]]:
    """Independent reading of the pickles: each class's train images then test images, in file order."""
    folder = root / "cifar-100-python"
    with open(folder / "meta", "rb") as file:
        names = pickle.load(file, encoding="latin1")["fine_label_names"]
    files = []
    for name in ("train", "test"):
        with open(folder / name, "rb") as file:
            files.append(pickle.load(file, encoding="latin1")["fine_labels"])
    out = []
    for name in classes:
        fine = names.index(name)
        out += [(fine, f, k) for f, labels in enumerate(files) for k, v in enumerate(labels) if v == fine]
    return out


@pytest.mark.parametrize("split", SPLITS)
def test_cifar_fs_classes_labels_and_order_follow_the_split_file(small_root, data_root, split):
    pairs = json.loads((data_root / "splits" / "torchmeta" / "cifar_fs" / f"{split}.json").read_text())
    dataset = CIFARFS(small_root, split, check_counts=False)
    assert dataset.classes == [name for _, name in pairs]
    assert len(dataset) == len(pairs) * sum(SMALL)
    assert dataset.labels.tolist() == [c for c in range(len(pairs)) for _ in range(sum(SMALL))]
    assert origin(dataset) == reference(small_root, dataset.classes)
    x, label = dataset[sum(SMALL)]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and label == 1


@pytest.mark.parametrize("split", SPLITS)
def test_fc100_classes_are_the_split_superclasses_in_the_derived_order(small_root, data_root, split):
    splits = data_root / "splits"
    superclasses = json.loads((splits / "torchmeta" / "fc100_superclasses" / f"{split}.json").read_text())
    classes = json.loads((splits / "derived" / "fc100_classes.json").read_text())[split]
    dataset = FC100(small_root, split, check_counts=False)
    assert dataset.classes == classes and len(classes) == 5 * len(superclasses)
    cifar_fs = {
        name: coarse
        for s in SPLITS
        for coarse, name in json.loads((splits / "torchmeta" / "cifar_fs" / f"{s}.json").read_text())
    }
    assert {cifar_fs[name] for name in dataset.classes} == set(superclasses)
    assert origin(dataset) == reference(small_root, dataset.classes)


@pytest.mark.integration  # 184 MB of pickles: about 8 s on a busy machine
def test_cifar_full_counts_600_per_class(tmp_path, data_root):
    root = write_cifar100(tmp_path, data_root)  # the real sizes: 500 train + 100 test images per class
    dataset = CIFARFS(root / "cifar-100-python", "val")  # the folder itself is accepted too
    assert len(dataset) == 16 * 600 and torch.bincount(dataset.labels).tolist() == [600] * 16
    first = origin(dataset)[:501]
    assert [f for _, f, _ in first] == [0] * 500 + [1]  # 500 training images, then the test images


def test_cifar_count_check_names_the_expected_and_found_counts(small_root):
    with pytest.raises(ValueError, match=r"CIFARFS train split at .*cifar-100-python: expected 600 images in every "
                       r"class, found 64 classes with another count: .* \(7\)"):  # fmt: skip
        CIFARFS(small_root, "train")


def test_cifar_missing_files_are_named_without_downloading(tmp_path):
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "meta").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100 is missing train, test in .*cifar-100-python.*download="):
        FC100(tmp_path, "val")


def test_cifar_wrong_superclass_is_refused(tmp_path, data_root):
    root = write_cifar100(tmp_path, data_root, per_class=(2, 1))
    path = root / "cifar-100-python" / "meta"
    with open(path, "rb") as file:
        meta = pickle.load(file)
    meta["coarse_label_names"] = [*meta["coarse_label_names"][1:], meta["coarse_label_names"][0]]
    with open(path, "wb") as file:
        pickle.dump(meta, file)
    with pytest.raises(ValueError, match=r"belongs to superclass .* in the data, expected 'aquatic_mammals'"):
        CIFARFS(root, "train", check_counts=False)


def test_cifar_fs_image_size_and_episodes(small_root):
    splits = [CIFARFS(small_root, split, image_size=16, check_counts=False) for split in SPLITS]
    assert splits[0][0][0].shape == (3, 16, 16)
    datamodule = EpisodicDataModule(
        *splits, ways=5, shots=2, queries=3, tasks_per_batch=2, train_episodes=4, eval_episodes=2, seed=0
    )
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.support_x.shape == (2, 10, 3, 16, 16) and batch.query_y.shape == (2, 15)


def test_cifar_rejects_unknown_split(small_root):
    with pytest.raises(ValueError, match=r"FC100: split must be one of \['train', 'val', 'test'\], got 'valid'"):
        FC100(small_root, "valid")
