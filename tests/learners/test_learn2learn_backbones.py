"""learn2learn's vision models as backbones of our learners: meta-gradients against learn2learn, fits, checkpoints.

learn2learn's ``OmniglotCNN`` registers its convolution stack twice, as ``model.base`` and as ``model.features[1]``;
``torch.func.functional_call`` alone would leave the replacement tensors in such a module (pytorch/pytorch#164759).
``lightning_meta.functional`` gives each (module, attribute) slot once, so the model is used as learn2learn builds it.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from lightning_meta import Episode, InnerLoop
from lightning_meta.data import EpisodicDataModule, Learn2LearnTasks
from lightning_meta.data.omniglot import load_omniglot_images
from lightning_meta.data.sampler import EpisodeDataset, EpisodeSampler
from lightning_meta.learners import ANIL, MAML, ProtoNet
from tests.helpers.learn2learn import l2l, needs_l2l

if l2l is not None:
    from learn2learn.data.transforms import ConsecutiveLabels, FusedNWaysKShots, LoadData, RemapLabels
pytestmark = needs_l2l

WAYS = 5


def omniglot_cnn(hidden: int = 8) -> torch.nn.Module:
    """learn2learn's OmniglotCNN (28x28 inputs, no pooling, mean over space), as learn2learn builds it."""
    return l2l.vision.models.OmniglotCNN(output_size=WAYS, hidden_size=hidden)


def miniimagenet_cnn(hidden: int = 8, *, channels: int = 3, embedding: int | None = None) -> torch.nn.Module:
    """learn2learn's MiniImagenetCNN (CNN4: four conv-BN-ReLU-maxpool blocks, 84x84 inputs give 25 * hidden)."""
    return l2l.vision.models.MiniImagenetCNN(WAYS, hidden_size=hidden, channels=channels, embedding_size=embedding)


def l2l_name(name: str) -> str:
    """The name learn2learn's own OmniglotCNN gives a parameter that our de-aliased copy calls ``name``."""
    return name.replace("features.1.", "base.", 1)


def assert_running_stats_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    stats_a = [m.running_mean for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats_b = [m.running_mean for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(stats_a) == len(stats_b) > 0
    for x, y in zip(stats_a, stats_b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-15)


@pytest.fixture(scope="module")
def omniglot_batch(data_root: Path, omniglot_cache: Path) -> Episode:
    """Two 5-way 1-shot tasks of real Omniglot drawings, drawn by a learn2learn Taskset through our adapter."""
    drawings = load_omniglot_images(data_root / "omniglot" / "images_background_small1.zip", cache_dir=omniglot_cache)
    dataset = TensorDataset(drawings.images.unsqueeze(1).double().div(255), drawings.character)
    meta = l2l.data.MetaDataset(dataset, indices_to_labels=dict(enumerate(drawings.character.tolist())))
    transforms = [FusedNWaysKShots(meta, n=WAYS, k=2), LoadData(meta), RemapLabels(meta), ConsecutiveLabels(meta)]
    tasks = Learn2LearnTasks(l2l.data.Taskset(meta, task_transforms=transforms))
    episodes = EpisodeDataset(tasks, stage="train", seed=0, ways=WAYS, shots=1, queries=1)
    return episodes[next(iter(EpisodeSampler(2, 2, train=True)))]


# ----------------------------------------------------------------------------------- the meta-gradient, against l2l
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("backbone", ["OmniglotCNN", "MiniImagenetCNN"])
def test_maml_meta_gradient_matches_learn2learn_on_real_omniglot_tasks(omniglot_batch, backbone, first_order):
    """Same weights, same tasks: learn2learn's clone()/adapt() loop and our MAML give the same meta-gradient.

    Both run the same float64 operations on the same tensors (BatchNorm in training mode on both sides, so batch
    statistics), in the same order within a task; only the summation order of the meta-batch's gradients differs.
    Measured: 4e-15 relative at most. rtol 1e-9 leaves room for other BLAS builds; atol 1e-12 is for the convolution
    biases, which feed a batch norm that subtracts them again: their true gradient is 0, and both sides compute
    rounding noise of about 1e-16.
    """
    torch.manual_seed(0)
    if backbone == "OmniglotCNN":
        reference_model = l2l.vision.models.OmniglotCNN(output_size=WAYS, hidden_size=8).double()
        ours_model = copy.deepcopy(reference_model)
        assert ours_model.base is ours_model.features[1]
    else:
        reference_model = miniimagenet_cnn(channels=1, embedding=8).double()  # 28x28 pooled four times: 1x1
        ours_model = copy.deepcopy(reference_model)
    steps, lr = 2, 0.4

    maml = l2l.algorithms.MAML(reference_model, lr=lr, first_order=first_order)
    total = torch.zeros((), dtype=torch.float64)
    for task in omniglot_batch:
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(task.support_x), task.support_y))
        total = total + F.cross_entropy(learner(task.query_x), task.query_y)
    reference_loss = total / omniglot_batch.n_tasks
    reference_loss.backward()

    ours = MAML(ours_model, inner_loop=InnerLoop(lr=lr, steps=steps, first_order=first_order, vectorize="loop"))
    loss, _ = ours.meta_loss(omniglot_batch)
    loss.backward()

    torch.testing.assert_close(loss, reference_loss, rtol=1e-12, atol=0)
    reference_grads = dict(reference_model.named_parameters())
    for name, p in ours_model.named_parameters():
        expected = reference_grads[l2l_name(name) if backbone == "OmniglotCNN" else name].grad
        torch.testing.assert_close(p.grad, expected, rtol=1e-9, atol=1e-12, msg=name)
    # Both normalised with batch statistics and updated the running ones with the same batches.
    assert_running_stats_equal(ours_model, reference_model)


