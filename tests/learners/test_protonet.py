"""ProtoNet: logits against a hand-written loop, meta-batches, 60-way training, evaluation protocol, results table."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from rich.console import Console
from torch import nn

from lightning_meta import Episode
from lightning_meta.data import EpisodicDataModule
from lightning_meta.learners import ProtoNet
from lightning_meta.models import Conv4
from lightning_meta.results import EpisodeResult, report_test_results, result_from_trainer
from tests.helpers.synthetic import blobs, random_meta_batch
from tests.helpers.trainers import metrics_before_and_after_fit, quiet_trainer


def mlp(dim: int = 16, out: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, out))


def hand_logits(backbone: nn.Module, episode: Episode, distance: str, scale: float = 1.0) -> torch.Tensor:
    out = torch.empty(episode.n_tasks, episode.query_x.shape[1], episode.ways, dtype=torch.float64)
    for t, task in enumerate(episode):
        support, queries = backbone(task.support_x), backbone(task.query_x)
        for k in range(episode.ways):
            members = [support[i] for i in range(len(task.support_y)) if task.support_y[i] == k]
            prototype = sum(members) / len(members)
            for q in range(len(queries)):
                if distance == "squared_euclidean":
                    out[t, q, k] = -scale * ((queries[q] - prototype) ** 2).sum()
                else:
                    out[t, q, k] = scale * (queries[q] @ prototype) / (queries[q].norm() * prototype.norm())
    return out


@pytest.mark.parametrize(("distance", "scale"), [("squared_euclidean", 1.0), ("cosine", 1.0), ("cosine", 10.0)])
def test_protonet_logits_match_hand_written_distances_to_class_means(distance, scale):
    torch.manual_seed(0)
    backbone = mlp(6, 5).double()
    learner = ProtoNet(backbone, distance=distance, scale=scale)
    episode = random_meta_batch(n_tasks=3, ways=4, shots=3, queries=2, dim=6)
    with torch.no_grad():
        logits = learner(episode)
        expected = hand_logits(backbone, episode, distance, scale)
    assert logits.shape == (3, 8, 4)
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)


def test_protonet_meta_batch_equals_tasks_one_by_one():
    torch.manual_seed(0)
    learner = ProtoNet(mlp(6, 5).double())
    episode = random_meta_batch(n_tasks=4, ways=3, shots=2, queries=3, dim=6, seed=1)
    with torch.no_grad():
        batched = learner(episode)
        one_by_one = torch.cat([learner(Episode.stack([task])) for task in episode])
    torch.testing.assert_close(batched, one_by_one)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"distance": "manhattan"}, r"distance must be one of \('squared_euclidean', 'cosine'\), got 'manhattan'"),
     ({"scale": 0.0}, r"scale must be a positive number, got 0.0"),
     ({"lr": -1.0}, r"lr must be a positive finite number, got -1.0")],
)  # fmt: skip
def test_protonet_rejects_bad_arguments_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProtoNet(mlp(), **kwargs)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    return quiet_trainer(default_root_dir=tmp_path, **kwargs)


def test_protonet_trains_60_way_and_tests_5_way(tmp_path):
    torch.manual_seed(0)
    dm = EpisodicDataModule(
        blobs(64, 10, seed=0), test=blobs(10, 10, seed=1), ways=60, shots=1, queries=2, eval_ways=5,
        tasks_per_batch=2, train_episodes=8, eval_episodes=10, eval_tasks_per_batch=5,
    )  # fmt: skip
    learner = ProtoNet(mlp())
    t = trainer(tmp_path, max_epochs=1)
    t.fit(learner, datamodule=dm)
    assert t.global_step == 4
    (metrics,) = t.test(learner, datamodule=dm, verbose=False)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/acc_ci95"] >= 0.0


def test_protonet_short_fit_beats_chance_and_the_untrained_backbone(tmp_path):
    torch.manual_seed(0)
    dm = EpisodicDataModule(
        blobs(40, 20, seed=0), test=blobs(20, 20, seed=1), ways=5, shots=1, queries=5,
        tasks_per_batch=4, train_episodes=200, eval_episodes=100, eval_tasks_per_batch=25,
    )  # fmt: skip
    learner = ProtoNet(mlp(), lr=3e-3)
    before, after = metrics_before_and_after_fit(learner, dm, default_root_dir=tmp_path)
    assert after["test/acc"] > before["test/acc"] + 0.2, (before, after)  # observed: 0.39 -> 0.86
    assert after["test/acc"] > 0.7, after  # chance is 0.2


def per_episode_accuracies(learner: ProtoNet, dm: EpisodicDataModule) -> np.ndarray:
    accuracies = []
    learner.eval()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            predicted = learner(batch).argmax(-1)
            accuracies.extend((predicted == batch.query_y).double().mean(1).tolist())
    return np.array(accuracies)


def test_trainer_test_logs_mean_and_ci95_over_the_fixed_test_episodes(tmp_path):
    torch.manual_seed(0)
    dm = EpisodicDataModule(blobs(20, 10, seed=0), test=blobs(10, 10, seed=1), ways=5, queries=3,
                            eval_episodes=37, eval_tasks_per_batch=8)  # fmt: skip
    learner = ProtoNet(mlp())
    t = trainer(tmp_path)
    (metrics,) = t.test(learner, datamodule=dm, verbose=False)
    accuracies = per_episode_accuracies(learner, dm)
    assert len(accuracies) == 37
    ci95 = 1.96 * accuracies.std(ddof=1) / math.sqrt(len(accuracies))
    assert metrics["test/acc"] == pytest.approx(accuracies.mean(), abs=1e-6)
    assert metrics["test/acc_ci95"] == pytest.approx(ci95, rel=1e-5)


def test_default_protocol_runs_600_test_episodes_and_prints_the_results_table(tmp_path):
    torch.manual_seed(0)
    dm = EpisodicDataModule(blobs(20, 10, seed=0), test=blobs(10, 10, seed=1), ways=5, queries=3,
                            eval_tasks_per_batch=100)  # fmt: skip
    assert dm.eval_episodes == 600
    learner = ProtoNet(mlp())
    seen = []

    class CountEpisodes(L.Callback):
        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append(batch.n_tasks)

    t = trainer(tmp_path, callbacks=[CountEpisodes()])
    (metrics,) = t.test(learner, datamodule=dm, verbose=False)
    assert sum(seen) == 600
    result = result_from_trainer(t, learner)
    expected = EpisodeResult("ProtoNet", metrics["test/acc"], metrics["test/acc_ci95"], 600, "TensorDataset", 5, 1)
    assert result == expected
    console = Console(record=True, width=120, color_system=None)
    t.test_loop.verbose = True
    report_test_results(t, learner, console=console)
    text = console.export_text()
    assert "TensorDataset" in text and "5-way 1-shot" in text and "ProtoNet" in text and "600" in text
    assert f"{100 * metrics['test/acc']:.1f} ± {100 * metrics['test/acc_ci95']:.1f} %" in text


def test_results_table_is_printed_at_the_end_of_trainer_test_through_on_test_end(tmp_path, capsys):
    class Reporting(ProtoNet):  # the hook the base class is asked to call (see the report)
        def on_test_end(self) -> None:
            report_test_results(self.trainer, self)

    dm = EpisodicDataModule(blobs(20, 10, seed=0), test=blobs(10, 10, seed=1), ways=5, queries=3, eval_episodes=20)
    t = trainer(tmp_path)
    t.test(Reporting(mlp()), datamodule=dm, verbose=True)
    assert "Few-shot test accuracy" in capsys.readouterr().out
    t.test(Reporting(mlp()), datamodule=dm, verbose=False)
    assert "Few-shot test accuracy" not in capsys.readouterr().out


def test_evaluation_runs_under_inference_mode(tmp_path):
    modes = []
    backbone = mlp()
    backbone.register_forward_hook(lambda *_: modes.append(torch.is_inference_mode_enabled()))
    dm = EpisodicDataModule(blobs(20, 10, seed=0), test=blobs(10, 10, seed=1), ways=5, queries=3, eval_episodes=8)
    trainer(tmp_path).test(ProtoNet(backbone), datamodule=dm, verbose=False)
    assert modes and all(modes)


def test_model_checkpoint_on_val_acc_selects_on_validation_episodes_disjoint_from_test(tmp_path):
    torch.manual_seed(0)
    data = blobs(20, 20, seed=1)
    dm = EpisodicDataModule(blobs(40, 20, seed=0), val=data, test=data, ways=5, queries=5, tasks_per_batch=4,
                            train_episodes=80, eval_episodes=40, eval_tasks_per_batch=20)  # fmt: skip
    dm.setup("fit")
    dm.setup("test")
    val, test = next(iter(dm.val_dataloader())), next(iter(dm.test_dataloader()))
    assert not torch.equal(val.support_x, test.support_x)  # same classes, different fixed episodes

    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", save_top_k=1)
    history = []

    class Recorder(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                history.append(float(trainer.callback_metrics["val/acc"]))

    t = trainer(tmp_path, max_epochs=4, enable_checkpointing=True, callbacks=[checkpoint, Recorder()])
    t.fit(ProtoNet(mlp(), lr=3e-3), datamodule=dm)
    assert len(history) == 4
    assert float(checkpoint.best_model_score) == pytest.approx(max(history))
    # A plain nn.Sequential is never pickled into the checkpoint: it is passed again, as Lightning users know.
    best = ProtoNet.load_from_checkpoint(checkpoint.best_model_path, backbone=mlp())
    (revalidated,) = trainer(tmp_path).validate(best, datamodule=dm, verbose=False)
    assert revalidated["val/acc"] == pytest.approx(max(history), abs=1e-6)


def test_protonet_works_with_a_convolutional_backbone_on_image_episodes():
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
    episode = Episode(torch.randn(2, 10, 1, 8, 8), torch.arange(5).repeat(2).expand(2, -1), torch.randn(2, 15, 1, 8, 8),
                      torch.arange(5).repeat(3).expand(2, -1), ways=5, batched=True)  # fmt: skip
    learner = ProtoNet(backbone)
    loss, logits = learner.meta_loss(episode)
    loss.backward()
    assert logits.shape == (2, 15, 5) and backbone[0].weight.grad is not None
    assert torch.isfinite(F.softmax(logits, -1)).all()


def test_protonet_tasks_are_independent_with_a_batch_statistics_backbone():
    """Conv4 normalises with batch statistics: each task must be embedded on its own, not across the meta-batch."""
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(hidden=8, image_size=16)).eval()
    support_y, query_y = torch.arange(5).repeat(2).expand(3, -1), torch.arange(5).repeat(3).expand(3, -1)
    episode = Episode(
        torch.randn(3, 10, 1, 16, 16), support_y, torch.randn(3, 15, 1, 16, 16), query_y, ways=5, batched=True
    )
    with torch.no_grad():
        batched = learner(episode)
        one_by_one = torch.cat([learner(Episode.stack([task])) for task in episode])
    torch.testing.assert_close(batched, one_by_one)
