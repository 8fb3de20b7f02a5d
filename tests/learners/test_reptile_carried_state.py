"""Reptile(carry_inner_state=True) against a hand-written loop with one torch.optim.Adam kept for the whole run.

The reference is openai/supervised-reptile's training: one TF Adam whose moments and bias-correction powers are never
reset, tasks adapted one after the other, evaluation from a copy of the training state.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_meta import Episode, InnerLoop
from lightning_meta.data import EpisodicDataModule
from lightning_meta.inner_optim import Adam, Proximal
from lightning_meta.learners import Reptile
from lightning_meta.models import Conv4
from tests.helpers.trainers import quiet_trainer

LR, BETAS, OUTER = 0.01, (0.0, 0.999), 0.5
STEPS, BATCH, EVAL_STEPS, EVAL_BATCH = 3, 2, 4, 3


def episode(seed: int, n_tasks: int = 3, ways: int = 3, shots: int = 2, queries: int = 2) -> Episode:
    g = torch.Generator().manual_seed(seed)
    x = lambda n: torch.randn(n_tasks, n, 1, 16, 16, generator=g, dtype=torch.float64)  # noqa: E731
    perm = torch.randperm(ways * shots, generator=g)  # a shuffled support set, so mini-batches mix the classes
    support_y = torch.arange(ways).repeat_interleave(shots)[perm].expand(n_tasks, -1)
    query_y = torch.arange(ways).repeat_interleave(queries).expand(n_tasks, -1)
    return Episode(x(ways * shots), support_y, x(ways * queries), query_y, ways=ways, batched=True)


def conv() -> nn.Module:
    return Conv4(in_channels=1, hidden=4, out_features=3, image_size=16).double()


def user_net() -> nn.Module:
    """A user's plain nn.Sequential with a frozen first layer."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    net[1].requires_grad_(False)
    return net


