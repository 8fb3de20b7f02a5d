"""MiniImageNet on small fixtures in the three real layouts, from real rows of the Ravi & Larochelle split lists."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lightning_meta.data.miniimagenet as miniimagenet_module
from lightning_meta.data import EpisodicDataModule
from lightning_meta.data.miniimagenet import MINI_IMAGENET_MEAN, MINI_IMAGENET_STD, MiniImageNet

SPLITS = ("train", "val", "test")
CLASSES, PER_CLASS = 3, 6


def real_rows(data_root: Path, split: str) -> list[tuple[str, str]]:
    """The first PER_CLASS rows of each of the first CLASSES classes of the real split list."""
    with open(data_root / "splits" / "miniimagenet_ravi" / f"{split}.csv", newline="") as file:
        rows = [(row["filename"], row["label"]) for row in csv.DictReader(file)]
    wnids = list(dict.fromkeys(label for _, label in rows))[:CLASSES]
    return [row for wnid in wnids for row in [r for r in rows if r[1] == wnid][:PER_CLASS]]


def picture(class_index: int, example: int, size: int = 84) -> np.ndarray:
    """A smooth RGB image whose mean colour tells its class (JPEG keeps it), with a per-example pattern."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]][class_index % 3], dtype=np.float64)
    wave = 30 * np.sin(2 * np.pi * (x * (example + 1) + y * (class_index + 1)))
    return np.clip(base + wave[..., None], 0, 255).astype(np.uint8)


def write_split_list(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["filename", "label"])
        writer.writerows(rows)


