"""Task families and the task datamodule: seeded, reproducible, and the environments run the sampled parameters."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from lightning_meta.data import EpisodicDataModule
from lightning_meta.rl import (
    GaussianMLPPolicy,
    GymnasiumFamily,
    HalfCheetahDirection,
    HalfCheetahVelocity,
    Navigation2D,
    PendulumDynamics,
    TaskDataModule,
    collect,
)
from lightning_meta.rl.rollout import rollout_generators


def _rollout(family, batch, copies=3, seed=0):
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(observation_size=family.observation_size, action_size=family.spaces[1].shape[0],
                               hidden=[8])  # fmt: skip
    envs = family.make_vector_env(batch.n_tasks * copies)
    family.set_tasks(envs, {k: v.repeat_interleave(copies, 0) for k, v in batch.params.items()})
    params = dict(policy.named_parameters())
    return collect(policy, params, envs, generators=rollout_generators(batch.seeds, 0), copies=copies,
                   horizon=family.horizon), envs  # fmt: skip


def _batch(family, seed=0, tasks=3):
    dm = TaskDataModule(family, tasks_per_batch=tasks, train_tasks=tasks, eval_tasks=tasks, seed=seed)
    dm.setup("fit")
    return next(iter(dm.train_dataloader())), dm


def test_task_datamodule_is_an_episodic_datamodule_with_seeded_tasks():
    family = Navigation2D()
    (a, dm), (b, _), (c, _) = _batch(family), _batch(family), _batch(family, seed=1)
    assert isinstance(dm, EpisodicDataModule)
    assert torch.equal(a.params["goal"], b.params["goal"]) and torch.equal(a.seeds, b.seeds)
    assert not torch.equal(a.params["goal"], c.params["goal"])
    assert a.params["goal"].abs().max() <= 0.5
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val.params["goal"], next(iter(dm.val_dataloader())).params["goal"])  # fixed evaluation tasks
    assert not torch.equal(val.params["goal"], a.params["goal"])


def test_navigation_rollouts_are_reproducible_and_follow_the_sampled_goal():
    family = Navigation2D(horizon=20)
    batch, _ = _batch(family)
    (first, envs), (second, _) = _rollout(family, batch), _rollout(family, batch)
    for name in ("observations", "actions", "rewards", "mask"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert np.array_equal(envs.goals, batch.params["goal"].repeat_interleave(3, 0).numpy().astype(np.float32))
    # reward = minus the distance between the position after the step and the task's goal
    position = first.observations[:, 1:]  # the observation of step t + 1 is the position after step t
    goal = batch.params["goal"].float().view(3, 1, 1, 2)
    expected = -(position - goal).norm(dim=-1)
    torch.testing.assert_close(first.rewards[:, :-1], expected)
    steps = (first.observations[:, 1:] - first.observations[:, :-1]).abs()
    assert steps.max() <= 0.1 + 1e-6  # actions clipped to [-0.1, 0.1]


def test_vectorised_navigation_equals_gymnasium_sync_vector_env_one_env_at_a_time():
    batch, _ = _batch(Navigation2D(horizon=15))
    fast, _ = _rollout(Navigation2D(horizon=15), batch)
    slow, envs = _rollout(Navigation2D(horizon=15, vectorized=False), batch)
    assert type(envs).__name__ == "SyncVectorEnv"
    for name in ("observations", "actions", "rewards", "mask"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), msg=name)


def test_pendulum_family_sets_mass_and_length_and_is_reproducible():
    family = PendulumDynamics(horizon=10)
    batch, _ = _batch(family)
    (first, envs), (second, _) = _rollout(family, batch), _rollout(family, batch)
    assert torch.equal(first.observations, second.observations) and torch.equal(first.rewards, second.rewards)
    for i, env in enumerate(envs.envs):
        assert env.unwrapped.m == float(batch.params["m"][i // 3])
        assert env.unwrapped.l == float(batch.params["l"][i // 3])
    assert ((batch.params["m"] >= 0.5) & (batch.params["m"] <= 1.5)).all()
    other, _ = _rollout(family, _batch(family, seed=5)[0])
    assert not torch.equal(first.rewards, other.rewards)


def test_gymnasium_family_rejects_unknown_attributes_and_bad_ranges():
    with pytest.raises(ValueError, match="no attribute 'mass'"):
        GymnasiumFamily(env_id="Pendulum-v1", parameters={"mass": (0.5, 1.0)})
    with pytest.raises(ValueError, match=r"low <= high, got \[2.0, 1.0\]"):
        GymnasiumFamily(env_id="Pendulum-v1", parameters={"m": (2.0, 1.0)})
    with pytest.raises(ValueError, match="horizon must be a positive integer, got 0"):
        Navigation2D(horizon=0)


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="mujoco is not installed")
def test_half_cheetah_families_reward_the_sampled_velocity_and_direction():
    for family, name in ((HalfCheetahVelocity(horizon=5), "goal_velocity"), (HalfCheetahDirection(horizon=5),
                                                                              "goal_direction")):  # fmt: skip
        params = family.sample(torch.Generator().manual_seed(3))
        env = family.make_env()
        family.set_task(env, params)
        assert env.get_wrapper_attr(name) == float(params[name])
        env.reset(seed=0)
        action = np.full(6, 0.5, dtype=np.float32)
        _, reward, _, _, info = env.step(action)
        velocity, goal = info["x_velocity"], float(params[name])
        expected = -abs(velocity - goal) if name == "goal_velocity" else goal * velocity
        assert reward == pytest.approx(expected - 0.05 * 6 * 0.25)
    directions = {float(HalfCheetahDirection().sample(torch.Generator().manual_seed(s))["goal_direction"])
                  for s in range(20)}  # fmt: skip
    assert directions == {-1.0, 1.0}


def test_discrete_family_with_early_termination_masks_the_steps_after_the_end():
    """CartPole with a sampled push force: episodes end early, a categorical policy acts, the learner trains."""
    from lightning_meta.rl import CategoricalMLPPolicy, MAMLPolicyGradient

    family = GymnasiumFamily(env_id="CartPole-v1", parameters={"force_mag": (5.0, 15.0)}, horizon=60)
    batch, _ = _batch(family, tasks=2)
    torch.manual_seed(0)
    learner = MAMLPolicyGradient(CategoricalMLPPolicy(observation_size=4, n_actions=2, hidden=[8]),
                                 trajectories_per_task=4)  # fmt: skip
    trajectories = learner.collect(batch, dict(learner.policy.named_parameters()), phase=0)
    assert trajectories.actions.unique().tolist() == [0.0, 1.0]
    lengths = trajectories.mask.sum(dim=1)
    assert (lengths < 60).any()  # some episodes fell before the horizon
    # once an episode ends, it stays ended; CartPole pays 1 per step, so the return is the length
    assert (trajectories.mask[:, 1:] <= trajectories.mask[:, :-1]).all()
    torch.testing.assert_close(trajectories.rewards.sum(dim=1), lengths)
    for i, env in enumerate(learner.vector_env(batch).envs):
        assert env.unwrapped.force_mag == float(batch.params["force_mag"][i // 4])
    loss, _, _ = learner.training_loss(batch)
    loss.backward()
    assert all(p.grad is not None for p in learner.policy.parameters())
