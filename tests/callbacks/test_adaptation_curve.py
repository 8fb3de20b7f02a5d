"""AdaptationCurve: values after each number of steps (or shots) against hand-written loops, PNGs, TensorBoard."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta import Episode
from lightning_meta.callbacks import AdaptationCurve
from lightning_meta.callbacks.adaptation_curve import first_shots
from lightning_meta.data.sampler import episode_generator
from lightning_meta.learners import MetaLearner
from lightning_meta.rl import GaussianMLPPolicy, MAMLPolicyGradient, Navigation2D, TaskDataModule
from tests.helpers.callback_runs import (
    first_k_per_class,
    image_datamodule,
    image_maml,
    image_protonet,
    logged,
    quiet_trainer,
    read_metrics,
    reference_step_scores,
    sinusoid_datamodule,
    sinusoid_maml,
)
from tests.helpers.random_state import unchanged_random_state


def png(path) -> Image.Image:
    image = Image.open(path)
    image.load()  # decodes the whole file
    return image


def test_gradient_learner_logs_query_accuracy_after_each_number_of_steps_and_draws_a_png_per_epoch(tmp_path):
    torch.manual_seed(0)
    learner = image_maml(eval_steps=1)
    logger = CSVLogger(tmp_path)
    curve = AdaptationCurve(steps=(0, 1, 3), episodes=10)
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[curve])
    trainer.fit(learner, image_datamodule(eval_episodes=10))

    for epoch in (0, 1):
        image = png(tmp_path / "lightning_logs" / "version_0" / "adaptation_curve" / f"epoch={epoch}.png")
        assert image.size == (640, 480) and image.mode == "RGB"
    rows = read_metrics(logger.log_dir)
    for k in (0, 1, 3):
        assert [epoch for epoch, _ in logged(rows, f"adaptation/acc_{k}_steps")] == [0, 1]
    dm = image_datamodule(eval_episodes=10)
    dm.setup("fit")
    expected = reference_step_scores(learner, dm.val_dataloader(), (0, 1, 3))  # one inner loop per k, by hand
    for k, value in expected.items():
        assert logged(rows, f"adaptation/acc_{k}_steps")[-1][1] == pytest.approx(value, abs=1e-6), k
    # one inner step is what validation does (eval_inner_steps=1) on the same episodes
    assert logged(rows, "adaptation/acc_1_steps")[-1][1] == pytest.approx(logged(rows, "val/acc")[-1][1], abs=1e-6)
    assert curve.history.keys() == {0, 1}


def test_regression_logs_the_query_mse_the_learner_reports(tmp_path):
    torch.manual_seed(0)
    learner = sinusoid_maml()
    curve = AdaptationCurve(steps=(0, 2, 5), episodes=8, plot=False)
    trainer = quiet_trainer(tmp_path, callbacks=[curve], limit_val_batches=0)
    trainer.fit(learner, sinusoid_datamodule(eval_episodes=8))
    dm = sinusoid_datamodule(eval_episodes=8)
    dm.setup("fit")
    expected = learner.adaptation_curve(dm.val_dataloader(), steps=[0, 2, 5])  # the library's own mean query MSE
    for k, value in expected.items():
        assert float(trainer.callback_metrics[f"adaptation/mse_{k}_steps"]) == pytest.approx(value, rel=1e-5)
    assert not list(tmp_path.rglob("*.png"))  # plot=False


def test_metric_learner_reports_accuracy_against_shots_on_nested_supports(tmp_path):
    torch.manual_seed(0)
    learner = image_protonet()
    logger = CSVLogger(tmp_path)
    curve = AdaptationCurve(shots=(1, 5, 10), episodes=6)
    trainer = quiet_trainer(tmp_path, logger=logger, callbacks=[curve])
    trainer.fit(learner, image_datamodule(eval_shots=2, eval_queries=4))
    assert png(tmp_path / "lightning_logs" / "version_0" / "adaptation_curve" / "epoch=0.png").size == (640, 480)

    # reference: the same fixed 10-shot validation episodes, the first k examples of each class kept by a loop
    from lightning_meta.data import EpisodeDataset

    dm = image_datamodule(eval_shots=2, eval_queries=4)
    dataset = EpisodeDataset(dm.tasks("val"), stage="val", seed=dm.seed, ways=5, shots=10, queries=4)
    learner.eval()
    rows = read_metrics(logger.log_dir)
    for k in (1, 5, 10):
        accuracies = []
        with torch.no_grad():
            for index in range(6):
                task = first_k_per_class(dataset.episode(0, index), k)
                logits = learner(Episode.stack([task]))[0]
                accuracies.append(float((logits.argmax(-1) == task.query_y).double().mean()))
        assert logged(rows, f"adaptation/acc_{k}_shots")[-1][1] == pytest.approx(sum(accuracies) / 6, abs=1e-6)


def test_shots_the_validation_classes_cannot_supply_are_dropped_with_a_warning(tmp_path):
    curve = AdaptationCurve(shots=(1, 5, 10, 17), episodes=4, plot=False)
    trainer = quiet_trainer(tmp_path, callbacks=[curve])
    with pytest.warns(UserWarning, match=r"shots \[17\] dropped"):
        trainer.fit(image_protonet(), image_datamodule(eval_queries=4))  # 20 images per class: 17 + 4 > 20
    assert {k for k in trainer.callback_metrics if k.startswith("adaptation/")} == {
        "adaptation/acc_1_shots", "adaptation/acc_5_shots", "adaptation/acc_10_shots"}  # fmt: skip


def test_first_shots_keeps_the_first_examples_of_each_class_whatever_the_order():
    support_y = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 0, 1, 1, 0]])
    support_x = torch.arange(12.0).reshape(2, 6, 1)
    batch = Episode(support_x, support_y, torch.zeros(2, 1, 1), torch.zeros(2, 1, dtype=torch.long), ways=2,
                    batched=True)  # fmt: skip
    two = first_shots(batch, 2)
    assert two.support_y.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]
    assert two.support_x.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0]


class MeanOfSupport(MetaLearner):
    """Predicts the mean support target plus a learned offset: a regression learner without gradient steps."""

    def __init__(self) -> None:
        super().__init__(lr=0.1)
        self.offset = nn.Parameter(torch.zeros(1))

    @override
    def adapt(self, support: Episode) -> Tensor:
        return support.support_y.mean(1, keepdim=True)

    @override
    def predict(self, query_x: Tensor, state: Tensor) -> Tensor:
        return state.expand(-1, query_x.shape[1], -1) + self.offset


def test_a_metric_learner_on_regression_tasks_is_told_plainly_that_it_does_not_apply(tmp_path):
    trainer = quiet_trainer(tmp_path, callbacks=[AdaptationCurve(episodes=4)])
    with pytest.warns(UserWarning, match="AdaptationCurve does not apply to MeanOfSupport on regression tasks"):
        trainer.fit(MeanOfSupport(), sinusoid_datamodule())
    assert not [k for k in trainer.callback_metrics if k.startswith("adaptation/")]
    assert not list(tmp_path.rglob("*.png"))


def test_tensorboard_receives_the_values_and_the_figure(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, logger=logger, callbacks=[AdaptationCurve(steps=(0, 2), episodes=4)]
    )
    trainer.fit(image_maml(), image_datamodule())
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"adaptation/acc_0_steps", "adaptation/acc_2_steps"} <= set(events.Tags()["scalars"])
    images = events.Images("adaptation_curve")
    assert len(images) == 2 and (images[0].width, images[0].height) == (640, 480)
    assert float(trainer.callback_metrics["adaptation/acc_2_steps"]) == pytest.approx(
        events.Scalars("adaptation/acc_2_steps")[-1].value, abs=1e-6
    )


def test_the_history_of_curves_is_restored_when_resuming(tmp_path):
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = AdaptationCurve(steps=(0, 1), episodes=4, plot=False)
    learner = image_maml()
    quiet_trainer(tmp_path, callbacks=[first, checkpoint], enable_checkpointing=True).fit(learner, image_datamodule())
    resumed = AdaptationCurve(steps=(0, 1), episodes=4, plot=False)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[resumed])
    # the backbone is a plain nn.Sequential, pickled into the checkpoint: trusted here
    trainer.fit(image_maml(), image_datamodule(), ckpt_path=tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert resumed.history.keys() == {0, 1}
    assert resumed.history[0] == first.history[0]


def test_the_curve_leaves_the_random_state_and_the_modes_alone(tmp_path):
    torch.manual_seed(0)
    learner = image_maml(dropout=0.3)
    curve = AdaptationCurve(steps=(0, 1), episodes=4, plot=False)
    trainer = quiet_trainer(tmp_path, callbacks=[curve])
    trainer.fit(learner, image_datamodule())
    learner.train()
    with unchanged_random_state():
        curve.evaluate(trainer, learner)
    assert all(m.training for m in learner.modules())


def test_the_figure_labels_its_axes_and_names_the_setting(tmp_path):
    torch.manual_seed(0)
    curve = AdaptationCurve(steps=(0, 1), episodes=4)
    trainer = quiet_trainer(tmp_path, callbacks=[curve])
    trainer.fit(image_maml(), image_datamodule())
    figure = curve.draw("MAML", 0, {0: torch.tensor([0.2, 0.4]), 1: torch.tensor([0.6, 0.8])})
    (ax,) = figure.axes
    assert ax.get_xlabel() == "inner gradient steps on the support set"
    assert ax.get_ylabel() == "query accuracy (%)"
    assert "5-way 1-shot" in ax.get_title() and "2 validation tasks" in ax.get_title()
    assert [t.get_text() for t in ax.texts] == ["30.0%", "70.0%"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"steps": ()}, r"AdaptationCurve: steps must be a non-empty sequence of non-negative integers, got \(\)"),
     ({"steps": (0, -1)}, r"steps must be a non-empty sequence of non-negative integers, got \(0, -1\)"),
     ({"shots": (0, 5)}, r"shots must be a non-empty sequence of positive integers, got \(0, 5\)"),
     ({"episodes": 0}, r"AdaptationCurve: episodes must be a positive integer, got 0"),
     ({"every_n_epochs": True}, r"every_n_epochs must be a positive integer, got True"),
     ({"figsize": (6.4,)}, r"figsize must be two positive numbers \(inches\), got \(6.4,\)"),
     ({"dpi": 0}, r"dpi must be a positive integer, got 0")],
)  # fmt: skip
def test_adaptation_curve_refuses_bad_arguments_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptationCurve(**kwargs)


def test_adaptation_curve_needs_validation_episodes(tmp_path):
    dm = image_datamodule()
    dm.data["val"] = None
    with pytest.raises(ValueError, match=r"AdaptationCurve needs val episodes: pass val=\.\.\. to the Episodic"):
        quiet_trainer(tmp_path, callbacks=[AdaptationCurve()]).fit(image_maml(), dm)


def test_without_matplotlib_plotting_fails_early_with_the_pip_extra_and_logging_alone_works(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name))
    with pytest.raises(
        ImportError, match=r"AdaptationCurve draws its figures with matplotlib.*lightning-meta\[plots\]"
    ):
        AdaptationCurve()
    assert AdaptationCurve(plot=False).plot is False


# ---------------------------------------------------------------------------------------------------- meta-RL
def rl_learner() -> MAMLPolicyGradient:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(observation_size=2, action_size=2, hidden=[16])
    return MAMLPolicyGradient(policy, inner_lr=0.1, trajectories_per_task=3, eval_inner_steps=2, lr=0.01)


def rl_datamodule() -> TaskDataModule:
    return TaskDataModule(Navigation2D(horizon=10), tasks_per_batch=2, eval_tasks_per_batch=3, train_tasks=4,
                          eval_tasks=5, seed=3)  # fmt: skip


@torch.no_grad()
def hand_written_returns(policy: GaussianMLPPolicy, family: Navigation2D, batch, copies: int) -> Tensor:
    """Each task's mean return before adaptation, one Gymnasium environment and one episode at a time.

    The noise and reset seeds follow the rollouts' documented seeding: each task's generator
    ``episode_generator(task seed, "rollout", 0, 0)`` draws the Gaussian noise ``[horizon, copies, action]``, then the
    reset seeds; the action is ``mean + exp(log_std) * noise``.
    """
    returns = []
    for i in range(batch.n_tasks):
        generator = episode_generator(int(batch.seeds[i]), "rollout", 0, 0)
        noise = torch.randn((family.horizon, copies, 2), generator=generator)
        resets = torch.randint(0, 2**31 - 1, (copies,), generator=generator)
        total = 0.0
        for j in range(copies):
            env = family.make_env()
            family.set_task(env, batch.task_params(i))
            observation, _ = env.reset(seed=int(resets[j]))
            for t in range(family.horizon):
                mean = policy.mean(torch.as_tensor(observation))
                action = mean + policy.log_std.exp() * noise[t, j]
                observation, reward, terminated, truncated, _ = env.step(action.numpy())
                total += float(reward)
                if terminated or truncated:
                    break
        returns.append(total / copies)
    return torch.tensor(returns, dtype=torch.float64)


def test_rl_learner_logs_the_return_after_each_number_of_steps_as_its_own_validation_does(tmp_path):
    learner, logger = rl_learner(), CSVLogger(tmp_path)
    curve = AdaptationCurve(steps=(0, 1, 2), episodes=5)
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[curve], limit_val_batches=0)
    trainer.fit(learner, rl_datamodule())

    for epoch in (0, 1):
        image = png(tmp_path / "lightning_logs" / "version_0" / "adaptation_curve" / f"epoch={epoch}.png")
        assert image.size == (640, 480) and image.mode == "RGB"
    rows = read_metrics(logger.log_dir)
    for k in (0, 1, 2):
        assert [epoch for epoch, _ in logged(rows, f"adaptation/return_{k}_steps")] == [0, 1]
    # the learner's own evaluation (Lightning's validation loop over the datamodule's fixed tasks) is the reference
    (validation,) = quiet_trainer(tmp_path, logger=False).validate(learner, rl_datamodule(), verbose=False)
    for k in (0, 1, 2):
        expected = validation[f"val/return_{k}_steps"]
        assert logged(rows, f"adaptation/return_{k}_steps")[-1][1] == pytest.approx(expected, rel=1e-5), k
        assert curve.history[1][k] == pytest.approx(expected, rel=1e-5), k
    assert curve.history[0] != curve.history[1]  # the second epoch's policy differs

    # before adaptation, each task's value equals an independent rollout loop (one env, one episode at a time)
    values = curve.evaluate(trainer, learner)
    assert values.keys() == {0, 1, 2} and values[0].shape == (5,)
    dm = rl_datamodule()
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    expected_before = torch.cat([hand_written_returns(learner.policy, dm.family, b, copies=3) for b in batches])
    torch.testing.assert_close(values[0], expected_before, rtol=1e-5, atol=1e-5)


def test_rl_curve_leaves_training_the_same_and_the_random_state_alone(tmp_path):
    weights = []
    for callbacks in ([], [AdaptationCurve(steps=(0, 1), episodes=3, plot=False)]):
        learner = rl_learner()
        trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=callbacks, limit_val_batches=0)
        trainer.fit(learner, rl_datamodule())
        weights.append({name: p.detach().clone() for name, p in learner.named_parameters()})
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    learner.train()
    with unchanged_random_state():
        callbacks[0].evaluate(trainer, learner)
    assert all(m.training for m in learner.modules())


def test_rl_figure_labels_the_return_and_the_setting(tmp_path):
    curve = AdaptationCurve(steps=(0, 1), episodes=2)
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[curve]).fit(rl_learner(), rl_datamodule())
    figure = curve.draw("MAMLPolicyGradient", 0, {0: torch.tensor([-30.0, -20.0]), 1: torch.tensor([-12.0, -8.0])})
    (ax,) = figure.axes
    assert ax.get_xlabel() == "inner policy-gradient steps (10-step episodes, 3 per task and step)"
    assert ax.get_ylabel() == "mean return"
    assert "2 validation tasks (Navigation2D)" in ax.get_title()
    assert [t.get_text() for t in ax.texts] == ["-25.0", "-10.0"]


def test_rl_learner_and_task_datamodule_must_come_together(tmp_path):
    curve = AdaptationCurve(steps=(0, 1), episodes=2, plot=False)
    with pytest.raises(ValueError, match=r"MAMLPolicyGradient is a meta-RL learner .*, got EpisodicDataModule\."):
        quiet_trainer(tmp_path, callbacks=[curve]).fit(rl_learner(), sinusoid_datamodule())
    with pytest.raises(ValueError, match=r"needs a learner with returns_after\(batch, steps\) .* got MAML"):
        quiet_trainer(tmp_path, callbacks=[curve]).fit(sinusoid_maml(), rl_datamodule())