# ----------------------------------------------------------------------------------- every learner takes them
def image_data(image_size: int, channels: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    n_classes, per_class = 8, 4
    return TensorDataset(
        torch.rand(n_classes * per_class, channels, image_size, image_size, generator=g),
        torch.arange(n_classes).repeat_interleave(per_class),
    )


def build(learner: str, backbone: str) -> tuple[L.LightningModule, torch.nn.Module]:
    model = omniglot_cnn() if backbone == "OmniglotCNN" else miniimagenet_cnn()
    if learner == "MAML":
        return MAML(model, inner_loop=InnerLoop(lr=0.4, vectorize="loop")), model
    if learner == "ANIL":
        return ANIL(model, head="classifier", inner_loop=InnerLoop(lr=0.4, vectorize="loop")), model
    return ProtoNet(model.features), model.features  # learn2learn models expose .features and .classifier


@pytest.mark.parametrize("learner_name", ["MAML", "ANIL", "ProtoNet"])
@pytest.mark.parametrize("backbone", ["OmniglotCNN", "MiniImagenetCNN"])
def test_learners_fit_and_evaluate_with_learn2learn_backbones(learner_name, backbone, tmp_path):
    torch.manual_seed(0)
    size, channels = (28, 1) if backbone == "OmniglotCNN" else (84, 3)
    data = EpisodicDataModule(image_data(size, channels), image_data(size, channels), ways=WAYS, shots=1, queries=1,
                              tasks_per_batch=2, train_episodes=4, eval_episodes=2)  # fmt: skip
    learner, trained = build(learner_name, backbone)
    if learner_name == "ANIL":
        assert learner.adapted_names() == ["classifier.weight", "classifier.bias"]
    before = {n: p.detach().clone() for n, p in trained.named_parameters()}
    trainer = L.Trainer(accelerator="cpu", max_steps=2, default_root_dir=tmp_path, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(learner, data)
    assert trainer.global_step == 2
    metrics = trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/acc"} <= set(metrics) and all(torch.isfinite(v) for v in metrics.values())
    changed = {n for n, p in trained.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("classifier.") for n in changed) or learner_name == "ProtoNet"
    assert any(not n.startswith("classifier.") for n in changed)  # the body is meta-learned too (ANIL included)
    assert all(isinstance(p, torch.nn.Parameter) for p in trained.parameters())


# ----------------------------------------------------------------------------------- checkpoints
def fit_with_checkpoint(learner: L.LightningModule, tmp_path: Path) -> Path:
    data = EpisodicDataModule(image_data(84, 3), ways=WAYS, shots=1, queries=1, tasks_per_batch=2, train_episodes=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(learner, data)
    return Path(trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_a_learn2learn_backbone_is_not_pickled_and_reloads_when_given_again(tmp_path):
    learner = MAML(miniimagenet_cnn(), inner_loop=InnerLoop(lr=0.4, vectorize="loop"))
    path = fit_with_checkpoint(learner, tmp_path)
    assert "model" not in torch.load(path, weights_only=True)["hyper_parameters"]  # safe loading, nothing pickled
    with pytest.raises(TypeError, match=r"does not hold \['model'\]"):
        MAML.load_from_checkpoint(path)
    loaded = MAML.load_from_checkpoint(path, model=miniimagenet_cnn())
    assert type(loaded.model).__name__ == "CNN4"
    assert_same_state(loaded, learner)


def test_a_learn2learn_backbone_with_an_init_config_loads_with_safe_weights_only_loading(tmp_path):
    model = miniimagenet_cnn()
    model.init_config = {
        "class_path": "learn2learn.vision.models.MiniImagenetCNN",
        "init_args": {"output_size": WAYS, "hidden_size": 8},
    }
    learner = ANIL(model, head="classifier", inner_loop=InnerLoop(lr=0.4, vectorize="loop"))
    path = fit_with_checkpoint(learner, tmp_path)
    loaded = ANIL.load_from_checkpoint(path)  # weights_only=True: the backbone is rebuilt from its config
    assert type(loaded.model).__name__ == "CNN4" and loaded.head == "classifier"
    assert_same_state(loaded, learner)


def test_omniglotcnn_cannot_be_pickled_so_its_checkpoint_reloads_when_given_the_model_again(tmp_path):
    """learn2learn's ConvBlock keeps ``self.max_pool = lambda x: x`` when it does not pool (OmniglotCNN)."""
    with pytest.raises(AttributeError, match="Can't pickle local object"):
        torch.save(l2l.vision.models.OmniglotCNN(WAYS), os.devnull)
    learner = MAML(omniglot_cnn(), inner_loop=InnerLoop(lr=0.4, vectorize="loop"))
    data = EpisodicDataModule(image_data(28, 1), ways=WAYS, shots=1, queries=1, tasks_per_batch=2, train_episodes=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(learner, data)
    path = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    assert "model" not in torch.load(path, weights_only=True)["hyper_parameters"]  # Lightning dropped it, warning
    loaded = MAML.load_from_checkpoint(path, model=omniglot_cnn())
    assert_same_state(loaded, learner)


# ------------------------------------------------------ the OmniglotCNN alias (one module under two names)
def test_maml_trains_and_checkpoints_learn2learns_omniglotcnn_as_learn2learn_builds_it(tmp_path):
    torch.manual_seed(0)
    model = l2l.vision.models.OmniglotCNN(output_size=WAYS, hidden_size=8)
    model.init_config = {
        "class_path": "learn2learn.vision.models.OmniglotCNN",
        "init_args": {"output_size": WAYS, "hidden_size": 8},
    }
    learner = MAML(model, inner_loop=InnerLoop(lr=0.4, vectorize="loop"))
    data = EpisodicDataModule(image_data(28, 1), ways=WAYS, shots=1, queries=1, tasks_per_batch=2, train_episodes=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(learner, data)
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())
    assert model.base is model.features[1]
    loaded = MAML.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    assert_same_state(loaded, learner)
