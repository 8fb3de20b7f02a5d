"""MetaTest: the test protocol during training, without disturbing training."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_meta.callbacks import MetaTest
from tests.helpers.callback_runs import (
    image_datamodule,
    image_maml,
    image_protonet,
    logged,
    quiet_trainer,
    read_metrics,
    sinusoid_datamodule,
    sinusoid_maml,
)


class TrainingModeRecorder(L.Callback):
    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes += [m.training for m in pl_module.modules()]


@pytest.mark.parametrize("name", ["protonet", "maml"])
def test_a_run_with_meta_test_ends_with_the_same_weights_as_one_without(tmp_path, name):
    """Dropout draws from the global generator during training and batch norm keeps running statistics: any
    random number drawn, or any forward pass in training mode, by the callback would change the final state."""

    def fit(callbacks: list) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        learner = image_protonet(dropout=0.3) if name == "protonet" else image_maml(dropout=0.3, vectorize="loop")
        recorder = TrainingModeRecorder()
        quiet_trainer(tmp_path, max_epochs=2, callbacks=[*callbacks, recorder]).fit(learner, image_datamodule())
        assert recorder.modes and all(recorder.modes)  # training always ran in training mode
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in learner.parameters())
        return {k: v.clone() for k, v in learner.state_dict().items()}

    without = fit([])
    meta_test = MetaTest(every_n_epochs=1, episodes=10)
    with_callback = fit([meta_test])
    assert without.keys() == with_callback.keys()
    for key in without:
        assert torch.equal(without[key], with_callback[key]), key


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_logged_values_equal_trainer_test_on_the_same_episodes(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "classification":
        dm, learner, metric = image_datamodule(eval_episodes=13), image_protonet(), "acc"
    else:
        dm, learner, metric = sinusoid_datamodule(eval_episodes=13), sinusoid_maml(), "mse"
    logger = CSVLogger(tmp_path)
    trainer = quiet_trainer(tmp_path, max_epochs=4, logger=logger, callbacks=[MetaTest(every_n_epochs=2, episodes=13)])
    trainer.fit(learner, dm)
    rows = read_metrics(logger.log_dir)
    means, ci95s = logged(rows, f"meta_test/{metric}"), logged(rows, f"meta_test/{metric}_ci95")
    assert [epoch for epoch, _ in means] == [epoch for epoch, _ in ci95s] == [1, 3]  # every second epoch
    (tested,) = quiet_trainer(tmp_path).test(learner, dm, verbose=False)
    assert means[-1][1] == pytest.approx(tested[f"test/{metric}"], rel=1e-6)
    if kind == "classification":
        assert ci95s[-1][1] == pytest.approx(tested["test/acc_ci95"], rel=1e-5)
    assert ci95s[-1][1] >= 0


def test_fewer_episodes_than_the_datamodule_evaluates_the_first_ones(tmp_path):
    torch.manual_seed(0)
    learner = image_protonet()
    trainer = quiet_trainer(tmp_path, callbacks=[MetaTest(episodes=6, tasks_per_batch=5)])
    trainer.fit(learner, image_datamodule(eval_episodes=20))
    (tested,) = quiet_trainer(tmp_path).test(learner, image_datamodule(eval_episodes=6), verbose=False)
    assert float(trainer.callback_metrics["meta_test/acc"]) == pytest.approx(tested["test/acc"], rel=1e-6)


def test_meta_test_needs_test_episodes(tmp_path):
    dm = image_datamodule()
    dm.data["test"] = None
    with pytest.raises(ValueError, match=r"MetaTest needs test episodes: pass test=\.\.\. to the EpisodicDataModule"):
        quiet_trainer(tmp_path, callbacks=[MetaTest()]).fit(image_protonet(), dm)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"every_n_epochs": 0}, r"MetaTest: every_n_epochs must be a positive integer, got 0"),
     ({"episodes": 2.5}, r"MetaTest: episodes must be a positive integer, got 2.5"),
     ({"tasks_per_batch": -1}, r"MetaTest: tasks_per_batch must be a positive integer, got -1")],
)  # fmt: skip
def test_meta_test_refuses_bad_arguments_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MetaTest(**kwargs)
