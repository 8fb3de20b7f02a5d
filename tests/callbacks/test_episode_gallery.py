"""EpisodeGallery: PNG grids of a validation episode, wrong predictions marked, TensorBoard, regression plots."""

from __future__ import annotations

import matplotlib.colors
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from lightning_meta import Episode
from lightning_meta.callbacks import EpisodeGallery
from tests.helpers.callback_runs import (
    blobs_datamodule,
    image_datamodule,
    image_maml,
    image_protonet,
    quiet_trainer,
    sinusoid_datamodule,
    sinusoid_maml,
)

RED = matplotlib.colors.to_rgba("#d73027")


def png(path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


@pytest.mark.parametrize("make", [image_maml, image_protonet])
def test_one_png_per_epoch_of_the_grid_size(tmp_path, make):
    torch.manual_seed(0)
    gallery = EpisodeGallery(max_shots=2, cell_pixels=60)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[gallery])
    trainer.fit(make(), image_datamodule(eval_shots=5, eval_queries=5))
    files = sorted((tmp_path / "episode_gallery").glob("*.png"))  # no logger: beside default_root_dir
    assert [f.name for f in files] == ["epoch=0.png", "epoch=1.png"]
    for f in files:
        image = png(f)
        # (2 of 5 shots + 5 queries + 2) cells wide, (5 classes + 2) cells high
        assert image.size == (60 * 9, 60 * 7) and image.mode == "RGB"


def test_queries_are_titled_with_their_predictions_and_wrong_ones_are_marked_in_red(tmp_path):
    torch.manual_seed(0)
    dm = image_datamodule(eval_shots=2, eval_queries=3)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    task = next(iter(batch))  # validation episode 0
    logits = torch.zeros(15, 5)
    guesses = task.query_y.clone()
    guesses[[1, 7]] = (guesses[[1, 7]] + 1) % 5  # two wrong predictions
    logits[torch.arange(15), guesses] = 1.0
    figure = EpisodeGallery(max_queries=3).draw(task, logits, title="test")
    image_axes = [ax for ax in figure.axes if ax.images]
    assert len(image_axes) == 5 * (2 + 3)  # every support and query image of the 5 classes
    queries = [ax for ax in image_axes if ax.get_title()]
    order = [i for c in range(5) for i in range(15) if int(task.query_y[i]) == c]  # queries drawn class by class
    wrong = {1, 7}
    for ax, i in zip(queries, order, strict=True):
        mark = " \u2717" if i in wrong else ""
        assert ax.get_title() == f"pred {int(guesses[i])}{mark}"
        assert (ax.spines["left"].get_edgecolor() == RED) == (i in wrong)
    texts = " ".join(t.get_text() for t in figure.texts)
    assert "query accuracy 13/15 (87%)" in texts and "class 4" in texts and "support\n2 per class" in texts


def test_the_drawn_predictions_are_the_learners_on_that_episode(tmp_path):
    torch.manual_seed(0)
    gallery = EpisodeGallery(episode_index=3)
    learner = image_protonet()
    trainer = quiet_trainer(tmp_path, callbacks=[gallery])
    trainer.fit(learner, image_datamodule())
    drawn, draw = [], gallery.draw

    def spy(task, predictions, *, title):
        drawn.append((task, predictions, title))
        return draw(task, predictions, title=title)

    gallery.draw = spy
    gallery.on_train_epoch_end(trainer, learner)
    ((task, predictions, title),) = drawn
    dm = image_datamodule(eval_tasks_per_batch=1)
    dm.setup("fit")
    expected = list(dm.val_dataloader())[3]  # the validation loader's episode 3
    assert torch.equal(task.query_x, expected.query_x[0])
    learner.eval()
    with torch.no_grad():
        torch.testing.assert_close(predictions, learner(expected)[0])
    assert title == f"ProtoNet, validation episode 3, after epoch {trainer.current_epoch}"


def test_tensorboard_receives_the_picture(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = quiet_trainer(tmp_path, logger=logger, callbacks=[EpisodeGallery(cell_pixels=40)])
    trainer.fit(image_maml(), image_datamodule())
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    (picture,) = events.Images("episode_gallery")
    assert (picture.width, picture.height) == (40 * 8, 40 * (5 + 2))  # 1 shot + 3 queries + 2 < 8: the narrowest
    assert png(f"{logger.log_dir}/episode_gallery/epoch=0.png").size == (picture.width, picture.height)


def test_a_sinusoid_episode_is_drawn_as_a_labelled_plot(tmp_path):
    torch.manual_seed(0)
    gallery = EpisodeGallery(figsize=(5.0, 4.0), dpi=80)
    trainer = quiet_trainer(tmp_path, callbacks=[gallery])
    trainer.fit(sinusoid_maml(), sinusoid_datamodule())
    assert png(tmp_path / "episode_gallery" / "epoch=0.png").size == (400, 320)
    task = Episode(torch.rand(5, 1), torch.rand(5, 1), torch.rand(7, 1), torch.rand(7, 1))
    (ax,) = gallery.draw(task, torch.zeros(7, 1), title="toy").axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("input x", "target y")
    assert "5 support points, query MSE" in ax.get_title()
    assert len(ax.get_legend().get_texts()) == 3


def test_vector_inputs_are_told_plainly_that_the_gallery_does_not_apply(tmp_path):
    trainer = quiet_trainer(tmp_path, callbacks=[EpisodeGallery()])
    with pytest.warns(UserWarning, match=r"EpisodeGallery does not apply .* inputs have shape \(16,\)"):
        trainer.fit(image_protonet_on_vectors(), blobs_datamodule())
    assert not list(tmp_path.rglob("*.png"))


def image_protonet_on_vectors():
    from lightning_meta.learners import ProtoNet

    return ProtoNet(torch.nn.Linear(16, 8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"episode_index": -1}, r"EpisodeGallery: episode_index must be a non-negative integer, got -1"),
     ({"max_classes": 0}, r"EpisodeGallery: max_classes must be a positive integer, got 0"),
     ({"max_queries": "5"}, r"max_queries must be a positive integer, got '5'"),
     ({"cell_pixels": 10}, r"cell_pixels must be at least 32 \(room for a title\), got 10"),
     ({"cmap": "no-such-map"}, r"cmap must name a matplotlib colour map \(e.g. 'gray'\), got 'no-such-map'")],
)  # fmt: skip
def test_episode_gallery_refuses_bad_arguments_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EpisodeGallery(**kwargs)


def test_without_matplotlib_the_gallery_fails_early_with_the_pip_extra(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name))
    with pytest.raises(ImportError, match=r"EpisodeGallery draws its figures with matplotlib.*lightning-meta\[plots\]"):
        EpisodeGallery()
