"""Your own model, safely: any backbone resumes and reloads, mistakes fail early and say what to change.

Issue 12. Everything here uses models the way users write them (a plain ``nn.Sequential``, a frozen layer, native
BatchNorm, a head of the wrong size) rather than the package's own backbones, which record their config.
"""

from __future__ import annotations

import math
import zipfile

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from lightning_meta import Episode, InnerLoop
from lightning_meta.callbacks import SkipNonFiniteBatches
from lightning_meta.data import EpisodicDataModule, Sinusoid
from lightning_meta.learners import ANIL, MAML, MetaSGD, ProtoNet
from lightning_meta.metrics import per_episode_accuracy
from lightning_meta.models import MLP
from lightning_meta.nonfinite import NonFiniteError
from tests.helpers.synthetic import blobs
from tests.helpers.trainers import quiet_trainer
from tests.helpers.user_models import WideSineMAML, sequential_regressor


class StepsRun(Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.count += 1


def sinusoid_data(**kwargs) -> EpisodicDataModule:
    defaults = dict(shots=5, queries=5, tasks_per_batch=4, train_episodes=16, eval_episodes=8)
    return EpisodicDataModule(Sinusoid(), Sinusoid(), Sinusoid(), **{**defaults, **kwargs})


def blob_data(**kwargs) -> EpisodicDataModule:
    data = blobs(6, 12, seed=0, dim=8)
    defaults = dict(ways=3, shots=2, queries=3, tasks_per_batch=2, train_episodes=8, eval_episodes=4)
    return EpisodicDataModule(data, data, data, **{**defaults, **kwargs})


# ------------------------------------------------------------------------------------------------ checkpoints
def test_plain_sequential_backbone_resumes_and_reloads_with_weights_only_loading(tmp_path):
    torch.manual_seed(0)
    learner = MAML(sequential_regressor(), inner_loop=InnerLoop(lr=0.05, steps=2, vectorize="vmap"), lr=0.01)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2, save_top_k=-1)
    quiet_trainer(max_steps=4, callbacks=[checkpoint], limit_val_batches=0).fit(learner, sinusoid_data())
    raw = torch.load(tmp_path / "last.ckpt", weights_only=True)  # no pickled module inside
    assert "model" not in raw["hyper_parameters"] and raw["learner_class"] == "lightning_meta.learners.maml.MAML"

    # load_from_checkpoint asks for the module by name, then gives the same predictions
    with pytest.raises(TypeError, match=r"does not hold \['model'\].*MAML.load_from_checkpoint\(path, model=\.\.\.\)"):
        MAML.load_from_checkpoint(tmp_path / "last.ckpt")
    reloaded = MAML.load_from_checkpoint(tmp_path / "last.ckpt", model=sequential_regressor())
    x = torch.linspace(-5, 5, 7).unsqueeze(1)
    torch.testing.assert_close(reloaded.model(x), learner.model(x), rtol=0, atol=0)
    assert reloaded.inner_loop.lr == 0.05 and reloaded.inner_loop.vectorize == "vmap"

    # resume, by "last" (step 4) and by path (step 2), into a learner built the same way
    for ckpt_path, start in (("last", 4), (str(tmp_path / "epoch=0-step=2.ckpt"), 2)):
        resumed = MAML(sequential_regressor(), inner_loop=InnerLoop(lr=0.05, steps=2, vectorize="vmap"), lr=0.01)
        again = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2, save_top_k=-1)
        steps = StepsRun()
        trainer = quiet_trainer(max_steps=6, callbacks=[again, steps], limit_val_batches=0)
        trainer.fit(resumed, sinusoid_data(), ckpt_path=ckpt_path)
        assert trainer.global_step == 6 and steps.count == 6 - start