@pytest.fixture
def images_root(tmp_path: Path, data_root: Path) -> Path:
    """Layout (a): images/<wnid><8 digits>.jpg and {train,val,test}.csv beside it, real file names and wnids."""
    root = tmp_path / "mini-imagenet"
    (root / "images").mkdir(parents=True)
    for split in SPLITS:
        rows = real_rows(data_root, split)
        for i, (filename, _) in enumerate(rows):
            Image.fromarray(picture(i // PER_CLASS, i % PER_CLASS)).save(root / "images" / filename, quality=95)
        write_split_list(root / f"{split}.csv", rows)
    return root


@pytest.fixture
def pickle_root(tmp_path: Path, data_root: Path) -> Path:
    """Layout (b): learn2learn's mini-imagenet-cache-{train,validation,test}.pkl, classes interleaved in the array."""
    root = tmp_path / "pickles"
    root.mkdir()
    for split, name in zip(SPLITS, ("train", "validation", "test"), strict=True):
        wnids = list(dict.fromkeys(label for _, label in real_rows(data_root, split)))
        order = np.random.default_rng(0).permutation(CLASSES * PER_CLASS)  # image i of the array is order[i]
        images = np.stack([picture(int(k) // PER_CLASS, int(k) % PER_CLASS) for k in order])
        class_dict = {wnid: [int(i) for i in np.nonzero(order // PER_CLASS == c)[0]] for c, wnid in enumerate(wnids)}
        with open(root / f"mini-imagenet-cache-{name}.pkl", "wb") as file:
            pickle.dump({"image_data": images, "class_dict": class_dict}, file)
    return root


@pytest.fixture
def folders_root(tmp_path: Path, data_root: Path) -> Path:
    """Layout (c), as mini-imagenet-tools writes it: processed_images/<split>/<wnid>/<wnid><8 digits>.jpg."""
    root = tmp_path / "tools" / "processed_images"
    for split in SPLITS:
        for i, (filename, wnid) in enumerate(real_rows(data_root, split)):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture(i // PER_CLASS, i % PER_CLASS)).save(root / split / wnid / filename, quality=95)
    return root


def jpeg_input(path: Path, size: int = 84) -> torch.Tensor:
    """Independent reference: PIL decode (and LANCZOS resize), HWC -> CHW, scaled to [0, 1]."""
    image = Image.open(path).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("split", SPLITS)
def test_miniimagenet_images_layout_reads_labels_classes_and_pixels(images_root, data_root, split, tmp_path):
    dataset = MiniImageNet(images_root, split, cache_dir=tmp_path / "cache", check_counts=False)
    rows = real_rows(data_root, split)
    assert dataset.layout == "images" and len(dataset) == CLASSES * PER_CLASS
    assert dataset.classes == list(dict.fromkeys(label for _, label in rows))
    assert dataset.classes[0].startswith("n") and len(dataset.classes[0]) == 9
    assert dataset.labels.tolist() == [c for c in range(CLASSES) for _ in range(PER_CLASS)]
    for i in (0, 7, 17):
        x, label = dataset[i]
        assert x.shape == (3, 84, 84) and x.dtype == torch.float32 and label == i // PER_CLASS
        torch.testing.assert_close(x, jpeg_input(images_root / "images" / rows[i][0]), atol=1e-6, rtol=0)
    batch = dataset.gather_inputs(torch.tensor([17, 0, 7]))
    assert batch.shape == (3, 3, 84, 84) and batch.is_contiguous()
    assert torch.equal(batch[1], dataset[0][0])


def test_miniimagenet_split_lists_under_splits_folder_are_accepted(images_root, tmp_path):
    (images_root / "splits").mkdir()
    for split in SPLITS:
        os.replace(images_root / f"{split}.csv", images_root / "splits" / f"{split}.csv")
    dataset = MiniImageNet(images_root, "val", cache_dir=tmp_path / "cache", check_counts=False)
    assert len(dataset) == CLASSES * PER_CLASS and len(dataset.classes) == CLASSES


def test_miniimagenet_pickle_layout_follows_learn2learn_format(pickle_root):
    dataset = MiniImageNet(pickle_root, "val", check_counts=False)
    with open(pickle_root / "mini-imagenet-cache-validation.pkl", "rb") as file:
        data = pickle.load(file)
    assert dataset.layout == "pickle" and dataset.classes == list(data["class_dict"])
    for label, indices in enumerate(data["class_dict"].values()):  # learn2learn: class_idx in class_dict order
        assert set(torch.nonzero(dataset.labels == label).flatten().tolist()) == set(indices)
    expected = torch.from_numpy(data["image_data"]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(dataset.gather_inputs(torch.arange(len(dataset))), expected, atol=1e-6, rtol=0)
    assert not list(pickle_root.glob("*.pt"))  # 84px pickles need no cache


def test_miniimagenet_prefers_the_pickle_when_both_layouts_are_present(images_root, pickle_root):
    for path in pickle_root.iterdir():
        os.replace(path, images_root / path.name)
    assert MiniImageNet(images_root, "train", check_counts=False).layout == "pickle"


def test_miniimagenet_image_size_resizes_with_lanczos(images_root, pickle_root, data_root, tmp_path):
    dataset = MiniImageNet(images_root, "test", image_size=32, cache_dir=tmp_path / "cache", check_counts=False)
    first = real_rows(data_root, "test")[0][0]
    torch.testing.assert_close(dataset[0][0], jpeg_input(images_root / "images" / first, 32), atol=1e-6, rtol=0)
    small = MiniImageNet(pickle_root, "test", image_size=32, check_counts=False)
    with open(pickle_root / "mini-imagenet-cache-test.pkl", "rb") as file:
        array = pickle.load(file)["image_data"][5]
    reference = np.asarray(Image.fromarray(array).resize((32, 32), Image.Resampling.LANCZOS))
    torch.testing.assert_close(small[5][0], torch.from_numpy(reference.copy()).permute(2, 0, 1).float() / 255)


def test_miniimagenet_normalize_standardises_each_channel(pickle_root):
    plain = MiniImageNet(pickle_root, "train", check_counts=False)
    normalised = MiniImageNet(pickle_root, "train", normalize=True, check_counts=False)
    mean = torch.tensor(MINI_IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(MINI_IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(normalised[3][0], (plain[3][0] - mean) / std)
    assert 0.45 < MINI_IMAGENET_MEAN[0] < 0.5 and 0.25 < MINI_IMAGENET_STD[2] < 0.3


def test_miniimagenet_cache_second_load_is_identical_and_keyed_by_the_files(images_root, monkeypatch):
    first = MiniImageNet(images_root, "train", check_counts=False)
    assert len(list(images_root.glob("*.pt"))) == 1  # root is writable: the cache sits beside the data
    real_decode_all = miniimagenet_module.decode_all

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(miniimagenet_module, "decode_all", refuse)
    second = MiniImageNet(images_root, "train", check_counts=False)
    assert torch.equal(first.gather_inputs(torch.arange(18)), second.gather_inputs(torch.arange(18)))
    # Replace one image: the cache is stale and must be rebuilt with the new pixels.
    monkeypatch.setattr(miniimagenet_module, "decode_all", real_decode_all)
    name = sorted((images_root / "images").iterdir())[0]
    Image.fromarray(np.zeros((84, 84, 3), dtype=np.uint8)).save(name, quality=95)
    os.utime(name, ns=(1, 1))
    changed = MiniImageNet(images_root, "train", check_counts=False)
    index = next(i for i, (f, _) in enumerate(real_rows_from(images_root / "train.csv")) if f == name.name)
    assert float(changed[index][0].max()) < 0.05 and float(first[index][0].max()) > 0.5


def real_rows_from(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as file:
        return [(row["filename"], row["label"]) for row in csv.DictReader(file)]


@pytest.mark.parametrize("layout", ["images", "pickle", "split_folders"])
def test_miniimagenet_episodes_through_datamodule(images_root, pickle_root, folders_root, layout, tmp_path):
    root = {"images": images_root, "pickle": pickle_root, "split_folders": folders_root}[layout]
    splits = [MiniImageNet(root, split, cache_dir=tmp_path / "cache", check_counts=False) for split in SPLITS]
    datamodule = EpisodicDataModule(
        *splits, ways=3, shots=2, queries=4, tasks_per_batch=2, train_episodes=4, eval_episodes=2, seed=1
    )
    datamodule.setup("fit")
    datamodule.setup("test")
    for batch in (next(iter(datamodule.train_dataloader())), next(iter(datamodule.test_dataloader()))):
        assert batch.support_x.shape == (2, 6, 3, 84, 84) and batch.query_x.shape == (2, 12, 3, 84, 84)
        assert sorted(batch.support_y[0].tolist()) == [0, 0, 1, 1, 2, 2]  # in a random order
        assert 0.0 <= float(batch.query_x.min()) and float(batch.query_x.max()) <= 1.0
        for task in batch:  # the dominant colour channel is the dataset class: constant within each episode label
            support_class = task.support_x.mean((2, 3)).argmax(1)
            query_class = task.query_x.mean((2, 3)).argmax(1)
            for label in range(3):
                classes = torch.cat([support_class[task.support_y == label], query_class[task.query_y == label]])
                assert len(set(classes.tolist())) == 1
            assert len(set(support_class.tolist())) == 3


def test_miniimagenet_missing_files_error_names_both_layouts(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"images/<wnid><8 digits>\.jpg .* train\.csv .* mini-imagenet-cache-train\.pkl"
    ):
        MiniImageNet(tmp_path, "train", check_counts=False)
    (tmp_path / "images").mkdir()
    with pytest.raises(
        FileNotFoundError,
        match=r"Found: images/ with 0 \.jpg files; no val\.csv; no mini-imagenet-cache-validation\.pkl",
    ):
        MiniImageNet(tmp_path, "val", check_counts=False)


def test_miniimagenet_listed_image_that_is_missing_is_named(images_root, data_root, tmp_path):
    missing = real_rows(data_root, "val")[4][0]
    (images_root / "images" / missing).unlink()
    with pytest.raises(FileNotFoundError, match=rf"val\.csv lists {missing}, which is not in"):
        MiniImageNet(images_root, "val", cache_dir=tmp_path / "cache", check_counts=False)


def test_miniimagenet_malformed_pickles_raise(tmp_path):
    images = np.zeros((4, 84, 84, 3), dtype=np.uint8)
    cases = {
        "belongs to no class": {"image_data": images, "class_dict": {"n01": [0, 1], "n02": [2]}},
        "under two classes": {"image_data": images, "class_dict": {"n01": [0, 1], "n02": [1, 2, 3]}},
        "should be uint8": {"image_data": images.astype(np.float32), "class_dict": {"n01": [0, 1, 2, 3]}},
        "'image_data' and 'class_dict'": {"images": images},
    }
    for message, content in cases.items():
        with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as file:
            pickle.dump(content, file)
        with pytest.raises(ValueError, match=message):
            MiniImageNet(tmp_path, "train", check_counts=False)


def test_miniimagenet_rejects_unknown_split_and_bad_size(tmp_path):
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val', 'test'\], got 'validation'"):
        MiniImageNet(tmp_path, "validation", check_counts=False)
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        MiniImageNet(tmp_path, "train", image_size=-1, check_counts=False)


@pytest.mark.parametrize("split", SPLITS)
def test_miniimagenet_split_folders_layout_reads_ravi_classes_in_order(folders_root, data_root, split, tmp_path):
    rows = real_rows(data_root, split)
    for root in (folders_root, folders_root.parent):  # processed_images itself or its parent
        dataset = MiniImageNet(root, split, cache_dir=tmp_path / "cache", check_counts=False)
        assert dataset.layout == "split_folders" and len(dataset) == CLASSES * PER_CLASS
        assert dataset.classes == list(dict.fromkeys(label for _, label in rows))  # the CSV's order
        assert dataset.labels.tolist() == [c for c in range(CLASSES) for _ in range(PER_CLASS)]
        for i in (0, 8, 17):  # images in file-name order within each class, which is the CSV's order
            filename, wnid = rows[i]
            torch.testing.assert_close(
                dataset[i][0], jpeg_input(folders_root / split / wnid / filename), atol=1e-6, rtol=0
            )


def test_miniimagenet_split_folders_classes_follow_the_ravi_list_not_the_folder_order(folders_root, tmp_path):
    from lightning_meta.data.splits import MINI_IMAGENET_CLASSES

    dataset = MiniImageNet(folders_root, "train", cache_dir=tmp_path / "cache", check_counts=False)
    order = [MINI_IMAGENET_CLASSES["train"].index(wnid) for wnid in dataset.classes]
    assert order == sorted(order)


def test_miniimagenet_split_folders_ignore_other_files_and_use_the_cache(folders_root, monkeypatch):
    wnid = sorted((folders_root / "val").iterdir())[0]
    (wnid / "Thumbs.db").write_bytes(b"x")
    (wnid / "notes.txt").write_text("not an image")
    first = MiniImageNet(folders_root, "val", check_counts=False)
    assert len(first) == CLASSES * PER_CLASS
    assert len(list(folders_root.glob("*.pt"))) == 1  # beside the split folders

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(miniimagenet_module, "decode_all", refuse)
    second = MiniImageNet(folders_root.parent, "val", check_counts=False)
    assert torch.equal(first.gather_inputs(torch.arange(18)), second.gather_inputs(torch.arange(18)))


def test_miniimagenet_full_split_check_names_missing_classes_and_path(folders_root, images_root, tmp_path):
    with pytest.raises(ValueError, match=r"MiniImageNet val split at .*processed_images/val: expected the 16 classes "
                       r"of the split, found 3; missing 13: n\d{8}.*check_counts=False"):  # fmt: skip
        MiniImageNet(folders_root, "val", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"MiniImageNet test split at .*test\.csv: expected the 20 classes"):
        MiniImageNet(images_root, "test", cache_dir=tmp_path / "cache", check_counts=True)
    assert len(MiniImageNet(images_root, "test", cache_dir=tmp_path / "cache")) == CLASSES * PER_CLASS  # own list


def test_miniimagenet_full_split_check_names_classes_with_another_image_count(folders_root, monkeypatch, tmp_path):
    present = tuple(sorted(p.name for p in (folders_root / "test").iterdir()))
    monkeypatch.setattr(miniimagenet_module, "MINI_IMAGENET_CLASSES", {"test": present})
    monkeypatch.setattr(miniimagenet_module, "IMAGES_PER_CLASS", PER_CLASS)
    assert len(MiniImageNet(folders_root, "test", cache_dir=tmp_path / "cache")) == CLASSES * PER_CLASS
    sorted((folders_root / "test" / present[1]).iterdir())[0].unlink()
    with pytest.raises(ValueError, match=rf"expected 6 images in every class, found 1 classes with another count: "
                       rf"{present[1]} \(5\)"):  # fmt: skip
        MiniImageNet(folders_root, "test", cache_dir=tmp_path / "cache")


def test_miniimagenet_split_folders_reject_a_class_of_another_split(folders_root, data_root, tmp_path):
    stray = real_rows(data_root, "train")[0]
    (folders_root / "val" / stray[1]).mkdir()
    Image.fromarray(picture(0, 0)).save(folders_root / "val" / stray[1] / stray[0], quality=95)
    with pytest.raises(ValueError, match=rf"1 classes are not in the val split of the benchmark \(16 classes\): "
                       rf"{stray[1]}"):  # fmt: skip
        MiniImageNet(folders_root, "val", cache_dir=tmp_path / "cache", check_counts=False)
