"""The two ways users come in (examples/), each run for a few steps on real Omniglot images."""

from __future__ import annotations

import csv
import runpy
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _example(name: str) -> dict:
    """The globals of ``examples/NAME.py`` (examples are scripts, not a package)."""
    return runpy.run_path(str(REPO / "examples" / f"{name}.py"), run_name="example")


def test_an_existing_lightning_project_meta_trains_by_subclassing_a_learner(data_root, omniglot_cache, tmp_path):
    example = _example("subclass_a_learner")
    results = example["main"](["--root", str(data_root / "omniglot"), "--cache-dir", str(omniglot_cache), "--out",
                    str(tmp_path), "--max-steps", "4", "--tasks-per-batch", "2", "--eval-episodes", "10"])  # fmt: skip
    assert 0.0 <= results["test/acc"] <= 1.0 and results["test/acc_ci95"] > 0
    # the project's own logger and callbacks did their work
    (metrics,) = tmp_path.glob("meta/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    assert {"val/acc", "train/loss", "lr-Adam"} <= set(rows[0])
    rates = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] < rates[0]  # the cosine schedule of configure_optimizers
    (last,) = tmp_path.glob("meta/version_*/checkpoints/last.ckpt")
    # the subclass saved its own arguments, not the backbone it built: the checkpoint loads with weights_only=True
    reloaded = example["SmoothedMAML"].load_from_checkpoint(last, weights_only=True)
    hparams = dict(reloaded.hparams)
    assert hparams.pop("_class_path").endswith(".SmoothedMAML")  # recorded as LightningCLI records it
    assert hparams == {"ways": 5, "smoothing": 0.1, "inner_lr": 0.4, "lr": 1e-3}


def _image_folder(omniglot_zip: Path, root: Path, alphabets: list[str], characters: int) -> Path:
    """``root/<alphabet>_<character>/<drawing>.png``: real Omniglot drawings in torchvision's ImageFolder layout."""
    with zipfile.ZipFile(omniglot_zip) as archive:
        for name in archive.namelist():
            parts = name.split("/")  # images_background/<Alphabet>/characterNN/XXXX_YY.png
            if len(parts) == 4 and parts[1] in alphabets and parts[3].endswith(".png"):
                if int(parts[2].removeprefix("character")) <= characters:
                    target = root / f"{parts[1]}_{parts[2]}" / parts[3]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(name))
    return root


def test_trainer_fit_on_a_users_image_folder_through_the_episodic_datamodule(data_root, tmp_path):
    omniglot_zip = data_root / "omniglot" / "images_background.zip"
    train = _image_folder(omniglot_zip, tmp_path / "train", ["Greek", "Korean"], characters=8)
    val = _image_folder(omniglot_zip, tmp_path / "val", ["Latin"], characters=10)
    assert len(list(train.iterdir())) == 16 and len(list(val.iterdir())) == 10
    results = _example("image_folder")["main"](["--train", str(train), "--val", str(val), "--max-steps", "30",
                                        "--eval-episodes", "40", "--out", str(tmp_path / "run")])  # fmt: skip
    # 30 ProtoNet steps on 16 training characters; 5-way 1-shot on 10 unseen ones: far above chance (0.2).
    assert results["val/acc"] > 0.5, results