def test_a_user_subclass_with_its_own_module_reloads_from_its_own_arguments(tmp_path):
    torch.manual_seed(0)
    learner = WideSineMAML(width=12, dropout=0.1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    quiet_trainer(max_steps=2, callbacks=[checkpoint], limit_val_batches=0).fit(learner, sinusoid_data())
    assert dict(learner.hparams) == {"_class_path": "tests.helpers.user_models.WideSineMAML", "width": 12,
                                     "dropout": 0.1, "inner_lr": 0.05, "lr": 0.01}  # fmt: skip
    reloaded = WideSineMAML.load_from_checkpoint(tmp_path / "last.ckpt")  # rebuilt from its own arguments
    reloaded.eval(), learner.eval()
    x = torch.linspace(-5, 5, 7).unsqueeze(1)
    torch.testing.assert_close(reloaded.model(x), learner.model(x), rtol=0, atol=0)


def test_loading_another_learners_checkpoint_names_the_class_it_holds(tmp_path):
    learner = ProtoNet(MLP(in_features=8, hidden=(8,), out_features=4))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    quiet_trainer(max_steps=1, callbacks=[checkpoint], limit_val_batches=0).fit(learner, blob_data())
    with pytest.raises(TypeError, match=r"holds a ProtoNet learner .*load it with ProtoNet.load_from_checkpoint"):
        MAML.load_from_checkpoint(tmp_path / "last.ckpt")


def test_lightning_private_names_are_not_imported():
    import lightning_meta.learners.base as base

    source = open(base.__file__).read()
    for private in ("_given_hyperparameters", "_restricted_classmethod", "_given_hyperparameters_context"):
        assert private not in source


# ------------------------------------------------------------------------------------------------ non-finite
class NaNAt(Dataset):
    """Blobs with one NaN input value at a chosen index."""

    def __init__(self, index: int) -> None:
        self.data = blobs(6, 12, seed=0, dim=8)
        self.targets = self.data.tensors[1]
        self.index = index

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        x, y = self.data[i]
        if i == self.index:
            x = x.clone()
            x[0] = math.nan
        return x, y


def test_a_nan_input_stops_training_naming_the_step_and_the_task():
    data = EpisodicDataModule(NaNAt(0), ways=6, shots=2, queries=3, tasks_per_batch=2, train_episodes=8)
    learner = MAML(MLP(in_features=8, hidden=(8,), out_features=6), inner_loop=InnerLoop(lr=0.1, vectorize="loop"))
    with pytest.raises(NonFiniteError) as error:  # 6-way over 6 classes: every task holds the NaN example
        quiet_trainer(max_steps=3).fit(learner, data)
    message = str(error.value)
    assert "meta-loss is not finite at global step 0 (epoch 0)" in message
    assert "episode ids [0, 1]" in message
    assert (
        "non-finite support inputs in tasks [0, 1]" in message or "non-finite query inputs in tasks [0, 1]" in message
    )
    assert "SkipNonFiniteBatches" in message


def test_a_diverging_inner_loop_stops_training_with_the_learning_rates_named():
    torch.manual_seed(0)
    learner = MAML(MLP(), inner_loop=InnerLoop(lr=100.0, steps=5, vectorize="vmap"))
    with pytest.raises(NonFiniteError, match=r"the meta-loss is not finite .*inner lr=100, inner steps=5, lr=0.001"):
        quiet_trainer(max_steps=20, limit_val_batches=0).fit(learner, sinusoid_data())
    assert learner.global_step < 20


def test_skip_non_finite_batches_skips_them_and_keeps_the_weights_finite():
    data = EpisodicDataModule(NaNAt(5), ways=3, shots=2, queries=3, tasks_per_batch=1, train_episodes=12)
    torch.manual_seed(0)
    learner = ProtoNet(MLP(in_features=8, hidden=(8,), out_features=4), lr=0.01)
    with pytest.warns(UserWarning, match="Skipped meta-batch"):
        trainer = quiet_trainer(max_epochs=1, callbacks=[SkipNonFiniteBatches()])
        trainer.fit(learner, data)
    assert 0 < learner.skipped_batches < 12
    adam = trainer.optimizers[0]  # no optimizer update for a skipped batch (Lightning still counts the step)
    assert {int(adam.state[p]["step"]) for p in learner.parameters()} == {12 - learner.skipped_batches}
    assert all(bool(p.isfinite().all()) for p in learner.parameters())


def test_non_finite_meta_gradient_is_caught_even_when_the_loss_is_finite():
    class SqrtAtZero(nn.Module):  # finite output, NaN gradient: d sqrt(w^2)/dw at w = 0 is 0/0
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(()))
            self.body = nn.Linear(1, 4)
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.body(x) + torch.sqrt(self.scale**2))

    # ANIL adapts the head only, so the inner loop stays finite and only the outer gradient of `scale` is NaN
    learner = ANIL(SqrtAtZero(), head="head", inner_loop=InnerLoop(lr=0.01, vectorize="vmap"))
    with pytest.raises(NonFiniteError, match="meta-gradient is not finite"):
        quiet_trainer(max_steps=2, limit_val_batches=0).fit(learner, sinusoid_data())


