"""examples/configs/multidomain_protonet.yaml: ProtoNet on Omniglot (real) + mini-ImageNet (a copy in the
mini-imagenet-tools layout) with variable-way variable-shot episodes, reporting accuracy per domain."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_meta.cli import main
from tests.data.test_miniimagenet import picture

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "examples" / "configs" / "multidomain_protonet.yaml"


@pytest.fixture(autouse=True)
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_mini_imagenet(root: Path, data_root: Path, *, classes: int = 5, per_class: int = 4) -> Path:
    """processed_images/{train,val}/<wnid>/<wnid><8 digits>.jpg with real wnids and file names of the Ravi split."""
    for split in ("train", "val"):
        with open(data_root / "splits" / "miniimagenet_ravi" / f"{split}.csv", newline="") as file:
            rows = [(row["filename"], row["label"]) for row in csv.DictReader(file)]
        wnids = list(dict.fromkeys(label for _, label in rows))[:classes]
        for c, wnid in enumerate(wnids):
            (root / "processed_images" / split / wnid).mkdir(parents=True)
            for k, (filename, _) in enumerate([r for r in rows if r[1] == wnid][:per_class]):
                image = np.roll(picture(c, k), 11 * c, axis=1)
                Image.fromarray(image).save(root / "processed_images" / split / wnid / filename, quality=95)
    return root


@pytest.mark.integration  # real Omniglot: decoding its 32,460 PNGs once per session takes most of its 20 s
def test_multidomain_protonet_config_trains_and_reports_accuracy_per_domain(
    data_root, omniglot_cache, monkeypatch, tmp_path
):
    monkeypatch.chdir(REPO)  # the config names Omniglot as ../shared/data/omniglot
    monkeypatch.setenv("LIGHTNING_META_CACHE", str(omniglot_cache))
    config = yaml.safe_load(CONFIG.read_text())
    mini = write_mini_imagenet(tmp_path / "mini", data_root)
    # The config as a user runs it, made small: 28px inputs, narrower Conv4, at most 10 ways and 50 shots per episode,
    # 4 episodes of training (2 optimizer steps of 2 accumulated tasks), 6 validation episodes.
    csv_logger = {"save_dir": str(tmp_path), "name": "log"}
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": csv_logger}
    config["trainer"].update({"max_epochs": 1, "accumulate_grad_batches": 2, "limit_val_batches": 6,
                              "log_every_n_steps": 1, "accelerator": "cpu", "default_root_dir": str(tmp_path),
                              "enable_progress_bar": False, "logger": logger})  # fmt: skip
    config["model"]["init_args"]["backbone"]["init_args"].update({"hidden": 16, "image_size": 28})
    data = config["data"]["init_args"]
    data.update({"train_episodes": 4, "eval_episodes": 6, "num_workers": 0})
    for split in ("train", "val"):
        tasks = data[split]["init_args"]
        tasks.update({"image_size": 28, "variable": {"max_ways": 10, "max_support": 50}})
        mini_args = tasks["optional_domains"]["mini_imagenet"]["init_args"]
        mini_args.update({"root": str(mini), "check_counts": False, "image_size": 28})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])

    rows = list(csv.DictReader(open(next(tmp_path.glob("log/version_*/metrics.csv")))))
    final = {k: float(v) for row in rows for k, v in row.items() if v not in ("", None)}
    assert {"val/acc/omniglot", "val/acc/mini_imagenet", "val/acc"} <= set(final)
    for name in ("omniglot", "mini_imagenet"):
        assert 0.0 <= final[f"val/acc/{name}"] <= 1.0
    # val/acc is the mean over the 6 episodes; each domain's accuracy is the mean over its own: the overall
    # accuracy lies between them (both domains were drawn among the 6 episodes, or one of the keys would be absent).
    low, high = sorted(final[f"val/acc/{name}"] for name in ("omniglot", "mini_imagenet"))
    assert low - 1e-6 <= final["val/acc"] <= high + 1e-6
    losses = [float(row["train/loss"]) for row in rows if row.get("train/loss")]
    assert len(losses) == 2 and all(np.isfinite(losses))  # logged at each of the 2 optimizer steps
    # The same config without mini-ImageNet: the run uses Omniglot alone and warns.
    for split in ("train", "val"):
        data[split]["init_args"]["optional_domains"]["mini_imagenet"]["init_args"]["root"] = str(tmp_path / "none")
    path.write_text(yaml.safe_dump(config))
    with pytest.warns(UserWarning, match="optional domain 'mini_imagenet' left out"):
        main(["fit", "--config", str(path), "--trainer.max_steps=1", "--trainer.limit_val_batches=0"])