def adapt(net: nn.Module, adam: torch.optim.Adam, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> None:
    for k in range(steps):
        index = (torch.arange(batch) + k * batch) % x.shape[0]
        adam.zero_grad()
        F.cross_entropy(net(x[index]), y[index]).backward()
        adam.step()


def inner_loop(vectorize: str) -> InnerLoop:
    return InnerLoop(lr=LR, steps=STEPS, eval_steps=EVAL_STEPS, optimizer=Adam(betas=BETAS), batch_size=BATCH,
                     eval_batch_size=EVAL_BATCH, vectorize=vectorize)  # fmt: skip


@pytest.mark.parametrize("make", [conv, user_net], ids=["conv4", "user_sequential_frozen_layer"])
@pytest.mark.parametrize("vectorize", ["loop", "vmap"])
def test_training_and_evaluation_equal_one_torch_adam_carried_through_every_task(make, vectorize):
    torch.manual_seed(0)
    net = make()
    learner = Reptile(copy.deepcopy(net), inner_loop=inner_loop(vectorize), lr=OUTER, carry_inner_state=True)
    outer = learner.configure_optimizers()
    reference = copy.deepcopy(net)
    adam = torch.optim.Adam([p for p in reference.parameters() if p.requires_grad], lr=LR, betas=BETAS, eps=1e-8)
    for step in range(3):
        batch = episode(step)
        outer.zero_grad()
        learner.meta_loss(batch)[0].backward()
        outer.step()
        theta = copy.deepcopy(reference.state_dict())
        phis = []
        for task in batch:
            reference.load_state_dict(theta)
            adapt(reference, adam, task.support_x, task.support_y, STEPS, BATCH)
            phis.append(copy.deepcopy(reference.state_dict()))
        reference.load_state_dict(
            {k: theta[k] + OUTER * (torch.stack([phi[k] for phi in phis]).mean(0) - theta[k]) for k in theta}
        )
    for name, p in reference.named_parameters():
        torch.testing.assert_close(learner.model.get_parameter(name).detach(), p.detach(), rtol=1e-9, atol=1e-11)
    state, steps_taken = learner.inner_state.get()
    assert steps_taken == 3 * 3 * STEPS
    for name, p in reference.named_parameters():
        if p.requires_grad:  # torch's Adam: exp_avg (beta1 = 0: the last gradient) and exp_avg_sq
            torch.testing.assert_close(state[name][1], adam.state[p]["exp_avg_sq"], rtol=1e-9, atol=1e-15)
            torch.testing.assert_close(state[name][0], adam.state[p]["exp_avg"], rtol=1e-9, atol=1e-13)
            assert int(adam.state[p]["step"]) == steps_taken
        else:  # a frozen layer is not adapted: its state stays as it began
            assert not state[name][0].any() and not state[name][1].any()

    # evaluation: every task from a copy of the carried state; the state itself is left as it was
    kept = {name: tuple(t.clone() for t in tensors) for name, tensors in state.items()}
    learner.eval()
    batch = episode(10)
    with torch.enable_grad():
        predictions = learner.meta_loss(batch)[1]
    theta, saved = copy.deepcopy(reference.state_dict()), copy.deepcopy(adam.state_dict())
    for t, task in enumerate(batch):
        reference.load_state_dict(theta)
        adam.load_state_dict(copy.deepcopy(saved))
        adapt(reference, adam, task.support_x, task.support_y, EVAL_STEPS, EVAL_BATCH)
        with torch.no_grad():
            torch.testing.assert_close(predictions[t], reference(task.query_x), rtol=1e-8, atol=1e-10)
    after, steps_after = learner.inner_state.get()
    assert steps_after == steps_taken
    for name in kept:
        for a, b in zip(kept[name], after[name], strict=True):
            assert torch.equal(a, b)


def test_a_fresh_state_per_task_differs_from_the_carried_one():
    # the option changes what is computed (not a no-op): the same start, one meta-step, different weights
    torch.manual_seed(0)
    net = conv()
    weights = []
    for carry in (False, True):
        learner = Reptile(copy.deepcopy(net), inner_loop=inner_loop("loop"), lr=OUTER, carry_inner_state=carry)
        for step in range(2):
            learner.meta_loss(episode(step))[0].backward()
            learner.configure_optimizers().step()
            learner.zero_grad()
        weights.append(torch.cat([p.detach().flatten() for p in learner.parameters()]))
    assert not torch.allclose(weights[0], weights[1])


def test_a_meta_batch_with_a_nan_leaves_the_carried_state_unchanged():
    torch.manual_seed(0)
    learner = Reptile(conv(), inner_loop=inner_loop("loop"), lr=OUTER, carry_inner_state=True)
    learner.meta_loss(episode(0))
    before = {k: v.clone() for k, v in learner.inner_state.state_dict().items()}
    bad = episode(1)
    bad.support_x[1, 0, 0, 0, 0] = float("nan")
    loss, _ = learner.meta_loss(bad)
    assert not torch.isfinite(loss)  # the learner's non-finite check then stops or skips the step
    for key, value in learner.inner_state.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_carried_state_is_saved_in_checkpoints_and_restored(tmp_path):
    from lightning_meta.data import Sinusoid
    from lightning_meta.models import MLP

    torch.manual_seed(0)
    loop = InnerLoop(lr=0.01, steps=2, optimizer=Adam(betas=BETAS), vectorize="loop")
    learner = Reptile(MLP(hidden=(8,)), inner_loop=loop, lr=OUTER, carry_inner_state=True)
    data = EpisodicDataModule(Sinusoid(), shots=5, queries=5, tasks_per_batch=2, train_episodes=6, seed=0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    quiet_trainer(max_steps=3, limit_val_batches=0, callbacks=[checkpoint]).fit(learner, data)
    assert learner.inner_state.get()[1] == 3 * 2 * 2
    loaded = Reptile.load_from_checkpoint(tmp_path / "last.ckpt")
    assert loaded.carry_inner_state and loaded.inner_state.get()[1] == 12
    for key, value in learner.inner_state.state_dict().items():
        assert torch.equal(loaded.inner_state.state_dict()[key], value), key
    assert any(value.abs().sum() > 0 for value in loaded.inner_state.state_dict().values())


def test_refuses_settings_a_carried_state_cannot_follow():
    from lightning_meta.models import MLP

    with pytest.raises(ValueError, match="carry_inner_state must be True or False, got 1"):
        Reptile(MLP(), carry_inner_state=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="carry_inner_state=True does not work with inner_loop.compiled=True"):
        Reptile(MLP(), inner_loop=InnerLoop(compiled=True), carry_inner_state=True)
    with pytest.raises(ValueError, match="carry_inner_state=True does not work with a Proximal"):
        Reptile(MLP(), inner_loop=InnerLoop(optimizer=Proximal(Adam(), lam=1.0)), carry_inner_state=True)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_checkpoint_of_the_other_setting_loads_with_a_warning(tmp_path):
    from lightning_meta.data import Sinusoid
    from lightning_meta.models import MLP

    loop = InnerLoop(lr=0.01, steps=2, optimizer=Adam(betas=BETAS), vectorize="loop")
    data = EpisodicDataModule(Sinusoid(), shots=5, queries=5, tasks_per_batch=2, train_episodes=4, seed=0)
    for carry in (False, True):
        torch.manual_seed(0)
        learner = Reptile(MLP(hidden=(8,)), inner_loop=loop, lr=OUTER, carry_inner_state=carry)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / str(carry), save_last=True)
        quiet_trainer(max_steps=2, limit_val_batches=0, callbacks=[checkpoint]).fit(learner, data)
    with pytest.warns(UserWarning, match="without a carried inner-optimizer state .* the state starts fresh"):
        fresh = Reptile.load_from_checkpoint(tmp_path / "False" / "last.ckpt", carry_inner_state=True)
    assert fresh.inner_state.get()[1] == 0
    assert all(not value.any() for value in fresh.inner_state.state_dict().values())
    with pytest.warns(UserWarning, match="holds a carried inner-optimizer state: it is dropped"):
        dropped = Reptile.load_from_checkpoint(tmp_path / "True" / "last.ckpt", carry_inner_state=False)
    assert dropped.inner_state is None
    # and through the Trainer (what `lightning-meta test --ckpt_path` does)
    with pytest.warns(UserWarning, match="the state starts fresh"):
        quiet_trainer(limit_test_batches=1).test(
            Reptile(MLP(hidden=(8,)), inner_loop=loop, carry_inner_state=True),
            EpisodicDataModule(Sinusoid(), Sinusoid(), Sinusoid(), shots=5, queries=5, eval_episodes=2),
            ckpt_path=tmp_path / "False" / "last.ckpt",
        )