def test_nan_predictions_count_as_wrong_and_nan_losses_propagate():
    logits = torch.full((2, 3, 3), math.nan)
    logits[1] = torch.eye(3)
    accuracy = per_episode_accuracy(logits, torch.arange(3).repeat(2, 1))
    assert accuracy.tolist() == [0.0, 1.0]  # argmax of NaN logits would have picked class 0: right 1 time in 3
    learner = ProtoNet(MLP(in_features=8, hidden=(8,), out_features=4))
    with torch.no_grad():
        for p in learner.parameters():
            p.fill_(math.nan)
    (metrics,) = quiet_trainer().validate(learner, blob_data(), verbose=False)
    assert metrics["val/acc"] == 0.0
    assert math.isnan(metrics["val/loss"])


# ------------------------------------------------------------------------------------------------ frozen layers
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("learner_class", [MAML, MetaSGD])
def test_frozen_parameters_are_never_adapted(strategy, learner_class):
    torch.manual_seed(0)
    model = MLP(hidden=(8, 8))
    model.body[0].requires_grad_(False)  # a frozen "pretrained" first layer
    learner = learner_class(model, inner_loop=InnerLoop(lr=0.1, steps=3, vectorize=strategy))
    x = torch.randn(2, 5, 1)
    adapted = learner.adapt_params(Episode(x, torch.sin(x), x, torch.sin(x), batched=True), steps=3, first_order=False)
    assert adapted["body.0.weight"] is model.body[0].weight and adapted["body.0.bias"] is model.body[0].bias
    assert adapted["body.2.weight"].shape == (2, 8, 8)  # the others are adapted per task
    assert not torch.equal(adapted["body.2.weight"][0], model.body[2].weight)


def test_anil_with_a_frozen_head_has_nothing_to_adapt_and_says_so():
    model = MLP(hidden=(8,))
    model.head.requires_grad_(False)
    learner = ANIL(model, inner_loop=InnerLoop(vectorize="loop"))
    x = torch.randn(1, 5, 1)
    with pytest.raises(ValueError, match="no parameter to adapt"):
        learner.adapt_params(Episode(x, x, x, x, batched=True), steps=1, first_order=True)


# ------------------------------------------------------------------------------------------------ mismatches
def test_vmap_with_native_batch_norm_is_refused_with_the_reason_and_the_alternatives():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                          nn.LazyLinear(3))  # fmt: skip
    with pytest.raises(
        ValueError, match=r"vectorize='vmap' with PyTorch's native BatchNorm.*vectorize='loop'.*BatchStatNorm2d"
    ):
        MAML(model, inner_loop=InnerLoop(vectorize="vmap"))
    MAML(model, inner_loop=InnerLoop(vectorize="loop"))  # fine
    MAML(model, inner_loop=InnerLoop(vectorize="auto"))  # picks the loop


