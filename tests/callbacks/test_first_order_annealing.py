"""FirstOrderAnnealing: first order before second_order_epoch, second order from it; exact on resume."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_meta import InnerLoop
from lightning_meta.callbacks import FirstOrderAnnealing
from lightning_meta.learners import MAML, Reptile
from lightning_meta.models import MLP
from tests.helpers.callback_runs import (
    ScheduleRecorder,
    fit_interrupted_and_resumed,
    logged,
    quiet_trainer,
    read_metrics,
    sinusoid_datamodule,
    sinusoid_maml,
)


class OrderSpy(MAML):
    """MAML that records the first_order argument of every training adaptation."""

    def adapt_params(self, support, *, steps, first_order, return_all=False):
        if self.training:
            self.orders.append(first_order)
        return super().adapt_params(support, steps=steps, first_order=first_order, return_all=return_all)


def test_training_adapts_first_order_before_the_switch_and_second_order_after_it(tmp_path):
    torch.manual_seed(0)
    learner = OrderSpy(MLP(hidden=(8,)), inner_loop=InnerLoop(vectorize="vmap"))
    learner.orders = []
    logger = CSVLogger(tmp_path)
    recorder = ScheduleRecorder()
    trainer = quiet_trainer(tmp_path, max_epochs=3, logger=logger,
                            callbacks=[FirstOrderAnnealing(second_order_epoch=2), recorder])  # fmt: skip
    trainer.fit(learner, sinusoid_datamodule())
    assert learner.orders == [True] * 8 + [False] * 4  # 4 steps per epoch
    assert [order for _, order, _ in recorder.seen] == learner.orders
    assert logged(read_metrics(logger.log_dir), "schedule/first_order") == [(0, 1.0), (1, 1.0), (2, 0.0)]


@pytest.mark.parametrize("stop_step", [6, 8, 9])  # mid epoch 1, at the switch (end of epoch 1), mid epoch 2
def test_a_resumed_run_anneals_exactly_as_the_uninterrupted_one(tmp_path, stop_step):
    full, resumed, full_weights, resumed_weights = fit_interrupted_and_resumed(
        tmp_path, lambda: [FirstOrderAnnealing(second_order_epoch=2)], stop_step=stop_step
    )
    assert [order for _, order, _ in full] == [True] * 8 + [False] * 8
    assert resumed == full
    for name, value in full_weights.items():
        assert torch.equal(resumed_weights[name], value), name


def test_second_order_epoch_zero_trains_second_order_throughout(tmp_path):
    learner = sinusoid_maml(first_order=True)
    quiet_trainer(tmp_path, callbacks=[FirstOrderAnnealing(second_order_epoch=0)]).fit(learner, sinusoid_datamodule())
    assert learner.inner_loop.first_order is False


def test_a_learner_without_first_order_is_refused_by_name(tmp_path):
    trainer = quiet_trainer(tmp_path, callbacks=[FirstOrderAnnealing()])
    with pytest.raises(ValueError, match=r"FirstOrderAnnealing: Reptile always adapts first order"):
        trainer.fit(Reptile(MLP(hidden=(8,)), inner_loop=InnerLoop(vectorize="vmap")), sinusoid_datamodule())


@pytest.mark.parametrize("value", [-1, 2.0, True, None])
def test_first_order_annealing_refuses_bad_arguments_naming_them(value):
    with pytest.raises(ValueError, match=rf"second_order_epoch must be a non-negative integer .*got {value!r}"):
        FirstOrderAnnealing(second_order_epoch=value)
