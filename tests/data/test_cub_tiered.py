"""CUB (Chen et al. split) and tieredImageNet (easyfsl split) on copies generated in their official layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lightning_meta.data.tieredimagenet as tiered_module
from lightning_meta.data import CUB, EpisodicDataModule, TieredImageNet
from tests.helpers.benchmark_fixtures import write_cub, write_imagenet_train

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return write_cub(tmp_path_factory.mktemp("cub"), data_root, per_class=2)


def split_file(data_root: Path, *parts: str) -> list:
    return json.loads((data_root / "splits").joinpath(*parts).read_text())


def reference(path: Path, size: int = 84) -> torch.Tensor:
    """Independent decoding: PIL, RGB, LANCZOS to size x size, CHW in [0, 1]."""
    image = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("split", SPLITS)
def test_cub_classes_labels_and_pixels_follow_the_split_and_images_txt(cub_root, data_root, split, tmp_path):
    dataset = CUB(cub_root.parent, split, check_counts=False, cache_dir=tmp_path)
    classes = split_file(data_root, "torchmeta", "cub", f"{split}.json")
    assert dataset.classes == classes and len(dataset) == 2 * len(classes)
    assert dataset.labels.tolist() == [c for c in range(len(classes)) for _ in range(2)]
    rows = [line.split() for line in (cub_root / "images.txt").read_text().splitlines()]
    expected = [path for _, path in rows if path.split("/")[0] in classes]
    expected.sort(key=lambda path: classes.index(path.split("/")[0]))
    for i in (0, 3, len(dataset) - 1):
        x, label = dataset[i]
        assert x.shape == (3, 84, 84) and label == i // 2
        torch.testing.assert_close(x, reference(cub_root / "images" / expected[i]), atol=1e-6, rtol=0)
        assert round(float(x[0].mean()) * 255) == int(classes[label].split(".")[0])  # red encodes the class id


def test_cub_count_check_and_missing_files(cub_root, tmp_path):
    with pytest.raises(ValueError, match=r"CUB at .*CUB_200_2011: expected 200 classes in classes\.txt and 11788 "
                       r"images in images\.txt, found 200 and 400.*check_counts=False"):  # fmt: skip
        CUB(cub_root, "val", cache_dir=tmp_path)
    copy = shutil.copytree(cub_root, tmp_path / "CUB_200_2011")
    first = sorted((copy / "images").iterdir())[1]
    shutil.rmtree(first)  # class 002, in the val split
    with pytest.raises(FileNotFoundError, match=r"images\.txt lists .*002\.Laysan_Albatross.*which does not exist"):
        CUB(copy, "val", check_counts=False, cache_dir=tmp_path)
    (copy / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"CUB: .*CUB_200_2011 is missing classes\.txt"):
        CUB(copy, "val", check_counts=False)


def test_cub_cache_is_reused(cub_root, tmp_path, monkeypatch):
    import lightning_meta.data.cub as cub_module

    first = CUB(cub_root, "test", check_counts=False, cache_dir=tmp_path)
    monkeypatch.setattr(cub_module, "decode_all", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    second = CUB(cub_root, "test", check_counts=False, cache_dir=tmp_path)
    assert torch.equal(first.gather_inputs(torch.arange(10)), second.gather_inputs(torch.arange(10)))


@pytest.fixture
def imagenet_val(tmp_path: Path, data_root: Path) -> Path:
    """ImageNet's train/<wnid>/<wnid>_<n>.JPEG with the 97 val classes of tieredImageNet and a few others."""
    wnids = split_file(data_root, "tieredimagenet_easyfsl", "val.json")["class_names"]
    others = split_file(data_root, "tieredimagenet_easyfsl", "train.json")["class_names"][:3]
    write_imagenet_train(tmp_path / "ILSVRC2012", [*others, *wnids], per_class=2)
    return tmp_path / "ILSVRC2012"


def test_tiered_imagenet_classes_follow_the_split_file_and_pixels_decode(imagenet_val, data_root, tmp_path):
    wnids = split_file(data_root, "tieredimagenet_easyfsl", "val.json")["class_names"]
    for root in (imagenet_val, imagenet_val / "train"):
        dataset = TieredImageNet(root, "val", check_counts=False, cache_dir=tmp_path / "cache")
        assert dataset.classes == wnids and len(dataset) == 2 * 97
        assert dataset.labels.tolist() == [c for c in range(97) for _ in range(2)]
    for i in (0, 5, 193):
        wnid = wnids[i // 2]
        files = sorted((imagenet_val / "train" / wnid).iterdir())
        torch.testing.assert_close(dataset[i][0], reference(files[i % 2]), atol=1e-6, rtol=0)


def test_tiered_imagenet_counts_name_missing_classes_and_totals(imagenet_val, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"TieredImageNet val split at .*train: expected 124261 images in the split, "
                       r"found 194"):  # fmt: skip
        TieredImageNet(imagenet_val, "val", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"TieredImageNet test split at .*: expected the 160 classes of the split, "
                       r"found 0; missing 160: n\d{8}"):  # fmt: skip
        TieredImageNet(imagenet_val, "test", cache_dir=tmp_path)
    monkeypatch.setitem(tiered_module.TIERED_IMAGENET_IMAGES, "val", 194)
    assert len(TieredImageNet(imagenet_val, "val", cache_dir=tmp_path)) == 194
    with pytest.raises(FileNotFoundError, match="holds no ImageNet training folder"):
        TieredImageNet(tmp_path / "nowhere", "val")


def test_cub_and_tiered_episodes_through_datamodule(cub_root, imagenet_val, tmp_path):
    cub = [CUB(cub_root, split, check_counts=False, cache_dir=tmp_path) for split in ("train", "val")]
    tiered = TieredImageNet(imagenet_val, "val", check_counts=False, image_size=32, cache_dir=tmp_path)
    for train, val in ((cub[0], cub[1]), (tiered, tiered)):
        datamodule = EpisodicDataModule(train, val, ways=5, shots=1, queries=1, tasks_per_batch=2, train_episodes=4)
        datamodule.setup("fit")
        batch = next(iter(datamodule.train_dataloader()))
        assert batch.support_x.shape[:3] == (2, 5, 3) and sorted(batch.support_y[0].tolist()) == [0, 1, 2, 3, 4]