@pytest.mark.parametrize("outputs", [5, 2])
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_a_head_with_the_wrong_number_of_outputs_fails_at_the_first_batch(outputs, strategy):
    learner = MAML(MLP(in_features=8, hidden=(8,), out_features=outputs), inner_loop=InnerLoop(vectorize=strategy))
    with pytest.raises(ValueError, match=rf"outputs of shape \({outputs},\) per example but the episodes are 3-way"):
        quiet_trainer(max_steps=1, num_sanity_val_steps=0).fit(learner, blob_data())
    assert learner.global_step == 0


def test_a_regression_episode_into_a_classifier_head_fails_instead_of_broadcasting():
    learner = MAML(MLP(hidden=(8,), out_features=5), inner_loop=InnerLoop(vectorize="vmap"))
    with pytest.raises(ValueError, match=r"outputs of shape \(5,\) .* targets have shape \(1,\)"):
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(learner, sinusoid_data())


def test_eval_ways_other_than_ways_fails_at_setup_for_a_gradient_learner():
    learner = MAML(MLP(in_features=8, hidden=(8,), out_features=3))
    with pytest.raises(ValueError, match="trains 3-way and evaluates eval_ways=5"):
        quiet_trainer(max_steps=1).fit(learner, blob_data(eval_ways=5))


def test_one_way_tasks_are_refused_at_setup():
    with pytest.raises(ValueError, match=r"ways=1: a task needs at least 2 classes"):
        quiet_trainer(max_steps=1).fit(ProtoNet(MLP(in_features=8, out_features=4)), blob_data(ways=1))


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_infinite_learning_rates_are_refused(value):
    with pytest.raises(ValueError, match=rf"MAML: lr must be a positive finite number, got {value}"):
        MAML(MLP(), lr=value)
    with pytest.raises(ValueError, match=rf"InnerLoop: lr must be a positive finite number, got {value}"):
        MAML(MLP(), inner_loop=InnerLoop(lr=value))


class Items(Dataset):
    def __init__(self, make) -> None:
        self.make = make
        self.targets = torch.arange(4).repeat_interleave(5)

    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int):
        return self.make(i, int(self.targets[i]))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda i, y: {"image": torch.zeros(3), "label": y}, r"item 0 is a dict with keys \['image', 'label'\]"),
        (lambda i, y: (torch.zeros(3, 8 if y < 2 else 9, 8), y), r"different shapes: \(3, 8, 8\) .*Resize"),
    ],
)
def test_dataset_items_that_cannot_make_episodes_fail_at_setup(make, message):
    data = EpisodicDataModule(Items(make), ways=2, shots=2, queries=2)
    with pytest.raises(ValueError, match=message):
        data.setup("fit")


def test_an_image_folder_without_to_tensor_fails_at_setup_naming_the_transform(tmp_path):
    from PIL import Image
    from torchvision.datasets import ImageFolder

    for c in range(2):
        (tmp_path / f"class{c}").mkdir()
        for i in range(4):
            Image.new("L", (8, 8), color=i * 40).save(tmp_path / f"class{c}" / f"{i}.png")
    data = EpisodicDataModule(ImageFolder(tmp_path), ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"PIL.Image.Image.*ToTensor\(\)"):
        data.setup("fit")


def test_a_cut_short_omniglot_zip_names_the_file(tmp_path):
    from lightning_meta.data.omniglot import load_omniglot_images

    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as archive:
        archive.writestr("images_background/Alpha/character01/0001_01.png", b"x" * 5000)
    cut = tmp_path / "images_background.zip"
    cut.write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"images_background.zip \(2,000 bytes\) is not a readable zip file.*download"):
        load_omniglot_images(cut, cache_dir=tmp_path / "cache")


def test_tensor_dataset_of_images_still_works():  # the checks above must not refuse ordinary data
    data = EpisodicDataModule(TensorDataset(torch.zeros(20, 1, 4, 4), torch.arange(4).repeat_interleave(5)),
                              ways=2, shots=2, queries=2, tasks_per_batch=3)  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch.support_x.shape == (3, 4, 1, 4, 4) and batch.query_y.shape == (3, 4)
