"""Every YAML in examples/configs parses and runs one training and one validation step (``fast_dev_run``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_meta.cli import main, run
from tests.data.test_miniimagenet import images_root  # noqa: F401  (fixture: a small mini-ImageNet copy)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "examples" / "configs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_there_is_a_config_per_readme_benchmark():
    names = {path.stem for path in CONFIGS}
    assert {"sinusoid_maml", "omniglot_5w1s_maml", "omniglot_20w1s_maml", "omniglot_5w1s_protonet",
            "miniimagenet_5w1s_maml"} <= names  # fmt: skip


#: Configs whose one full-size step takes a minute or more here: 20-way MAML (51 s), HalfCheetah (the paper's meta-batch
#: of 40 tasks x 20 episodes x 200 steps, collected twice: 320,000 simulator steps; 158 s at 20 tasks, about twice
#: that now), multi-domain ProtoNet at 84x84 (49 s).
SLOW = ("20w", "halfcheetah", "multidomain")


# One full-size meta-batch of the real benchmark per config (e.g. 32 Omniglot tasks, second order). Measured: 0.6 s
# (sinusoid) to 13 s (Omniglot 5-way MAML); the 20-way MAML config takes 51 s and runs in CI's slow stage. (They once
# took 14 minutes together: the CLI's after-fit summary evaluated all 600 validation episodes even under
# fast_dev_run; it now uses as many as the Trainer's validation did.)
@pytest.mark.parametrize(
    "config",
    [
        pytest.param(p, marks=[pytest.mark.slow] if any(k in p.name for k in SLOW) else [], id=p.stem)
        for p in CONFIGS
        if "miniimagenet" not in p.name
    ],  # fmt: skip
)
def test_config_runs_one_step(config, data_root, omniglot_cache, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # the configs name the data as ../shared/data, relative to the repository
    monkeypatch.setenv("LIGHTNING_META_CACHE", str(omniglot_cache))
    cli = run(["fit", "--config", str(config), "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu",
               f"--trainer.default_root_dir={tmp_path}", "--data.init_args.num_workers=0"])  # fmt: skip
    assert cli.trainer.global_step == 1  # one optimizer step of the full-size meta-batch
    losses = {k: v for k, v in cli.trainer.callback_metrics.items() if k.startswith("train/") and "loss" in k}
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses


def test_miniimagenet_config_runs_one_step_on_a_copy_in_the_csv_layout(images_root, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.chdir(images_root.parent)  # the config names the data as data/mini-imagenet
    (images_root.parent / "data").mkdir()
    images_root.rename(images_root.parent / "data" / "mini-imagenet")
    main(["fit", "--config", str(REPO / "examples/configs/miniimagenet_5w1s_maml.yaml"), "--trainer.fast_dev_run=1",
          "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}", "--data.init_args.num_workers=0",
          "--data.init_args.ways=3", "--data.init_args.queries=2", "--model.init_args.model.init_args.out_features=3",
          "--data.init_args.tasks_per_batch=2"])  # fmt: skip


def test_miniimagenet_snail_config_runs_one_step_on_a_copy_in_the_csv_layout(images_root, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.chdir(images_root.parent)  # the config names the data as data/mini-imagenet
    (images_root.parent / "data").mkdir()
    images_root.rename(images_root.parent / "data" / "mini-imagenet")
    snail = REPO / "examples/configs/miniimagenet_5w1s_snail.yaml"
    cli = run(["fit", "--config", str(snail), "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu",
               f"--trainer.default_root_dir={tmp_path}", "--data.init_args.num_workers=0", "--data.init_args.ways=3",
               "--model.init_args.ways=3", "--data.init_args.tasks_per_batch=2", "--data.init_args.eval_queries=2",
               "--data.init_args.eval_tasks_per_batch=2"])  # fmt: skip
    assert cli.trainer.global_step == 1 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def _checkpoint_callbacks(config: Path) -> list[dict]:
    callbacks = yaml.safe_load(config.read_text()).get("trainer", {}).get("callbacks", [])
    return [c.get("init_args", {}) for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]


def _keeps_the_best(config: Path) -> bool:
    return any(args.get("monitor") for args in _checkpoint_callbacks(config))


@pytest.mark.parametrize("config", [p for p in CONFIGS if _keeps_the_best(p)], ids=lambda p: p.stem)
def test_configs_that_keep_the_best_checkpoint_also_keep_the_latest(config):
    latest = [
        args
        for args in _checkpoint_callbacks(config)
        if not args.get("monitor") and args.get("every_n_train_steps") and args.get("save_top_k") == 1
    ]
    assert latest, f"{config.name}: a monitored ModelCheckpoint without an every-N-steps one for the latest weights"


class _StopAt(Callback):
    """Stops the run mid-epoch after ``step`` optimizer steps, as Lightning's Timer does at ``max_time``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_the_latest_checkpoint_keeps_the_end_of_a_run_stopped_mid_epoch(tmp_path):
    """Why the configs carry a second ModelCheckpoint: ``save_last`` copies the *best* checkpoint when it is saved and
    is not always refreshed when ``max_time`` stops a run (the MAML 5-way 1-shot run stopped at step 4,944 with
    ``last.ckpt`` at step 3,000); the every-N-steps one is at most N steps behind wherever the run stops."""
    maml = REPO / "examples/configs/omniglot_5w1s_maml.yaml"
    best, latest = _checkpoint_callbacks(maml)
    callbacks = [
        ModelCheckpoint(dirpath=tmp_path, **best),
        ModelCheckpoint(dirpath=tmp_path, **{**latest, "every_n_train_steps": 3}),
    ]
    model = BoringModel()
    model.validation_step = lambda batch, batch_idx: model.log("val/acc", -model(batch).sum())
    trainer = Trainer(max_epochs=1, limit_train_batches=64, val_check_interval=5, limit_val_batches=2, logger=False,
                      callbacks=[*callbacks, _StopAt(14)], enable_progress_bar=False)  # fmt: skip
    trainer.fit(model)
    assert trainer.global_step == 14
    assert [p.name for p in tmp_path.glob("latest-*.ckpt")] == ["latest-step=12.ckpt"]
