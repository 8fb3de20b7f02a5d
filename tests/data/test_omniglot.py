"""Omniglot from the real official files: protocols, pixels against PIL, rotations, the decode cache, the example."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_meta.data import EpisodicDataModule
from lightning_meta.data.download import CACHE_ENV
from lightning_meta.data.omniglot import Omniglot, load_omniglot_images

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def omniglot_root(data_root: Path) -> Path:
    return data_root / "omniglot"


@pytest.fixture(scope="module")
def vinyals_train(omniglot_root: Path, omniglot_cache: Path) -> Omniglot:
    return Omniglot(omniglot_root, "train", cache_dir=omniglot_cache)


@pytest.fixture
def small_zip(omniglot_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the official minimal background set (5 alphabets, 136 characters)."""
    folder = tmp_path / "data"
    folder.mkdir()
    return Path(shutil.copy(omniglot_root / "images_background_small1.zip", folder))


@pytest.fixture
def tiny_zip(omniglot_root: Path, tmp_path: Path) -> Path:
    """The first 10 characters (200 drawings) of the minimal set, members copied as they are, in a writable folder."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    path = folder / "images_background_small1.zip"
    keep = {f"character{i:02d}" for i in range(1, 11)}
    with zipfile.ZipFile(omniglot_root / "images_background_small1.zip") as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            parts = info.filename.split("/")
            if len(parts) == 4 and parts[1] == "Balinese" and parts[2] in keep:
                out.writestr(info, source.read(info))
    return path


def drawing_png(omniglot_root: Path, character: str, drawing: int) -> Image.Image:
    """Drawing number ``drawing`` (file-name order) of ``Alphabet/characterNN``, read straight from the zips."""
    for name in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(omniglot_root / f"{name}.zip") as archive:
            members = sorted(m for m in archive.namelist() if m.startswith(f"{name}/{character}/") and m[-4:] == ".png")
            if members:
                return Image.open(io.BytesIO(archive.read(members[drawing]))).convert("L")
    raise KeyError(character)


def reference_input(image: Image.Image, size: int = 28) -> np.ndarray:
    """What learn2learn/torchvision do: LANCZOS resize of the grey image, ToTensor, then ink = 1 - value."""
    return 1.0 - np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def examples_of(dataset: Omniglot, name: str) -> torch.Tensor:
    return torch.nonzero(dataset.labels == dataset.classes.index(name)).flatten()


@pytest.mark.parametrize(("split", "n_classes"), [("train", 4112), ("val", 688), ("test", 1692), ("trainval", 4800)])
def test_omniglot_vinyals_splits_have_standard_class_counts(omniglot_root, omniglot_cache, split, n_classes):
    dataset = Omniglot(omniglot_root, split, cache_dir=omniglot_cache)
    lines = (omniglot_root / "splits" / "vinyals" / f"{split}.txt").read_text().split()
    assert len(dataset.classes) == n_classes
    assert dataset.classes == lines  # class c is line c of the split file
    assert len(dataset) == 20 * n_classes
    assert dataset.labels.dtype == torch.long and dataset.labels.shape == (len(dataset),)
    assert torch.equal(torch.bincount(dataset.labels), torch.full((n_classes,), 20))
    assert len({name.rsplit("/", 1)[0] for name in dataset.classes}) == n_classes // 4  # 4 rotations per character


def test_omniglot_vinyals_split_has_4112_train_classes(vinyals_train):
    assert len(vinyals_train.classes) == 4112
    assert vinyals_train.classes[:2] == ["Angelic/character01/rot000", "Angelic/character01/rot090"]


def test_omniglot_vinyals_without_rotations_keeps_rot000_classes(omniglot_root, omniglot_cache):
    dataset = Omniglot(omniglot_root, "test", rotations=False, cache_dir=omniglot_cache)
    assert len(dataset.classes) == 423
    assert all(name.endswith("/rot000") for name in dataset.classes)
    assert len(dataset) == 423 * 20


def test_omniglot_background_protocol_trains_on_background_and_tests_on_evaluation(omniglot_root, omniglot_cache):
    train = Omniglot(omniglot_root, "train", protocol="background", cache_dir=omniglot_cache)
    test = Omniglot(omniglot_root, "test", protocol="background", rotations=False, cache_dir=omniglot_cache)
    assert len(train.classes) == 964 * 4 and len(train) == 964 * 4 * 20
    assert train.classes[:4] == [f"Alphabet_of_the_Magi/character01/rot{d:03d}" for d in (0, 90, 180, 270)]
    assert len(test.classes) == 659 and test.classes[0] == "Angelic/character01"
    train_alphabets = {name.split("/")[0] for name in train.classes}
    test_alphabets = {name.split("/")[0] for name in test.classes}
    assert len(train_alphabets) == 30 and len(test_alphabets) == 20 and not train_alphabets & test_alphabets


def test_omniglot_image_matches_png(omniglot_root, vinyals_train):
    for name, drawing in [
        ("Angelic/character01/rot000", 0),
        ("Korean/character05/rot000", 7),
        ("Futurama/character26/rot000", 19),
    ]:
        index = examples_of(vinyals_train, name)[drawing]
        x, label = vinyals_train[int(index)]
        expected = reference_input(drawing_png(omniglot_root, name.rsplit("/", 1)[0], drawing))
        assert label == vinyals_train.classes.index(name)
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6, rtol=0)


def test_omniglot_rotation_classes_are_rotated_images(omniglot_root, vinyals_train):
    character, drawing = "Korean/character05", 4
    upright = reference_input(drawing_png(omniglot_root, character, drawing))
    resized = drawing_png(omniglot_root, character, drawing).resize((28, 28), Image.Resampling.LANCZOS)
    turns = [None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270]
    for k, turn in enumerate(turns):
        x = vinyals_train.gather_inputs(
            examples_of(vinyals_train, f"{character}/rot{90 * k:03d}")[drawing : drawing + 1]
        )
        np.testing.assert_allclose(x[0, 0].numpy(), np.rot90(upright, k), atol=1e-6, rtol=0)
        pil = resized if turn is None else resized.transpose(turn)  # PIL's counter-clockwise quarter turns
        np.testing.assert_allclose(x[0, 0].numpy(), reference_input(pil), atol=1e-6, rtol=0)
    assert not np.allclose(np.rot90(upright, 1), upright)


@pytest.mark.parametrize("materialised", [True, False], ids=["rotated-once", "rotated-per-gather"])
def test_omniglot_gather_inputs_matches_getitem_for_mixed_rotations(
    omniglot_root, omniglot_cache, vinyals_train, materialised, monkeypatch
):
    if not materialised:  # the path taken when one image per example would not fit in MAX_ROTATED_BYTES
        monkeypatch.setattr(Omniglot, "MAX_ROTATED_BYTES", 0)
        vinyals_train = Omniglot(omniglot_root, "train", cache_dir=omniglot_cache)
        assert vinyals_train._rotated
    index = torch.randint(0, len(vinyals_train), (64,), generator=torch.Generator().manual_seed(0))
    batch = vinyals_train.gather_inputs(index)
    assert batch.shape == (64, 1, 28, 28) and batch.dtype == torch.float32
    for i, j in enumerate(index.tolist()):
        x, label = vinyals_train[j]
        assert torch.equal(batch[i], x) and label == int(vinyals_train.labels[j])
    assert torch.equal(vinyals_train[-1][0], vinyals_train[len(vinyals_train) - 1][0])
    with pytest.raises(IndexError, match="out of range"):
        vinyals_train[len(vinyals_train)]
    # An independent route to the same pixels: the rot000 drawing of the same character, turned by torch.rot90.
    for i, j in enumerate(index.tolist()[:16]):
        name = vinyals_train.classes[int(vinyals_train.labels[j])]
        character, degrees = name.rsplit("/rot", 1)
        same = examples_of(vinyals_train, name)
        upright = examples_of(vinyals_train, f"{character}/rot000")
        x0 = vinyals_train.gather_inputs(upright[(same == j).nonzero().flatten()])
        assert torch.equal(batch[i], torch.rot90(x0[0], int(degrees) // 90, dims=(1, 2)))


def test_omniglot_inputs_have_ink_one_and_paper_zero(vinyals_train):
    x = vinyals_train.gather_inputs(torch.arange(0, len(vinyals_train), 997))
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert float(x.max()) == 1.0  # solid ink
    assert float(x[..., 0, :].mean()) < 0.01 and float(x[..., :, -1].mean()) < 0.01  # paper at the borders
    assert 0.03 < float(x.mean()) < 0.3  # strokes cover a small part of the page


def test_omniglot_episodes_through_datamodule(omniglot_root, omniglot_cache, vinyals_train):
    val = Omniglot(omniglot_root, "val", cache_dir=omniglot_cache)
    datamodule = EpisodicDataModule(
        vinyals_train, val, ways=5, shots=1, queries=3, tasks_per_batch=2, train_episodes=4, eval_episodes=2
    )
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.support_x.shape == (2, 5, 1, 28, 28) and batch.query_x.shape == (2, 15, 1, 28, 28)
    assert sorted(batch.support_y[0].tolist()) == [0, 1, 2, 3, 4]  # in a random order
    val_batch = next(iter(datamodule.val_dataloader()))
    assert val_batch.query_x.shape == (2, 15, 1, 28, 28)
    # Every query drawing of label l comes from the same dataset class as the support drawing of label l.
    pixels = (val.gather_inputs(torch.arange(len(val))) * 255).round().byte().flatten(1).numpy()
    classes_by_pixels: dict[bytes, set[int]] = {}
    for row, label in zip(pixels, val.labels.tolist(), strict=True):
        classes_by_pixels.setdefault(row.tobytes(), set()).add(label)

    def classes_of(x: torch.Tensor) -> set[int]:
        return classes_by_pixels[(x * 255).round().byte().flatten().numpy().tobytes()]

    for task in val_batch:
        for label in range(5):
            support_classes = classes_of(task.support_x[task.support_y == label])
            for query in task.query_x[task.query_y == label]:
                assert classes_of(query) == support_classes


def test_omniglot_cache_second_load_is_fast_and_identical(small_zip, tmp_path):
    cache = tmp_path / "cache"
    start = time.perf_counter()
    first = load_omniglot_images(small_zip, cache_dir=cache)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    second = load_omniglot_images(small_zip, cache_dir=cache)
    warm = time.perf_counter() - start
    assert len(list(cache.glob("*.pt"))) == 1 and not list(small_zip.parent.glob("*.pt"))  # cache_dir wins
    assert torch.equal(first.images, second.images) and first.images.shape == (2720, 28, 28)
    assert first.images.dtype == torch.uint8
    assert first.characters == second.characters and len(first.characters) == 136 and first.n_alphabets == 5
    assert torch.equal(first.character, second.character) and first.files == second.files
    assert warm < cold / 4, (cold, warm)


def test_omniglot_cache_is_keyed_by_image_size_and_source(tiny_zip):
    load_omniglot_images(tiny_zip)  # the zip's folder is writable: the cache goes beside it
    assert len(list(tiny_zip.parent.glob("*.pt"))) == 1
    larger = load_omniglot_images(tiny_zip, image_size=32)
    assert larger.images.shape == (200, 32, 32) and len(list(tiny_zip.parent.glob("*.pt"))) == 2
    # Rewrite the zip without one character: a stale cache must not be used.
    with zipfile.ZipFile(tiny_zip) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(tiny_zip, "w") as archive:
        for info, data in members:
            if "/character01/" not in info.filename:
                archive.writestr(info, data)
    changed = load_omniglot_images(tiny_zip)
    assert len(changed.characters) == 9 and changed.images.shape == (180, 28, 28)
    assert len(list(tiny_zip.parent.glob("*.pt"))) == 3


def test_omniglot_cache_falls_back_when_data_folder_is_read_only(tiny_zip, tmp_path, monkeypatch):
    read_only = tiny_zip.parent
    read_only.chmod(0o555)  # read-only by its mode; respected even when the tests run as root
    fallback = tmp_path / "env-cache"
    monkeypatch.setenv(CACHE_ENV, str(fallback))
    try:
        images = load_omniglot_images(tiny_zip)
        assert sorted(os.listdir(read_only)) == [tiny_zip.name]
        assert len(list(fallback.glob("*.pt"))) == 1
        explicit = tmp_path / "explicit"
        again = load_omniglot_images(tiny_zip, cache_dir=explicit)  # a cache in $LIGHTNING_META_CACHE is not
        assert torch.equal(images.images, again.images)  # consulted when cache_dir says otherwise
        assert len(list(explicit.glob("*.pt"))) == 1
    finally:
        read_only.chmod(0o755)


def test_omniglot_corrupt_cache_is_rebuilt(tiny_zip, tmp_path):
    first = load_omniglot_images(tiny_zip, cache_dir=tmp_path / "cache")
    (path,) = (tmp_path / "cache").glob("*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        rebuilt = load_omniglot_images(tiny_zip, cache_dir=tmp_path / "cache")
    assert torch.equal(first.images, rebuilt.images)
    assert torch.equal(load_omniglot_images(tiny_zip, cache_dir=tmp_path / "cache").images, first.images)


def test_omniglot_extracted_folder_matches_zip(tiny_zip, tmp_path):
    with zipfile.ZipFile(tiny_zip) as archive:
        archive.extractall(tmp_path / "extracted")
    folder = load_omniglot_images(tmp_path / "extracted" / "images_background_small1", cache_dir=tmp_path / "c")
    archive = load_omniglot_images(tiny_zip, cache_dir=tmp_path / "c")
    assert torch.equal(folder.images, archive.images)
    assert folder.characters == archive.characters and folder.files == archive.files


def test_omniglot_copy_with_wrong_counts_raises_naming_what_was_found(tiny_zip, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(tiny_zip, root / "images_background.zip")
    with pytest.raises(ValueError, match=r"holds 1 alphabets and 10 characters, expected 30 alphabets and 964"):
        Omniglot(root, "train", protocol="background", cache_dir=tmp_path / "cache")


def test_omniglot_missing_files_raise_with_the_expected_layout(tmp_path, omniglot_root):
    expected = (
        r"missing images_background\.zip, images_evaluation\.zip, splits/vinyals/train\.txt under .*download=True"
    )
    with pytest.raises(FileNotFoundError, match=expected):
        Omniglot(tmp_path, "train")
    shutil.copy(omniglot_root / "images_evaluation.zip", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"is missing images_background\.zip, splits/vinyals/test\.txt under"):
        Omniglot(tmp_path, "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_evaluation.zip"]  # nothing written, nothing fetched


def test_omniglot_rejects_unknown_protocol_split_and_size(omniglot_root):
    with pytest.raises(ValueError, match="protocol must be one of"):
        Omniglot(omniglot_root, "train", protocol="lake")
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\] under protocol 'background'"):
        Omniglot(omniglot_root, "val", protocol="background")
    with pytest.raises(ValueError, match="image_size must be a positive integer, got 0"):
        Omniglot(omniglot_root, "train", image_size=0)


def test_example_omniglot_episodes_writes_a_png(omniglot_root, omniglot_cache, tmp_path):
    spec = importlib.util.spec_from_file_location("omniglot_episodes", REPO / "examples" / "omniglot_episodes.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(
        ["--root", str(omniglot_root), "--out", str(tmp_path / "episodes.png"), "--cache-dir", str(omniglot_cache)]
    )
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 800
        assert np.asarray(image.convert("L")).std() > 20  # drawings and text, not a blank page
