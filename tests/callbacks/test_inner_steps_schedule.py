"""InnerStepsSchedule: the inner steps of training follow the milestones; exact on resume."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_meta import InnerLoop
from lightning_meta.callbacks import FirstOrderAnnealing, InnerStepsSchedule
from lightning_meta.learners import MAML, ProtoNet
from lightning_meta.models import MLP
from tests.helpers.callback_runs import (
    fit_interrupted_and_resumed,
    logged,
    quiet_trainer,
    read_metrics,
    sinusoid_datamodule,
    sinusoid_maml,
)


class StepsSpy(MAML):
    """MAML that records the number of steps of every training adaptation (and of evaluation ones apart)."""

    def adapt_params(self, support, *, steps, first_order, return_all=False):
        (self.train_steps if self.training else self.eval_steps).append(steps)
        return super().adapt_params(support, steps=steps, first_order=first_order, return_all=return_all)


def test_training_takes_the_scheduled_number_of_inner_steps_and_evaluation_keeps_its_own(tmp_path):
    torch.manual_seed(0)
    learner = StepsSpy(MLP(hidden=(8,)), inner_loop=InnerLoop(steps=5, eval_steps=2, vectorize="vmap"))
    learner.train_steps, learner.eval_steps = [], []
    logger = CSVLogger(tmp_path)
    schedule = InnerStepsSchedule(milestones={0: 1, 1: 3, 2: 4})
    trainer = quiet_trainer(tmp_path, max_epochs=3, logger=logger, callbacks=[schedule], num_sanity_val_steps=0)
    trainer.fit(learner, sinusoid_datamodule())
    assert learner.train_steps == [1] * 4 + [3] * 4 + [4] * 4
    assert set(learner.eval_steps) == {2}
    assert logged(read_metrics(logger.log_dir), "schedule/inner_steps") == [(0, 1.0), (1, 3.0), (2, 4.0)]


@pytest.mark.parametrize("stop_step", [5, 10])  # mid epoch 1, mid epoch 2
def test_a_resumed_run_follows_the_schedule_exactly_as_the_uninterrupted_one(tmp_path, stop_step):
    def callbacks() -> list:
        return [InnerStepsSchedule(milestones={0: 1, 2: 3}), FirstOrderAnnealing(second_order_epoch=1)]

    full, resumed, full_weights, resumed_weights = fit_interrupted_and_resumed(tmp_path, callbacks, stop_step=stop_step)
    assert [(order, steps) for _, order, steps in full] == [(True, 1)] * 4 + [(False, 1)] * 4 + [(False, 3)] * 8
    assert resumed == full
    for name, value in full_weights.items():
        assert torch.equal(resumed_weights[name], value), name


def test_a_learner_without_inner_steps_is_refused_by_name(tmp_path):
    from tests.helpers.callback_runs import image_datamodule

    trainer = quiet_trainer(tmp_path, callbacks=[InnerStepsSchedule(milestones={0: 2})])
    with pytest.raises(
        ValueError, match=r"InnerStepsSchedule sets the learner's inner_loop.steps .*ProtoNet has neither"
    ):
        trainer.fit(ProtoNet(torch.nn.Flatten()), image_datamodule())


def test_more_steps_than_maml_plus_plus_has_learned_rates_for_is_refused(tmp_path):
    learner = sinusoid_maml(steps=2, learn_inner_lr=True)
    trainer = quiet_trainer(tmp_path, callbacks=[InnerStepsSchedule(milestones={0: 1, 1: 3})])
    with pytest.raises(ValueError, match=r"learned rates for 2 inner steps, but milestones ask for up to 3"):
        trainer.fit(learner, sinusoid_datamodule())


@pytest.mark.parametrize(
    ("milestones", "match"),
    [({}, r"milestones must be a non-empty mapping \{epoch: inner steps\}, got \{\}"),
     ([(0, 1)], r"milestones must be a non-empty mapping"),
     ({5: 2}, r"milestones must contain epoch 0 \(the inner steps of the first epochs\), got \{5: 2\}"),
     ({0: 1, -1: 2}, r"milestone epochs must be non-negative integers, got -1"),
     ({0: 0}, r"inner steps must be positive integers, got 0 for epoch 0"),
     ({0: 1, 3: 2.5}, r"inner steps must be positive integers, got 2.5 for epoch 3")],
)  # fmt: skip
def test_inner_steps_schedule_refuses_bad_milestones_naming_them(milestones, match):
    with pytest.raises(ValueError, match=match):
        InnerStepsSchedule(milestones=milestones)
